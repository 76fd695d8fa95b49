#!/usr/bin/env python3
"""Our trainer beside the Hugging Face Trainer anchors, same shapes, same data, same device, one table (issue 12).

    hack/bench/trainer_speed.py gpu   # the issue's table on one GPU (make bench); sized for one <= 8 minute call
    hack/bench/trainer_speed.py cpu --repeat 2   # tiny shapes + a 152k vocabulary on 2 CPU threads (make bench-cpu)
    hack/bench/trainer_speed.py cpu --steps 4 --seq 64 --shapes tiny:lora:varlen --json out.json   # a smoke run

The anchors are `../shared/bench/hf_baseline.py` (plain Trainer, + torch_compile, + use_liger_kernel where
liger-kernel is installed), copied into the git-ignored `.bench/` so a GPU machine can be sent it (`carry`), and
`+flatten`: the anchor's run with transformers' DataCollatorWithFlattening (padding-free rows, the plain Trainer's
own answer to padding; run here, with the anchor's model, rows, arguments and clock). Without the anchor's copy the
anchors are skipped with a message and only our rows are printed.

On a lent GPU machine (no network, no ../shared) one device call runs the whole table: first `make bench-wheels`
here (our pinned transformers/peft/pydantic wheels and liger-kernel into .bench/wheels, the anchor into .bench/),
then, from the repository root, with `carry: [".bench"]` and `timeout_s: 480`:

    pip install -q --no-deps .bench/wheels/*.whl && python3 hack/bench/trainer_speed.py gpu --json $OUT/bench.json

The GPU preset (4 shapes, 12 runs, 15 steps at seq 2048 x batch 8, models built once per process) is sized for
that call; `--shapes`/`--steps` cut it further. Like for like: both sides train LoRA r=16/alpha 32 on all linear
layers with dropout 0 over a bf16 base, with fused AdamW; full fine-tuning differs in one declared way: the anchor
trains pure bf16 weights and AdamW states, ours keeps fp32 master weights under bf16 autocast (the safer default
for small learning rates; it costs memory and optimizer time, and the table says so rather than hiding it).

Our side runs `kubetune.trainer.loop.train` on what the anchor uses: the same random-initialised model (same
configs, seed 0), written with save_pretrained, and the same token rows (same generator, full length or `varlen`
lognormal lengths). Our data formats take text, not token ids, so the model gets a word-level tokenizer whose
vocabulary is one word per id ("t5" -> 5, "<eos>" -> its id): a row written as words reads back as exactly its ids
(checked). The `text` schema appends EOS, so each row is written without its last token and keeps its length.
The spec keeps our defaults except the shape (batchSize = microBatchSize = the anchor's batch, maxSeqLength = seq)
and the anchor's learning rate. Steps are timed as the anchor times them: the clock reads at the end of every step
(our `on_log` callback, every step logged, after a CUDA synchronize), the first min(10, steps/3) steps are
warm-up, and tokens/s = mean non-padding row length x batch / step time; MFU uses the anchor's FLOP count.
"""
import argparse
import gc
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
# Git-ignored: the anchor's copy (to carry), models, data, outputs, the log; --work moves it (children inherit it).
WORK = Path(os.environ.get("KUBETUNE_BENCH_DIR", ROOT / ".bench"))
ANCHOR = WORK / "hf_baseline.py"
ANCHOR_SOURCE = Path(os.environ.get("KUBETUNE_HF_BASELINE", ROOT.parent / "shared/bench/hf_baseline.py"))
PEAK = float(os.environ.get("PEAK_TFLOPS", "989")) * 1e12  # the anchor's: H100 SXM bf16 dense
CPU_THREADS = 2

# The table: shape -> the anchors it is compared with (liger only where installed, on a GPU; flatten: HF's
# DataCollatorWithFlattening, the plain Trainer's own padding-free batching). A shape may fix its own sequence length
# and batch (MODEL:MODE[:varlen]@SEQxBATCH); the others take --seq and --batch.
GPU_SHAPES = {"llama1b:lora": ("plain", "compile", "liger"), "llama1b:full": ("plain", "liger"),
              "qwen0.5b:lora": ("plain", "liger"), "llama1b:lora:varlen": ("plain", "flatten")}
