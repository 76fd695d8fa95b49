"""The fine-tuning recipe, in the order it runs: `setup` (inputs, model and method, data, optimizer) → `resume`
(the newest checkpoint, else the baseline) → `train_steps` (log, evaluate, keep the best, checkpoint, stop early)
→ `test` → `ship` (artifacts, summary.json last). `train` runs them in that order.

One loop serves every task: what differs (batches, the loss, scoring) comes from `causal_lm.CausalLM` or
`classify.Classification`, each with the same few functions. Which rank does what is `dist.py`'s business; how the
model is split over the ranks (none, DDP, FSDP2) is `parallel.py`'s.

Data order is a pure function of (seed, step): the rows of optimizer step s are fixed, so a resumed run
neither replays nor skips data. The loss of a step is the sum of token losses over all its micro-batches (and
ranks) divided by the step's target-token count, so accumulation equals one big batch, and the logged loss is
that sum reduced over the ranks.
"""
import hashlib
import json
import math
import random
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kubetune.api import FineTuneJob, contract
from kubetune.api.spec import MAXIMISED_METRICS
from kubetune.api.status import Reason
from kubetune.trainer import classify, flops, parallel
from kubetune.trainer import data as d
from kubetune.trainer import dist as dist_
from kubetune.trainer import evaluation as ev
from kubetune.trainer.causal_lm import CausalLM, forward_logits, token_losses  # noqa: F401 (re-exported)
from kubetune.trainer.checkpoint import Checkpointer
from kubetune.trainer.dist import Dist
from kubetune.trainer.errors import BadInput, OutOfMemory, Preempted
from kubetune.trainer.metrics import Telemetry
from kubetune.trainer.model import (apply_method, load_model, load_tokenizer, load_trainable, meta_model, model_source,
                                    optimizer_for, precision, trainable_state)
from kubetune.trainer.rows import load_data, rows_of_step  # noqa: F401 (load_data re-exported for tests)
from kubetune.trainer.settings import TrainerSettings
from kubetune.trainer.storage import Store, join
from kubetune.trainer.unfreeze import GradualUnfreezing, gradual


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


# --- Evaluation ----------------------------------------------------------------------------------------------

def evaluate(model, examples: list, micro: int, pad_id: int, device, amp, with_ci: bool = False,
             task=CausalLM) -> dict:
    scored = task.score(model, examples, micro, pad_id, device, amp)
    return ev.with_intervals(scored) if with_ci else ev.metrics(scored)


# --- The run -------------------------------------------------------------------------------------------------

@dataclass
class Run:
    """What setup() builds: everything about the run that stays fixed while it trains."""
    job: FineTuneJob
    run_id: str
    settings: TrainerSettings
    dist: Dist
    store: Store
    run_uri: str
    started: float
    amp: torch.dtype | None
    strategy: str  # none, ddp or fsdp
    tok: object
    model: torch.nn.Module  # as it trains: under DDP the wrapper
    task: object
    labels: classify.Labels | None
    train_rows: list
    val: list
    test: list
    stats: d.Stats
    opt: torch.optim.Optimizer
    sched: object
    scaler: torch.amp.GradScaler | None
    unfreezer: GradualUnfreezing | None
    trained: set[str]
    total: int
    micro: int
    eval_every: int
    telemetry: Telemetry
    ckpt: Checkpointer
    scratch: Path

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp"

    @property
    def scorer(self):
        """The model to score with: never the DDP wrapper, whose forward may wait on a collective that a rank
        scoring alone never sees. FSDP's forward gathers shards, so under FSDP every rank scores together."""
        return parallel.unwrap(self.model)

    def score(self, examples: list):
        scored = self.task.score(self.scorer, examples, self.micro, self.tok.pad_token_id, self.device, self.amp)
        parallel.reshard(self.model)
        return scored

    def evaluate(self, examples: list) -> dict:
        """Validation metrics, the same on every rank (rank 0's numbers, so every rank takes the same decisions)."""
        return self.dist.broadcast(ev.metrics(self.score(examples)))


