"""FineTuneJob status from what is observed, level-based: a pure function of the resource (with its previous
status), the current run's Job and Pods, and the trainer's latest metrics. No I/O; the same inputs always give
the same status, so a restarted operator continues where the last one stopped.
"""
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from kubetune.api import Condition, ConditionType, FineTuneJob, FineTuneJobStatus, Reason, contract
from kubetune.api.status import (Artifacts, BestMetric, Comparison, EvalPoint, Metrics, Progress, PromotionReason,
                                 PromotionStatus, RunRecord)
from kubetune.operator import kueue, promote_job
from kubetune.operator.labels import ANNOTATION_RESTART_REASON
from kubetune.operator.observed import failure_of, fatal_failure, job_condition, termination_json
from kubetune.operator.promote_job import unseen
from kubetune.operator.runs import Run

TERMINAL = ("Succeeded", "Failed")
ON_HOLD = ("Suspended", "Queued")
PULL_ERRORS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")


@dataclass(frozen=True)
class State:
    phase: str
    reason: str
    message: str
    stalled: bool = False
    """A refused or conflicting child holds the run back (a Warning event). Stalled=True only on a Failed run:
    otherwise the refusal is retried, so the Stalled condition stays False (Retrying) and Reconciling holds."""


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def pending_state(pods: list[dict]) -> State:
    for pod in pods:
        status = pod.get("status", {})
        for c in status.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                return State("Pending", Reason.UNSCHEDULABLE, c.get("message", ""))
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in PULL_ERRORS:
                return State("Pending", Reason.IMAGE_PULL_BACK_OFF, waiting.get("message") or waiting["reason"])
            if waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
                # e.g. CreateContainerConfigError: the storage.secretRef Secret or one of its keys is missing
                return State("Pending", waiting["reason"], waiting.get("message") or waiting["reason"])
    return State("Pending", Reason.PENDING, "waiting for the trainer pod to start")


def observe(job: FineTuneJob, child: dict | None, pods: list[dict], summary: dict | None,
            workload: dict | None = None, kueue_problem: tuple[str, str] | None = None) -> State:
    """`workload`: Kueue's Workload for the Job, when the run is queued and Kueue has made one; `kueue_problem`:
    why there is none (kueue.unavailable, kueue.missing)."""
    spec = job.spec
    if child is None and spec.suspend and spec.scheduling.queue_name:
        return State("Suspended", Reason.SUSPENDED, "spec.suspend is true: the run's Job is created, and queued in "
                                                    f"Kueue queue {spec.scheduling.queue_name}, once it is false")
    if child is None:
        return State("Pending", Reason.CREATED, "creating the trainer Job")
    if job_condition(child, "Complete") or job_condition(child, "SuccessCriteriaMet"):
        reason = (summary or {}).get("stopReason") or Reason.COMPLETED
        return State("Succeeded", reason, succeeded_message(summary))
    fatal = fatal_failure(pods)
    if fatal and not job_condition(child, "Failed"):
        return State("Failed", *fatal)
    failed = job_condition(child, "Failed") or job_condition(child, "FailureTarget")
    if failed:
        if failed.get("reason") == "DeadlineExceeded":
            return State("Failed", Reason.DEADLINE_EXCEEDED, failed.get("message", ""))
        causes = [f for f in map(failure_of, reversed(pods)) if f]
        if causes:
            reason, message = causes[0]
            if reason not in (Reason.OOM_KILLED, Reason.BAD_INPUT):
                reason = Reason.BACKOFF_LIMIT_EXCEEDED if failed.get("reason") == "BackoffLimitExceeded" else reason
            return State("Failed", reason, message)
        return State("Failed", failed.get("reason") or "Failed", failed.get("message", ""))
    if child.get("spec", {}).get("suspend"):
        if spec.suspend:
            return State("Suspended", Reason.SUSPENDED, "spec.suspend is true")
        if spec.scheduling.queue_name:
            return State(*kueue.waiting(spec.scheduling.queue_name, workload, kueue_problem))
        return State("Queued", Reason.QUEUED, "waiting for the Job to be resumed")
    if any(p.get("status", {}).get("phase") == "Running" for p in pods):
        return State("Running", Reason.RUNNING, "training")
    if any(p.get("status", {}).get("phase") == "Succeeded" for p in pods):
        # the trainer exited 0 and the Job controller has not declared the Job complete yet: not "Pending"
        return State("Running", Reason.RUNNING, "training")
    failures = [f for f in map(failure_of, pods) if f]
    if failures:
        reason, message = failures[-1]
        return State("Running", Reason.RESTARTING, f"retrying after {reason}: {message}"[:1000])
    return pending_state(pods)


