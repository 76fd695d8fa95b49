"""One reconcile of one FineTuneJob: read what is, compute what should be (pure), act, write the status once.

Level-based and idempotent: it can run at any time, for any reason (a spec change, a Job or Pod event, the
progress timer, an operator restart), as often as it likes; concurrent calls for one object are serialised.
"""
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone

from pydantic import ValidationError

from kubetune.api import FineTuneJobStatus, Reason
from kubetune.api.validate import validate_manifest
from kubetune.operator import kueue, metrics, progress, promote_job
from kubetune.operator.children import controlled_by
from kubetune.operator.labels import LABEL_KUEUE_QUEUE
from kubetune.operator.errors import (TRANSIENT_DELAY_SECONDS, ApiError, PermanentFailure, RetryLater,
                                       api_message, is_transient)
from kubetune.operator.kube import Kube
from kubetune.operator.observed import job_failed, job_finished
from kubetune.operator.plan import Action, conflict_message, plan
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.sources import ApiSource, newer
from kubetune.operator.status import Event, State, compute_status, conditions, parse_time

COMPONENT = "kubetune-operator"
STATUS_CONFLICT_RETRIES = 3
SAMPLE_JOB_UID = "jobUid"  # which Job's pods a progress sample was read from


class StatusConflict(Exception):
    """The status write was refused (409): the object changed since the copy the status was computed from."""


_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_waiting: defaultdict[tuple[str, str], int] = defaultdict(int)  # reconciles queued on each object's lock
_waiting_lock = threading.Lock()
# Each object as our last status write returned it, until the index has caught up with that write: a reconcile
# never works from a status it has already replaced, and needs no GET to avoid it.
_written: dict[tuple[str, str], dict] = {}
_last_reconciled: dict[tuple[str, str], float] = {}  # monotonic time of each object's last reconcile


def own_write(namespace: str, name: str, resource_version: str | None) -> bool:
    """Whether an event shows exactly the object our last status write produced."""
    written = _written.get((namespace, name))
    return written is not None and written["metadata"].get("resourceVersion") == resource_version


def resync_due(namespace: str, name: str, seconds: float) -> bool:
    """Whether a progress tick without new progress should still reconcile: events drive everything, and this
    periodic pass only re-asserts the world at a slow cadence (instead of on every tick of every running job)."""
    return time.monotonic() - _last_reconciled.get((namespace, name), 0.0) >= seconds


@dataclass
class Outcome:
    status: FineTuneJobStatus | None
    wrote_status: bool
    created: list[str]
    deleted: list[str]


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def merge_patch(old: dict, new: dict) -> dict:
    """The JSON merge patch (RFC 7386) turning `old` into `new`: removed keys become null, maps recurse, and
    unchanged maps are left out."""
    patch = {k: None for k in old if k not in new}
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            nested = merge_patch(old[key], value)
            if nested:
                patch[key] = nested
        elif old.get(key) != value:
            patch[key] = value
    return patch


def read_progress(source, settings: OperatorSettings, namespace: str, name: str, status: dict | None
                  ) -> dict | None:
    """The trainer's latest sample, read outside the per-object lock (a slow endpoint delays only this call,
    never the reconciles of Job and Pod events) and bounded by progress.scrape's deadline and byte cap."""
    job_name = (status or {}).get("jobName")
    job = next((j for j in source.children(namespace, name)["Job"] if j["metadata"]["name"] == job_name), None)
    if job is None:
        return None
    sample = progress.scrape(source.pods(namespace, job["metadata"]["uid"]), settings.scrape_timeout_seconds)
    return None if sample is None else {**sample, SAMPLE_JOB_UID: job["metadata"]["uid"]}


def sample_for(sample: dict | None, child: dict | None) -> dict | None:
    """The sample, when it was read from `child`'s pods: read outside the lock, it may come from a Job that the
    reconcile holding the lock has replaced meanwhile (another run's step and loss)."""
    if sample is None or child is None or sample.get(SAMPLE_JOB_UID) != child["metadata"].get("uid"):
        return None
    return sample


