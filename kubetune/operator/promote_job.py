"""The promotion-only Job, pure: spec.promotion.override carried out for a run that has already ended.

A run's trainer carries out the override it sees in its spec ConfigMap (immutable: fixed when the run started). An
override added or changed later (a GitOps commit on a finished run) is carried out by a small Job of its own,
controlled by the FineTuneJob: `python -m kubetune.trainer.promote` with the FineTuneJob as it is now
(promotion.apply_override), its outcome in the termination message in the trainer's shape ({"promotion": {...}}),
which the status reads as it reads a run's verdict. Its name is the FineTuneJob's, the run's and the override's
hash, so a restarted operator or a second reconcile finds the same Job instead of making another, and a changed
override gets a Job of its own.
"""
import hashlib
import json
from dataclasses import dataclass, field

from kubetune.api import FineTuneJob, contract
from kubetune.api.status import Condition, ConditionType, PromotionReason, PromotionStatus
from kubetune.operator import children
from kubetune.operator.labels import LABEL_PROMOTION, LABEL_RUN_ID
from kubetune.operator.observed import failure_of, job_condition, stopped, termination_json
from kubetune.operator.runs import Run
from kubetune.operator.settings import OperatorSettings

TERMINAL = ("Succeeded", "Failed")
COMMAND = ["python", "-m", "kubetune.trainer.promote"]
"""A module of its own, not a mode of kubetune-train: an older trainer image fails on it (no such module) instead
of starting a training run. The chart's admission policy allows exactly this command besides the trainer's."""
BACKOFF_LIMIT = 1
"""One retry, for a transient S3 error: apply_override is idempotent (a run already the champion is not written
again; copies never overwrite; the manifest is written conditionally), so a second attempt after a first that
wrote the manifest and then died reports the same outcome and changes nothing."""
ACTIVE_DEADLINE_SECONDS = 1800
"""Server-side copies of a large model take minutes, not hours: a Job stuck on an unreachable endpoint fails."""
TTL_SECONDS = 86400
"""The finished Job (and its pod's log) stays a day: the status has read its outcome long before."""
RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
"""A Python process making S3 requests (the copies are server-side): no GPU, a little CPU and memory."""
_PREFIX = "-promote-"


def _hash(job: FineTuneJob, run_id: str) -> str:
    o = job.spec.promotion.override
    key = [job.metadata.uid or "", run_id, o.action, o.run_id, o.requested_by, o.reason]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:8]


def job_name(job: FineTuneJob, run_id: str) -> str | None:
    """`<name>-promote-<hash8>` (the name cut to fit 63 characters) for spec.promotion.override and the run
    `run_id`; None without an override."""
    if job.spec.promotion is None or job.spec.promotion.override is None:
        return None
    base = job.metadata.name[:63 - len(_PREFIX) - 8]
    return f"{base}{_PREFIX}{_hash(job, run_id)}"


def is_promotion(obj: dict) -> bool:
    """A promotion Job (by its label): never a run attempt, and never an earlier run's child to delete on sight."""
    return LABEL_PROMOTION in ((obj.get("metadata") or {}).get("labels") or {})


def kept(obj: dict, run: Run) -> bool:
    """A promotion Job that plan.py leaves alone: one of the current run (its TTL removes it once it has finished),
    and one still running, of any run: it carries out a person's decision, and stopping it between the manifest's
    write and its termination message would lose the record of what it did (its TTL removes it too)."""
    run_id = ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_RUN_ID)
    return is_promotion(obj) and (run_id == run.run_id or not stopped(obj))


def given(job: FineTuneJob) -> str | None:
    """The override a Job built from the spec now is given, as status.runOverride records it (None: none)."""
    o = job.spec.promotion.override if job.spec.promotion else None
    return None if o is None else f"{o.action} {o.run_id} {o.requested_by}"[:600]


def unseen(job: FineTuneJob, promotion: PromotionStatus | None, phase: str | None,
           run_override: str | None = None) -> bool:
    """spec.promotion.override is set, the run has ended, and the override is not the one the run saw (added or
    changed after it started, its spec ConfigMap being immutable) nor one a promotion Job already carried out. A
    verdict from a trainer that did not yet record the override it saw counts as seeing it when its requestedBy
    matches. A run without a verdict (it failed) saw the override its Job was given (`run_override`,
    status.runOverride): a stale override left in the spec is not carried out because a later run failed."""
    o = job.spec.promotion.override if job.spec.promotion else None
    if o is None or phase not in TERMINAL:
        return False
    seen = promotion.override if promotion else None
    if seen is not None and (seen.action, seen.run_id, seen.requested_by) == (o.action, o.run_id, o.requested_by):
        return False
    if promotion is None and run_override is not None:
        return run_override != given(job)
    return not (seen is None and promotion is not None and promotion.requested_by == o.requested_by)


def failed_message(name: str, why: str) -> str:
    return f"promotion Job {name} failed: {why}"[:1000]


def failed_before(conditions: list[Condition], name: str) -> bool:
    """The Promoted condition records that the promotion Job `name` failed (or was refused): it is not created
    again, even once its TTL has removed it. Changing the override (its reason, say) names another Job."""
    c = next((c for c in conditions if c.type == ConditionType.PROMOTED), None)
    return c is not None and c.reason == PromotionReason.OVERRIDE_FAILED and c.message.startswith(
        f"promotion Job {name} ")