def succeeded_message(summary: dict | None) -> str:
    if not summary:
        return "the trainer finished"
    loss = (summary.get("eval") or {}).get("loss")
    return (f"{summary.get('stopReason')} after {summary.get('steps')} steps"
            + (f", eval loss {loss:.4g}" if isinstance(loss, (int, float)) else ""))


def conditions(state: State, previous: list[Condition], generation: int | None, now: datetime) -> list[Condition]:
    """The seven conditions, each with its own reason and message (Kubernetes API conventions): one that holds
    carries the run's reason and message, one that does not says why not. Ready always carries the run's.

    kstatus (Flux `wait: true`) reads them as it reads a batch Job: InProgress while Reconciling (until the trainer
    starts, a retried refusal included), Current once the run runs, is held (Queued, Suspended) or has succeeded,
    Failed through Stalled, which holds only for what will not change without a change of the spec."""
    phase, reason, message = state.phase, state.reason, state.message[:1000]
    ended = phase in TERMINAL

    def unless(holds: bool, why_not: tuple[str, str]) -> tuple[bool, str, str]:
        return (True, reason, message) if holds else (False, *why_not)

    truth = {
        ConditionType.READY: (phase in ("Running", *ON_HOLD, "Succeeded"), reason, message),
        ConditionType.RECONCILING: unless(phase == "Pending", (
            (Reason.FINISHED, "the run has ended; a change of the training spec starts a new one") if ended else
            (Reason.RECONCILED, "the run's Job is in place; the operator follows it"))),
        ConditionType.STALLED: unless(phase == "Failed", (
            (Reason.RETRYING, f"the operator retries: {message}"[:1000]) if state.stalled else
            (Reason.AS_EXPECTED, "nothing stops the run"))),
        ConditionType.SUSPENDED: unless(phase in ON_HOLD, (
            Reason.NOT_SUSPENDED, "neither spec.suspend nor a queue holds the run")),
        ConditionType.RUNNING: unless(phase == "Running", (
            (Reason.FINISHED, "the run has ended") if ended else
            (Reason.HELD, "the run is held; no trainer runs") if phase in ON_HOLD else
            (Reason.NOT_STARTED, "the trainer has not started"))),
        ConditionType.SUCCEEDED: unless(phase == "Succeeded", (
            (Reason.RUN_FAILED, f"the run failed: {reason}") if phase == "Failed" else
            (Reason.NOT_FINISHED, "the run has not finished"))),
        ConditionType.FAILED: unless(phase == "Failed", (Reason.AS_EXPECTED, "the run has not failed")),
    }
    return settled(truth, previous, generation, now)


def settled(truth: dict, previous: list[Condition], generation: int | None, now: datetime) -> list[Condition]:
    """Conditions from {type: (holds, reason, message)}, FineTuneJob's and FineTuneSweep's alike."""
    before = {c.type: c for c in previous}
    out = []
    for kind, (holds, why, text) in truth.items():
        status = "True" if holds else "False"
        old = before.get(kind)
        # Kubernetes convention: the transition time moves only when the status does.
        since = old.last_transition_time if old and old.status == status else now
        out.append(Condition(type=kind, status=status, reason=why, message=text,
                             last_transition_time=since, observed_generation=generation))
    return out


