"""The operator's own Prometheus metrics: jobs by phase and namespace, each job's phase and reason, finished runs
by outcome and reason, GPU-seconds used, reconcile duration and errors, the time from a run's creation to Running
and the time Kueue kept it queued.

Everything is derived in observe() from the status the reconcile computed and the run's Job, so a metric never
disagrees with what `kubectl get ftj` shows."""
import threading
from datetime import datetime, timezone

from prometheus_client import Counter, Gauge, Histogram

from kubetune.api import FineTuneJobStatus

WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
GPU = "nvidia.com/gpu"

JOBS = Gauge("kubetune_operator_finetunejobs", "FineTuneJobs by phase", ["namespace", "phase"])
JOB_PHASE = Gauge("kubetune_operator_finetunejob_phase",
                  "1 for each FineTuneJob's current phase and reason (one series per job)",
                  ["namespace", "finetunejob", "phase", "reason"])
RUNS_FINISHED = Counter("kubetune_operator_runs_finished_total",
                        "Runs that ended, by outcome (Succeeded/Failed) and the condition's reason",
                        ["namespace", "phase", "reason"])
GPU_SECONDS = Counter("kubetune_operator_gpu_seconds_total",
                      "GPU-seconds of runs while Running (GPUs requested by the run's Job x time Running)",
                      ["namespace"])
GPUS_RUNNING = Gauge("kubetune_operator_gpus_running", "GPUs requested by Running runs", ["namespace"])
RECONCILE_SECONDS = Histogram("kubetune_operator_reconcile_duration_seconds", "Duration of one reconcile")
API_THROTTLED = Counter("kubetune_operator_api_throttled_total",
                        "API requests the API server answered 429 (API Priority and Fairness), each retry counted")
PROMOTIONS = Counter("kubetune_operator_promotions_total",
                     "Promotion verdicts of finished runs (spec.promotion): Promoted, Overridden, RolledBack, "
                     "Rejected or Conflict, with the Promoted condition's reason", ["namespace", "verdict", "reason"])
JOB_PROMOTION = Gauge("kubetune_operator_finetunejob_promotion",
                      "1 for each FineTuneJob's current promotion verdict and the Promoted condition's reason (one "
                      "series per job with spec.promotion, once its run is judged)",
                      ["namespace", "finetunejob", "verdict", "reason"])
RECONCILE_ERRORS = Counter("kubetune_operator_reconcile_errors_total", "Reconciles that raised", ["error"])
TIME_TO_RUNNING = Histogram("kubetune_operator_time_to_running_seconds",
                            "From a run's Job creation to its trainer running", buckets=WAIT_BUCKETS)
QUEUE_WAIT = Histogram("kubetune_operator_queue_wait_seconds",
                       "How long a run's Job waited suspended for admission (Kueue)", buckets=WAIT_BUCKETS)

_phases: dict[tuple[str, str], str] = {}
_labels: dict[tuple[str, str], tuple[str, str]] = {}  # (namespace, name) -> (phase, reason) now exported
_running: dict[tuple[str, str], tuple[str, datetime, int]] = {}  # -> (run id, counted up to, GPUs)
_last: dict[tuple[str, str], tuple[str | None, str | None]] = {}  # -> (run id, phase) this process last observed
_lock = threading.Lock()


def _publish() -> None:
    counts: dict[tuple[str, str], int] = {}
    for (namespace, _), phase in _phases.items():
        counts[(namespace, phase)] = counts.get((namespace, phase), 0) + 1
    JOBS.clear()
    for (namespace, phase), n in counts.items():
        JOBS.labels(namespace, phase).set(n)
    gpus: dict[str, int] = {}
    for (namespace, _), (_, _, n) in _running.items():
        gpus[namespace] = gpus.get(namespace, 0) + n
    GPUS_RUNNING.clear()
    for namespace, n in gpus.items():
        GPUS_RUNNING.labels(namespace).set(n)


def _set_phase(namespace: str, name: str, phase: str, reason: str) -> None:
    old = _labels.get((namespace, name))
    if old == (phase, reason):
        return
    if old:
        JOB_PHASE.remove(namespace, name, *old)
    _labels[(namespace, name)] = (phase, reason)
    JOB_PHASE.labels(namespace, name, phase, reason).set(1)


