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

from kubetune.api import FineTuneJob, FineTuneJobStatus
from kubetune.operator import children, metrics, progress
from kubetune.operator.kube import Kube
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.status import Event, compute_status

COMPONENT = "kubetune-operator"
_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)


@dataclass
class Outcome:
    status: FineTuneJobStatus | None
    wrote_status: bool
    created: list[str]
    deleted: list[str]


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def merge_patch(old: dict, new: dict) -> dict:
    """The JSON merge patch (RFC 7386) turning `old` into `new`: removed keys become null, maps recurse."""
    patch = {k: None for k in old if k not in new}
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            patch[key] = merge_patch(old[key], value)
        elif old.get(key) != value:
            patch[key] = value
    return patch


def reconcile(kube: Kube, settings: OperatorSettings, namespace: str, name: str, scrape: bool = False) -> Outcome:
    with _locks[(namespace, name)]:
        started = time.monotonic()
        try:
            return _reconcile(kube, settings, namespace, name, scrape)
        except Exception as exc:
            metrics.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)


def _reconcile(kube: Kube, settings: OperatorSettings, namespace: str, name: str, scrape: bool) -> Outcome:
    obj = kube.get_finetunejob(namespace, name)
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        metrics.forget(namespace, name)
        return Outcome(None, False, [], [])  # owner references take the children away
    try:
        job = FineTuneJob.model_validate(obj)
    except ValidationError as exc:  # the CRD refuses this; only an outdated CRD lets it through
        kube.post_event(obj, "Warning", "InvalidSpec", str(exc)[:1000], COMPONENT)
        raise

    run = children.current_run(job)
    owned = [j for j in kube.list_jobs(namespace, f"{children.LABEL_FINETUNEJOB}={name}")
             if any(o.get("uid") == job.metadata.uid for o in j["metadata"].get("ownerReferences", []))]
    deleted = []
    for stale in owned:  # Jobs of replaced runs: stop them (they checkpoint on SIGTERM)
        if stale["metadata"]["name"] != run.job_name and not stale["metadata"].get("deletionTimestamp"):
            kube.delete_job(namespace, stale["metadata"]["name"])
            deleted.append(stale["metadata"]["name"])
    child = next((j for j in owned if j["metadata"]["name"] == run.job_name), None)
    prior = job.status
    finished = (prior is not None and prior.run_id == run.run_id and prior.spec_hash == run.spec_hash
                and prior.phase in ("Succeeded", "Failed"))
    created, events = [], []
    if child is None and not finished:
        child = kube.create(children.build_job(job, run, settings))
        for dependent in children.build_dependents(job, run, child["metadata"]["uid"], settings):
            kube.create(dependent)
        created.append(run.job_name)
        events.append(Event("Normal", "JobCreated", f"created Job {run.job_name} for run {run.run_id}"))
    elif child is not None:
        patch = children.in_place_patch(job, child)
        if patch:
            kube.patch_job(namespace, run.job_name, patch)
            child["spec"].update(patch["spec"])

    pods = kube.list_pods(namespace, f"{children.LABEL_JOB_NAME}={run.job_name}") if child else []
    sample = progress.scrape(pods, settings.scrape_timeout_seconds) if scrape else None
    status, transitions = compute_status(job, run, child, pods, sample, now(), settings.max_runs_kept)
    events += transitions

    observed = obj.get("status") or {}
    try:
        unchanged = FineTuneJobStatus.model_validate(observed).to_wire() == status.to_wire()
    except ValidationError:
        unchanged = False
    if not unchanged:
        kube.patch_status(namespace, name, merge_patch(observed, status.to_wire()))
    for event in events:
        kube.post_event(obj, event.type, event.reason, event.message, COMPONENT)
    metrics.observe(namespace, name, prior, status, child)
    return Outcome(status, not unchanged, created, deleted)