def floats(values: dict | None) -> dict[str, float] | None:
    clean = {k: float(v) for k, v in (values or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return clean or None


def comparisons(lines: list | None) -> list[Comparison] | None:
    """The trainer's headline comparisons; a malformed line is left out rather than failing the status."""
    parsed = []
    for line in lines or []:
        try:
            parsed.append(Comparison.model_validate(line))
        except ValidationError:
            continue
    return parsed or None


def eval_curve(kept: list[EvalPoint] | None, served: list[tuple[int, float]],
               limit: int = contract.EVAL_HISTORY_POINTS) -> list[EvalPoint]:
    """The kept evaluations with the served ones, by step (a resumed run evaluates a step again: the newer value),
    the newest `limit`: the trainer serves its recent ones only, the status keeps the curve."""
    by_step = {p.step: p.value for p in kept or []} | {int(step): float(loss) for step, loss in served}
    newest = sorted(by_step.items())[-limit:]
    return [EvalPoint(step=step, value=loss) for step, loss in newest]


def live_metrics(previous: Metrics | None, sample: dict | None, summary: dict | None) -> Metrics | None:
    m = (previous or Metrics()).model_copy()
    if sample and sample.get("step"):  # before the first step the trainer's gauges read 0, which is no loss
        for key in ("train_loss", "eval_loss", "tokens_per_second", "learning_rate"):
            if sample.get(key) is not None:
                setattr(m, key, sample[key])
        if sample.get("best"):
            name, value = sample["best"]
            m.best = BestMetric(name=name, value=value, step=(m.best.step if m.best else 0))
        if sample.get("eval_losses"):
            m.eval_losses = eval_curve(m.eval_losses, sample["eval_losses"])
    if summary:
        ev = summary.get("eval") or {}
        m.eval_loss = ev.get("loss", m.eval_loss)
        best = summary.get("best")
        if best and best.get("value") is not None:
            m.best = BestMetric(name=best["name"], value=best["value"], step=best.get("step") or 0)
        m.baseline = floats(summary.get("baseline")) or m.baseline
        m.test = floats(summary.get("test")) or m.test
        m.comparisons = comparisons(summary.get("headline")) or m.comparisons
    return m if m != Metrics() else None


def progress_of(previous: Progress | None, sample: dict | None, summary: dict | None, phase: str) -> Progress | None:
    if summary:
        total = summary.get("totalSteps")
        return Progress(step=summary.get("steps", 0), total_steps=total, epoch=summary.get("epochs"), percent=100,
                        eta_seconds=0)
    if sample and sample.get("step") is not None:
        step, total = int(sample["step"]), sample.get("total_steps")
        total = int(total) if total else None
        percent = min(100, int(100 * step / total)) if total else 0
        eta = sample.get("eta_seconds") if step else None  # no estimate before the first step
        return Progress(step=step, total_steps=total, epoch=sample.get("epoch"), percent=percent,
                        eta_seconds=int(eta) if eta is not None and phase == "Running" else None)
    return previous


PROMOTED_VERDICTS = ("Promoted", "Overridden")


def promotion_of(job: FineTuneJob, summary: dict | None, prior: PromotionStatus | None) -> PromotionStatus | None:
    """status.promotion: the trainer's verdict (its termination message's `promotion`), kept once seen; None
    without spec.promotion. A malformed verdict is left out rather than failing the status. A verdict on the status
    that names another override than the run's (the promotion Job's, promote_job.py) is not replaced by the run's
    own again."""
    if job.spec.promotion is None:
        return None
    found = (summary or {}).get("promotion")
    if isinstance(found, dict) and found.get("verdict"):
        try:
            verdict = PromotionStatus.model_validate({k: v for k, v in found.items() if k not in ("metric", "reason")})
        except ValidationError:
            return prior
        if prior is not None and prior.override is not None and prior.override != verdict.override:
            return prior  # a promotion Job carried out a later override: its verdict replaced the run's
        return verdict
    return prior


def promoted_condition(job: FineTuneJob, promotion: PromotionStatus | None, reason: str | None, phase: str,
                       run_id: str, previous: list[Condition], now: datetime) -> Condition | None:
    """The Promoted condition (spec.promotion only): True once the run is the destination's champion; False with
    the verdict's reason when it is not (a verdict, not a failure: the run Succeeded); Unknown until judged."""
    if job.spec.promotion is None:
        return None
    if promotion is not None:
        holds = promotion.verdict in PROMOTED_VERDICTS or (promotion.verdict == "RolledBack"
                                                          and promotion.champion_run_id == run_id)
        status = "True" if holds else "False"
        why = reason or {"Promoted": PromotionReason.PROMOTED, "Overridden": PromotionReason.OVERRIDDEN,
                         "RolledBack": PromotionReason.ROLLED_BACK, "Conflict": PromotionReason.LOST_RACE,
                         }.get(promotion.verdict, PromotionReason.GATE_FAILED)
        text = f"{promotion.verdict} at {promotion.destination}: " + "; ".join(promotion.reasons)
    elif phase in TERMINAL:
        status, why, text = "False", PromotionReason.NO_VERDICT, f"the run {phase.lower()} without a promotion verdict"
    else:
        status, why, text = "Unknown", PromotionReason.PENDING, "the run is judged once its test scoring is done"
    old = next((c for c in previous if c.type == ConditionType.PROMOTED), None)
    since = old.last_transition_time if old and old.status == status else now
    return Condition(type=ConditionType.PROMOTED, status=status, reason=why, message=text[:1000],
                     last_transition_time=since, observed_generation=job.metadata.generation)


OVERRIDE_NOTES = (PromotionReason.OVERRIDE_AFTER_RUN, PromotionReason.OVERRIDE_IN_PROGRESS,
                  PromotionReason.OVERRIDE_FAILED)
"""Reasons of the Promoted condition that speak of a late override, not of the verdict."""


def override_after_run(job: FineTuneJob, promotion: PromotionStatus | None, phase: str,
                       run_override: str | None = None) -> str | None:
    """The message when spec.promotion.override is not the override the ended run saw (promote_job.unseen), else
    None: a promotion Job carries it out (promote_job.py)."""
    if not unseen(job, promotion, phase, run_override):
        return None
    o = job.spec.promotion.override
    verdict = (f"this run's verdict until then: {promotion.verdict} at {promotion.destination}" if promotion
               else "this run has no verdict yet")
    return (f"spec.promotion.override ({o.action} run {o.run_id}, requested by {o.requested_by}) came after this "
            f"run started: a promotion Job carries it out; {verdict}")


def override_done(job: FineTuneJob, promotion: PromotionStatus | None, phase: str, run_override: str | None,
                  override_job: promote_job.Observed | None) -> dict | None:
    """The outcome of the promotion Job that carried out the override the run did not see, once it has."""
    if override_job is None or not unseen(job, promotion, phase, run_override):
        return None
    return override_job.outcome()


def note_override(job: FineTuneJob, status: FineTuneJobStatus, previous: list[Condition], run_id: str,
                  now: datetime, events: list, override_job: promote_job.Observed | None = None) -> None:
    """The Promoted condition of `status`, in place, while spec.promotion.override is one the ended run did not
    see: OverrideInProgress (a Normal event) until its promotion Job reports, OverrideFailed (False, a Warning
    event with the pod's message) when that Job failed; once per message. The verdict's own reason once the
    override is carried out or gone again."""
    at = next((i for i, c in enumerate(status.conditions) if c.type == ConditionType.PROMOTED), None)
    if at is None:
        return
    late = override_after_run(job, status.promotion, status.phase, status.run_override)
    current = status.conditions[at]
    if late is None:
        if current.reason in OVERRIDE_NOTES:
            status.conditions[at] = promoted_condition(job, status.promotion, None, status.phase, run_id, previous,
                                                       now)
        return
    name = override_job.name if override_job else promote_job.job_name(job, run_id)
    failure = override_job.failure() if override_job else None
    was = next((c for c in previous if c.type == ConditionType.PROMOTED), None)
    if failure is not None:
        noted = current.model_copy(update={"status": "False", "reason": PromotionReason.OVERRIDE_FAILED,
                                           "message": promote_job.failed_message(name, failure)})
    elif was is not None and promote_job.failed_before(previous, name):
        noted = current.model_copy(update={"status": was.status, "reason": was.reason, "message": was.message})
    else:
        noted = current.model_copy(update={"reason": PromotionReason.OVERRIDE_IN_PROGRESS,
                                           "message": f"{late} (Job {name})"[:1000]})
    if noted.status != current.status:
        noted.last_transition_time = was.last_transition_time if was and was.status == noted.status else now
    if was is None or (was.reason, was.message) != (noted.reason, noted.message):
        warn = noted.reason == PromotionReason.OVERRIDE_FAILED
        events.append(Event("Warning" if warn else "Normal", noted.reason, noted.message))
    status.conditions[at] = noted


def promotion_event(prior: PromotionStatus | None, promotion: PromotionStatus | None, reason: str | None,
                    run_id: str) -> Event | None:
    """One event per verdict: Normal for a promotion or a rollback, Warning for a refused or outraced run."""
    if promotion is None or (prior is not None and prior.verdict == promotion.verdict
                             and prior.override == promotion.override):
        return None
    good = promotion.verdict in (*PROMOTED_VERDICTS, "RolledBack")
    head = {"Promoted": f"run {run_id} promoted to {promotion.destination}",
            "Overridden": f"run {run_id} promoted to {promotion.destination} by override ({promotion.requested_by})",
            "RolledBack": f"{promotion.destination} rolled back to run {promotion.champion_run_id}",
            "Conflict": f"run {run_id} not promoted: another run promoted to {promotion.destination} first",
            "Rejected": f"run {run_id} not promoted to {promotion.destination}"}[promotion.verdict]
    if promotion.replaced_run_id and good:
        head += f", replacing run {promotion.replaced_run_id}"
    return Event("Normal" if good else "Warning", reason or promotion.verdict,
                 (head + (": " + "; ".join(promotion.reasons) if promotion.reasons else ""))[:1000])


def archive(previous: FineTuneJobStatus) -> RunRecord:
    """The record of a run that a spec change replaced (or that had ended)."""
    m = previous.metrics
    return RunRecord(generation=int(previous.run_id.split("-")[0][1:]), job_name=previous.job_name or "",
                     phase=previous.phase or "Pending",
                     reason=(next((c.reason for c in previous.conditions if c.type == ConditionType.READY), None)
                             if previous.phase in TERMINAL else Reason.SPEC_CHANGED),
                     start_time=previous.start_time, completion_time=previous.completion_time,
                     eval_loss=m.eval_loss if m else None,
                     artifacts_uri=previous.artifacts.uri if previous.artifacts else None)


def ended(prior: FineTuneJobStatus) -> State | None:
    """A run that ended stays as it ended. Its verdict may rest on evidence that goes (an OOM-killed pod that PodGC
    or a person removes, the Job's TTL): the pods and the Job seen later must not turn it back into a held,
    queued or running run, which plan.py would then release."""
    if prior.phase not in TERMINAL:
        return None
    said = next((c for c in prior.conditions if c.type == prior.phase), None) or next(
        (c for c in prior.conditions if c.type == ConditionType.READY), None)
    return State(prior.phase, said.reason if said else prior.phase, said.message if said else "")


def rerun_token(job: FineTuneJob, prior: FineTuneJobStatus, same_run: bool, rerun: bool, started: bool,
                events: list[Event]) -> str | None:
    """status.rerunToken: spec.rerunToken once acted on. A rerun's once `started`: its Job exists, or the API
    server refused it (the status says why; asking again would only name another attempt); until then plan.py
    still asks for it. A new value for a run that has not failed is recorded as declined, with an event saying
    why (an object's first value, or one that comes with a new run, needs no rerun and no event)."""
    token, before = job.spec.rerun_token, prior.rerun_token
    if not token or token == before:
        return before
    if rerun:
        return token if started else before
    if same_run and prior.run_id:
        why = ("succeeded: a rerun would write over its model (change a training field to train again)"
               if prior.phase == "Succeeded" else f"is {prior.phase or 'Pending'}, not Failed: nothing to rerun "
               "(set a new value once it has failed)")
        events.append(Event("Normal", Reason.RERUN_IGNORED, f"spec.rerunToken {token!r} declined: the run {why}"))
    return token


def compute_status(job: FineTuneJob, run: Run, child: dict | None, pods: list[dict], sample: dict | None,
                   now: datetime, max_runs: int = 10, problem: State | None = None, workload: dict | None = None,
                   kueue_problem: tuple[str, str] | None = None, override_job: promote_job.Observed | None = None
                   ) -> tuple[FineTuneJobStatus, list[Event]]:
    """The status to write and the events to post (one per change of phase or reason). `problem` is what
    stopped the reconcile from carrying out its plan (a refused or conflicting child); it wins over what the
    Job says. `override_job`: the promotion Job of spec.promotion.override for this run (promote_job.py), when
    the run has ended and the override is one it did not see."""
    prior = job.status or FineTuneJobStatus()
    same_run = prior.run_id == run.run_id  # a run id names one generation of one object: one identity
    # The override the run's Job was given: recorded while its Job is made (from the spec it is built from), then
    # kept; a new Job (a new run, a rerun, a replaced Job) is given the spec's. An earlier operator's run: unknown.
    made = same_run and prior.job_name == run.job_name and (child is not None or prior.phase in TERMINAL)
    run_override = prior.run_override if made else promote_job.given(job)
    runs = list(prior.runs)
    events: list[Event] = []
    # A rerun (spec.rerunToken, plan.py): the run that ended on one Job goes on on another.
    rerun = same_run and prior.phase in TERMINAL and bool(prior.job_name) and prior.job_name != run.job_name
    token = rerun_token(job, prior, same_run, rerun, child is not None or problem is not None, events)
    if rerun and child is not None:
        events.append(Event("Normal", Reason.RERUN, (
            f"spec.rerunToken {token!r}: attempt {run.attempt} of run {run.run_id} (Job {run.job_name}) resumes "
            f"from its last checkpoint after Job {prior.job_name} failed")[:1000]))
        # The counts are the new Job's, as its backoffLimit is; what the run has learnt stays.
        prior = prior.model_copy(update={"attempts": 0, "restarts": 0, "failures": 0, "completion_time": None,
                                         "stop_reason": None})
    if not same_run:
        if prior.run_id:
            runs = [archive(prior), *runs][:max_runs]
            events.append(Event("Normal", Reason.SPEC_CHANGED,
                                f"the training spec changed: run {run.run_id} replaces {prior.run_id}"))
        prior = FineTuneJobStatus(runs=runs)
    elif child is None and prior.phase in TERMINAL and problem is None:
        # The Job's TTL removed it; the outcome stays on the status, which still describes the latest spec
        # (an in-place edit after the end must not leave kstatus reading an old observedGeneration forever).
        generation = job.metadata.generation
        status = prior.model_copy(update={"observed_generation": generation, "rerun_token": token, "conditions": [
            c.model_copy(update={"observed_generation": generation}) for c in prior.conditions]})
        done = override_done(job, prior.promotion, prior.phase, prior.run_override, override_job)
        if done is not None:  # the verdict is the promotion Job's now: the condition and the event follow it
            status.promotion = promotion_of(job, {"promotion": done}, None) or prior.promotion
            at = next((i for i, c in enumerate(status.conditions) if c.type == ConditionType.PROMOTED), None)
            promoted = promoted_condition(job, status.promotion, done.get("reason"), status.phase, run.run_id,
                                          prior.conditions, now)
            if promoted is not None:
                status.conditions = [*status.conditions[:at], promoted, *status.conditions[at + 1:]] \
                    if at is not None else [*status.conditions, promoted]
            said = promotion_event(prior.promotion, status.promotion, done.get("reason"), run.run_id)
            events += [said] if said is not None else []
        note_override(job, status, prior.conditions, run.run_id, now, events, override_job)
        return status, events

    summary = next((s for s in map(termination_json, pods) if s and "stopReason" in s), None)
    state = problem or (ended(prior) if same_run and not rerun else None) or observe(
        job, child, pods, summary, workload, kueue_problem)
    if run.attempt > 1 and state.reason in (Reason.PENDING, Reason.CREATED):
        # a gang's next attempt whose pods have not started yet: still the run restarting, not a new start
        why = ((child or {}).get("metadata", {}).get("annotations") or {}).get(ANNOTATION_RESTART_REASON)
        state = State("Running", Reason.RESTARTING, (f"{'gang ' if job.spec.nodes > 1 else ''}attempt {run.attempt} "
                                                     "is starting"
                                                     + (f" after: {why}" if why else ""))[:1000])
    child_status = (child or {}).get("status", {})
    starts = [parse_time(p.get("status", {}).get("startTime")) for p in pods]
    start = prior.start_time or parse_time(child_status.get("startTime")) or min(filter(None, starts), default=None)
    end = parse_time(child_status.get("completionTime"))
    if state.phase in TERMINAL and not end:
        # The Job's terminal condition can come before its completionTime (SuccessCriteriaMet, FailureTarget):
        # a terminal status is complete in the write that makes it terminal.
        end = prior.completion_time or now
    # A deleted pod leaves the API at once; the Job still counts it (and the status keeps the highest count seen).
    counted = sum(int(child_status.get(k) or 0) for k in ("active", "succeeded", "failed"))
    attempts = max(len(pods), counted, prior.attempts)
    restarts, failures = max(0, attempts - job.spec.nodes), int(child_status.get("failed") or 0)
    if job.spec.nodes > 1:  # a gang: attempts are its Jobs, and the operator counts the failures (gang.py)
        attempts, restarts, failures = run.attempt, run.attempt - 1, run.failures
    output = f"{job.spec.output.uri.rstrip('/')}/{run.run_id}"
    artifacts = Artifacts(uri=output, checkpoint_uri=f"{output}/{contract.CHECKPOINTS_DIR}/")
    if summary and summary.get("artifacts"):
        a = summary["artifacts"]
        artifacts = Artifacts(uri=a.get("uri", output), model_uri=a.get("modelUri"), merged_uri=a.get("mergedUri"),
                              summary_uri=a.get("summaryUri"), report_uri=a.get("reportUri"), checkpoint_uri=None)
    status = FineTuneJobStatus(
        observed_generation=job.metadata.generation, phase=state.phase,
        conditions=conditions(state, prior.conditions, job.metadata.generation, now),
        job_name=run.job_name, run_id=run.run_id, spec_hash=run.spec_hash,
        start_time=start, completion_time=end if state.phase in TERMINAL else None,
        attempts=attempts, restarts=restarts, failures=failures,
        progress=progress_of(prior.progress, sample, summary, state.phase),
        metrics=live_metrics(prior.metrics, sample, summary),
        stop_reason=(summary or {}).get("stopReason") or prior.stop_reason,
        artifacts=artifacts, runs=runs, rerun_token=token,
        promotion=promotion_of(job, summary, prior.promotion), run_override=run_override)
    from_run = status.promotion is not prior.promotion  # a new verdict, the run's own: its reason comes with it
    verdict_reason = ((summary or {}).get("promotion") or {}).get("reason") if summary and from_run else None
    done = override_done(job, status.promotion, state.phase, status.run_override, override_job)
    if done is not None:  # the promotion Job carried out the override the run did not see: its verdict now
        status.promotion = promotion_of(job, {"promotion": done}, None) or status.promotion
        verdict_reason = done.get("reason")
    if verdict_reason is None:
        verdict_reason = next((c.reason for c in prior.conditions if c.type == ConditionType.PROMOTED
                               and c.status != "Unknown" and c.reason not in OVERRIDE_NOTES), None)
    promoted = promoted_condition(job, status.promotion, verdict_reason, state.phase, run.run_id, prior.conditions,
                                  now)
    if promoted is not None:
        status.conditions.append(promoted)
        note_override(job, status, prior.conditions, run.run_id, now, events, override_job)
    said = promotion_event(prior.promotion, status.promotion, verdict_reason, run.run_id)
    if said is not None:
        events.append(said)
    was = next((c for c in prior.conditions if c.type == ConditionType.READY), None)
    if (not was or was.reason != state.reason or prior.phase != state.phase) and state.reason != Reason.PENDING:
        # (no event for the ordinary wait for a pod to start: JobCreated said it, and its problems have reasons)
        warn = state.phase == "Failed" or state.stalled or state.reason in (
            Reason.UNSCHEDULABLE, Reason.IMAGE_PULL_BACK_OFF, Reason.RESTARTING, Reason.KUEUE_UNAVAILABLE,
            Reason.KUEUE_FORBIDDEN, Reason.NO_WORKLOAD)
        events.append(Event("Warning" if warn else "Normal", state.reason,
                            f"{state.phase}: {state.message}" if state.message else state.phase))
    return status, events
