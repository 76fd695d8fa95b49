"""The fine-tuning recipe, in the order it runs: resolve inputs → model and method → (baseline evaluation) →
train (log, evaluate, keep the best, checkpoint, stop early) → test → ship artifacts, summary.json last.

One loop serves every task: what differs (batches, the loss, scoring) comes from `CausalLM` below or from
`classify.Classification`, each with the same few functions.

Data order is a pure function of (seed, step): the rows of optimizer step s are fixed, so a resumed run
neither replays nor skips data. The loss of a step is the sum of token losses over all its micro-batches (and
ranks) divided by the step's target-token count, so accumulation equals one big batch.
"""
import hashlib
import json
import math
import os
import random
import signal
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kubetune.api import FineTuneJob, contract
from kubetune.api.spec import MAXIMISED_METRICS, Lora
from kubetune.api.status import Reason
from kubetune.trainer import classify, flops
from kubetune.trainer import data as d
from kubetune.trainer import evaluation as ev
from kubetune.trainer.checkpoint import Checkpointer
from kubetune.trainer.errors import BadInput, OutOfMemory, Preempted
from kubetune.trainer.metrics import Telemetry
from kubetune.trainer.settings import TrainerSettings
from kubetune.trainer.storage import Store, join
from kubetune.trainer.unfreeze import GradualUnfreezing, gradual, transformer_blocks


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class EarlyStop:
    metric: str
    maximise: bool
    patience: int | None
    min_delta: float
    best_value: float | None = None
    best_step: int = 0
    bad_evals: int = 0
    best_weights: dict | None = field(default=None, repr=False)

    def update(self, step: int, value: float, weights) -> bool:
        """Records an evaluation; True when it is the best so far."""
        better = self.best_value is None or (
            value > self.best_value + self.min_delta if self.maximise else value < self.best_value - self.min_delta)
        if better:
            self.best_value, self.best_step, self.bad_evals = value, step, 0
            self.best_weights = weights()
        else:
            self.bad_evals += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_evals >= self.patience


def spec_hash(job: FineTuneJob) -> str:
    return hashlib.sha256(json.dumps(job.spec.to_wire(), sort_keys=True).encode()).hexdigest()[:16]


# --- Setup ---------------------------------------------------------------------------------------------------