def reconcile(kube: Kube, settings: OperatorSettings, namespace: str, name: str, sample: dict | None = None,
              source=None) -> Outcome:
    """`sample`: the trainer's metrics from read_progress, when a progress tick brought one. `source`: where
    to read the FineTuneJob and its children (sources.py; the API server by default)."""
    key = (namespace, name)
    with _waiting_lock:
        if _waiting[key] and sample is None:
            # One reconcile already waits behind the running one; it reads the indexes once it runs, so it sees
            # whatever triggered this call too. Bursts of Pod and Job events collapse into it.
            return Outcome(None, False, [], [])
        _waiting[key] += 1
    with _locks[key]:
        with _waiting_lock:
            _waiting[key] -= 1
        started = time.monotonic()
        try:
            source = source or ApiSource(kube)
            for _ in range(STATUS_CONFLICT_RETRIES):
                try:
                    return _reconcile(kube, settings, namespace, name, sample, source)
                except StatusConflict:
                    # Someone wrote the object since the copy this plan was made from: plan again from the
                    # object as it is now (read once; the index catches up later).
                    fresh = kube.get_finetunejob(namespace, name)
                    if fresh is None:
                        return Outcome(None, False, [], [])
                    fresh["metadata"].pop("managedFields", None)
                    _written[key] = fresh
            raise RetryLater(f"the status kept changing under {STATUS_CONFLICT_RETRIES} reconciles", delay=1)
        except Exception as exc:
            cause = exc.__cause__ if isinstance(exc, RetryLater) and exc.__cause__ else exc
            metrics.RECONCILE_ERRORS.labels(type(cause).__name__).inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
            _last_reconciled[(namespace, name)] = time.monotonic()


