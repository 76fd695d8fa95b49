"""Multi-node runs restart as a gang, pure (no I/O; plan.py acts on the verdict). docs/gangs.md has the design.

A multi-node run's Job (children.build_job) has backoffLimit 0 and FailJob rules, so the Job controller fails it as
a unit on any pod failure and stops its other pods. Once every pod has stopped (the Job's Failed condition, which
comes after FailureTarget), the operator judges the attempt here: bad input or out of memory ends the run, a
disruption (preemption, eviction, drain) starts the next attempt without counting it, any other failure starts
it counting one failure against runPolicy.backoffLimit. The next attempt is a new Job of the same run (same run
id, so the trainer resumes from the run's last checkpoint) named `<run's Job>-a<N>`.
"""
import re
from dataclasses import dataclass

from kubetune.api import Reason
from kubetune.operator.labels import ANNOTATION_RESTART_REASON, INDEX_ANNOTATION
from kubetune.operator.runs import Run
from kubetune.operator.observed import failure_of, fatal_failure, job_condition, terminated
from kubetune.operator.status import State

_RULE = re.compile(r"matching FailJob rule at index (\d+)")
_ATTEMPT_SUFFIX = re.compile(r"-a\d+$")


@dataclass(frozen=True)
class Verdict:
    """How one attempt of a gang ended."""

    restart: bool
    """Another attempt of the run follows (False: the run has failed)."""
    counted: bool
    """The end counts against runPolicy.backoffLimit (a disruption does not)."""
    stopped: bool
    """Every pod of the attempt has stopped, so the next may start (two gangs would write one run's checkpoints)."""
    state: State
    """What the FineTuneJob's status says about it."""
    failures: int
    """Failures counted so far, this attempt's included."""
    cause: str
    """Why the attempt ended, in a sentence (the next attempt's restart-reason annotation)."""


def _cause_pods(pods: list[dict]) -> list[dict]:
    """Pods that failed by themselves: the ones the Job controller stopped because of them are deleted (and, once
    they stopped, gone), while a pod that failed keeps its terminated state."""
    return [p for p in pods if p.get("status", {}).get("phase") == "Failed"
            and not p["metadata"].get("deletionTimestamp")]


def _rule(job: dict, condition: dict) -> dict:
    """The pod failure policy rule that failed the Job, named by index in the Job controller's message."""
    match = _RULE.search(condition.get("message") or "") if condition.get("reason") == "PodFailurePolicy" else None
    rules = ((job.get("spec") or {}).get("podFailurePolicy") or {}).get("rules") or []
    return rules[int(match.group(1))] if match and int(match.group(1)) < len(rules) else {}


def _describe(pod: dict) -> str:
    index = (pod["metadata"].get("annotations") or {}).get(INDEX_ANNOTATION, "?")
    reason, message = failure_of(pod) or ("Error", "")
    code = (terminated(pod) or {}).get("exitCode")
    detail = f", exit code {code}" if code is not None else ""
    return f"index {index} ({pod['metadata']['name']}) failed: {reason}{detail}" + (
        f": {message}" if message and message != f"exit code {code}" else "")


def verdict(run: Run, child: dict, pods: list[dict], backoff_limit: int) -> Verdict | None:
    """The verdict on the gang attempt `child` (the run's current Job) once it failed; None while it has not.
    `pods` are the Job's pods still in the API."""
    condition = job_condition(child, "Failed") or job_condition(child, "FailureTarget")
    if condition is None:
        return None
    stopped = job_condition(child, "Failed") is not None
    causes = _cause_pods(pods)
    cause = "; ".join(map(_describe, causes[:2])) or f"{condition.get('reason')}: {condition.get('message', '')}"
    fatal = fatal_failure(pods) or next(
        (f for f in map(failure_of, causes) if f and f[0] in (Reason.BAD_INPUT, Reason.OOM_KILLED)), None)
    rule = _rule(child, condition)
    if fatal or rule.get("onExitCodes"):  # 64 / 65 matched the FailJob rule: retrying cannot help
        reason, message = fatal or (Reason.BAD_INPUT, condition.get("message", ""))
        return Verdict(False, False, stopped, State("Failed", reason, f"attempt {run.attempt}: {message}"),
                       run.failures, cause)
    if condition.get("reason") == "DeadlineExceeded":
        return Verdict(False, False, stopped, State("Failed", Reason.DEADLINE_EXCEEDED, condition.get("message", "")),
                       run.failures, cause)
    disrupted = bool(rule.get("onPodConditions")) or (causes and all(_disrupted(p) for p in causes))
    failures = run.failures + (0 if disrupted else 1)
    if failures > backoff_limit:
        return Verdict(False, True, stopped, State("Failed", Reason.BACKOFF_LIMIT_EXCEEDED, (
            f"attempt {run.attempt} of the gang failed ({cause}); {failures} failures exceed runPolicy.backoffLimit "
            f"{backoff_limit}")[:1000]), failures, cause)
    what = "was disrupted (not counted)" if disrupted else f"failed ({failures} of {backoff_limit} failures allowed)"
    waiting = "" if stopped else "; waiting for its other pods to stop"
    return Verdict(True, not disrupted, stopped, State("Running", Reason.RESTARTING, (
        f"gang attempt {run.attempt} {what}: {cause}{waiting}; attempt {run.attempt + 1} resumes the run from its "
        f"last checkpoint")[:1000]), failures, cause)


def _disrupted(pod: dict) -> bool:
    return any(c.get("type") == "DisruptionTarget" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions") or [])


def next_run(run: Run, ended: Verdict) -> Run:
    """The run's next attempt: the same run (id, checkpoints), a new Job."""
    base = _ATTEMPT_SUFFIX.sub("", run.job_name)
    return Run(run.generation, run.run_id, run.spec_hash, f"{base}-a{run.attempt + 1}", run.template_hash,
               run.attempt + 1, ended.failures)


def annotate(k8s_job: dict, ended: Verdict) -> dict:
    """The next attempt's Job, recording why the previous one ended."""
    k8s_job["metadata"]["annotations"][ANNOTATION_RESTART_REASON] = ended.cause[:1000]
    return k8s_job