def init_distributed() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    import torch.distributed as dist

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def choose_device(job: FineTuneJob, dist: Dist) -> tuple[torch.device, torch.dtype | None]:
    """The device, and the autocast dtype (None: plain fp32)."""
    cuda = torch.cuda.is_available() and job.spec.resources.gpus_per_node > 0
    device = torch.device("cuda", dist.local_rank) if cuda else torch.device("cpu")
    precision = job.spec.hyperparameters.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not cuda:
        raise BadInput("hyperparameters.precision fp16 needs a GPU; use bf16 or fp32 on CPUs")
    return device, {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def load_model(job: FineTuneJob, store: Store, device: torch.device, amp: torch.dtype | None,
               labels: classify.Labels | None = None):
    """The tokenizer and model; with `labels`, the model gets a new classification (or regression) head."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    spec = job.spec
    source = spec.base_model.uri
    if source.startswith("hf://"):
        path, kw = source.removeprefix("hf://"), {"revision": spec.base_model.revision}
    else:
        path, kw = str(store.fetch(source, "baseModel.uri")), {}
        if not (Path(path) / "config.json").is_file():  # say so, rather than transformers' tokenizer puzzles
            found = sorted(p.name for p in Path(path).iterdir())[:10] if Path(path).is_dir() else [Path(path).name]
            raise BadInput(f"baseModel.uri {source}: no config.json there (found: {', '.join(found) or 'nothing'}); "
                           "expected a model directory as save_pretrained writes it")
    qlora = spec.method.type == "qlora"
    if qlora:
        if device.type != "cuda":
            raise BadInput("method.type qlora needs a CUDA GPU (4-bit kernels); use lora on CPUs")
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=amp or torch.bfloat16)
    # Frozen base weights may live in the compute dtype; trained full weights stay fp32 (master copy).
    load_dtype = amp if (amp is not None and spec.method.type != "full") else torch.float32
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.base_model.trust_remote_code, **kw)
        auto, head = (AutoModelForSequenceClassification, labels.model_kwargs()) if labels else (AutoModelForCausalLM, {})
        model = auto.from_pretrained(
            path, dtype=load_dtype, trust_remote_code=spec.base_model.trust_remote_code, **head, **kw)
    except (OSError, ValueError) as exc:
        raise BadInput(f"baseModel.uri {source}: cannot load a {spec.task} model and tokenizer from it: {exc}") \
            from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if labels and model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id  # decoder heads pool the last token that is not padding
    if not qlora:
        model.to(device)
    return tok, model


def apply_method(job: FineTuneJob, model):
    """LoRA/QLoRA adapters via peft, or layer freezing for full fine-tuning."""
    method = job.spec.method
    if method.type in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        lora = method.lora or Lora()
        if method.type == "qlora":
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=job.spec.hyperparameters.gradient_checkpointing)
        targets = "all-linear" if lora.target_modules == ["all-linear"] else lora.target_modules
        seq_cls = job.spec.task == "sequence-classification"
        # A new head starts random: it trains in full and is saved with the adapter.
        keep = (lora.modules_to_save or []) + (classify.head_modules(model) if seq_cls else [])
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                            bias=lora.bias, use_rslora=lora.use_rslora, use_dora=lora.use_dora,
                            modules_to_save=keep or None, task_type="SEQ_CLS" if seq_cls else "CAUSAL_LM")
        try:
            return get_peft_model(model, config)
        except ValueError as exc:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
            raise BadInput(f"method.lora.targetModules {lora.target_modules}: {exc} The model's linear layers are: "
                           f"{', '.join(linear)} (or use all-linear)") from exc
    freeze = method.freeze
    if freeze is not None:
        if freeze.embeddings:
            model.get_input_embeddings().weight.requires_grad_(False)
        if freeze.trainable_top_layers is not None and not gradual(freeze):  # else GradualUnfreezing does it
            blocks = transformer_blocks(model)
            for block in blocks[: max(len(blocks) - freeze.trainable_top_layers, 0)]:
                block.requires_grad_(False)
    return model


def trainable_state(model, names: set[str] | None = None) -> dict:
    """The weights training changes; `names` also counts blocks that gradual unfreezing has yet to thaw."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.named_parameters()
            if (k in names if names is not None else v.requires_grad)}


def load_trainable(model, state: dict) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def optimizer_for(job: FineTuneJob, model, total_steps: int):
    hp = job.spec.hyperparameters
    lr = hp.learning_rate or (2e-5 if job.spec.method.type == "full" else 2e-4)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]  # biases and norms
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    warmup = int(hp.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return {"cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1 - progress,
                "constant": 1.0}[hp.scheduler]

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


# --- Data ----------------------------------------------------------------------------------------------------

def load_data(job: FineTuneJob, store: Store, tok, stats: d.Stats,
              labels: classify.Labels | None = None) -> tuple[list, list, list]:
    ds = job.spec.dataset

    def encoded(uri: str, what: str) -> list:
        records = d.read_records(store.fetch(uri, what), ds.format, uri)
        if not records:
            raise BadInput(f"{what} {uri}: no records")
        too_long, no_target = stats.dropped_too_long, stats.dropped_no_target
        if labels is not None:
            examples = classify.encode(records, tok, ds, labels, stats)
        else:
            examples = d.encode(records, d.detect_schema(records, ds), tok, ds, stats)
        if not examples:  # counts of this file only: the stats add up every split
            raise BadInput(f"{what} {uri}: no usable examples after filtering ({stats.dropped_too_long - too_long} "
                           f"longer than maxSeqLength {ds.max_seq_length} with longSequences drop, "
                           f"{stats.dropped_no_target - no_target} without target tokens)")
        return examples

    train = encoded(ds.train, "dataset.train")
    if ds.max_samples:
        random.Random(job.spec.hyperparameters.seed).shuffle(train)
        train = train[: ds.max_samples]
    val = encoded(ds.validation, "dataset.validation") if ds.validation else []
    if ds.validation_split > 0:
        train, val = d.split(train, ds.validation_split, job.spec.hyperparameters.seed)
    test = encoded(ds.test, "dataset.test") if ds.test else []
    if not train:
        raise BadInput(f"dataset.validationSplit {ds.validation_split}: leaves no training examples of "
                       f"{len(val)}")
    if ds.packing:
        train = d.pack(train, ds.max_seq_length)
    return train, val, test


def rows_of_step(step: int, batch: int, n: int, seed: int) -> list[int]:
    """Indices of the training rows optimizer step `step` consumes (epochs reshuffle with seed + epoch)."""
    out, perms = [], {}
    for g in range(step * batch, (step + 1) * batch):
        epoch, pos = divmod(g, n)
        if epoch not in perms:
            perm = list(range(n))
            random.Random(seed * 100003 + epoch).shuffle(perm)
            perms[epoch] = perm
        out.append(perms[epoch][pos])
    return out


# --- Loss and evaluation -------------------------------------------------------------------------------------

def forward_logits(model, batch: dict, device, amp) -> torch.Tensor:
    # No KV cache: with one, transformers skips deriving per-example attention from packed position ids.
    with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
        return model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                     use_cache=False).logits