def _reconcile(kube: Kube, settings: OperatorSettings, namespace: str, name: str, sample: dict | None,
               source) -> Outcome:
    obj = source.finetunejob(namespace, name)
    written = _written.get((namespace, name))
    if obj is not None and written is not None:
        if newer(written["metadata"]["resourceVersion"], obj["metadata"].get("resourceVersion")):
            obj = written  # the index has not seen our last status write yet
        else:
            del _written[(namespace, name)]
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        metrics.forget(namespace, name)
        _written.pop((namespace, name), None)
        _last_reconciled.pop((namespace, name), None)
        return Outcome(None, False, [], [])  # owner references take the children away
    job, errors = validate_manifest(obj)
    if job is None:  # the CRD refuses this; only an outdated CRD lets it through
        message = "; ".join(map(str, errors))[:1000]
        write_status(kube, obj, invalid_status(obj, message, now()))
        kube.post_event(obj, "Warning", Reason.INVALID_SPEC, message, COMPONENT)
        raise PermanentFailure(message)

    observed = source.children(namespace, name)
    # A gang's failed attempt is judged by its pods (exit codes, OOMKilled): only failed Jobs' pods are read.
    observed["Pod"] = [pod for j in observed["Job"] if job.spec.nodes > 1 and job_failed(j)
                       for pod in source.pods(namespace, j["metadata"]["uid"])]
    try:
        observed["Workload"], kueue_problem = held_workloads(kube, job, observed["Job"]), None
    except ApiError as exc:
        if exc.status not in (403, 404):
            raise
        observed["Workload"], kueue_problem = [], kueue.unavailable(exc.status, api_message(exc))
    p = plan(job, observed, settings)
    problem, retry = None, None
    if p.conflict:  # retried: whoever owns that object may delete it
        problem = State("Pending", Reason.CHILD_CONFLICT, p.conflict, stalled=True)
        retry = RetryLater(p.conflict, delay=settings.retry_delay_seconds)
    child, created, deleted, events = p.child, [], [], []
    override_job = observed_override_job(job, p.run, observed["Job"])
    for action in p.actions:
        if problem is not None and action.verb != "delete":
            break
        promoting = action.verb == "create" and promote_job.is_promotion(action.body)
        try:
            result = act(kube, namespace, action)
        except ApiError as exc:
            if is_transient(exc):  # overload, a conflict with a concurrent change: the next reconcile settles it
                raise RetryLater(f"{action.verb} {action.kind} {action.name}: {api_message(exc)}",
                                 delay=exc.retry_after or TRANSIENT_DELAY_SECONDS) from exc
            if promoting:  # the run has ended as it ended: the Promoted condition says why (not retried)
                override_job.refused = f"the API server refused to create it: {api_message(exc)}"[:1000]
                continue
            problem, retry = refusal(action, exc, settings.retry_delay_seconds)
            break
        if promoting:
            if controlled_by(result, job.metadata.uid):
                override_job.job = result
                created.append(action.name)
                events.append(Event("Normal", "JobCreated", f"created promotion Job {action.name} for "
                                    f"spec.promotion.override of run {p.run.run_id}"))
            else:
                override_job.refused = conflict_message(f"Job {action.name}", job.metadata.uid)
            continue
        if action.verb == "create":
            if not controlled_by(result, job.metadata.uid):  # its name was taken meanwhile
                message = conflict_message(f"{action.kind} {action.name}", job.metadata.uid)
                problem = State("Pending", Reason.CHILD_CONFLICT, message, stalled=True)
                retry = RetryLater(message, delay=settings.retry_delay_seconds)
                break
            if action.kind == "Job":
                child = result
                created.append(action.name)
                events.append(Event("Normal", "JobCreated", f"created Job {action.name} for run {p.run.run_id}"))
        elif action.verb == "delete" and action.kind == "Job":
            deleted.append(action.name)
        elif action.verb == "patch" and action.kind == "Job":  # a new dict: the observed one may be shared
            child = {**child, "spec": {**child.get("spec", {}), **action.body["spec"]}}

    workload = kueue.workload_of(observed["Workload"], child) if child else None
    if kueue_problem is None and workload is None and child is not None and job.spec.scheduling.queue_name \
            and child.get("spec", {}).get("suspend") and not job_finished(child):
        waited = job_age_seconds(child)
        if waited >= settings.kueue_workload_timeout_seconds:
            kueue_problem = kueue.missing(job.spec.scheduling.queue_name, waited)
    pods = source.pods(namespace, child["metadata"]["uid"]) if child else []
    sample = sample_for(sample, child) if problem is None else None
    prior = job.status
    if override_job is not None and override_job.job is not None:
        override_job.pods = source.pods(namespace, override_job.job["metadata"]["uid"])
    status, transitions = compute_status(job, p.run, child, pods, sample, now(), settings.max_runs_kept,
                                         problem or p.state, workload=workload, kueue_problem=kueue_problem,
                                         override_job=override_job)
    events += transitions
    wrote = write_status(kube, obj, status)
    for event in events:  # only after the status write succeeded
        kube.post_event(obj, event.type, event.reason, event.message, COMPONENT)
    if status.phase == "Failed" and child is not None and not job_finished(child) and prior_phase(job) != "Failed":
        # The operator has just failed the run itself (a kernel OOM kill): hold its Job now, in this reconcile.
        # Waiting for the next event would let the Job controller start a replacement pod first.
        failed = job.model_copy(update={"status": status})
        held = plan(failed, {**observed, "Workload": [] if kueue_problem else held_workloads(
            kube, failed, observed["Job"])}, settings)
        for action in held.actions:
            if action.verb == "patch":
                act(kube, namespace, action)
    metrics.observe(namespace, name, prior, status, child, job.spec.resources.gpu_resource_name)
    if retry is not None:
        raise retry
    if p.waiting:
        raise RetryLater(p.waiting, delay=2)
    if status.phase == "Queued" and job.spec.scheduling.queue_name:
        raise RetryLater("Kueue holds the run", delay=kueue.look_again_seconds(
            workload, job_age_seconds(child) if child else None, settings.kueue_workload_timeout_seconds,
            settings.resync_seconds))
    return Outcome(status, wrote, created, deleted)


def observed_override_job(job, run, jobs: list[dict]) -> promote_job.Observed | None:
    """The promotion Job of spec.promotion.override for `run`, as observed (controlled by this FineTuneJob), when
    the FineTuneJob has an override; its pods are read once the plan is carried out."""
    name = promote_job.job_name(job, run.run_id)
    if name is None:
        return None
    found = next((j for j in jobs if j["metadata"]["name"] == name), None)
    if found is not None and not controlled_by(found, job.metadata.uid):
        return promote_job.Observed(name, refused=conflict_message(f"Job {name}", job.metadata.uid))
    return promote_job.Observed(name, found)


