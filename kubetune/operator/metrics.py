"""The operator's own Prometheus metrics: jobs by phase and namespace, reconcile duration and errors, the time
from a run's creation to Running and the time Kueue kept it queued."""
import threading
from datetime import datetime, timezone

from prometheus_client import Counter, Gauge, Histogram

from kubetune.api import FineTuneJobStatus

WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)

JOBS = Gauge("kubetune_operator_finetunejobs", "FineTuneJobs by phase", ["namespace", "phase"])
RECONCILE_SECONDS = Histogram("kubetune_operator_reconcile_duration_seconds", "Duration of one reconcile")
RECONCILE_ERRORS = Counter("kubetune_operator_reconcile_errors_total", "Reconciles that raised", ["error"])
TIME_TO_RUNNING = Histogram("kubetune_operator_time_to_running_seconds",
                            "From a run's Job creation to its trainer running", buckets=WAIT_BUCKETS)
QUEUE_WAIT = Histogram("kubetune_operator_queue_wait_seconds",
                       "How long a run's Job waited suspended for admission (Kueue)", buckets=WAIT_BUCKETS)

_phases: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def _publish() -> None:
    counts: dict[tuple[str, str], int] = {}
    for (namespace, _), phase in _phases.items():
        counts[(namespace, phase)] = counts.get((namespace, phase), 0) + 1
    JOBS.clear()
    for (namespace, phase), n in counts.items():
        JOBS.labels(namespace, phase).set(n)


def forget(namespace: str, name: str) -> None:
    with _lock:
        _phases.pop((namespace, name), None)
        _publish()


def _seconds_since(stamp: str | None, until: datetime) -> float | None:
    if not stamp:
        return None
    return (until - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()


def observe(namespace: str, name: str, prior: FineTuneJobStatus | None, status: FineTuneJobStatus,
            child: dict | None) -> None:
    with _lock:
        _phases[(namespace, name)] = status.phase or "Pending"
        _publish()
    was = prior.phase if prior and prior.run_id == status.run_id else None
    if child is None or status.phase == was:
        return
    now = datetime.now(timezone.utc)
    created = child["metadata"].get("creationTimestamp")
    if status.phase == "Running" and was in (None, "Pending", "Queued"):
        waited = _seconds_since(created, now)
        if waited is not None:
            TIME_TO_RUNNING.observe(max(waited, 0.0))
    if was == "Queued" and status.phase not in ("Queued", "Suspended"):
        start = child.get("status", {}).get("startTime")
        waited = _seconds_since(created, datetime.fromisoformat(start.replace("Z", "+00:00"))) if start else None
        if waited is not None:
            QUEUE_WAIT.observe(max(waited, 0.0))
