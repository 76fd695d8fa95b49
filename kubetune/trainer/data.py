"""Records from jsonl/csv/parquet files → token ids with a loss mask, optionally packed.

The loss covers only what the model should learn to write: assistant turns of a chat, the completion of a
prompt-completion pair (unless maskPrompt is off), all of plain text, each ending with its end-of-turn or EOS
token. Packed sequences restart position ids at every example; transformers derives a block-diagonal attention
mask from them, so no example attends to another. Every data error names the file and the line.
"""
import csv
import gzip
import io
import json
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kubetune.api.spec import Dataset
from kubetune.trainer.errors import BadInput

IGNORE = -100
ROLES = ("system", "user", "assistant")


@dataclass
class Record:
    source: str  # "file line N", for error messages
    fields: dict


@dataclass
class Stats:
    examples: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_target: int = 0
    target_tokens: int = 0
    notes: list[str] = field(default_factory=list)


def _open_text(path: Path):
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace")


def _format_of(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    suffixes = [s for s in path.suffixes if s != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    known = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
    if ext not in known:
        raise BadInput(f"{path.name}: cannot tell the format from the extension {ext or '(none)'}; "
                       "set dataset.format to jsonl, csv or parquet")
    return known[ext]


def read_records(path: Path, declared_format: str, display: str) -> list[Record]:
    """Every record of a file, or of every file under a directory, with where it came from."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.endswith(".etag")) if path.is_dir() \
        else [path]
    records = []
    for file in files:
        name = display if len(files) == 1 else f"{display.rstrip('/')}/{file.relative_to(path)}"
        fmt = _format_of(file, declared_format)
        try:
            records += {"jsonl": _jsonl_records, "csv": _csv_records, "parquet": _parquet_records}[fmt](file, name)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise BadInput(f"{name}: not a valid gzip file ({exc})") from exc
    return records


def _jsonl_records(file: Path, name: str) -> list[Record]:
    with _open_text(file) as fh:
        return list(jsonl_records(fh, name))


def jsonl_records(fh, name: str, first_line: int = 1):
    """The records of jsonl text, one by one; `first_line` numbers a chunk of a bigger file (tokenized.py reads
    files in parallel chunks)."""
    for n, line in enumerate(fh, first_line):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInput(f"{name} line {n}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(obj, dict):
            raise BadInput(f"{name} line {n}: expected a JSON object, got {type(obj).__name__}")
        yield Record(f"{name} line {n}", obj)


def _parquet_records(file: Path, name: str) -> list[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except pa.ArrowException as exc:
        raise BadInput(f"{name}: not a readable parquet file ({exc})") from exc
    return [Record(f"{name} row {n}", row) for n, row in enumerate(table.to_pylist(), 1)]


def _csv_records(file: Path, name: str) -> list[Record]:
    """Rows as dicts keyed by the header; a row with more or fewer fields than the header is an error, not a
    silently shifted record. Line numbers are where the row starts (a quoted field may span lines)."""
    records = []
    with _open_text(file) as fh:
        reader = csv.reader(fh)
        try:
            header, start = next(reader, None), reader.line_num + 1
            for row in reader:
                if row and header and len(row) != len(header):
                    raise BadInput(f"{name} line {start}: {len(row)} field{'s' * (len(row) != 1)}, the header has {len(header)} "
                                   f"({', '.join(header)}); quote fields that contain commas")
                if row:
                    records.append(Record(f"{name} line {start}", dict(zip(header, row))))
                start = reader.line_num + 1
        except csv.Error as exc:
            raise BadInput(f"{name} line {reader.line_num}: not valid CSV ({exc})") from exc
    return records


def detect_schema(records: list[Record], dataset: Dataset) -> str:
    if dataset.schema_ != "auto":
        return dataset.schema_
    cols = dataset.columns
    first = records[0].fields if records else {}
    if cols.messages in first:
        return "chat"
    if cols.prompt in first and cols.completion in first:
        return "prompt-completion"
    if cols.text in first and cols.label in first:
        return "classification"
    if cols.text in first:
        return "text"
    raise BadInput(f"{records[0].source}: cannot detect the schema from the columns {sorted(first)}; expected "
                   f"{cols.messages!r} (chat), {cols.prompt!r}+{cols.completion!r} (prompt-completion) or "
                   f"{cols.text!r} (text); set dataset.schema and dataset.columns")


def _field(rec: Record, name: str, kind=str):
    if name not in rec.fields:
        raise BadInput(f"{rec.source}: missing column {name!r} (columns: {sorted(rec.fields)})")
    value = rec.fields[name]
    if not isinstance(value, kind):
        raise BadInput(f"{rec.source}: {name!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _chat(rec: Record, tok, dataset: Dataset) -> tuple[list[int], list[int]]:
    messages = _field(rec, dataset.columns.messages, list)
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise BadInput(f"{rec.source}: message {i} must be an object with a string 'content'")
        if m.get("role") not in ROLES:
            raise BadInput(f"{rec.source}: message {i} has unknown role {m.get('role')!r}; allowed: "
                           f"{', '.join(ROLES)}")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadInput(f"{rec.source}: no assistant message to learn from")
    if not getattr(tok, "chat_template", None):
        raise BadInput("the base model's tokenizer has no chat template; use dataset.schema prompt-completion")
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = tok.apply_chat_template(msgs, tokenize=False)
    spans = []  # character ranges of each assistant turn, end-of-turn markup included
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = tok.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True) if i else ""
        # The last turn through its end is the whole conversation: one render fewer per example.
        through = text if i == len(msgs) - 1 else tok.apply_chat_template(msgs[: i + 1], tokenize=False)
        if not (text.startswith(through) and through.startswith(before)):
            raise BadInput("the chat template renders a conversation differently from its prefixes; "
                           "prompt masking needs a prefix-stable template")
        spans.append((len(before), len(through)))
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    starts = np.fromiter((start for start, _ in enc["offset_mapping"]), np.int64, len(ids))
    target = np.zeros(len(ids), dtype=bool)  # tokens that start inside an assistant span
    for a, b in spans:
        target |= (a <= starts) & (starts < b)
    return ids, np.where(target, ids, IGNORE).tolist()


def _prompt_completion(rec: Record, tok, dataset: Dataset) -> tuple[list[int], list[int]]:
    prompt = tok(_field(rec, dataset.columns.prompt))["input_ids"]
    completion = tok(_field(rec, dataset.columns.completion), add_special_tokens=False)["input_ids"]
    completion = completion + [tok.eos_token_id]
    prompt_labels = [IGNORE] * len(prompt) if dataset.mask_prompt else list(prompt)
    return prompt + completion, prompt_labels + completion


def _text(rec: Record, tok, dataset: Dataset) -> tuple[list[int], list[int]]:
    ids = tok(_field(rec, dataset.columns.text))["input_ids"] + [tok.eos_token_id]
    return ids, list(ids)


ENCODERS = {"chat": _chat, "prompt-completion": _prompt_completion, "text": _text}


def encode(records: list[Record], schema: str, tok, dataset: Dataset, stats: Stats) -> list[dict]:
    """Token ids and labels of each record, after applying maxSeqLength and longSequences."""
    if schema not in ENCODERS:
        raise BadInput(f"dataset.schema {schema} is not a causal-lm schema; use task sequence-classification")
    out = []
    limit = dataset.max_seq_length
    for rec in records:
        ids, labels = ENCODERS[schema](rec, tok, dataset)
        if len(ids) > limit:
            if dataset.long_sequences == "drop":
                stats.dropped_too_long += 1
                continue
            ids, labels = ids[:limit], labels[:limit]
            stats.truncated += 1
        targets = sum(1 for x in labels if x != IGNORE)
        if targets == 0:
            stats.dropped_no_target += 1
            continue
        stats.examples += 1
        stats.target_tokens += targets
        out.append({"input_ids": ids, "labels": labels, "source": rec.source})  # source: for errors.jsonl
    return out


def pack(examples: list[dict], max_len: int) -> list[dict]:
    """Greedy packing in order: each sequence holds whole examples, position ids restart per example."""
    packed, cur = [], {"input_ids": [], "labels": [], "position_ids": []}
    for ex in examples:
        if cur["input_ids"] and len(cur["input_ids"]) + len(ex["input_ids"]) > max_len:
            packed.append(cur)
            cur = {"input_ids": [], "labels": [], "position_ids": []}
        cur["input_ids"] += ex["input_ids"]
        # The first label of each example is never predicted from the previous example's last token.
        cur["labels"] += [IGNORE] + ex["labels"][1:]
        cur["position_ids"] += list(range(len(ex["input_ids"])))
    if cur["input_ids"]:
        packed.append(cur)
    return packed


def collate(rows: list[dict], pad_id: int):
    """Right-padded tensors. No attention mask: causal attention never looks right, so real tokens never see
    the padding, labels drop it from the loss, and without a mask transformers derives the per-example
    (block-diagonal) attention of packed rows from their position ids."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    n = len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(rows):
        k = len(r["input_ids"])
        ids[i, :k] = torch.tensor(r["input_ids"])
        labels[i, :k] = torch.tensor(r["labels"])
        pos[i, :k] = torch.tensor(r.get("position_ids") or list(range(k)))
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


def length_order(examples: list[dict]) -> list[int]:
    """Indices from shortest to longest: scoring batches of similar length wastes less compute on padding
    (callers put the results back in the examples' order). Memory-mapped examples (rows.Examples) give their
    lengths without building every example."""
    lengths = getattr(examples, "lengths", None)
    if lengths is not None:
        import numpy as np

        return np.argsort(lengths, kind="stable").tolist()  # stable, as sorted() is: the same order
    return sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))


def split(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """A deterministic train/validation split."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = int(round(len(examples) * fraction))
    val = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in val], [examples[i] for i in sorted(val)]
