"""The fine-tuning recipe, in the order it runs: `setup` (inputs, model and method, data, optimizer) → `resume`
(the newest checkpoint, else the baseline), both in run.py → `train_steps` (log, evaluate, keep the best,
checkpoint, stop early) → `run_test` → `ship` (artifacts, summary.json last: artifacts.py). `train` runs them in
that order; this module is the loop itself.

One loop serves every task: what differs (batches, the loss, scoring) comes from `causal_lm.CausalLM` or
`classify.Classification`, each with the same few functions. Which rank does what is `dist.py`'s business; how the
model is split over the ranks (none, DDP, FSDP2) is `parallel.py`'s.

Data order is a pure function of (seed, step): the rows of optimizer step s are fixed, so a resumed run
neither replays nor skips data. The loss of a step is the sum of token losses over all its micro-batches (and
ranks) divided by the step's target-token count, so accumulation equals one big batch, and the logged loss is
that sum reduced over the ranks.
"""
import json
import signal
import time

import torch

from kubetune.api import FineTuneJob, contract
from kubetune.api.status import Reason
from kubetune.trainer import flops, parallel, promotion
from kubetune.trainer import dist as dist_
from kubetune.trainer import evaluation as ev
from kubetune.trainer.artifacts import ship, spec_hash, update_report
from kubetune.trainer.causal_lm import CausalLM, forward_logits, token_losses  # noqa: F401 (re-exported)
from kubetune.trainer.errors import BadInput, OutOfMemory, Preempted
from kubetune.trainer.model import load_trainable, trainable_state
from kubetune.trainer.rows import load_data, rows_of_step  # noqa: F401 (load_data re-exported for tests)
from kubetune.trainer.run import Run, RunState, resume, sample_answers, setup
from kubetune.trainer.settings import TrainerSettings
from kubetune.trainer.storage import Store, join


# --- Evaluation ----------------------------------------------------------------------------------------------

def evaluate(model, examples: list, micro: int, pad_id: int, device, amp, with_ci: bool = False,
             task=None) -> dict:
    scored = (task or CausalLM()).score(model, examples, micro, pad_id, device, amp)
    return ev.with_intervals(scored) if with_ci else ev.metrics(scored)


# --- Batches ---------------------------------------------------------------------------------------------------

