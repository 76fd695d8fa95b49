"""Data files → token ids, loss mask and sources in memory-mapped arrays, built once and cached.

`data.encode` turns records into Python lists, which at a million chat rows takes ~15 minutes and ~13 GB in every
rank. Here the same `data.encode` runs in parallel worker processes over chunks of the files (byte ranges of a
jsonl file; batches of records of csv and parquet), and the results are appended to flat arrays on disk:

    tokens.bin   token ids (uint16 when the vocabulary fits, else int32), all examples end to end
    mask.bin     uint8, 1 where the token is a target (labels = ids there, -100 elsewhere: data.encode never
                 labels a token with anything but itself or IGNORE)
    offsets.bin  int64, n+1: example i is tokens[offsets[i]:offsets[i+1]]
    file.bin, line.bin   where example i came from (its file index, line or row number) for errors.jsonl
    meta.json    counts, Stats, file names; written last: its presence marks a complete build

The directory is named by a key over everything the arrays depend on: the data (S3 ETags, or a content hash for
file://), the tokenizer (its serialised form, chat template and special tokens) and the dataset settings that
reach `encode` (format, schema, columns, maxSeqLength, longSequences, maskPrompt). Packing, maxSamples and the
validation split only choose rows, so they are not in the key (rows.py applies them). A build runs under a file
lock, so the ranks of one node tokenize once and the others read the result; with `share_uri` the build is also
uploaded (meta.json last) and a pod of the same run that starts on another node downloads it instead.

Errors are the ones the serial path raises, in the same order: a parse error anywhere beats an encode error,
and the earliest in file order wins, each naming the file and line.
"""
import fcntl
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kubetune.api.spec import Dataset
from kubetune.trainer import data as d
from kubetune.trainer.errors import BadInput
from kubetune.trainer.storage import Store, join

FORMAT = 1  # bump when the arrays or what encode produces change: old caches are then never read
FILES = ("tokens.bin", "mask.bin", "offsets.bin", "file.bin", "line.bin")
CHUNK_BYTES = (256 << 10, 8 << 20)  # a jsonl chunk's bounds; within them, ~8 chunks per worker balance the load
CHUNK_RECORDS = (256, 4096)  # the same for csv and parquet records


def cpu_count() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup v2 quota (a pod's CPU limit)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return n


# --- Keys ----------------------------------------------------------------------------------------------------

def tokenizer_fingerprint(tok) -> str:
    h = hashlib.sha256(type(tok).__name__.encode())
    backend = getattr(tok, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else
             json.dumps(sorted(tok.get_vocab().items())).encode())
    h.update(json.dumps([getattr(tok, "chat_template", None), tok.eos_token_id, tok.bos_token_id,
                         tok.pad_token_id, str(tok.special_tokens_map)], default=str).encode())
    return h.hexdigest()


def data_fingerprint(store: Store, uri: str, what: str) -> str:
    """S3: the objects' ETags (no download). file://: a hash of every file's content."""
    if not uri.startswith("file://"):
        return hashlib.sha256(json.dumps(store.etags(uri, what)).encode()).hexdigest()
    path = store.fetch(uri, what)  # raises the usual "does not exist"
    h = hashlib.sha256()
    for f in _files(path):
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())  # a fixed 256 KB buffer
    return h.hexdigest()


def cache_key(uri: str, data_fp: str, tok_fp: str, ds: Dataset) -> str:
    settings = {"format": ds.format, "schema": ds.schema_, "columns": ds.columns.model_dump(),
                "maxSeqLength": ds.max_seq_length, "longSequences": ds.long_sequences, "maskPrompt": ds.mask_prompt}
    blob = json.dumps({"v": FORMAT, "uri": uri, "data": data_fp, "tokenizer": tok_fp, "settings": settings},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


# --- The arrays ----------------------------------------------------------------------------------------------

class Tokenized:
    """A finished build, memory-mapped read-only: pages are read when a row is used and shared by every process
    of the node through the page cache, so a reader's memory does not grow with the dataset."""

    def __init__(self, root: Path):
        self.root = root
        self.meta = json.loads((root / "meta.json").read_text())
        n, t = self.meta["examples"], self.meta["tokens"]
        self.tokens = _map(root / "tokens.bin", self.meta["ids_dtype"], t)
        self.mask = _map(root / "mask.bin", "uint8", t)
        self.offsets = _map(root / "offsets.bin", "int64", n + 1)
        self.file = _map(root / "file.bin", "int32", n)
        self.line = _map(root / "line.bin", "int64", n)

    @property
    def stats(self) -> d.Stats:
        return d.Stats(**self.meta["stats"])

    def __len__(self) -> int:
        return self.meta["examples"]

    def lengths(self, index: np.ndarray) -> np.ndarray:
        return self.offsets[index + 1] - self.offsets[index]

    def source(self, i: int) -> str:
        name, unit = self.meta["files"][int(self.file[i])]
        return f"{name} {unit} {int(self.line[i])}"

    def ids_labels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        ids = self.tokens[a:b].astype(np.int64)
        return ids, np.where(self.mask[a:b] != 0, ids, d.IGNORE)

    def example(self, i: int) -> dict:
        """Example i as data.encode returns it."""
        ids, labels = self.ids_labels(i)
        return {"input_ids": ids.tolist(), "labels": labels.tolist(), "source": self.source(i)}


def _map(path: Path, dtype: str, n: int) -> np.ndarray:
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype=dtype)


