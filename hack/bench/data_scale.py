#!/usr/bin/env python3
"""Data at scale (issue 14, item 5): synthetic chat rows tokenized with the SmolLM2 tokenizer, the list path of
data.py against the memory-mapped path of tokenized.py / rows.py.

For each size it prints rows, tokens, seconds until the data is ready (cold: tokenized here; warm: from the
cache), the peak RSS of the tokenizing process and of its workers, the peak RSS a reader (one rank) adds on top of
its imports and tokenizer, and the milliseconds per step to pick a step's rows (old: reshuffle every row each
step; new: the epoch's permutation once, then O(batch)) and to read them. Every measurement runs in a fresh
process, so peaks do not leak between them. CPU seconds of the workers are printed so the time on more cores can
be estimated: ready ≈ max(parent CPU, workers' CPU / cores) + 1 s (printed as an estimate, never as a measurement). A
worker's memory is its private (unshared) memory: forked workers share the parent's pages.

Usage: .venv/bin/python hack/bench/data_scale.py [--rows 20000 100000] [--workers N] [--old-max 100000]
       [--batch 32] [--steps 300] [--dir /tmp/kubetune-data-bench]
"""
import argparse
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

WORDS = ("time person year way day thing man world life hand part child eye woman place work week case point "
         "government company number group problem fact be have do say get make go know take see come think look "
         "want give use find tell ask seem feel try leave call good new first last long great little own other old "
         "right big high different small large next early young important few public bad same able to of in for "
         "on with at by from up about into over after beneath under above the and a that I it not he as you this "
         "but his they her she or an will my one all would there their model train data token cluster node").split()