@dataclass
class RunState:
    """What changes as the run goes, and what a checkpoint must bring back."""
    early: EarlyStop
    step: int = 0
    tokens: int = 0
    baseline: dict = field(default_factory=dict)
    baseline_test: ev.Scored | None = None
    evals: dict[int, dict] = field(default_factory=dict)  # step -> validation metrics of the weights at that step
    stop_reason: str | None = None

    _EARLY = ("best_value", "best_step", "bad_evals")

    def save(self, run: Run, background: bool = True) -> None:
        """Checkpoints the run at this step: rank 0 writes replicated state; under FSDP every rank its shards.
        Every rank calls it (the RNG states of all ranks are gathered)."""
        rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
        if run.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(run.device)
        rngs = run.dist.gather(rng)
        meta = {"step": self.step, "tokens": self.tokens, "baseline": self.baseline,
                "baseline_test": self.baseline_test, "evals": self.evals, "records": list(run.telemetry.records),
                "scheduler": run.sched.state_dict(), "scaler": run.scaler.state_dict() if run.scaler else None,
                "rng": rngs, "world": run.dist.world,
                "early_stopping": {k: getattr(self.early, k) for k in self._EARLY},
                "has_best": self.early.best_weights is not None}
        if run.sharded:
            seconds = run.ckpt.save_sharded(self.step, meta if run.dist.main else None,
                                            self._tensors(run), background)
        elif run.dist.main:
            meta.update(weights=trainable_state(run.model, run.trained), optimizer=run.opt.state_dict())
            meta["early_stopping"]["best_weights"] = self.early.best_weights
            seconds = run.ckpt.save(self.step, meta, background)
        else:
            seconds = 0.0
        run.telemetry.checkpoint_seconds.set(seconds)
        run.telemetry.log("checkpoint", step=self.step)

    def _tensors(self, run: Run, with_best: bool | None = None) -> dict:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        model, optim = get_state_dict(run.model, run.opt, options=StateDictOptions(ignore_frozen_params=True))
        out = {"model": model, "optim": optim}
        if with_best if with_best is not None else self.early.best_weights is not None:
            out["best"] = self.early.best_weights or trainable_state(run.model, run.trained)
        return out

    def restore(self, run: Run) -> bool:
        """Brings back the newest complete checkpoint; False when there is none."""
        state = run.ckpt.latest()
        if state is None:
            return False
        if "shards" in state:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            tensors = self._tensors(run, with_best=state["has_best"])
            dcp.load(tensors, checkpoint_id=str(state["shards"]))
            set_state_dict(run.model, run.opt, model_state_dict=tensors["model"], optim_state_dict=tensors["optim"],
                           options=StateDictOptions(ignore_frozen_params=True, strict=False))
            self.early.best_weights = tensors.get("best")
        else:
            load_trainable(run.model, state["weights"])
            run.opt.load_state_dict(state["optimizer"])
            self.early.best_weights = state["early_stopping"].get("best_weights")
        run.sched.load_state_dict(state["scheduler"])
        if run.scaler and state.get("scaler"):
            run.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        rng = rngs[run.dist.rank] if len(rngs) == run.dist.world else rngs[0]  # another world size: rank 0's
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and run.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], run.device)
        self.step, self.tokens, self.baseline = state["step"], state["tokens"], state["baseline"]
        self.baseline_test, self.evals = state.get("baseline_test"), state.get("evals", {})
        run.telemetry.records = state["records"]
        for k in self._EARLY:
            setattr(self.early, k, state["early_stopping"][k])
        run.telemetry.log("resume", step=self.step)
        return True