# --- Building ------------------------------------------------------------------------------------------------

@dataclass
class _Context:
    tok: object
    ds: Dataset
    schema: str | None  # None: parse only (a parse or schema error is coming anyway)
    dtype: str  # of the token ids: uint16 halves what crosses the pipes and lies on disk


_CONTEXT: _Context | None = None  # set in the parent before the pool forks; the workers inherit it


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.endswith(".etag")) if path.is_dir() \
        else [path]


def _line_ends(data: bytes) -> int:
    """Lines the chunk holds as Python's universal-newline reading counts them (\\n, \\r\\n and lone \\r)."""
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


def _jsonl_chunks(file: Path, chunk_bytes: int):
    """(offset, length, first line number) of pieces of a jsonl file, each ending at a newline."""
    size, start, line = file.stat().st_size, 0, 1
    with open(file, "rb") as fh:
        while start < size:
            fh.seek(start + chunk_bytes)
            tail = fh.readline() if start + chunk_bytes < size else b""
            end = min(size, start + chunk_bytes + len(tail))
            yield start, end - start, line
            if end < size:
                fh.seek(start)
                line += _line_ends(fh.read(end - start))
            start = end


def _encode_chunk(job: tuple) -> dict:
    """Parses and encodes one chunk: (file index, records or (path, offset, length, first line), display name)."""
    ctx = _CONTEXT
    index, what, name = job
    out = {"index": index, "records": 0, "parse_error": None, "encode_error": None, "stats": asdict(d.Stats())}
    try:
        if isinstance(what, list):
            records = what
        else:
            path, offset, length, first = what
            with open(path, "rb") as fh:
                fh.seek(offset)
                text = io.TextIOWrapper(io.BytesIO(fh.read(length)), encoding="utf-8", errors="replace")
            records = list(d.jsonl_records(text, name, first))
    except BadInput as exc:
        out["parse_error"] = str(exc)
        return out
    out["records"] = len(records)
    if ctx.schema is None or not records:
        return out
    stats = d.Stats()
    try:
        examples = d.encode(records, ctx.schema, ctx.tok, ctx.ds, stats)
    except BadInput as exc:
        out["encode_error"] = str(exc)
        return out
    out["stats"] = asdict(stats)
    lengths = np.fromiter((len(e["input_ids"]) for e in examples), np.int64, len(examples))
    out["lengths"] = lengths
    tokens = np.fromiter((t for e in examples for t in e["input_ids"]), np.int64, int(lengths.sum()))
    if tokens.size and tokens.max() > np.iinfo(ctx.dtype).max:
        raise RuntimeError(f"token id {tokens.max()} does not fit {ctx.dtype}")
    out["tokens"] = tokens.astype(ctx.dtype)
    out["mask"] = np.fromiter((x != d.IGNORE for e in examples for x in e["labels"]), np.uint8, int(lengths.sum()))
    out["line"] = np.fromiter((int(e["source"].rsplit(" ", 1)[1]) for e in examples), np.int64, len(examples))
    return out