def job_age_seconds(child: dict) -> float:
    born = parse_time(child["metadata"].get("creationTimestamp"))
    return (now() - born).total_seconds() if born else 0.0


def prior_phase(job) -> str | None:
    return job.status.phase if job.status else None


def held_workloads(kube: Kube, job, owned_jobs: list[dict]) -> list[dict]:
    """Kueue's Workloads of the queued Jobs that are held or to be held (suspended, spec.suspend, or a run the
    operator failed itself): why they wait (pending, inadmissible, preempted), and where a hold goes
    (kueue.activation). One LIST per such Job, only then: an admitted, running Job costs no request."""
    if not job.spec.scheduling.queue_name:
        return []
    return [w for j in owned_jobs
            if (j["metadata"].get("labels") or {}).get(LABEL_KUEUE_QUEUE) and not job_finished(j)
            and (job.spec.suspend or j.get("spec", {}).get("suspend") or (job.status and job.status.phase == "Failed"))
            for w in kube.list_workloads(j["metadata"]["namespace"], j["metadata"]["uid"])]


def act(kube: Kube, namespace: str, action: Action) -> dict | None:
    if action.verb == "create":
        return kube.create(action.body)
    if action.verb == "delete":
        kube.delete(action.kind, namespace, action.name, action.propagation, uid=action.uid)
    elif action.verb == "patch" and action.kind == "Workload":
        kube.patch_workload(namespace, action.name, action.body)
    elif action.verb == "patch":
        kube.patch_job(namespace, action.name, action.body)
    return None


def refusal(action: Action, exc: ApiError, delay: float) -> tuple[State, Exception]:
    """A child the API server refused, as the status shows it and the way to retry: invalid (422, 400) is
    permanent until the spec changes; forbidden or missing (403 quota, 404 PriorityClass...) may clear up."""
    message = f"the API server refused to {action.verb} {action.kind} {action.name}: {api_message(exc)}"[:1000]
    if exc.status in (400, 422):
        return State("Failed", Reason.CHILD_REJECTED, message, stalled=True), PermanentFailure(message)
    return (State("Pending", Reason.CHILD_FORBIDDEN, message, stalled=True),
            RetryLater(message, delay=delay))


def write_status(kube: Kube, obj: dict, status: FineTuneJobStatus) -> bool:
    """One merge patch, and only when something changed (a reconcile that finds nothing new writes nothing)."""
    observed = obj.get("status") or {}
    try:
        unchanged = FineTuneJobStatus.model_validate(observed).to_wire() == status.to_wire()
    except ValidationError:
        unchanged = False
    if not unchanged:
        meta = obj["metadata"]
        # The patch is a diff against `obj`; with its resourceVersion as a precondition, a copy someone else has
        # since replaced (another writer, a stale index) is refused instead of silently mixed with theirs.
        try:
            written = kube.patch_status(meta["namespace"], meta["name"], merge_patch(observed, status.to_wire()),
                                        resource_version=meta.get("resourceVersion"))
        except ApiError as exc:
            if exc.status == 409:
                raise StatusConflict(api_message(exc)) from exc
            raise
        written["metadata"].pop("managedFields", None)
        _written[(meta["namespace"], meta["name"])] = written
    return not unchanged


def invalid_status(obj: dict, message: str, at: datetime) -> FineTuneJobStatus:
    """Failed and Stalled with the field named, keeping what the status knew of earlier runs."""
    try:
        prior = FineTuneJobStatus.model_validate(obj.get("status") or {})
    except ValidationError:
        prior = FineTuneJobStatus()
    generation = obj["metadata"].get("generation")
    state = State("Failed", Reason.INVALID_SPEC, message, stalled=True)
    return prior.model_copy(update={"observed_generation": generation, "phase": "Failed",
                                    "conditions": conditions(state, prior.conditions, generation, at)})