CPU_SHAPES = {"tiny:lora": ("plain", "flatten"), "tiny:lora:varlen": ("plain", "flatten"),
              "tiny:full": ("plain", "flatten"), "tiny:full:varlen": ("plain", "flatten"),
              # Qwen2's vocabulary on a tiny body: the logits are most of the memory (chunked CE's case).
              "tiny152k:lora@2048x1": ("plain",)}


def shape_size(shape: str, seq: int, batch: int) -> tuple[str, int, int]:
    """(MODEL:MODE[:varlen], seq, batch) of a shape, its own size if it names one."""
    name, _, size = shape.partition("@")
    if size:
        s, b = size.split("x")
        return name, int(s), int(b)
    return name, seq, batch


# --- What the anchor builds (its own functions when its copy is here; these copies otherwise) ----------------

def anchor_module():
    if not ANCHOR.exists():
        return None
    spec = importlib.util.spec_from_file_location("hf_baseline", ANCHOR)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def model_for(name: str):
    mod = anchor_module()
    if mod:
        return mod.model_for(name)
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    big = dict(max_position_embeddings=4096, tie_word_embeddings=True)
    return {
        "tiny": lambda: LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                     num_attention_heads=4, num_key_value_heads=4, vocab_size=1024)),
        "tiny152k": lambda: LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                         num_attention_heads=4, num_key_value_heads=4,
                                                         vocab_size=151936)),
        "llama1b": lambda: LlamaForCausalLM(LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                                        num_attention_heads=32, num_key_value_heads=8,
                                                        vocab_size=128256, **big)),
        "qwen0.5b": lambda: Qwen2ForCausalLM(Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                                         num_attention_heads=14, num_key_value_heads=2,
                                                         vocab_size=151936, **big)),
    }[name]()


def rows_for(n: int, seq: int, vocab: int, varlen: bool):
    """The anchor's rows: (ids [n, seq], lengths [n]) from the same generator."""
    import torch

    mod = anchor_module()
    if mod:
        r = mod.Rows(n, seq, vocab, varlen)
        return r.x, r.len
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (n, seq), generator=g)
    lengths = ((torch.randn(n, generator=g) * 0.9 + 5.85).exp().clamp(16, seq).long()
               if varlen else torch.full((n,), seq))
    return x, lengths


def flops_per_token(n_total: int, emb: int, layers: int, hidden: int, seq: int, mode: str) -> float:
    """The anchor's count, so that MFU compares like with like."""
    return (6 if mode == "full" else 4) * n_total + 12 * layers * hidden * seq


# --- Our side: one run of kubetune's trainer ----------------------------------------------------------------

def words(vocab: int) -> list[str]:
    return ["<pad>", "<eos>"] + [f"t{i}" for i in range(2, vocab)]


def save_model(name: str, out: Path, cuda: bool) -> dict:
    """The anchor's random model (seed 0) and a word-level tokenizer, once per model; returns its FLOP facts."""
    facts_file = out / "bench-facts.json"
    if facts_file.exists():
        return json.loads(facts_file.read_text())
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(0)
    model = model_for(name).to(torch.bfloat16 if cuda else torch.float32)
    cfg = model.config
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words(cfg.vocab_size))}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    fast.save_pretrained(tmp)
    facts = {"n_total": sum(p.numel() for p in model.parameters()),
             "emb": model.get_input_embeddings().weight.numel(), "layers": cfg.num_hidden_layers,
             "hidden": cfg.hidden_size, "vocab": cfg.vocab_size}
    (tmp / "bench-facts.json").write_text(json.dumps(facts))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return facts