def setup(job: FineTuneJob, run_id: str, settings: TrainerSettings, on_log=None) -> Run:
    """Distributed init, the model with its method, the data, the optimizer: everything before the first step."""
    started, spec, hp = time.time(), job.spec, job.spec.hyperparameters
    cuda = torch.cuda.is_available() and spec.resources.gpus_per_node > 0
    dist = dist_.init(cuda, settings.collective_timeout_minutes)
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    store = Store(spec.storage, settings.cache_dir)
    run_uri = join(spec.output.uri, run_id)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    random.seed(hp.seed)
    torch.manual_seed(hp.seed)
    amp = precision(job, cuda)
    labels = dist.local_first(lambda: classify.labels_for(job, store)) \
        if spec.task == "sequence-classification" else None
    path, kw = model_source(job, store, dist)
    tok = load_tokenizer(job, path, kw)
    n_params = sum(p.numel() for p in meta_model(job, path, kw, tok.pad_token_id, labels, method=False).parameters()) \
        if dist.world > 1 else 0
    strategy = parallel.strategy(job, dist.world, n_params, torch.cuda.get_device_properties(dist.device).total_memory
                                 if dist.device.type == "cuda" else None)
    if strategy == "fsdp":
        if amp == torch.float16:
            raise BadInput("distributed.strategy fsdp: hyperparameters.precision fp16 is not supported; use bf16")
        # Rank 0 alone reads the weights (in their stored dtype; the shards are fp32 masters) and broadcasts them.
        reference = apply_method(job, load_model(job, path, kw, dist.device, amp, tok.pad_token_id, labels,
                                                 dtype="auto", place=False)) if dist.main else None
        model = meta_model(job, path, kw, tok.pad_token_id, labels)
        if hp.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model = parallel.shard(model, dist, amp)
        parallel.materialise(model, reference, dist)
        del reference
        dist.checkpoint_group = torch.distributed.new_group(backend="gloo")
    else:
        model = apply_method(job, load_model(job, path, kw, dist.device, amp, tok.pad_token_id, labels))
        if hp.gradient_checkpointing:
            model.gradient_checkpointing_enable()
    stats = d.Stats()
    # Tokenized once per node into memory-mapped arrays, shared under the run's prefix so a restarted pod skips it.
    train_rows, val, test = dist.local_first(lambda: load_data(job, store, tok, stats, labels,
                                                               share_uri=join(run_uri, "tokenized")))
    task = classify.Classification(labels, spec.classification and spec.classification.class_weights) \
        if labels else CausalLM(tok)
    unfreezer = GradualUnfreezing(model, spec.method.freeze, math.ceil(len(train_rows) / hp.batch_size)) \
        if gradual(spec.method.freeze) else None
    if strategy == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(  # frozen blocks send no gradients while they wait
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
            find_unused_parameters=unfreezer is not None)
    trained = {k for k, p in model.named_parameters() if p.requires_grad}  # before gradual freezing
    micro = hp.micro_batch_size
    if hp.batch_size % (micro * dist.world):
        raise BadInput(f"hyperparameters.batchSize {hp.batch_size} is not a multiple of microBatchSize x "
                       f"world size ({micro} x {dist.world})")
    total = hp.max_steps or math.ceil(hp.epochs * len(train_rows) / hp.batch_size)
    opt, sched = optimizer_for(job, model, total)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None  # fp16 gradients underflow unscaled
    val = val[: spec.evaluation.max_samples] if spec.evaluation.max_samples else val
    telemetry = Telemetry(settings.metrics_port if dist.main else None,
                          on_log if dist.main else (lambda row: None))  # one rank speaks
    telemetry.log("data", train_rows=len(train_rows), validation_examples=len(val), test_examples=len(test),
                  truncated=stats.truncated, dropped_too_long=stats.dropped_too_long,
                  dropped_no_target=stats.dropped_no_target, max_seq_length=spec.dataset.max_seq_length)
    telemetry.log("distributed", strategy=strategy, world=dist.world, device=str(dist.device))
    scratch = Path(tempfile.mkdtemp(prefix="kubetune-", dir=settings.cache_dir))
    return Run(job, run_id, settings, dist, store, run_uri, started, amp, strategy, tok, model, task, labels,
               train_rows, val, test, stats, opt, sched, scaler, unfreezer, trained, total, micro,
               spec.evaluation.every_steps or max(1, total // 10), telemetry,
               Checkpointer(store, run_uri, spec.checkpoint.keep, scratch, telemetry, dist), scratch)


def early_stop_for(job: FineTuneJob) -> EarlyStop:
    es = job.spec.early_stopping
    metric, mode = (es.metric, es.mode) if es else ("loss", "auto")
    return EarlyStop(metric, mode == "max" or (mode == "auto" and metric in MAXIMISED_METRICS),
                     es.patience if es else None, es.min_delta if es else 0.0)


def resume(run: Run) -> RunState:
    """The newest checkpoint's state, or a fresh one (after scoring the untouched model when asked)."""
    state = RunState(early_stop_for(run.job))
    if state.restore(run) or not run.job.spec.evaluation.baseline:
        return state
    metric = state.early.metric
    if run.val:
        state.baseline = run.evaluate(run.val)
        run.telemetry.evaluation(0, state.baseline, metric, None, tag="baseline")
    if run.test and (run.dist.main or run.sharded):  # kept per example: the fine-tuned model is compared on the same rows
        state.baseline_test = run.score(run.test)
        run.telemetry.evaluation(0, ev.metrics(state.baseline_test), metric, None, tag="baseline-test")
    return state


def train_steps(run: Run, state: RunState) -> None:
    """Optimizer steps until the end, early stopping, or SIGTERM (checkpoint, then Preempted on every rank)."""
    job, dist, hp, model = run.job, run.dist, run.job.spec.hyperparameters, run.model
    every_steps, every_minutes = job.spec.checkpoint.every_steps, job.spec.checkpoint.every_minutes
    sigterm = {"seen": False}
    signal.signal(signal.SIGTERM, lambda *_: sigterm.__setitem__("seen", True))
    peak = flops.peak_flops(torch.cuda.get_device_name(run.device)) if run.device.type == "cuda" else None
    per_token = flops.flops_per_token(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    pad = run.tok.pad_token_id
    last_ckpt = time.monotonic()
    # Rates and the ETA count only what this process did: a resumed run starts its clock at the checkpoint.
    step_started, first_step, first_tokens = time.monotonic(), state.step, state.tokens
    try:
        while state.step < run.total:
            if run.unfreezer and (units := run.unfreezer.apply(state.step)) is not None:
                run.telemetry.log("unfreeze", step=state.step, trainable_units=units, of=len(run.unfreezer.units))
            rows = rows_of_step(state.step, hp.batch_size, len(run.train_rows), hp.seed)[dist.rank:: dist.world]
            step_rows = [run.train_rows[i] for i in rows]
            batches = [run.task.collate(step_rows[j: j + run.micro], pad) for j in range(0, len(step_rows), run.micro)]
            real_tokens = sum(len(r["input_ids"]) for r in step_rows)  # throughput never counts padding
            # The step's normaliser: target tokens (or examples' class weights) over every rank.
            (n_targets,) = dist.sum(sum(run.task.targets(b) for b in batches))
            loss_sum = 0.0
            for k, batch in enumerate(batches):
                with parallel.no_sync(model, sync=k == len(batches) - 1):
                    s = run.task.losses(model, batch, run.device, run.amp).sum()
                    loss = s / n_targets * dist.world  # data parallelism averages gradients over the ranks
                    (run.scaler.scale(loss) if run.scaler else loss).backward()
                loss_sum += s.item()
            if run.scaler:
                run.scaler.unscale_(run.opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, hp.max_grad_norm or float("inf"))
            if run.scaler:
                run.scaler.step(run.opt)
                run.scaler.update()
            else:
                run.opt.step()
            run.sched.step()
            run.opt.zero_grad(set_to_none=True)
            state.step += 1
            due_time = bool(every_minutes and time.monotonic() - last_ckpt >= every_minutes * 60)
            # One reduction agrees on the step's loss, its tokens, and the decisions every rank must take together.
            loss_total, tokens, stop, due_time = dist.sum(
                loss_sum, real_tokens, sigterm["seen"], due_time)
            state.tokens += int(tokens)
            loss_total /= n_targets
            step = state.step
            if step % run.settings.log_every_steps == 0 or step in (1, run.total):
                elapsed = max(time.monotonic() - step_started, 1e-9)
                tokens_per_s = (state.tokens - first_tokens) / elapsed
                run.telemetry.train_step(
                    step, run.total, step * hp.batch_size / len(run.train_rows), loss_total,
                    run.sched.get_last_lr()[0], float(parallel.full(grad_norm)), tokens_per_s,
                    hp.batch_size * (step - first_step) / elapsed, eta=elapsed / (step - first_step) * (run.total - step),
                    mfu=flops.mfu(tokens_per_s, per_token, peak, dist.world) if peak else None,
                    memory_bytes=torch.cuda.max_memory_allocated(run.device) if run.device.type == "cuda" else None)
            if run.val and (step % run.eval_every == 0 or step == run.total):
                result = state.evals[step] = run.evaluate(run.val)
                state.early.update(step, result[state.early.metric], lambda: trainable_state(model, run.trained))
                run.telemetry.evaluation(step, result, state.early.metric, state.early.best_value)
                if state.early.should_stop:
                    state.stop_reason = Reason.EARLY_STOPPED
                    break
            if stop:
                state.save(run, background=False)
                dist.barrier()  # no rank exits (and so ends the others) before the checkpoint is complete
                raise Preempted(f"SIGTERM at step {step}: checkpoint written, the next start resumes")
            if ((every_steps and step % every_steps == 0) or due_time) and step < run.total:
                state.save(run)
                last_ckpt = time.monotonic()
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(f"out of memory at step {state.step}: lower microBatchSize or maxSeqLength, or enable "
                          "hyperparameters.gradientCheckpointing") from exc
    run.ckpt.wait()
    state.stop_reason = state.stop_reason or (Reason.MAX_STEPS if hp.max_steps else Reason.EPOCHS)


def run_test(run: Run, state: RunState) -> tuple[int, dict, dict, list]:
    """Loads the weights to ship (the best step's with early stopping) and scores them: the shipped step, its
    validation metrics, the test report and the error analysis (rank 0's; empty elsewhere)."""
    shipped = state.step
    if run.job.spec.early_stopping and state.early.best_weights is not None:
        load_trainable(run.model, state.early.best_weights)
        shipped = state.early.best_step
    if not (run.dist.main or run.sharded):
        return shipped, {}, {"test": {}}, []
    # The shipped weights were scored when they were current; scoring them again would give the same numbers.
    final = state.evals.get(shipped) or (ev.metrics(run.score(run.val)) if run.val else {})
    tested, errors = {"test": {}}, []
    if run.test:
        scored = run.score(run.test)
        constant = run.task.constant_baseline(run.train_rows, run.test) if run.labels else None
        tested = ev.report(scored, state.baseline_test, constant, run.labels.names if run.labels else ())
        tested["headline"] = ev.headline(tested, state.early.metric)
        run.telemetry.test(tested)
        worst = run.dist.broadcast(ev.worst(scored)) if run.sharded else ev.worst(scored)
        errors = run.task.errors(run.scorer, scored, run.test, worst, run.device, run.amp)
        parallel.reshard(run.model)
    return shipped, final, tested, errors


def train(job: FineTuneJob, run_id: str, settings: TrainerSettings, on_log=None) -> dict:
    """Runs the job to completion and returns its summary (also written to summary.json; rank 0's, {} on the
    other ranks). `on_log` receives every logged row (the CLI draws its progress bar from them) instead of the
    JSON lines on stdout."""
    store = Store(job.spec.storage, settings.cache_dir)
    summary_uri = join(job.spec.output.uri, run_id, contract.SUMMARY_FILE)
    if store.exists(summary_uri, "output.uri"):
        previous = json.loads(store.get_text(summary_uri))
        if previous.get("specHash") != spec_hash(job):
            raise BadInput(f"output {join(job.spec.output.uri, run_id)} already holds a finished run of a different "
                           "spec; it is never overwritten: use a new run id or output.uri")
        return previous  # the same run finished already: nothing to do, nothing overwritten
    run = setup(job, run_id, settings, on_log)
    sigterm_handler = signal.getsignal(signal.SIGTERM)  # train_steps catches SIGTERM; a caller gets its own back
    try:
        state = resume(run)
        train_steps(run, state)
        shipped, final, tested, errors = run_test(run, state)
        return ship(run, state, shipped, final, tested, errors)
    finally:
        signal.signal(signal.SIGTERM, sigterm_handler)
        dist_.close(run.dist)


def ship(run: Run, state: RunState, shipped: int, final: dict, tested: dict, errors: list) -> dict:
    """The summary, and (rank 0) every artifact."""
    job, hp, es = run.job, run.job.spec.hyperparameters, state.early
    weights = parallel.full_state(run.model, trained_only=job.spec.method.type != "full") if run.sharded else None
    if not run.dist.main:
        return {}
    return finish(job, run.run_id, run.store, run.run_uri, run.model, run.tok, run.telemetry, run.scratch,
                  errors=errors, weights=weights, summary={
        "runId": run.run_id, "specHash": spec_hash(job), "stopReason": state.stop_reason, "steps": state.step,
        "totalSteps": run.total, "shippedStep": shipped, "epochs": round(state.step * hp.batch_size / len(run.train_rows), 4),
        "trainTokens": state.tokens, "wallSeconds": round(time.time() - run.started, 1),
        "deviceSeconds": round((time.time() - run.started) * run.dist.world, 1),
        "eval": final, "baseline": state.baseline, **tested,
        "best": {"name": es.metric, "value": es.best_value, "step": es.best_step} if es.best_value is not None else None,
        "data": {"trainRows": len(run.train_rows), "validationExamples": len(run.val), "testExamples": len(run.test),
                 "truncated": run.stats.truncated, "droppedTooLong": run.stats.dropped_too_long,
                 "droppedNoTarget": run.stats.dropped_no_target},
    })


def finish(job, run_id, store, run_uri, model, tok, telemetry, scratch: Path, summary: dict,
           errors: list[dict] = (), weights: dict | None = None) -> dict:
    """Writes every artifact, then summary.json last: its presence marks a complete run. `weights`: the full
    (trainable) state gathered from FSDP shards, saved in place of the model's own."""
    out = scratch / "artifacts"
    model = parallel.unwrap(model)
    model_dir = out / contract.MODEL_DIR
    model.save_pretrained(model_dir, **({"state_dict": weights} if weights is not None else {}))
    tok.save_pretrained(model_dir)
    if job.spec.task == "sequence-classification" and hasattr(model, "peft_config"):
        model.get_base_model().config.save_pretrained(model_dir)  # the label names travel with the adapter
    artifacts = {"uri": run_uri, "modelUri": join(run_uri, contract.MODEL_DIR),
                 "summaryUri": join(run_uri, contract.SUMMARY_FILE), "metricsUri": join(run_uri, contract.METRICS_FILE)}
    if errors:
        (out / contract.ERRORS_FILE).write_text("".join(json.dumps(r) + "\n" for r in errors))
        artifacts["errorsUri"] = join(run_uri, contract.ERRORS_FILE)
    if job.spec.output.merge_adapter:
        merged = merged_model(job, model, model_dir) if weights is not None else model.merge_and_unload()
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


def merged_model(job: FineTuneJob, model, adapter_dir: Path):
    """Under FSDP the base weights are shards: merge the saved adapter into a host copy of the base model."""
    from peft import PeftModel

    base = type(model.get_base_model()).from_pretrained(model.peft_config["default"].base_model_name_or_path,
                                                        dtype="auto")
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


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