def _chunk_size(total: int, workers: int, bounds: tuple[int, int]) -> int:
    return int(min(bounds[1], max(bounds[0], total // (workers * 8))))


def _plan(path: Path, display: str, ds: Dataset, scratch: Path, workers: int, chunk_bytes: int | None):
    """The chunks of every file in order, the file table, and the first record (for schema detection). A file
    that cannot be read stops the plan; its error is reported where the serial reader would have reported it."""
    files = _files(path)
    chunk_bytes = chunk_bytes or _chunk_size(sum(f.stat().st_size for f in files), workers, CHUNK_BYTES)
    jobs, table, first, error = [], [], None, None
    for i, file in enumerate(files):
        name = display if len(files) == 1 else f"{display.rstrip('/')}/{file.relative_to(path)}"
        try:
            fmt = d._format_of(file, ds.format)
            table.append([name, "row" if fmt == "parquet" else "line"])
            if fmt == "jsonl":
                if file.suffix == ".gz":  # gzip cannot seek: inflate once, then read it in byte ranges
                    plain = scratch / f"{i}.jsonl"
                    try:
                        with gzip.open(file, "rb") as src, open(plain, "wb") as dst:
                            shutil.copyfileobj(src, dst, 8 << 20)
                    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
                        raise BadInput(f"{name}: not a valid gzip file ({exc})") from exc
                    file = plain
                if first is None:
                    first = _first_jsonl_record(file, name)
                jobs += [(i, (str(file), *piece), name) for piece in _jsonl_chunks(file, chunk_bytes)]
            else:
                reader = d._csv_records if fmt == "csv" else d._parquet_records
                try:
                    records = reader(file, name)
                except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
                    raise BadInput(f"{name}: not a valid gzip file ({exc})") from exc
                first = first or (records[0] if records else None)
                per = _chunk_size(len(records), workers, CHUNK_RECORDS)
                jobs += [(i, records[k: k + per], name) for k in range(0, len(records), per)]
        except BadInput as exc:
            error = str(exc)  # later files do not matter: this error comes before anything they could raise
            break
    return jobs, table, first, error


def _first_jsonl_record(file: Path, name: str) -> d.Record | None:
    with open(file, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as fh:
        try:
            return next(d.jsonl_records(fh, name), None)
        except BadInput:
            return None  # the chunk holding it reports it


def build(path: Path, display: str, what: str, tok, ds: Dataset, out: Path, workers: int | None = None,
          chunk_bytes: int | None = None) -> None:
    """Tokenizes the file (or directory) at `path` into the directory `out` (which must not exist), with
    `workers` processes (default: the CPUs available; 1 runs in this process). Raises BadInput as the serial
    reader and data.encode would: file and line first, then "no records", the schema, the examples."""
    global _CONTEXT
    started = time.monotonic()
    tmp = out.with_name(f"{out.name}.part-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        workers = workers or cpu_count()
        jobs, table, first, plan_error = _plan(path, display, ds, tmp, workers, chunk_bytes)
        schema, schema_error = None, None
        if first is not None:
            try:
                schema = d.detect_schema([first], ds)
                if schema not in d.ENCODERS:
                    raise BadInput(f"dataset.schema {schema} is not a causal-lm schema; use task "
                                   "sequence-classification")
            except BadInput as exc:
                schema, schema_error = None, str(exc)
        dtype = "uint16" if len(tok) <= 1 << 16 else "int32"
        _CONTEXT = _Context(tok, ds, None if plan_error else schema, dtype)
        workers = min(workers, max(1, len(jobs)))
        results = _run(jobs, workers, tmp, dtype)
        parse_errors = [r["parse_error"] for r in results["errors"] if r["parse_error"]]
        if parse_errors or plan_error:
            raise BadInput((parse_errors or [plan_error])[0])
        if results["records"] == 0:
            raise BadInput(f"{what} {display}: no records")
        if schema_error:
            raise BadInput(schema_error)
        encode_errors = [r["encode_error"] for r in results["errors"] if r["encode_error"]]
        if encode_errors:
            raise BadInput(encode_errors[0])
        meta = {"format": FORMAT, "uri": display, "schema": schema, "files": table, "records": results["records"],
                "examples": results["examples"], "tokens": results["tokens"], "ids_dtype": results["dtype"],
                "stats": results["stats"], "workers": workers, "seconds": round(time.monotonic() - started, 2)}
        for scratch in tmp.glob("*.jsonl"):
            scratch.unlink()
        (tmp / "meta.json").write_text(json.dumps(meta))
        tmp.rename(out)
    finally:
        _CONTEXT = None
        shutil.rmtree(tmp, ignore_errors=True)


def _default_signals() -> None:
    """A forked worker inherits the trainer's SIGTERM handler (which only sets a flag), so Pool.terminate's
    SIGTERM would not stop it and the build would wait for it forever (seen in the test suite, after a test had
    run train() in the same process): workers die on SIGTERM/SIGINT again."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(jobs: list, workers: int, out: Path, dtype: str) -> dict:
    """Runs the chunks (in order of results) and appends their arrays; errors are kept by chunk order."""
    handles = {name: open(out / name, "wb") for name in FILES}
    total = {"records": 0, "examples": 0, "tokens": 0, "dtype": dtype, "errors": [], "stats": asdict(d.Stats())}
    handles["offsets.bin"].write(np.zeros(1, np.int64).tobytes())
    pool = None
    try:
        if workers > 1:
            # fork: the workers inherit the tokenizer and need no import (spawn costs seconds of imports each);
            # they run only the tokenizer, never torch. Its own thread pool would fight the processes for CPUs.
            previous = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            try:
                pool = multiprocessing.get_context("fork").Pool(workers, initializer=_default_signals)
            finally:
                if previous is None:
                    os.environ.pop("TOKENIZERS_PARALLELISM")
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = previous
            results = pool.imap(_encode_chunk, jobs)
        else:
            results = map(_encode_chunk, jobs)
        for r in results:
            total["records"] += r["records"]
            if r["parse_error"] or r["encode_error"]:
                total["errors"].append(r)
            if total["errors"] or "tokens" not in r:
                continue  # after an error only the errors matter
            for k, v in r["stats"].items():
                total["stats"][k] += v
            tokens = r["tokens"]
            handles["tokens.bin"].write(tokens.tobytes())
            handles["mask.bin"].write(r["mask"].tobytes())
            offsets = total["tokens"] + np.cumsum(r["lengths"])
            handles["offsets.bin"].write(offsets.astype(np.int64).tobytes())
            handles["file.bin"].write(np.full(len(r["lengths"]), r["index"], np.int32).tobytes())
            handles["line.bin"].write(r["line"].tobytes())
            total["examples"] += len(r["lengths"])
            total["tokens"] += int(tokens.size)
        if pool is not None:  # done: the workers take their sentinels and exit
            pool.close()
            pool.join()
    finally:
        if pool is not None:  # after an error: stop them (a no-op once joined)
            pool.terminate()
        for h in handles.values():
            h.close()
    total["stats"].pop("notes", None)
    return total


# --- Cache ---------------------------------------------------------------------------------------------------

def prepare(store: Store, uri: str, what: str, tok, ds: Dataset, cache_dir: Path, *, share_uri: str | None = None,
            workers: int | None = None, chunk_bytes: int | None = None, on_event=None) -> Tokenized:
    """The tokenized data at `uri`: from the local cache, else from `share_uri` (a prefix this run owns), else
    built here (and then uploaded to `share_uri`). Processes of one node that call this at once build it once:
    the others wait on the lock and read the result. `on_event(kind, **fields)` hears "hit", "download" and
    "build" (tests and the benchmark count builds)."""
    key = cache_key(uri, data_fingerprint(store, uri, what), tokenizer_fingerprint(tok), ds)
    root = cache_dir / "tokenized"
    local = root / key
    event = on_event or (lambda kind, **fields: None)
    if (local / "meta.json").exists():
        event("hit", key=key, path=local)
        return Tokenized(local)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if (local / "meta.json").exists():
            event("hit", key=key, path=local)
            return Tokenized(local)
        shared = join(share_uri, key) if share_uri else None
        if shared and store.exists(join(shared, "meta.json"), "tokenized data"):
            fetched = store.fetch(shared + "/", "tokenized data")
            tmp = local.with_name(f"{key}.part-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            if shared.startswith("file://"):  # someone's directory: copied, never moved
                shutil.copytree(fetched, tmp, ignore=shutil.ignore_patterns("*.etag"))
            else:  # the store's download cache: moved, not kept twice
                shutil.move(fetched, tmp)
                for stamp in tmp.glob("*.etag"):
                    stamp.unlink()
            tmp.rename(local)
            event("download", key=key, path=local)
            return Tokenized(local)
        build(store.fetch(uri, what), uri, what, tok, ds, local, workers, chunk_bytes)
        event("build", key=key, path=local)
        if shared and not store.exists(join(shared, "meta.json"), "tokenized data"):
            for name in FILES:  # meta.json last: a reader never sees a partial upload as complete
                store.put_file(local / name, join(shared, name))
            store.put_file(local / "meta.json", join(shared, "meta.json"))
        return Tokenized(local)