def wanted(job: FineTuneJob, run: Run) -> str | None:
    """The promotion Job to create for `run` (which the status records as ended), or None."""
    status = job.status
    if status is None or status.run_id != run.run_id or not unseen(job, status.promotion, status.phase,
                                                                   status.run_override):
        return None
    name = job_name(job, run.run_id)
    return None if failed_before(status.conditions, name) else name


@dataclass
class Observed:
    """The promotion Job of the current override, as the reconcile saw it (or made it)."""

    name: str
    job: dict | None = None
    pods: list[dict] = field(default_factory=list)
    refused: str | None = None
    """Why the API server refused to create it (the admission policy, a quota)."""

    def outcome(self) -> dict | None:
        """The promotion's outcome (the trainer's `promotion`), once the Job has completed."""
        if self.job is None or not (job_condition(self.job, "Complete") or job_condition(self.job,
                                                                                         "SuccessCriteriaMet")):
            return None
        found = (termination_json(p) or {} for p in self.pods)
        return next((f["promotion"] for f in found if isinstance(f.get("promotion"), dict)
                     and f["promotion"].get("verdict")), None)

    def failure(self) -> str | None:
        """Why it failed, in the pod's words (the trainer's error message), or why it could not be made."""
        if self.refused:
            return self.refused
        if self.job is None:
            return None
        failed = job_condition(self.job, "Failed") or job_condition(self.job, "FailureTarget")
        if failed is None:
            if (job_condition(self.job, "Complete") or job_condition(self.job, "SuccessCriteriaMet")) \
                    and self.outcome() is None and self.pods:
                return "it completed without an outcome in its termination message"
            return None
        causes = [f for f in map(failure_of, reversed(self.pods)) if f]
        if causes:
            return f"{causes[0][0]}: {causes[0][1]}"
        return f"{failed.get('reason') or 'Failed'}: {failed.get('message', '')}"


def build(job: FineTuneJob, run: Run, settings: OperatorSettings) -> dict:
    """The promotion Job: the trainer image and ServiceAccount, the S3 credentials by reference exactly as the
    run's trainer pod gets them (spec.storage.secretRef), the same restricted security context and trainer labels
    (so whatever NetworkPolicy lets the trainer reach S3 lets it too), no GPU, no spec ConfigMap (the FineTuneJob
    as it is now, in KUBETUNE_SPEC: the run's ConfigMap holds the spec without the override).

    Not queued in Kueue (no queue-name label, even when the run's is): a CPU-only copy of seconds to minutes that
    holds no accelerator; waiting behind training runs for quota it does not use would only delay a person's
    decision. (A Kueue with manageJobsWithoutQueueName would still hold it: that setting is the platform's.)
    Placed where the run's pods may go (spec.scheduling's nodeSelector, tolerations and affinity, with the
    platform's trainer placement, as children.pod_spec merges them: nodes from which the trainer reached S3), but
    without the GPU product's selector, the GPU toleration or the priority class: it needs no accelerator. The
    platform's additions (settings.trainer_env, volumes, pull secrets) apply."""
    name = job_name(job, run.run_id)
    meta = {"name": name, "namespace": job.metadata.namespace,
            "labels": {**children.labels(job, run), LABEL_PROMOTION: name.rsplit("-", 1)[-1]},
            "ownerReferences": [children.owner(job)]}
    env = [{"name": contract.SPEC_ENV, "value": children.spec_document(job)},
           {"name": contract.RUN_ID_ENV, "value": run.run_id},
           {"name": "KUBETUNE_TRAINER_CACHE_DIR", "value": "/tmp/kubetune"},
           {"name": "HOME", "value": "/tmp"}, *children.credential_env(job)]
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        **({"serviceAccountName": settings.trainer_service_account} if settings.trainer_service_account else {}),
        "securityContext": {"runAsNonRoot": True, "runAsUser": settings.run_as_user,
                            "runAsGroup": settings.run_as_user, "fsGroup": settings.run_as_user,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": children.CONTAINER,
            "image": settings.trainer_image,
            "imagePullPolicy": settings.image_pull_policy,
            "command": list(COMMAND),
            "env": children.extra(env, settings.trainer_env),
            "resources": json.loads(json.dumps(RESOURCES)),
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": children.extra([{"name": "tmp", "mountPath": "/tmp"}], settings.trainer_volume_mounts),
        }],
        "volumes": children.extra([{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}], settings.trainer_volumes),
    }
    if settings.trainer_image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in settings.trainer_image_pull_secrets]
    children.place(pod, *children.placement(job, settings), job.spec.scheduling.affinity)
    spec = {
        "backoffLimit": BACKOFF_LIMIT,
        "activeDeadlineSeconds": ACTIVE_DEADLINE_SECONDS,
        "ttlSecondsAfterFinished": TTL_SECONDS,
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            # A named run without artifacts, a manifest that is not JSON: a retry cannot fix them.
            {"action": "FailJob", "onExitCodes": {"containerName": children.CONTAINER, "operator": "In",
                                                  "values": [contract.EXIT_BAD_INPUT]}},
        ]},
        "template": {"metadata": children.pod_metadata(job, run, settings), "spec": pod},
    }
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}