def forget(namespace: str, name: str) -> None:
    with _lock:
        _phases.pop((namespace, name), None)
        old = _labels.pop((namespace, name), None)
        if old:
            JOB_PHASE.remove(namespace, name, *old)
        _last.pop((namespace, name), None)
        _verdicts.pop((namespace, name), None)
        old = _promotion_labels.pop((namespace, name), None)
        if old:
            JOB_PROMOTION.remove(namespace, name, *old)
        _stop_counting((namespace, name), datetime.now(timezone.utc))
        _publish()


def _seconds_since(stamp: str | None, until: datetime) -> float | None:
    if not stamp:
        return None
    return (until - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()


def gpus_of(child: dict | None, resource: str = GPU) -> int:
    """GPUs a run's Job holds while it runs: the pod's limits of `resource` (spec.resources.gpuResourceName: AMD's,
    a MIG slice...) times its parallel pods (nodes)."""
    if not child:
        return 0
    spec = child.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    per_pod = sum(int((c.get("resources", {}).get("limits") or {}).get(resource, 0)) for c in pod.get("containers", []))
    return per_pod * int(spec.get("parallelism") or 1)


def _stop_counting(key: tuple[str, str], until: datetime) -> None:
    run = _running.pop(key, None)
    if run:
        _, since, gpus = run
        GPU_SECONDS.labels(key[0]).inc(max((until - since).total_seconds(), 0.0) * gpus)


def _count_gpu_time(key: tuple[str, str], status: FineTuneJobStatus, child: dict | None, now: datetime,
                    resource: str) -> None:
    """Adds GPU-seconds since the last observation while a run is Running; a run that ended is counted up to its
    completion time. Time while the operator was down (or on standby) before a restart is not counted."""
    tracked = _running.get(key)
    if tracked and (tracked[0] != status.run_id or status.phase != "Running"):
        end = status.completion_time if tracked[0] == status.run_id and status.completion_time else now
        _stop_counting(key, min(end, now))
        tracked = None
    if status.phase == "Running":
        gpus = gpus_of(child, resource)
        if tracked:
            GPU_SECONDS.labels(key[0]).inc(max((now - tracked[1]).total_seconds(), 0.0) * tracked[2])
        else:
            GPU_SECONDS.labels(key[0])  # exported at 0 from the start, so increase() sees the first seconds
        _running[key] = (status.run_id or "", now, gpus)


_verdicts: dict[tuple[str, str], tuple[str | None, str | None]] = {}  # -> (run id, verdict) counted last


_promotion_labels: dict[tuple[str, str], tuple[str, str]] = {}  # -> (verdict, reason) now exported


def _count_promotion(namespace: str, name: str, prior: FineTuneJobStatus | None, status: FineTuneJobStatus) -> None:
    """Exports the current verdict (a gauge an alert can follow, like the phase's) and counts a run's verdict once:
    when it first appears on the status (this process's memory first, else the stored status)."""
    verdict = status.promotion.verdict if status.promotion else None
    key = (namespace, name)
    promoted = next((c for c in status.conditions if c.type == "Promoted"), None)
    labels = (verdict, promoted.reason if promoted else "") if verdict else None
    with _lock:
        old = _promotion_labels.get(key)
        if old != labels:
            if old:
                JOB_PROMOTION.remove(namespace, name, *old)
            if labels:
                _promotion_labels[key] = labels
                JOB_PROMOTION.labels(namespace, name, *labels).set(1)
            else:
                _promotion_labels.pop(key, None)
        if verdict is None:
            return
        seen = _verdicts.get(key)
        _verdicts[key] = (status.run_id, verdict)
    stored = prior.promotion.verdict if prior and prior.promotion and prior.run_id == status.run_id else None
    was = seen[1] if seen and seen[0] == status.run_id else stored
    if verdict != was:
        PROMOTIONS.labels(namespace, verdict, promoted.reason if promoted else "").inc()


def observe(namespace: str, name: str, prior: FineTuneJobStatus | None, status: FineTuneJobStatus,
            child: dict | None, gpu_resource: str = GPU) -> None:
    now = datetime.now(timezone.utc)
    ready = next((c for c in status.conditions if c.type == "Ready"), None)
    key = (namespace, name)
    with _lock:
        _phases[key] = status.phase or "Pending"
        _set_phase(namespace, name, status.phase or "Pending", ready.reason if ready else "")
        _count_gpu_time(key, status, child, now, gpu_resource)
        _publish()
        # The phase before this reconcile: what this process saw last (the object `prior` comes from may be a cache
        # a status write has not reached yet), else, after a restart, the stored status.
        seen = _last.get(key)
        _last[key] = (status.run_id, status.phase)
    if seen and seen[0] == status.run_id:
        was = seen[1]
    else:
        was = prior.phase if prior and prior.run_id == status.run_id else None
    _count_promotion(namespace, name, prior, status)
    if status.phase in ("Succeeded", "Failed") and status.phase != was:
        RUNS_FINISHED.labels(namespace, status.phase, ready.reason if ready else "").inc()
    if child is None or status.phase == was:
        return
    created = child["metadata"].get("creationTimestamp")
    if status.phase == "Running" and was in (None, "Pending", "Queued"):
        waited = _seconds_since(created, now)
        if waited is not None:
            TIME_TO_RUNNING.observe(max(waited, 0.0))
    if was == "Queued" and status.phase not in ("Queued", "Suspended"):
        # The Job's startTime marks the admission; the first reconcile after it may come before the Job controller
        # wrote it, and is never repeated (`was` is no longer Queued), so that moment stands in for it.
        start = child.get("status", {}).get("startTime")
        waited = _seconds_since(created, datetime.fromisoformat(start.replace("Z", "+00:00")) if start else now)
        if waited is not None:
            QUEUE_WAIT.observe(max(waited, 0.0))


# --- Sweeps ------------------------------------------------------------------------------------------------

SWEEP_TRIALS = Gauge("kubetune_operator_sweep_trials", "Trials of each FineTuneSweep by phase",
                     ["namespace", "finetunesweep", "phase"])
SWEEP_TRIAL_OBJECTIVE = Gauge(
    "kubetune_operator_sweep_trial_objective",
    "Each finished trial's objective (bound value) and its 95% interval (low, high); vs_best: best, "
    "indistinguishable (intervals overlap), worse (apart) or unknown (no interval)",
    ["namespace", "finetunesweep", "trial", "bound", "vs_best"])
SWEEP_TRIALS_PRUNED = Counter("kubetune_operator_sweep_trials_pruned_total",
                              "Trials the operator pruned (suspended on their live eval loss)", ["namespace"])
TRIAL_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Pruned")
_sweep_series: dict[tuple[str, str], set[tuple[str, str, str]]] = {}  # -> (trial, bound, vs_best) exported


def observe_sweep(namespace: str, name: str, status) -> None:
    """The sweep's trials by phase and each scored trial's objective with its interval, as its status says
    (`status`: a FineTuneSweepStatus)."""
    counts = {phase: 0 for phase in TRIAL_PHASES}
    series: dict[tuple[str, str, str], float] = {}
    best = status.best.name if status.best else None
    for t in status.trials:
        counts[t.phase] = counts.get(t.phase, 0) + 1
        if t.objective is None or t.rank is None:
            continue
        vs = ("best" if t.name == best else "unknown" if t.indistinguishable_from_best is None
              else "indistinguishable" if t.indistinguishable_from_best else "worse")
        series[(t.name, "value", vs)] = t.objective
        if t.interval is not None:
            series[(t.name, "low", vs)], series[(t.name, "high", vs)] = t.interval.low, t.interval.high
    with _lock:
        for phase, n in counts.items():
            SWEEP_TRIALS.labels(namespace, name, phase).set(n)
        SWEEP_TRIALS_PRUNED.labels(namespace)  # exported at 0 from the first sweep, so increase() sees the first
        for gone in _sweep_series.get((namespace, name), set()) - set(series):
            SWEEP_TRIAL_OBJECTIVE.remove(namespace, name, *gone)
        for labels, value in series.items():
            SWEEP_TRIAL_OBJECTIVE.labels(namespace, name, *labels).set(value)
        _sweep_series[(namespace, name)] = set(series)


def forget_sweep(namespace: str, name: str) -> None:
    with _lock:
        for labels in _sweep_series.pop((namespace, name), set()):
            SWEEP_TRIAL_OBJECTIVE.remove(namespace, name, *labels)
        for phase in TRIAL_PHASES:
            try:
                SWEEP_TRIALS.remove(namespace, name, phase)
            except KeyError:
                pass
