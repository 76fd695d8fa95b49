"""The run before its first step: `setup` builds the `Run` (inputs, model and method, data, optimizer, telemetry;
fixed while it trains), and `resume` the `RunState` (what changes as it trains, and what a checkpoint brings back:
the newest checkpoint's, else a fresh one after scoring the untouched model). loop.py trains them."""
import math
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kubetune.api import FineTuneJob
from kubetune.api.spec import MAXIMISED_METRICS
from kubetune.trainer import classify, parallel
from kubetune.trainer import data as d
from kubetune.trainer import dist as dist_
from kubetune.trainer import evaluation as ev
from kubetune.trainer import katib, linear_ce, varlen
from kubetune.trainer.causal_lm import CausalLM
from kubetune.trainer.linear_ce import HeadSkip
from kubetune.trainer.checkpoint import Checkpointer
from kubetune.trainer.dist import Dist
from kubetune.trainer.errors import BadInput
from kubetune.trainer.metrics import Telemetry
from kubetune.trainer.model import (apply_method, checkpointing, load_model, load_tokenizer, load_trainable,
                                    meta_model, model_source, optimizer_for, precision, trainable_state)
from kubetune.trainer.rows import Examples, load_data
from kubetune.trainer.settings import TrainerSettings
from kubetune.trainer.storage import Store, join
from kubetune.trainer.unfreeze import GradualUnfreezing, gradual, transformer_blocks


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

    def score(self, examples: list) -> ev.Scored:
        """Every example's score, in the examples' order, on every rank; each rank scores its share."""
        scored = score_shared(self.dist, examples, lambda part: self.task.score(
            self.scorer, part, self.micro, self.tok.pad_token_id, self.device, self.amp), even=self.sharded)
        parallel.reshard(self.model)
        return scored

    def evaluate(self, examples: list) -> dict:
        """Validation metrics, the same on every rank (rank 0's numbers, so every rank takes the same decisions)."""
        return self.dist.broadcast(ev.metrics(self.score(examples)))


