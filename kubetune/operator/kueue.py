"""What Kueue says about a queued run, read from its Workload (pure: no I/O).

Kueue's Job integration makes one Workload per Job (owned by it, labelled with the Job's uid). Admission
unsuspends the Job and adds the ResourceFlavor's node labels to its pod template; eviction (priority preemption,
a stopped queue, a deactivated Workload) suspends it again, and the trainer checkpoints on the SIGTERM. The
Workload's conditions say why a run waits; the FineTuneJob's status repeats them with the queue's name.
"""
from kubetune.api import Reason
from kubetune.operator.labels import ANNOTATION_DEACTIVATED, LABEL_KUEUE_JOB_UID

GROUP, VERSION, PLURAL = "kueue.x-k8s.io", "v1beta2", "workloads"


def condition(workload: dict, kind: str) -> dict | None:
    return next((c for c in (workload.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


def holds(workload: dict, kind: str) -> bool:
    return (condition(workload, kind) or {}).get("status") == "True"


def unavailable(status: int, message: str) -> tuple[str, str]:
    """(reason, message) when the API server refused to list Workloads: 404 or 403."""
    if status == 403:
        return Reason.KUEUE_FORBIDDEN, (f"the operator may not list Kueue Workloads ({message}); grant it get/list "
                                        f"on workloads.{GROUP} to see why the run waits")
    return Reason.KUEUE_UNAVAILABLE, (f"the API server serves no {GROUP}/{VERSION} Workloads ({message}): Kueue is "
                                      f"not installed, or serves another version; nothing will admit the run")


def missing(queue: str, waited_seconds: float) -> tuple[str, str]:
    """(reason, message) when Kueue has made no Workload for a queued Job in time (it does within a second when
    it manages the namespace)."""
    return Reason.NO_WORKLOAD, (
        f"Kueue made no Workload for the run's Job in {int(waited_seconds)} s: is its namespace one that Kueue "
        f"manages (managedJobsNamespaceSelector), and is Kueue running? Queue {queue}")


def waiting(queue: str, workload: dict | None, problem: tuple[str, str] | None = None) -> tuple[str, str, str]:
    """(phase, reason, message) of a run whose Job Kueue holds suspended; `problem`: why it has no Workload
    (`unavailable`, `missing`)."""
    if workload is None and problem is not None:
        return "Queued", *problem
    if workload is None:  # not created yet
        return "Queued", Reason.QUEUED, f"waiting for admission by Kueue queue {queue}"
    evicted = condition(workload, "Evicted") if holds(workload, "Evicted") else None
    if (workload.get("spec") or {}).get("active") is False:
        message = (evicted or {}).get("message") or "the Workload is deactivated"
        return "Suspended", Reason.DEACTIVATED, f"Kueue deactivated the run's Workload ({message}); queue {queue}"
    if evicted:
        preempted = condition(workload, "Preempted") if holds(workload, "Preempted") else None
        detail = evicted.get("message") or (preempted or {}).get("message") or ""
        # Kueue's own reason (apis/kueue/v1beta2/workload_types.go): Preempted, PodsReadyTimeout, AdmissionCheck,
        # ClusterQueueStopped, LocalQueueStopped...
        return "Queued", evicted.get("reason") or Reason.EVICTED, (
            f"evicted by Kueue ({detail}); waiting in queue {queue} to resume from the last checkpoint")
    if holds(workload, "Admitted"):
        return "Queued", Reason.ADMITTED, f"admitted by Kueue queue {queue}; starting"
    reserved = condition(workload, "QuotaReserved")
    if holds(workload, "QuotaReserved"):
        return "Queued", Reason.QUOTA_RESERVED, f"quota reserved in Kueue queue {queue}; waiting for admission checks"
    reason = (reserved or {}).get("reason")
    message = f"waiting for admission by Kueue queue {queue}"
    if reserved and reserved.get("message"):
        message += f": {reserved['message']}"
    # Inadmissible: the LocalQueue or its ClusterQueue is missing or stopped, or the run can never fit.
    return "Queued", Reason.INADMISSIBLE if reason == Reason.INADMISSIBLE else Reason.QUEUED, message


def look_again_seconds(workload: dict | None, job_age_seconds: float | None, no_workload_seconds: float,
                       resync_seconds: float) -> float:
    """When to read a queued run's Workload again. The operator watches no Workloads (Kueue's changes to them
    send it no event): within seconds while a new Job waits for Kueue to say why (or for the NoWorkload bound to
    pass), then at the resync interval."""
    young = job_age_seconds is not None and job_age_seconds < max(60.0, no_workload_seconds + 2)
    return 2.0 if young and not condition(workload or {}, "QuotaReserved") else resync_seconds


def workload_of(workloads: list[dict], job: dict) -> dict | None:
    """The newest Workload of a Job (Kueue keeps one per Job; a changed pod set may briefly leave two)."""
    uid = job["metadata"].get("uid")
    mine = [w for w in workloads if (w["metadata"].get("labels") or {}).get(LABEL_KUEUE_JOB_UID) == uid]
    return max(mine, key=lambda w: w["metadata"].get("creationTimestamp") or "", default=None)


def activation(suspend: bool, workload: dict | None) -> dict | None:
    """spec.suspend of a run that Kueue manages, as a patch of its Workload's `spec.active`. Suspending the Job
    would be undone (Kueue starts the suspended Job of an admitted Workload); an inactive Workload is evicted by
    Kueue, which suspends the Job itself, and is not admitted again until it is active."""
    if workload is None:
        return None
    active = (workload.get("spec") or {}).get("active", True) is not False
    ours = (workload["metadata"].get("annotations") or {}).get(ANNOTATION_DEACTIVATED) == "true"
    if suspend and active:
        return {"metadata": {"annotations": {ANNOTATION_DEACTIVATED: "true"}}, "spec": {"active": False}}
    if not suspend and not active and ours:  # one Kueue deactivated itself (too many requeues) stays so
        return {"metadata": {"annotations": {ANNOTATION_DEACTIVATED: None}}, "spec": {"active": True}}
    return None
