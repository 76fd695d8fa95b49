"""Readers of the Jobs and Pods the operator observes, pure: which conditions a Job holds, how a trainer pod
ended (its exit code, the trainer's JSON termination message, the kernel's OOM kill, an eviction). The status
(status.py), the gang verdict (gang.py) and the plan (plan.py) all read the cluster through these."""
import json

from kubetune.api import Reason, contract
from kubetune.operator.children import CONTAINER


def stopped(job: dict) -> bool:
    """Every pod of the Job has stopped: Complete and Failed come only after its last pod did."""
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def job_failed(job: dict) -> bool:
    """Failed or about to be: a gang attempt to judge (gang.py)."""
    return any(c.get("type") in ("Failed", "FailureTarget") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def job_finished(job: dict) -> bool:
    """Finished or about to be (SuccessCriteriaMet and FailureTarget come before Complete and Failed)."""
    return any(c.get("type") in ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget")
               and c.get("status") == "True" for c in (job.get("status") or {}).get("conditions") or [])


def job_condition(job: dict, kind: str) -> dict | None:
    return next((c for c in job.get("status", {}).get("conditions") or []
                 if c.get("type") == kind and c.get("status") == "True"), None)


def terminated(pod: dict) -> dict | None:
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER and "terminated" in (cs.get("state") or {}):
            return cs["state"]["terminated"]
    return None


def termination_json(pod: dict) -> dict | None:
    """The trainer's ≤4 KB termination message, when it is the trainer's JSON (not a log tail)."""
    message = (terminated(pod) or {}).get("message") or ""
    try:
        value = json.loads(message)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def failure_of(pod: dict) -> tuple[str, str] | None:
    """(reason, message) of a failed trainer pod, from its exit code and termination message."""
    t = terminated(pod)
    if pod.get("status", {}).get("phase") != "Failed" and not (t and t.get("exitCode")):
        return None
    t = t or {}
    error = (termination_json(pod) or {}).get("error") or {}
    code = t.get("exitCode")
    message = error.get("message") or t.get("message") or pod.get("status", {}).get("message") or ""
    if t.get("reason") == "OOMKilled" or code == contract.EXIT_OUT_OF_MEMORY:
        return Reason.OOM_KILLED, message or "the trainer ran out of memory"
    if code == contract.EXIT_BAD_INPUT:
        return Reason.BAD_INPUT, message
    return error.get("reason") or t.get("reason") or "Error", message or f"exit code {code}"


def fatal_failure(pods: list[dict]) -> tuple[str, str] | None:
    """A pod outcome that retrying the same spec cannot fix and that no pod failure policy can match: the
    kernel's OOM kill (exit 137 with reason OOMKilled; a bare 137 is any SIGKILL) and an eviction for outgrowing
    the cache's ephemeral storage (kubelet marks it a disruption, which the policy would ignore forever)."""
    for pod in pods:
        t = terminated(pod) or {}
        if t.get("reason") == "OOMKilled":
            return Reason.OOM_KILLED, t.get("message") or "the kernel killed the trainer: out of memory"
        st = pod.get("status", {})
        if st.get("reason") == "Evicted" and any(w in str(st.get("message")).lower() for w in ("ephemeral", "emptydir")):
            return Reason.EPHEMERAL_STORAGE_EXCEEDED, st.get("message") or "evicted for ephemeral storage"
    return None