def chat_row(rng: random.Random) -> dict:
    def say(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    return {"messages": [{"role": "user", "content": say(15, 60)}, {"role": "assistant", "content": say(50, 180)}]}


def write_rows(path: Path, n: int) -> None:
    if path.exists():
        return
    rng = random.Random(n)
    tmp = path.with_suffix(".part")
    with open(tmp, "w") as fh:
        for _ in range(n):
            fh.write(json.dumps(chat_row(rng)) + "\n")
    tmp.rename(path)


def peak_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def cpu_s(who=resource.RUSAGE_SELF) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class ChildMemory(threading.Thread):
    """The largest private memory (USS) any child process reached, sampled every second: forked workers share the
    parent's pages, so their RSS says little about what they add."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_mb, self.running, self.cpu_s = 0.0, True, 0.0

    def run(self) -> None:
        while self.running:
            self.cpu_s = time.thread_time()  # reading smaps costs this process CPU: not the data's
            for task in Path("/proc/self/task").iterdir():
                for pid in (task / "children").read_text().split():
                    try:
                        fields = dict(line.split(":", 1) for line in
                                      Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
                    except (OSError, ValueError):
                        continue
                    private = sum(int(fields.get(k, "0 kB").split()[0]) for k in ("Private_Clean", "Private_Dirty"))
                    self.peak_mb = max(self.peak_mb, private / 1024)
            time.sleep(1.0)


# --- One measurement per process -----------------------------------------------------------------------------

def measure(mode: str, data: Path, cache: Path, workers: int, batch: int, steps: int) -> dict:
    from transformers import AutoTokenizer

    from hack.assets import smollm2_dir
    from kubetune.api import FineTuneJob
    from kubetune.api.spec import Storage
    from kubetune.trainer import data as d
    from kubetune.trainer import rows
    from kubetune.trainer.storage import Store

    tok = AutoTokenizer.from_pretrained(smollm2_dir())
    uri = f"file://{data}"
    job = FineTuneJob.model_validate({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                                      "metadata": {"name": "bench"}, "spec": {
                                          "baseModel": {"uri": "file:///unused"}, "output": {"uri": "file:///unused"},
                                          "hyperparameters": {"epochs": 1, "seed": 1, "batchSize": batch},
                                          "dataset": {"train": uri, "maxSeqLength": 1024, "validationSplit": 0.01}}})
    store, stats = Store(Storage(), cache), d.Stats()
    children = ChildMemory()
    children.start()
    base_rss, base_cpu, started = rss_mb(), cpu_s(), time.monotonic()
    if mode == "old":
        train = d.encode(d.read_records(data, "auto", uri), "chat", tok, job.spec.dataset, stats)
        train, val = d.split(train, 0.01, 1)

        def pick(step):
            out, perms = [], {}
            for g in range(step * batch, (step + 1) * batch):
                epoch, pos = divmod(g, len(train))
                if epoch not in perms:
                    perm = list(range(len(train)))
                    random.Random(1 * 100003 + epoch).shuffle(perm)
                    perms[epoch] = perm
                out.append(perms[epoch][pos])
            return out
    else:
        events = []
        train, val, _ = rows.load_data(job, store, tok, stats, cache_dir=cache, workers=workers,
                                       on_event=lambda kind, **_: events.append(kind))

        def pick(step):
            return rows.rows_of_step(step, batch, len(train), 1)
    ready = time.monotonic() - started
    children.running = False
    parent_cpu, children_cpu = cpu_s() - base_cpu - children.cpu_s, cpu_s(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    first = pick(0)
    first_ms = (time.monotonic() - t) * 1000
    t = time.monotonic()
    for s in range(1, steps):
        pick(s)
    pick_ms = (time.monotonic() - t) * 1000 / max(steps - 1, 1)
    t = time.monotonic()
    for s in range(steps):
        batch_rows = [train[i] for i in pick(s)]
    read_ms = (time.monotonic() - t) * 1000 / steps
    assert len(batch_rows) == batch and first
    tokens = sum(len(train[i]["input_ids"]) for i in range(0, len(train), max(1, len(train) // 2000)))
    return {"mode": mode, "events": events if mode != "old" else ["encode"], "examples": len(train) + len(val),
            "tokens_est": int(tokens / len(range(0, len(train), max(1, len(train) // 2000))) * (len(train) + len(val))),
            "ready_s": round(ready, 2), "parent_cpu_s": round(parent_cpu, 1), "workers_cpu_s": round(children_cpu, 1),
            "peak_mb": round(peak_mb()), "workers_peak_mb": round(children.peak_mb),
            "base_mb": round(base_rss), "first_pick_ms": round(first_ms, 1), "pick_ms": round(pick_ms, 3),
            "pick_read_ms": round(read_ms, 3)}


def run(mode: str, data: Path, cache: Path, args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", mode, str(data), str(cache), str(args.workers),
                          str(args.batch), str(args.steps)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[20000, 100000])
    p.add_argument("--workers", type=int, default=0, help="tokenizing processes (0: every CPU available)")
    p.add_argument("--old-max", type=int, default=20000, help="measure the list path up to this many rows")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--dir", type=Path, default=Path("/tmp/kubetune-data-bench"))
    p.add_argument("--measure", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        mode, data, cache, workers, batch, steps = args.measure
        print(json.dumps(measure(mode, Path(data), Path(cache), int(workers) or None, int(batch), int(steps))))
        return
    from kubetune.trainer.tokenized import cpu_count

    cores = args.workers or cpu_count()
    print(f"{cores} tokenizing processes, batch {args.batch}, {args.steps} steps timed")
    head = (f"{'rows':>8} {'path':<10} {'examples':>9} {'tokens':>11} {'ready s':>8} {'peak MB':>8} "
            f"{'worker USS':>10} {'reader +MB':>10} {'pick ms':>8} {'1st pick':>8} {'pick+read':>9} {'16 cores s':>10}")
    print(head)
    for n in args.rows:
        data = args.dir / f"chat-{n}.jsonl"
        args.dir.mkdir(parents=True, exist_ok=True)
        write_rows(data, n)
        cache = args.dir / f"cache-{n}-{time.time_ns()}"
        results = []
        if n <= args.old_max:
            results.append(("list", run("old", data, cache, args)))
        results.append(("mmap cold", run("new", data, cache, args)))
        results.append(("mmap warm", run("new", data, cache, args)))
        for label, r in results:
            est = "" if label != "mmap cold" else \
                f"~{max(r['parent_cpu_s'], r['workers_cpu_s'] / 16) + 1:.0f}"
            print(f"{n:>8} {label:<10} {r['examples']:>9} {r['tokens_est']:>11} {r['ready_s']:>8} {r['peak_mb']:>8} "
                  f"{r['workers_peak_mb']:>10} {r['peak_mb'] - r['base_mb']:>10} {r['pick_ms']:>8} "
                  f"{r['first_pick_ms']:>8} {r['pick_read_ms']:>9} {est:>10}", flush=True)
            print("   ", json.dumps(r), file=sys.stderr)


if __name__ == "__main__":
    main()