def step_batches(run: Run, step: int) -> tuple[list[dict], int, float]:
    """This rank's micro-batches of optimizer step `step`, its real (non-padding) tokens and its loss
    normaliser (pinned host memory on CUDA, so the copies to the device run asynchronously)."""
    hp = run.job.spec.hyperparameters
    rows = rows_of_step(step, hp.batch_size, len(run.train_rows), hp.seed)[run.dist.rank:: run.dist.world]
    step_rows = [run.train_rows[i] for i in rows]
    pad = run.tok.pad_token_id
    batches = [run.task.collate(step_rows[j: j + run.micro], pad) for j in range(0, len(step_rows), run.micro)]
    if run.device.type == "cuda":
        batches = [{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]
    real_tokens = sum(len(r["input_ids"]) for r in step_rows)  # throughput never counts padding
    return batches, real_tokens, sum(run.task.targets(b) for b in batches)


class Prefetch:
    """Builds the next step's batches in a thread while this step computes (the rows of a step are a pure
    function of the step, so the next one is always known)."""

    def __init__(self, run: Run):
        from concurrent.futures import ThreadPoolExecutor

        self.run = run
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch") if run.settings.prefetch else None
        self.next = None  # (step, future)

    def take(self, step: int):
        if self.pool is None:
            return step_batches(self.run, step)
        ready = self.next[1] if self.next and self.next[0] == step else self.pool.submit(step_batches, self.run, step)
        self.next = (step + 1, self.pool.submit(step_batches, self.run, step + 1)) \
            if step + 1 < self.run.total else None
        return ready.result()

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown(wait=True, cancel_futures=True)


# --- The loop -------------------------------------------------------------------------------------------------

def train_steps(run: Run, state: RunState) -> None:
    """Optimizer steps until the end, early stopping, or SIGTERM (checkpoint, then Preempted on every rank)."""
    job, dist, hp, model = run.job, run.dist, run.job.spec.hyperparameters, run.model
    model.train()  # from_pretrained returns eval mode, where dropout and gradient checkpointing are off
    every_steps, every_minutes = job.spec.checkpoint.every_steps, job.spec.checkpoint.every_minutes
    sigterm = {"seen": False}
    signal.signal(signal.SIGTERM, lambda *_: sigterm.__setitem__("seen", True))
    peak = flops.peak_flops(torch.cuda.get_device_name(run.device)) if run.device.type == "cuda" else None
    per_token = flops.flops_per_token(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    last_ckpt = time.monotonic()
    # Rates and the ETA count only what this process did: a resumed run starts its clock at the checkpoint.
    step_started, first_step, first_tokens = time.monotonic(), state.step, state.tokens
    prefetch = Prefetch(run)
    try:
        while state.step < run.total:
            if run.unfreezer and (units := run.unfreezer.apply(state.step)) is not None:
                run.telemetry.log("unfreeze", step=state.step, trainable_units=units, of=len(run.unfreezer.units))
            batches, real_tokens, targets = prefetch.take(state.step)
            # The step's normaliser: target tokens (or examples' class weights) over every rank.
            (n_targets,) = dist.sum(targets)
            loss_sum = torch.zeros((), dtype=torch.float32, device=run.device)  # on the device: no sync per batch
            for k, batch in enumerate(batches):
                with parallel.no_sync(model, sync=k == len(batches) - 1):
                    s = run.task.losses(model, batch, run.device, run.amp).sum()
                    loss = s / n_targets * dist.world  # data parallelism averages gradients over the ranks
                    (run.scaler.scale(loss) if run.scaler else loss).backward()
                loss_sum += s.detach().float()
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
    finally:
        prefetch.close()
    run.ckpt.wait()
    state.stop_reason = state.stop_reason or (Reason.MAX_STEPS if hp.max_steps else Reason.EPOCHS)


def run_test(run: Run, state: RunState) -> tuple[int, dict, dict, list]:
    """Loads the weights to ship (the best step's with early stopping) and scores them: the shipped step, its
    validation metrics, the test report and the error analysis (rank 0's; empty elsewhere). Every rank scores its
    share of the validation and test rows."""
    shipped = state.step
    if run.job.spec.early_stopping and state.early.best_weights is not None:
        load_trainable(run.model, state.early.best_weights)
        shipped = state.early.best_step
    # The shipped weights were scored when they were current; scoring them again would give the same numbers.
    # Every rank scores its share (run.score); rank 0 reports.
    final = state.evals.get(shipped) or (ev.metrics(run.score(run.val)) if run.val else {})
    scored = run.score(run.test) if run.test else None
    if not (run.dist.main or run.sharded):
        return shipped, {}, {"test": {}}, []
    tested, errors = {"test": {}}, []
    if run.test:
        if run.dist.main:
            constant = run.task.constant_baseline(run.train_rows, run.test) if run.labels else None
            tested = ev.report(scored, state.baseline_test, constant, run.labels.names if run.labels else ())
            tested["headline"] = ev.headline(tested, state.early.metric)
            if run.job.spec.promotion is not None:  # the champion on the same rows, by rank 0 alone
                state.challenge = promotion.challenge(run.job, run.store, tested, state.early.metric,
                                                      lambda uri: (scored, score_champion(run, uri)))
            run.telemetry.test(tested)
        # Under FSDP every rank runs the error analysis's forwards (they gather shards); every rank holds the same
        # scores, so each picks the same worst examples.
        errors = run.task.errors(run.scorer, scored, run.test, ev.worst(scored), run.device, run.amp)
        parallel.reshard(run.model)
    state.samples["after"] = sample_answers(run)
    return shipped, final, tested, errors


def score_champion(run: Run, model_uri: str) -> ev.Scored:
    """The destination's champion scored on this run's test rows: the same tokenised rows, the same scoring and
    metric code as the run itself (the chunked loss's head is this run's model's, so the champion scores whole
    logits: the same numbers)."""
    from kubetune.trainer.model import load_model

    if run.sharded:
        raise promotion.NotComparable("scoring a champion in a sharded (FSDP) run is not supported yet")
    job, pad = run.job, run.tok.pad_token_id
    path = run.store.fetch(model_uri, "promotion champion")
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        source = job.spec.base_model.uri
        kw = {}
        if source.startswith("hf://"):
            source, kw = source.removeprefix("hf://"), {"revision": job.spec.base_model.revision}
        else:
            source = str(run.store.fetch(source, "baseModel.uri"))
        model = PeftModel.from_pretrained(load_model(job, source, kw, run.device, run.amp, pad, run.labels), path)
        model.to(run.device)
    else:
        model = load_model(job, str(path), {}, run.device, run.amp, pad, run.labels)
    task = run.task if run.labels else CausalLM(run.tok)
    try:
        return task.score(model, run.test, run.micro, pad, run.device, run.amp)
    except (RuntimeError, ValueError) as exc:
        raise promotion.NotComparable(f"the champion could not be scored on this run's rows: {exc}") from exc
    finally:
        del model


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
        result = join(job.spec.output.uri, run_id, promotion.RESULT_FILE)
        if job.spec.promotion is not None and store.exists(result, "output.uri"):
            previous["promotion"] = json.loads(store.get_text(result))
        return previous  # the same run finished already: nothing to do, nothing overwritten
    run = setup(job, run_id, settings, on_log)
    sigterm_handler = signal.getsignal(signal.SIGTERM)  # train_steps catches SIGTERM; a caller gets its own back
    try:
        state = resume(run)
        train_steps(run, state)
        shipped, final, tested, errors = run_test(run, state)
        summary = ship(run, state, shipped, final, tested, errors)
        if state.challenge is not None:  # after the run's own artifacts (rank 0): they are what gets copied
            summary["promotion"] = promotion.conclude(state.challenge, job, run.store, run_id, summary["specHash"],
                                                      run.run_uri)
            run.telemetry.log("promotion", **{k: summary["promotion"].get(k) for k in ("verdict", "reason",
                                                                                         "championRunId")})
            update_report(run, state, summary, errors)
        # The other ranks stay until rank 0 has tested and uploaded: under torchrun a job whose other workers
        # have exited is over (their agents leave, the pods complete) while rank 0 may still be uploading.
        run.dist.wait_for_main("testing and uploading the artifacts", settings.final_wait_minutes)
        return summary
    finally:
        signal.signal(signal.SIGTERM, sigterm_handler)
        dist_.close(run.dist)