def score_shared(dist: Dist, examples, score, even: bool = False) -> ev.Scored:
    """`score(part)` of each rank's share of `examples`, gathered: every rank gets every example's score in the
    examples' order (as one process scoring them all would, so a paired comparison sees the same rows). The shares
    are every world-th example by length, so they cost alike. `even` (FSDP, whose forwards gather every block's
    shards on every rank together): every share gets as many examples, the short ones topped up with copies whose
    scores are dropped."""
    if dist.world == 1:
        return score(examples)
    order = np.asarray(d.length_order(examples), dtype=np.int64)
    mine = order[dist.rank:: dist.world]
    extra = (-(-len(order) // dist.world) - len(mine)) if even else 0
    part = None
    if len(mine) + extra:
        part = score(_subset(examples, np.concatenate([mine, order[:extra]])))
        part = part.take(np.arange(len(mine))) if extra else part
    parts = [(i, p) for i, p in dist.all_gather((mine, part)) if p is not None]
    index = np.concatenate([i for i, _ in parts])
    return ev.concat([p for _, p in parts]).take(np.argsort(index, kind="stable"))


def _subset(examples, index: np.ndarray):
    if isinstance(examples, Examples):  # still lazy: rows are read from the memory map as they are scored
        return Examples(examples.data, examples.index[index])
    return [examples[int(i)] for i in index]


@dataclass
class RunState:
    """What changes as the run goes, and what a checkpoint must bring back."""
    early: EarlyStop
    step: int = 0
    tokens: int = 0
    baseline: dict = field(default_factory=dict)
    baseline_test: ev.Scored | None = None
    challenge: object = None
    """promotion.Challenge: the champion read, scored and judged after the test (not checkpointed)."""
    evals: dict[int, dict] = field(default_factory=dict)  # step -> validation metrics of the weights at that step
    samples: dict[str, list] = field(default_factory=dict)
    """report.html's answers to a few held-out prompts: "before" (the untouched model), "after" (the shipped one)."""
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
                "samples": self.samples,
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
        self.samples = state.get("samples") or {}
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
        checkpointing(model, job)
        model = parallel.shard(model, dist, amp)
        parallel.materialise(model, reference, dist)
        del reference
        dist.checkpoint_group = torch.distributed.new_group(backend="gloo")
    else:
        model = apply_method(job, load_model(job, path, kw, dist.device, amp, tok.pad_token_id, labels))
        checkpointing(model, job)
    stats = d.Stats()
    train_rows, val, test = load_run_data(job, store, tok, stats, labels, dist, run_uri)
    unfreezer = GradualUnfreezing(model, spec.method.freeze, math.ceil(len(train_rows) / hp.batch_size)) \
        if gradual(spec.method.freeze) else None
    task = classify.Classification(labels, spec.classification and spec.classification.class_weights) \
        if labels else causal_lm_task(job, settings, model, tok, dist.device, amp,
                                      ddp_unused=strategy == "ddp" and unfreezer is not None)
    if hp.compile:
        compile_blocks(model)
    if strategy == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(  # frozen blocks send no gradients while they wait
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
            find_unused_parameters=unfreezer is not None)
    # Before gradual freezing; the model's own names (not DDP's module.*), as trainable_state keys them.
    trained = {k for k, p in parallel.unwrap(model).named_parameters() if p.requires_grad}
    micro = hp.micro_batch_size
    if hp.batch_size % (micro * dist.world):
        raise BadInput(f"hyperparameters.batchSize {hp.batch_size} is not a multiple of microBatchSize x "
                       f"world size ({micro} x {dist.world})")
    total = hp.max_steps or math.ceil(hp.epochs * len(train_rows) / hp.batch_size)
    opt, sched = optimizer_for(job, model, total, fused=settings.fused_optimizer)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None  # fp16 gradients underflow unscaled
    val = val[: spec.evaluation.max_samples] if spec.evaluation.max_samples else val
    telemetry = Telemetry(settings.metrics_port if dist.main else None,
                          on_log if dist.main else (lambda row: None),  # one rank speaks
                          katib.reporter() if dist.main else None)
    telemetry.log("data", train_rows=len(train_rows), validation_examples=len(val), test_examples=len(test),
                  truncated=stats.truncated, dropped_too_long=stats.dropped_too_long,
                  dropped_no_target=stats.dropped_no_target, max_seq_length=spec.dataset.max_seq_length)
    telemetry.log("distributed", strategy=strategy, world=dist.world, device=str(dist.device))
    if not labels:
        telemetry.log("batching", padding_free=task.padding_free, chunked_loss=task.skip is not None,
                      loss_kernel=linear_ce.kernel(dist.device) if task.skip is not None else None)
    scratch = Path(tempfile.mkdtemp(prefix="kubetune-", dir=settings.cache_dir))
    return Run(job, run_id, settings, dist, store, run_uri, started, amp, strategy, tok, model, task, labels,
               train_rows, val, test, stats, opt, sched, scaler, unfreezer, trained, total, micro,
               spec.evaluation.every_steps or max(1, total // 10), telemetry,
               Checkpointer(store, run_uri, spec.checkpoint.keep, scratch, telemetry, dist), scratch)


def load_run_data(job: FineTuneJob, store: Store, tok, stats: d.Stats, labels, dist: Dist, run_uri: str,
                  on_event=None):
    """The run's rows, tokenized once per job into memory-mapped arrays: rank 0 builds them and shares them under
    the run's prefix while the other ranks wait; then those find them in their node's cache (rank 0's node) or
    download them (the other nodes), as a restarted pod of the run does."""
    return dist.main_first(lambda: load_data(job, store, tok, stats, labels, share_uri=join(run_uri, "tokenized"),
                                             on_event=on_event))


def compile_blocks(model) -> None:
    """torch.compile, in place (the state-dict keys stay), on each transformer block's parts other than its
    attention: the MLP and the norms gain from fused kernels; the attention is one fused kernel already and its
    padding-free form loops over examples of varying lengths."""
    for block in transformer_blocks(model):
        for name, part in block.named_children():
            if "attn" not in name and "attention" not in name:
                part.compile(dynamic=True)


def causal_lm_task(job: FineTuneJob, settings: TrainerSettings, model, tok, device, amp, ddp_unused: bool
                   ) -> CausalLM:
    """The causal-LM task with the techniques this model can take, each checked on it once: the chunked loss
    (the head applied to the hidden states must give the model's logits) and padding-free batching (an example's
    logits must be the same alone and packed beside another). Under DDP with unused parameters (gradual
    unfreezing) the head's gradient arrives outside the forward DDP traced, so the chunked loss stays off."""
    vocab = parallel.unwrap(model).get_output_embeddings().weight.shape[0]
    skip = HeadSkip.of(model) if settings.chunked_loss and not ddp_unused else None
    if skip is not None and not skip.probe(model, vocab, device, amp):
        skip = None
    padding_free = job.spec.dataset.padding_free and varlen.enable(model)
    if padding_free and not varlen.probe(model, vocab, device, amp):
        varlen.disable(model)
        padding_free = False
    parallel.reshard(model)  # the probes ran forwards without a backward
    return CausalLM(tok, skip, padding_free)


def early_stop_for(job: FineTuneJob) -> EarlyStop:
    es = job.spec.early_stopping
    metric, mode = (es.metric, es.mode) if es else ("loss", "auto")
    return EarlyStop(metric, mode == "max" or (mode == "auto" and metric in MAXIMISED_METRICS),
                     es.patience if es else None, es.min_delta if es else 0.0)


def resume(run: Run) -> RunState:
    """The newest checkpoint's state, or a fresh one (after scoring the untouched model when asked)."""
    state = RunState(early_stop_for(run.job))
    if state.restore(run):
        return state
    state.samples["before"] = sample_answers(run)
    if not run.job.spec.evaluation.baseline:
        return state
    metric = state.early.metric
    if run.val:
        state.baseline = run.evaluate(run.val)
        run.telemetry.evaluation(0, state.baseline, metric, None, tag="baseline")
    if run.test:  # kept per example: the fine-tuned model is compared on the same rows
        state.baseline_test = run.score(run.test)
        run.telemetry.evaluation(0, ev.metrics(state.baseline_test), metric, None, tag="baseline-test")
    return state


def sample_answers(run: Run) -> list[dict]:
    """Greedy answers of the model as it is now to a few held-out prompts (test rows, else validation rows), for
    report.html; rank 0 alone, with the unwrapped model. Causal LMs only; none under FSDP, whose forwards need
    every rank."""
    if run.labels or run.sharded or not run.dist.main:
        return []
    return run.task.answers(run.scorer, run.test if len(run.test) else run.val, run.device, run.amp)
