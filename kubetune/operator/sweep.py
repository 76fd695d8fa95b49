"""One reconcile of one FineTuneSweep: read the sweep and its trial FineTuneJobs, plan (sweep_plan, pure), create
and prune trials, write the status once, then post the events.

Sweeps are few and their reconciles rare next to FineTuneJobs', so a reconcile reads from the API server (a GET
and one label-selected LIST) rather than from kopf's indexes: what it creates is visible to the next reconcile at
once, and a trial's name, deterministic, is never created twice (a create that finds it there counts as done when
the sweep controls it).
"""
import logging
from datetime import datetime, timezone

from pydantic import ValidationError

from kubetune.api.sweep import SWEEP_KIND, FineTuneSweepStatus, SweepReason
from kubetune.api.validate import validate_manifest
from kubetune.operator import metrics
from kubetune.operator.children import controlled_by
from kubetune.operator.errors import (TRANSIENT_DELAY_SECONDS, ApiError, PermanentFailure, RetryLater,
                                       api_message, is_transient)
from kubetune.operator.kube import Kube
from kubetune.operator.labels import ANNOTATION_TRIAL_PARAMS, LABEL_SWEEP
from kubetune.operator.reconcile import COMPONENT, merge_patch
from kubetune.operator.sweep_plan import plan, sweep_conditions

log = logging.getLogger("kubetune.operator")


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def reconcile_sweep(kube: Kube, namespace: str, name: str, retry_delay_seconds: float = 30.0
                    ) -> FineTuneSweepStatus | None:
    obj = kube.read(SWEEP_KIND, namespace, name)
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        metrics.forget_sweep(namespace, name)
        return None  # owner references take the trials away
    obj["metadata"].pop("managedFields", None)
    sweep, errors = validate_manifest(obj, SWEEP_KIND)
    at = now()
    if sweep is None:  # the CRD refuses this; only an outdated CRD (or the Python-only path check) lets it in
        message = "; ".join(map(str, errors))[:1000]
        status = prior_status(obj).model_copy(update={
            "observed_generation": obj["metadata"].get("generation"), "phase": "Failed",
            "conditions": sweep_conditions("Failed", SweepReason.INVALID_SPEC, message, "permanent",
                                           prior_status(obj).conditions, obj["metadata"].get("generation"), at)})
        write_status(kube, obj, status)
        kube.post_event(obj, "Warning", SweepReason.INVALID_SPEC, message, COMPONENT)
        raise PermanentFailure(message)

    trials = kube.list_objects("FineTuneJob", namespace, f"{LABEL_SWEEP}={name}")
    p = plan(sweep, trials, at)
    status, events, problem = p.status, list(p.events), None
    for manifest in p.create:
        trial = manifest["metadata"]["name"]
        try:
            result = kube.create(manifest)
        except ApiError as exc:
            if is_transient(exc):
                raise RetryLater(f"create FineTuneJob {trial}: {api_message(exc)}",
                                 delay=exc.retry_after or TRANSIENT_DELAY_SECONDS) from exc
            reason = SweepReason.CHILD_REJECTED if exc.status in (400, 422) else SweepReason.CHILD_FORBIDDEN
            problem = (reason, f"the API server refused to create FineTuneJob {trial}: {api_message(exc)}"[:1000])
            break
        if not controlled_by(result, sweep.metadata.uid):
            problem = (SweepReason.CHILD_CONFLICT, f"FineTuneJob {trial} exists and is not controlled by this sweep")
            break
        params = manifest["metadata"]["annotations"].get(ANNOTATION_TRIAL_PARAMS, "{}")
        events.append(("Normal", SweepReason.TRIAL_CREATED, f"created trial {trial}: {params}"))
    for trial, patch in p.prune:
        try:
            kube.patch("FineTuneJob", namespace, trial, patch)
        except ApiError as exc:
            if exc.status != 404:
                raise RetryLater(f"prune FineTuneJob {trial}: {api_message(exc)}", delay=TRANSIENT_DELAY_SECONDS) \
                    from exc
        else:
            metrics.SWEEP_TRIALS_PRUNED.labels(namespace).inc()
    if problem is not None:
        reason, message = problem
        kind = "permanent" if reason == SweepReason.CHILD_REJECTED else "retry"
        status = status.model_copy(update={"conditions": sweep_conditions(
            "Running", reason, message, kind, prior_status(obj).conditions, sweep.metadata.generation, at)})
    elif p.conflict:
        problem = (SweepReason.CHILD_CONFLICT, p.conflict)
    before = prior_status(obj).phase
    write_status(kube, obj, status)
    metrics.observe_sweep(namespace, name, status)
    if status.phase != before and status.phase in ("Succeeded", "Failed"):
        reason = next(c.reason for c in status.conditions if c.type == "Succeeded")
        message = next(c.message for c in status.conditions if c.type == "Succeeded")
        events.append(("Normal" if status.phase == "Succeeded" else "Warning", reason, message))
        if status.promotion_candidate is not None:
            events.append(("Normal", SweepReason.PROMOTION_CANDIDATE, status.promotion_candidate.message))
    for type_, reason, message in events:  # only after the status write succeeded
        kube.post_event(obj, type_, reason, message, COMPONENT)
    if problem is not None:
        if problem[0] == SweepReason.CHILD_REJECTED:
            raise PermanentFailure(problem[1])
        raise RetryLater(problem[1], delay=retry_delay_seconds)
    return status


def prior_status(obj: dict) -> FineTuneSweepStatus:
    try:
        return FineTuneSweepStatus.model_validate(obj.get("status") or {})
    except ValidationError:
        return FineTuneSweepStatus()


def write_status(kube: Kube, obj: dict, status: FineTuneSweepStatus) -> bool:
    """One merge patch with the resourceVersion it was computed from, and only when something changed."""
    observed = obj.get("status") or {}
    try:
        unchanged = FineTuneSweepStatus.model_validate(observed).to_wire() == status.to_wire()
    except ValidationError:
        unchanged = False
    if unchanged:
        return False
    meta = obj["metadata"]
    try:
        kube.patch_status(meta["namespace"], meta["name"], merge_patch(observed, status.to_wire()),
                          resource_version=meta.get("resourceVersion"), kind=SWEEP_KIND)
    except ApiError as exc:
        if exc.status == 409:
            raise RetryLater(f"the sweep changed while reconciled: {api_message(exc)}", delay=0.5) from exc
        raise
    return True