def token_losses(model, batch: dict, device, amp) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row summed loss, target-token count and correct next-token predictions."""
    labels = batch["labels"][:, 1:].to(device)
    logits = forward_logits(model, batch, device, amp)[:, :-1].float()
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=d.IGNORE,
                           reduction="none").view(labels.shape)
    mask = labels != d.IGNORE
    correct = ((logits.argmax(-1) == labels) & mask).sum(1)
    return loss.sum(1), mask.sum(1), correct


class CausalLM:
    """What the loop calls per task, for causal LMs (classify.Classification is the classifier's)."""

    def __init__(self, tok=None):
        self.tok = tok

    collate = staticmethod(d.collate)

    @staticmethod
    def targets(batch: dict) -> float:
        """The loss normaliser: target tokens (labels are shifted by one against the inputs)."""
        return float((batch["labels"][:, 1:] != d.IGNORE).sum())

    @staticmethod
    def losses(model, batch: dict, device, amp) -> torch.Tensor:
        return token_losses(model, batch, device, amp)[0]

    @staticmethod
    @torch.no_grad()
    def score(model, examples: list, micro: int, pad_id: int, device, amp) -> ev.Scored:
        model.eval()
        order = d.length_order(examples)
        sums, counts, correct = [], [], []
        for i in range(0, len(examples), micro):
            s, n, c = token_losses(model, d.collate([examples[j] for j in order[i: i + micro]], pad_id), device, amp)
            sums += s.tolist()
            counts += n.tolist()
            correct += c.tolist()
        model.train()
        scored = ev.Scored("causal-lm", loss=np.array(sums), weight=np.array(counts), correct=np.array(correct))
        return scored.take(np.argsort(order))

    @torch.no_grad()
    def errors(self, model, scored: ev.Scored, examples: list, indices: list[int], device, amp) -> list[dict]:
        """Rows of errors.jsonl. The prediction is teacher-forced: the model's most likely token at each target
        position given the reference before it (it equals greedy decoding where the example is an exact match)."""
        model.eval()
        rows = []
        for i in indices:
            ex = examples[i]
            labels = torch.tensor(ex["labels"][1:])
            logits = forward_logits(model, d.collate([ex], 0), device, amp)[0, :-1]
            where = labels != d.IGNORE
            rows.append({"source": ex.get("source"), "input": self.tok.decode(ex["input_ids"])[:2000],
                         "reference": self.tok.decode(labels[where]),
                         "prediction": self.tok.decode(logits.argmax(-1).cpu()[where]),
                         "loss": round(float(scored.loss[i] / max(scored.weight[i], 1)), 5),
                         "targetTokens": int(scored.weight[i])})
        model.train()
        return rows


def evaluate(model, examples: list, micro: int, pad_id: int, device, amp, with_ci: bool = False,
             task=CausalLM) -> dict:
    scored = task.score(model, examples, micro, pad_id, device, amp)
    return ev.with_intervals(scored) if with_ci else ev.metrics(scored)


# --- The run -------------------------------------------------------------------------------------------------

def train(job: FineTuneJob, run_id: str, settings: TrainerSettings, on_log=None) -> dict:
    """Runs the job to completion and returns its summary (also written to summary.json). `on_log` receives
    every logged row (the CLI draws its progress bar from them) instead of the JSON lines on stdout."""
    started, spec = time.time(), job.spec
    hp, dist = spec.hyperparameters, init_distributed()
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    store = Store(spec.storage, settings.cache_dir)
    run_uri = join(spec.output.uri, run_id)
    summary_uri = join(run_uri, contract.SUMMARY_FILE)
    if store.exists(summary_uri, "output.uri"):
        previous = json.loads(store.get_text(summary_uri))
        if previous.get("specHash") != spec_hash(job):
            raise BadInput(f"output {run_uri} already holds a finished run of a different spec; "
                           "it is never overwritten: use a new run id or output.uri")
        return previous  # the same run finished already: nothing to do, nothing overwritten

    if settings.threads:
        torch.set_num_threads(settings.threads)
    random.seed(hp.seed)
    torch.manual_seed(hp.seed)
    device, amp = choose_device(job, dist)
    labels = classify.labels_for(job, store) if spec.task == "sequence-classification" else None
    tok, model = load_model(job, store, device, amp, labels)
    stats = d.Stats()
    train_rows, val, test = load_data(job, store, tok, stats, labels)
    task = classify.Classification(labels, spec.classification and spec.classification.class_weights) \
        if labels else CausalLM(tok)
    model = apply_method(job, model)
    unfreezer = GradualUnfreezing(model, spec.method.freeze, math.ceil(len(train_rows) / hp.batch_size)) \
        if gradual(spec.method.freeze) else None
    if hp.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if dist.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(  # frozen blocks send no gradients while they wait
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=unfreezer is not None)
    trained = {k for k, p in model.named_parameters() if p.requires_grad}  # before gradual freezing
    peak = flops.peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    per_token = flops.flops_per_token(model)
    micro = hp.micro_batch_size
    accumulation = hp.batch_size // (micro * dist.world)
    if accumulation < 1 or hp.batch_size % (micro * dist.world):
        raise BadInput(f"hyperparameters.batchSize {hp.batch_size} is not a multiple of microBatchSize x "
                       f"world size ({micro} x {dist.world})")
    total = hp.max_steps or math.ceil(hp.epochs * len(train_rows) / hp.batch_size)
    opt, sched = optimizer_for(job, model, total)
    eval_every = spec.evaluation.every_steps or max(1, total // 10)
    val = val[: spec.evaluation.max_samples] if spec.evaluation.max_samples else val
    es_spec = spec.early_stopping
    metric = es_spec.metric if es_spec else "loss"
    mode = es_spec.mode if es_spec else "auto"
    es = EarlyStop(metric, mode == "max" or (mode == "auto" and metric in MAXIMISED_METRICS),
                   es_spec.patience if es_spec else None, es_spec.min_delta if es_spec else 0.0)
    telemetry = Telemetry(settings.metrics_port if dist.main else None, on_log)
    telemetry.log("data", train_rows=len(train_rows), validation_examples=len(val), test_examples=len(test),
                  truncated=stats.truncated, dropped_too_long=stats.dropped_too_long,
                  dropped_no_target=stats.dropped_no_target, max_seq_length=spec.dataset.max_seq_length)
    scratch = Path(tempfile.mkdtemp(prefix="kubetune-", dir=settings.cache_dir))
    ckpt = Checkpointer(store, run_uri, spec.checkpoint.keep, scratch, telemetry)
    pad = tok.pad_token_id
    baseline: dict = {}
    baseline_test: ev.Scored | None = None
    evals: dict[int, dict] = {}  # step -> validation metrics of the weights at that step

    step, tokens_seen = 0, 0
    state = ckpt.latest()
    if state is not None:
        load_trainable(model, state["weights"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        random.setstate(state["rng"]["python"])
        torch.set_rng_state(state["rng"]["torch"])
        step, baseline, telemetry.records = state["step"], state["baseline"], state["records"]
        tokens_seen, baseline_test = state["tokens"], state.get("baseline_test")
        for k, v in state["early_stopping"].items():
            setattr(es, k, v)
        telemetry.log("resume", step=step)
    elif spec.evaluation.baseline:
        if val:
            baseline = evaluate(model, val, micro, pad, device, amp, task=task)
            telemetry.evaluation(0, baseline, metric, None, tag="baseline")
        if test and dist.main:  # kept per example: the fine-tuned model is compared on the same rows
            baseline_test = task.score(model, test, micro, pad, device, amp)
            telemetry.evaluation(0, ev.metrics(baseline_test), metric, None, tag="baseline-test")

    stop: dict = {}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("sigterm", True))
    last_ckpt, stop_reason = time.monotonic(), None
    # Rates and the ETA count only what this process did: a resumed run starts its clock at the checkpoint.
    step_started, first_step, first_tokens = time.monotonic(), step, tokens_seen

    def checkpoint(background: bool = True) -> None:
        state = {"weights": trainable_state(model, trained), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "rng": {"python": random.getstate(), "torch": torch.get_rng_state()}, "step": step,
                 "tokens": tokens_seen, "baseline": baseline, "baseline_test": baseline_test, "records": list(telemetry.records),
                 "early_stopping": {k: getattr(es, k) for k in ("best_value", "best_step", "bad_evals",
                                                                  "best_weights")}}
        telemetry.checkpoint_seconds.set(ckpt.save(step, state, background))
        telemetry.log("checkpoint", step=step)

    try:
        while step < total:
            if unfreezer and (units := unfreezer.apply(step)) is not None:
                telemetry.log("unfreeze", step=step, trainable_units=units, of=len(unfreezer.units))
            rows = rows_of_step(step, hp.batch_size, len(train_rows), hp.seed)[dist.rank:: dist.world]
            batches = [task.collate([train_rows[i] for i in rows[j: j + micro]], pad)
                       for j in range(0, len(rows), micro)]
            n_tokens = torch.tensor(sum(task.targets(b) for b in batches))  # tokens, or examples' class weights
            if dist.world > 1:
                torch.distributed.all_reduce(n_tokens)
            loss_total = 0.0
            for k, batch in enumerate(batches):
                sync = dist.world == 1 or k == len(batches) - 1
                with nullcontext() if sync else model.no_sync():
                    s = task.losses(model, batch, device, amp)
                    loss = s.sum() / n_tokens.item() * dist.world  # DDP averages gradients over ranks
                    loss.backward()
                loss_total += loss.item() / dist.world
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], hp.max_grad_norm or float("inf"))
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += sum(int(b["input_ids"].numel()) for b in batches) * dist.world
            if step % settings.log_every_steps == 0 or step in (1, total):
                elapsed = max(time.monotonic() - step_started, 1e-9)
                tokens_per_s = (tokens_seen - first_tokens) / elapsed
                telemetry.train_step(step, total, step * hp.batch_size / len(train_rows), loss_total,
                                     sched.get_last_lr()[0], float(grad_norm), tokens_per_s,
                                     hp.batch_size * (step - first_step) / elapsed,
                                     eta=elapsed / (step - first_step) * (total - step),
                                     mfu=flops.mfu(tokens_per_s, per_token, peak, dist.world) if peak else None,
                                     memory_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                                     else None)
            if val and (step % eval_every == 0 or step == total):
                result = evals[step] = evaluate(model, val, micro, pad, device, amp, task=task)
                es.update(step, result[metric], lambda: trainable_state(model, trained))
                telemetry.evaluation(step, result, metric, es.best_value)
                if es.should_stop:
                    stop_reason = Reason.EARLY_STOPPED
                    break
            if stop.get("sigterm"):
                checkpoint(background=False)
                raise Preempted(f"SIGTERM at step {step}: checkpoint written, the next start resumes")
            due_steps = spec.checkpoint.every_steps and step % spec.checkpoint.every_steps == 0
            due_time = (spec.checkpoint.every_minutes
                        and time.monotonic() - last_ckpt >= spec.checkpoint.every_minutes * 60)
            if (due_steps or due_time) and step < total:
                checkpoint()
                last_ckpt = time.monotonic()
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(f"out of memory at step {step}: lower microBatchSize or maxSeqLength, or enable "
                          "hyperparameters.gradientCheckpointing") from exc
    ckpt.wait()
    stop_reason = stop_reason or (Reason.MAX_STEPS if hp.max_steps else Reason.EPOCHS)
    shipped = step
    if es_spec and es.best_weights is not None:
        load_trainable(model, es.best_weights)
        shipped = es.best_step
    if not dist.main:
        return {}
    # The shipped weights were scored when they were current; scoring them again would give the same numbers.
    final = evals.get(shipped) or (evaluate(model, val, micro, pad, device, amp, task=task) if val else {})
    tested, errors = {"test": {}}, []
    if test:
        scored = task.score(model, test, micro, pad, device, amp)
        constant = task.constant_baseline(train_rows, test) if labels else None
        tested = ev.report(scored, baseline_test, constant, labels.names if labels else ())
        tested["headline"] = ev.headline(tested, metric)
        telemetry.test(tested)
        errors = task.errors(model, scored, test, ev.worst(scored), device, amp)
    return finish(job, run_id, store, run_uri, model, tok, telemetry, scratch, errors=errors, summary={
        "runId": run_id, "specHash": spec_hash(job), "stopReason": stop_reason, "steps": step,
        "totalSteps": total, "shippedStep": shipped, "epochs": round(step * hp.batch_size / len(train_rows), 4),
        "trainTokens": tokens_seen, "wallSeconds": round(time.time() - started, 1),
        "deviceSeconds": round((time.time() - started) * dist.world * max(spec.resources.gpus_per_node, 1), 1),
        "eval": final, "baseline": baseline, **tested,
        "best": {"name": metric, "value": es.best_value, "step": es.best_step} if es.best_value is not None else None,
        "data": {"trainRows": len(train_rows), "validationExamples": len(val), "testExamples": len(test),
                 "truncated": stats.truncated, "droppedTooLong": stats.dropped_too_long,
                 "droppedNoTarget": stats.dropped_no_target},
    })


def finish(job, run_id, store, run_uri, model, tok, telemetry, scratch: Path, summary: dict,
           errors: list[dict] = ()) -> dict:
    """Writes every artifact, then summary.json last: its presence marks a complete run."""
    out = scratch / "artifacts"
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    model_dir = out / contract.MODEL_DIR
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    if job.spec.task == "sequence-classification" and hasattr(model, "peft_config"):
        model.get_base_model().config.save_pretrained(model_dir)  # the label names travel with the adapter
    artifacts = {"uri": run_uri, "modelUri": join(run_uri, contract.MODEL_DIR),
                 "summaryUri": join(run_uri, contract.SUMMARY_FILE), "metricsUri": join(run_uri, contract.METRICS_FILE)}
    if errors:
        (out / contract.ERRORS_FILE).write_text("".join(json.dumps(r) + "\n" for r in errors))
        artifacts["errorsUri"] = join(run_uri, contract.ERRORS_FILE)
    if job.spec.output.merge_adapter:
        merged = model.merge_and_unload()
        merged.save_pretrained(out / contract.MERGED_DIR)
        tok.save_pretrained(out / contract.MERGED_DIR)
        artifacts["mergedUri"] = join(run_uri, contract.MERGED_DIR)
    summary["artifacts"] = artifacts
    (out / contract.METRICS_FILE).write_text(telemetry.jsonl())
    (out / contract.SPEC_COPY_FILE).write_text(json.dumps(job.to_wire(), indent=2))
    (out / contract.MODEL_CARD_FILE).write_text(model_card(job, summary))
    store.put_dir(out, run_uri)
    store.put_text(json.dumps(summary, indent=2), artifacts["summaryUri"])
    return summary


def model_card(job: FineTuneJob, s: dict) -> str:
    spec = job.spec
    auto = "AutoModelForSequenceClassification" if spec.task == "sequence-classification" else "AutoModelForCausalLM"
    lines = [f"# {job.metadata.name} (run {s['runId']})", "",
             f"Fine-tuned from `{spec.base_model.uri}` with {spec.method.type} on `{spec.dataset.train}` by kubetune.",
             "", f"- Stopped: {s['stopReason']} after {s['steps']} of {s['totalSteps']} steps; weights of step "
             f"{s['shippedStep']}.", f"- Validation: {json.dumps(s['eval'])}", f"- Baseline: {json.dumps(s['baseline'])}",
             f"- Test: {json.dumps(s['test'])}", "", "Load the adapter with "
             "`PeftModel.from_pretrained(base, \"model/\")`." if spec.method.type != "full" else
             f"Load with `{auto}.from_pretrained(\"model/\")`."]
    return "\n".join(lines) + "\n"