def write_rows(path: Path, model_dir: Path, ids, lengths) -> None:
    """Rows as jsonl text, one word per token, without the last token (the text schema appends EOS)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    names = words(len(tok))
    lines = []
    for row, n in zip(ids.tolist(), lengths.tolist()):
        lines.append(json.dumps({"text": " ".join(names[t] for t in row[: n - 1])}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    # The round trip the whole comparison rests on: text -> the same ids, EOS last.
    first = tok(json.loads(lines[0])["text"])["input_ids"] + [tok.eos_token_id]
    want = ids[0, : lengths[0]].tolist()
    if first[:-1] != want[:-1] or len(first) != len(want):
        raise SystemExit(f"tokenizer round trip failed: {first[:8]}... != {want[:8]}...")


def run_ours(name: str, mode: str, seq: int, bs: int, steps: int, varlen: bool) -> dict:
    import torch

    from kubetune.api import FineTuneJob
    from kubetune.trainer.loop import train
    from kubetune.trainer.settings import TrainerSettings

    cuda = torch.cuda.is_available()
    model_dir = WORK / "models" / f"{name}-{'bf16' if cuda else 'fp32'}"
    facts = save_model(name, model_dir, cuda)
    ids, lengths = rows_for(bs * steps, seq, facts["vocab"], varlen)
    tag = f"{name}-{mode}-{seq}-{bs}-{steps}{'-varlen' if varlen else ''}"
    data = WORK / "data" / f"{name}-{seq}-{bs * steps}{'-varlen' if varlen else ''}.jsonl"
    if not data.exists():
        write_rows(data, model_dir, ids, lengths)
    out = WORK / "out" / tag
    shutil.rmtree(out, ignore_errors=True)
    job = FineTuneJob.model_validate({
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bench"},
        "spec": {"baseModel": {"uri": f"file://{model_dir}"},
                 "dataset": {"train": f"file://{data}", "schema": "text", "maxSeqLength": seq},
                 "method": {"type": mode},
                 "hyperparameters": {"maxSteps": steps, "batchSize": bs, "microBatchSize": bs, "learningRate": 1e-4},
                 "output": {"uri": f"file://{out}/"},
                 "resources": {"gpusPerNode": 1 if cuda else 0}}})
    clock, cpu_clock, reported = [], [], []
    skip = min(10, steps // 3)
    prof = profiler(cuda, skip) if os.environ.get("KUBETUNE_BENCH_PROFILE") else None

    def on_log(row: dict) -> None:
        if row["kind"] == "train":
            if cuda:
                torch.cuda.synchronize()
            clock.append(time.perf_counter())
            cpu_clock.append(time.process_time())
            reported.append(row.get("tokens_per_s"))
            if prof:
                prof.step()

    settings = TrainerSettings(cache_dir=WORK / "cache", metrics_port=0, termination_log=WORK / "term",
                               log_every_steps=1, threads=None if cuda else CPU_THREADS)
    if cuda:
        gc.collect()  # the previous shape's model, optimizer and activations
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if prof:
        prof.start()
    train(job, "bench", settings, on_log=on_log)
    wall = time.perf_counter() - started
    if prof:
        prof.stop()
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        summary = prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60)
        (WORK / f"profile-{tag}.txt").write_text(summary)
        print(f"PROFILE {tag} (3 steps after warm-up, by {sort}):\n{summary}", flush=True)
    dt = (clock[-1] - clock[skip - 1]) / (len(clock) - skip)
    tps = lengths.float().mean().item() * bs / dt
    cpu_tps = lengths.float().mean().item() * bs / ((cpu_clock[-1] - cpu_clock[skip - 1]) / (len(clock) - skip))
    per_tok = flops_per_token(facts["n_total"], facts["emb"], facts["layers"], facts["hidden"], seq, mode)
    shutil.rmtree(out, ignore_errors=True)  # a full model's artifacts are gigabytes
    return dict(model=name, mode=mode, seq=seq, bs=bs, varlen=varlen, run="ours", tokens_per_s=round(tps),
                step_s=round(dt, 4), mfu=round(tps * per_tok / PEAK, 3), reported_tokens_per_s=reported[-1],
                cpu_tokens_per_s=None if cuda else round(cpu_tps),
                wall_s=round(wall, 1), device=torch.cuda.get_device_name() if cuda else None,
                peak_mem_gb=round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None)


def profiler(cuda: bool, skip: int):
    """torch.profiler over three steps after the warm-up (stepped at each step's end)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    return profile(activities=acts, schedule=schedule(wait=max(skip - 1, 0), warmup=1, active=3, repeat=1))


def ours_main(specs: list[str]) -> None:
    """Child process: our runs, one RESULT line each (the anchor's protocol); one failure does not stop the rest."""
    for spec in specs:
        name, mode, seq, bs, steps, *rest = spec.split(":")
        try:
            res = run_ours(name, mode, int(seq), int(bs), int(steps), "varlen" in rest)
            print("RESULT", json.dumps(res), flush=True)
        except Exception as exc:  # an OOM in one shape should not lose the others
            print("FAILED", spec, repr(exc)[:300], flush=True)


def cpu_clock(mod):
    """The anchor's step clock, also reading this process's CPU time: on a CPU shared with other work, tokens per
    CPU-second compare two runs more steadily than wall time (DataLoader workers, separate processes, not counted)."""
    class Both(mod.Clock):
        def __init__(self):
            super().__init__()
            self.cpu = []

        def on_step_end(self, *args, **kw):
            super().on_step_end(*args, **kw)
            self.cpu.append(time.process_time())
    return Both


def cpu_rate(clock, tokens_per_step: float, steps: int) -> int:
    skip = min(10, steps // 3)
    return round(tokens_per_step / ((clock.cpu[-1] - clock.cpu[skip - 1]) / (len(clock.cpu) - skip)))


def anchor_main(specs: list[str]) -> None:
    """Child process: the anchor's own runs (hf_baseline.run), with its clock also reading CPU time (CPU only)."""
    import torch

    mod = anchor_module()
    clocks = []
    base = cpu_clock(mod)

    class Recorded(base):
        def __init__(self):
            super().__init__()
            clocks.append(self)
    mod.Clock = Recorded
    mod.print = lambda *a, **k: None  # its RESULT line: ours below carries the CPU rate too
    for spec in specs:
        name, mode, seq, bs, steps, *rest = spec.split(":")
        try:
            res = mod.run(name, mode, int(seq), int(bs), int(steps), "compile" in rest, "gc" in rest, "liger" in rest,
                          "varlen" in rest)
            if not torch.cuda.is_available():
                res["cpu_tokens_per_s"] = cpu_rate(clocks[-1], res["tokens_per_s"] * res["step_s"], int(steps))
            print("RESULT", json.dumps(res), flush=True)
        except Exception as exc:
            print("FAILED", spec, repr(exc)[:300], flush=True)


def run_flatten(name: str, mode: str, seq: int, bs: int, steps: int, varlen: bool) -> dict:
    """The anchor's run (its model, rows, arguments and clock) with transformers' DataCollatorWithFlattening in
    place of its padding collator: each batch one row, position ids restarting per example, no padding."""
    import torch
    from transformers import DataCollatorWithFlattening, Trainer, TrainingArguments

    mod = anchor_module()
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    model = mod.model_for(name).to(torch.bfloat16 if cuda else torch.float32)
    model.config._attn_implementation = "sdpa"
    if mode == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    rows = mod.Rows(bs * steps, seq, model.get_output_embeddings().weight.shape[0], varlen)

    class Lists(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            r = rows[i]
            return {"input_ids": r["input_ids"].tolist(), "labels": r["labels"].tolist()}

    clock = cpu_clock(mod)()
    args = TrainingArguments(output_dir=str(WORK / "hf-flatten"), per_device_train_batch_size=bs, max_steps=steps,
                             bf16=cuda, logging_steps=1000, report_to=[], save_strategy="no", learning_rate=1e-4,
                             dataloader_num_workers=2, disable_tqdm=True, optim="adamw_torch_fused")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    Trainer(model=model, args=args, train_dataset=Lists(), callbacks=[clock],
            data_collator=DataCollatorWithFlattening()).train()
    skip = min(10, steps // 3)
    dt = (clock.t[-1] - clock.t[skip - 1]) / (len(clock.t) - skip)
    tokens = rows.len.float().mean().item() * bs
    return dict(model=name, mode=mode, seq=seq, bs=bs, compile=False, liger=False, flatten=True, varlen=varlen,
                tokens_per_s=round(tokens / dt), step_s=round(dt, 4), mfu=None,
                cpu_tokens_per_s=None if cuda else cpu_rate(clock, tokens, steps),
                peak_mem_gb=round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None)


def flatten_main(specs: list[str]) -> None:
    for spec in specs:
        name, mode, seq, bs, steps, *rest = spec.split(":")
        try:
            print("RESULT", json.dumps(run_flatten(name, mode, int(seq), int(bs), int(steps), "varlen" in rest)),
                  flush=True)
        except Exception as exc:
            print("FAILED", spec, repr(exc)[:300], flush=True)


# --- The sequence and the table ------------------------------------------------------------------------------

def child(args: list[str], env: dict, log) -> list[dict]:
    """Runs a child python, echoing its output to `log`; its RESULT rows, each with the child's peak resident
    memory (peak_rss_gb: meaningful per run where the child ran one)."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=ROOT)
    results = []
    for line in proc.stdout:
        log.write(line)
        log.flush()  # a run cut off at its time limit keeps what it did
        if line.startswith("RESULT "):
            results.append(json.loads(line[len("RESULT "):]))
        elif line.startswith("FAILED "):
            print(line.rstrip(), file=sys.stderr, flush=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in results:
        r["peak_rss_gb"] = round(usage.ru_maxrss / 2**20, 2)  # KiB on Linux
    return results


def anchor_available() -> bool:
    if ANCHOR_SOURCE.exists():
        WORK.mkdir(exist_ok=True)
        if not ANCHOR.exists() or ANCHOR.read_bytes() != ANCHOR_SOURCE.read_bytes():
            shutil.copyfile(ANCHOR_SOURCE, ANCHOR)
    if not ANCHOR.exists():
        print(f"anchors skipped: no {ANCHOR_SOURCE} and no copy at {ANCHOR} (the plain "
              "Trainer's script from ../shared/bench; copy it there, or set KUBETUNE_HF_BASELINE)", file=sys.stderr)
        return False
    return True


def best(results: list[dict]) -> list[dict]:
    """The fastest of repeated runs of the same thing (the others lost time to whatever else ran)."""
    out = {}
    for r in results:
        k = (key(r), run_name(r))
        if k not in out or r["tokens_per_s"] > out[k]["tokens_per_s"]:
            out[k] = r
    return list(out.values())


def key(r: dict) -> str:
    return f"{r['model']}:{r['mode']}{':varlen' if r.get('varlen') else ''}"


def shape_key(shape: str) -> str:
    return shape.partition("@")[0]


def anchor_name(r: dict) -> str:
    return ("+liger" if r.get("liger") else "+compile" if r.get("compile") else "+flatten" if r.get("flatten")
            else "plain Trainer")


def run_name(r: dict) -> str:
    return "ours" if r.get("run") == "ours" else anchor_name(r)


def table(ours: list[dict], anchors: list[dict], shapes: dict, every: list[dict] | None = None) -> str:
    """The best run of each (shape, run); `every`: all runs (with their `repeat`), for the paired per-repeat
    ratios of ours to the plain Trainer (each pair ran back to back)."""
    def cell(v, fmt="{:,}"):
        return "-" if v is None else fmt.format(v)

    present = {anchor_name(r) for r in anchors}
    names = [n for n in ("plain Trainer", "+flatten", "+compile", "+liger") if n in present] or ["plain Trainer"]
    head = ("| shape / mode | run | tokens/s | MFU | peak GiB | peak RSS GiB | "
            + " | ".join(f"ours ÷ {n}" for n in names) + " | ours ÷ plain, each repeat | per CPU-second: ours ÷ plain | RSS ours ÷ plain |")
    lines = [head, "|" + "---|" * (9 + len(names))]
    for shape in shapes:
        k = shape_key(shape)
        mine = next((r for r in ours if key(r) == k), None)
        theirs = {anchor_name(r): r for r in anchors if key(r) == k}
        plain = theirs.get("plain Trainer")
        paired = ""
        if every and mine:
            runs = {(r.get("repeat"), run_name(r)): r for r in every if key(r) == k}
            reps = sorted({rep for rep, _ in runs})
            paired = " / ".join(f"{runs[(i, 'ours')]['tokens_per_s'] / runs[(i, 'plain Trainer')]['tokens_per_s']:.2f}×"
                                for i in reps if (i, "ours") in runs and (i, "plain Trainer") in runs)
        for run, r in ([("ours", mine)] if mine else [("ours (failed)", None)]) + sorted(theirs.items()):
            ours_row = run == "ours"
            ratios = [cell(mine["tokens_per_s"] / theirs[n]["tokens_per_s"], "{:.2f}×")
                      if ours_row and n in theirs else "" for n in names]
            cpu = cell(mine["cpu_tokens_per_s"] / plain["cpu_tokens_per_s"], "{:.2f}×") \
                if ours_row and plain and mine.get("cpu_tokens_per_s") and plain.get("cpu_tokens_per_s") else ""
            rss = cell(mine.get("peak_rss_gb") / plain["peak_rss_gb"], "{:.2f}×") \
                if ours_row and plain and mine.get("peak_rss_gb") and plain.get("peak_rss_gb") else ""
            lines.append(f"| {shape} | {run} | {cell(r and r['tokens_per_s'])} | {cell(r and r['mfu'], '{:.3f}')} "
                         f"| {cell(r and r['peak_mem_gb'], '{:.1f}')} | {cell(r and r.get('peak_rss_gb'), '{:.2f}')} | "
                         + " | ".join(ratios) + f" | {paired if ours_row else ''} | {cpu} | {rss} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("device", choices=["gpu", "cpu", "ours", "flatten", "anchor"])
    p.add_argument("specs", nargs="*", help=argparse.SUPPRESS)  # children: MODEL:MODE:SEQ:BS:STEPS[:varlen]
    p.add_argument("--shapes", nargs="+", help="MODEL:MODE[:varlen][@SEQxBATCH] (default: the device's preset)")
    p.add_argument("--steps", type=int, help="optimizer steps per run (gpu 15, cpu 30); the first min(10, steps/3) "
                   "are warm-up")
    p.add_argument("--seq", type=int, help="sequence length (gpu 2048, cpu 512)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--no-anchors", action="store_true")
    p.add_argument("--repeat", type=int, default=1, help="CPU: run each shape this many times (ours and its anchors "
                   "back to back each time); the table shows the best and each repeat's paired ratio")
    p.add_argument("--profile", action="store_true", help="torch.profiler of 3 of our steps per shape, into the log "
                   "and WORK/profile-*.txt (our timings then include the profiler's overhead)")
    p.add_argument("--json", type=Path, help="also write every result here")
    p.add_argument("--work", type=Path, help="models, data and the anchor's copy (default .bench/)")
    a = p.parse_args()
    if a.steps is not None and a.steps < 3:
        p.error("--steps must be at least 3 (warm-up, then at least two timed steps)")
    if a.work:
        global WORK, ANCHOR
        WORK, ANCHOR = a.work.resolve(), a.work.resolve() / "hf_baseline.py"
        os.environ["KUBETUNE_BENCH_DIR"] = str(WORK)
    if a.device == "ours":
        ours_main(a.specs)
        return 0
    if a.device == "flatten":
        flatten_main(a.specs)
        return 0
    if a.device == "anchor":
        anchor_main(a.specs)
        return 0
    gpu = a.device == "gpu"
    steps, seq = a.steps or (15 if gpu else 30), a.seq or (2048 if gpu else 512)
    preset = GPU_SHAPES if gpu else CPU_SHAPES
    shapes = {s: preset.get(s, ("plain",)) for s in a.shapes} if a.shapes else preset
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if gpu:
        import torch

        if not torch.cuda.device_count():  # (no CUDA context here: the children get the whole GPU)
            print("make bench needs a CUDA GPU; make bench-cpu runs the tiny shape here", file=sys.stderr)
            return 2
        device = "GPU"  # named by our child's results below
    else:
        # Passive OpenMP waits: a thread waiting for work sleeps instead of spinning, so a process's CPU-seconds are
        # its work, not its wait for cores other processes hold: tokens per CPU-second then compare runs on a busy
        # machine (spinning counted the waits as CPU time, more the busier the machine).
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(CPU_THREADS), MKL_NUM_THREADS=str(CPU_THREADS),
                   OMP_WAIT_POLICY=env.get("OMP_WAIT_POLICY", "PASSIVE"))
        device = f"CPU, {CPU_THREADS} threads, {env['OMP_WAIT_POLICY'].lower()} OpenMP waits"

    def spec_of(shape: str) -> str:
        name, sq, bs = shape_size(shape, seq, a.batch)
        model, mode, *rest = name.split(":")
        return f"{model}:{mode}:{sq}:{bs}:{steps}" + (":varlen" if "varlen" in rest else "")

    WORK.mkdir(exist_ok=True)
    log_path = WORK / f"trainer_speed-{a.device}.log"
    env["KUBETUNE_BENCH_DIR"] = str(WORK)
    if a.profile:
        env["KUBETUNE_BENCH_PROFILE"] = "1"
    use_anchors = not a.no_anchors and anchor_available()
    liger = gpu and importlib.util.find_spec("liger_kernel") is not None
    if use_anchors and gpu and not liger:
        print("+liger anchors skipped: liger-kernel is not installed (pip install -e '.[bench]')", file=sys.stderr)
    # A GPU is ours alone: three processes (ours, the anchor's runs, the flattening runs) spare the start-ups. A
    # shared CPU is not: each shape runs ours and then each anchor in a process of its own (so its peak RSS is its
    # own), back to back, --repeat times.
    groups = [list(shapes)] if gpu else [[s] for s in shapes]
    every = []
    with open(log_path, "w") as log:
        for rep in range(1 if gpu else a.repeat):
            for group in groups:
                batches = [[__file__, "ours", *(spec_of(s) for s in group)]]
                runs = [spec_of(s) + (f":{kind}" if kind != "plain" else "")
                        for s in group for kind in shapes[s] if kind not in ("flatten", "liger") or (kind == "liger" and liger)]
                flat = [spec_of(s) for s in group if "flatten" in shapes[s]]
                if use_anchors:
                    batches += [[str(ANCHOR), *runs]] if gpu else [[__file__, "anchor", r] for r in runs]
                    batches += ([[__file__, "flatten", *flat]] if gpu else [[__file__, "flatten", f] for f in flat]) \
                        if flat else []
                for args in batches:
                    for r in child(args, env, log):
                        r["repeat"] = rep
                        every.append(r)
    ours = best([r for r in every if r.get("run") == "ours"])
    anchors = best([r for r in every if r.get("run") != "ours"])
    device = next((r["device"] for r in ours if r.get("device")), device)
    if not gpu:
        for r in ours + anchors + every:
            r["mfu"] = None  # a GPU's peak: meaningless on the CPU
    text = (f"{device}; seq {seq}, batch {a.batch} (unless the shape says @SEQxBATCH), {steps} steps "
            f"({min(10, steps // 3)} warm-up), best of {1 if gpu else a.repeat}; non-padding tokens/s; MFU at "
            f"{PEAK / 1e12:g} TFLOP/s; peak RSS per process (CPU); log {log_path}\n\n"
            + table(ours, anchors, shapes, every))
    print(text, flush=True)
    if a.json:
        a.json.write_text(json.dumps({"device": device, "ours": ours, "anchors": anchors, "every": every,
                                      "table": text}, indent=1))
    return 0 if len(ours) == len(shapes) else 1  # a failed run of ours fails the bench


if __name__ == "__main__":
    sys.exit(main())
