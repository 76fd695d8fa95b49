"""Promotion to a stable destination, which cannot half-happen.

The destination (spec.promotion.destination) holds `manifest.json`, naming the champion (run id, spec hash, base
model, task, test metrics with intervals, who promoted it and why) and every earlier champion (history, newest
first), and the champions' files under `runs/<runId>/`. A promotion copies the run's artifacts there (server-side
copies; an object already there is never overwritten), then writes the manifest last, conditionally: only if it is
still the version read before the champion was scored (S3 If-Match on its ETag, If-None-Match: * for the first).
Of two runs racing for one destination, exactly one write succeeds; the other is told it lost, and its copied
files sit unreferenced under runs/<its id>/. A refused run writes nothing at the destination.

`challenge` (after the test scoring: reads the champion, scores it on the same rows, judges) and `conclude` (after
the run's own artifacts are written: publishes, or not) are split so that the summary carries the comparison.
"""
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

from kubetune.api import FineTuneJob, contract
from kubetune.api.spec import Promotion
from kubetune.api.status import PromotionReason
from kubetune.trainer import gate
from kubetune.trainer.errors import BadInput
from kubetune.trainer.storage import Store, join

MANIFEST = "manifest.json"
RUNS = "runs"
RESULT_FILE = "promotion.json"  # beside summary.json: the verdict of this run, kept for a rerun to report
NOT_PROMOTED = (contract.CHECKPOINTS_DIR, "tokenized")  # resumable state, not part of the model


def manifest_uri(destination: str) -> str:
    return join(destination, MANIFEST)


def run_prefix(destination: str, run_id: str) -> str:
    return join(destination, RUNS, run_id) + "/"


def read_manifest(store: Store, destination: str) -> tuple[dict | None, str | None]:
    """The manifest and its version (None, None on an empty destination)."""
    text, version = store.get_versioned(manifest_uri(destination), "promotion.destination")
    if text is None:
        return None, None
    try:
        return json.loads(text), version
    except ValueError as exc:
        raise BadInput(f"promotion.destination: {manifest_uri(destination)} is not JSON ({exc}); it is never "
                       "overwritten blindly: repair or remove it") from exc


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def entry(job: FineTuneJob, run_id: str, spec_hash: str, destination: str, test: dict, metric: str,
          how: str, requested_by: str | None = None, reason: str | None = None) -> dict:
    """The manifest's record of one champion."""
    spec = job.spec
    prefix = run_prefix(destination, run_id)
    return {"runId": run_id, "specHash": spec_hash, "job": f"{job.metadata.namespace or 'default'}/{job.metadata.name}",
            "task": spec.task, "baseModel": spec.base_model.uri, "baseModelRevision": spec.base_model.revision,
            "method": spec.method.type, "metric": metric, "test": test, "uri": prefix,
            "modelUri": join(prefix, contract.MODEL_DIR) + "/", "promotedAt": now(), "how": how,
            "requestedBy": requested_by, "reason": reason}


def publish(store: Store, destination: str, run_uri: str, new: dict, manifest: dict | None,
            version: str | None) -> bool:
    """Copies the run's files under runs/<runId>/, then writes the manifest naming `new` the champion, only if
    it is still at `version`. False: another promotion changed the destination first (nothing is overwritten)."""
    store.copy_prefix(run_uri, new["uri"], skip=NOT_PROMOTED, what="promotion copy")
    history = ([manifest["champion"]] if manifest and manifest.get("champion") else []) + \
        (manifest.get("history", []) if manifest else [])
    body = {"schemaVersion": 1, "destination": destination, "champion": new, "history": history}
    # Every write's content differs from every earlier one (the history grows): an ETag, a content hash on S3 and
    # MinIO, never comes back, so If-Match cannot mistake a changed manifest for the one read.
    return store.put_text_if(json.dumps(body, indent=2), manifest_uri(destination), version)


def rollback(store: Store, destination: str, run_id: str, requested_by: str, reason: str) -> dict:
    """Makes the earlier champion `run_id` the champion again (its record comes back from the history, its files
    are still under runs/<runId>/); the current one goes to the history. Returns the outcome for the status."""
    manifest, version = read_manifest(store, destination)
    out = {"destination": destination, "requestedBy": requested_by}
    current = (manifest or {}).get("champion") or {}
    if current.get("runId") == run_id:
        return {**out, "verdict": "RolledBack", "reason": PromotionReason.ROLLED_BACK, "championRunId": run_id,
                "modelUri": current.get("modelUri"),
                "reasons": [f"{run_id} is already the champion: nothing to roll back ({requested_by}: {reason})"]}
    earlier = next((e for e in (manifest or {}).get("history", []) if e.get("runId") == run_id), None)
    if earlier is None or not store.exists(join(run_prefix(destination, run_id), contract.SUMMARY_FILE)):
        return {**out, "verdict": "Rejected", "reason": PromotionReason.GATE_FAILED,
                "championRunId": current.get("runId"),
                "reasons": [f"rollback to {run_id} refused: the destination has no earlier champion {run_id}"]}
    restored = {**earlier, "promotedAt": now(), "how": "rollback", "requestedBy": requested_by, "reason": reason}
    history = [current, *(e for e in manifest.get("history", []))]
    body = {"schemaVersion": 1, "destination": destination, "champion": restored, "history": history}
    if not store.put_text_if(json.dumps(body, indent=2), manifest_uri(destination), version):
        return {**out, "verdict": "Conflict", "reason": PromotionReason.LOST_RACE,
                "championRunId": current.get("runId"),
                "reasons": ["another promotion changed the destination during the rollback: nothing written"]}
    return {**out, "verdict": "RolledBack", "reason": PromotionReason.ROLLED_BACK, "championRunId": run_id,
            "replacedRunId": current.get("runId"), "modelUri": restored["modelUri"],
            "reasons": [f"rolled back to {run_id}, replacing {current.get('runId')}: {requested_by}: {reason}"]}


@dataclass
class Challenge:
    """What `challenge` read and decided, for `conclude` to act on."""

    promotion: Promotion
    metric: str
    verdict: gate.Verdict
    manifest: dict | None = None
    version: str | None = None
    test: dict = field(default_factory=dict)

    @property
    def champion_id(self) -> str | None:
        return ((self.manifest or {}).get("champion") or {}).get("runId")

    def preview(self) -> dict:
        """The gate's verdict before `conclude` acts on it (report.html as the artifacts are written)."""
        v = self.verdict
        return {"destination": self.promotion.destination, "metric": self.metric, "championRunId": self.champion_id,
                "verdict": None, "reason": f"gate {'passed: to be published' if v.passed else 'failed'}",
                "checks": list(v.checks), "reasons": list(v.reasons)}


def metric_for(promotion: Promotion, monitored: str, test: dict) -> str:
    from kubetune.trainer.evaluation import HEADLINE_PREFERENCE

    if promotion.metric:
        return promotion.metric
    return next((m for m in (monitored, *HEADLINE_PREFERENCE) if m in test), next(iter(test), "loss"))


def challenge(job: FineTuneJob, store: Store, tested: dict, monitored: str, score_champion) -> Challenge:
    """Reads the destination's champion, scores it on the run's test rows (`score_champion(model_uri)`: the
    champion's evaluation.Scored, or raises NotComparable), adds the paired comparison to `tested` (its
    comparison.champion) and judges the run."""
    from kubetune.trainer import evaluation as ev

    promotion = job.spec.promotion
    manifest, version = read_manifest(store, promotion.destination)
    champion = (manifest or {}).get("champion")
    metric = metric_for(promotion, monitored, tested.get("test", {}))
    base = tested.get("comparison", {}).get("baseModel", {}).get("difference")
    champion_diff, why = None, None
    if champion and promotion.beat_champion:
        why = gate.incomparable(champion, job.spec.base_model.uri, job.spec.base_model.revision, job.spec.task)
        if why is None:
            try:
                scored, champ = score_champion(champion["modelUri"])
            except NotComparable as exc:
                why = str(exc)
            else:
                champion_diff = ev.compare(scored, champ)
                tested.setdefault("comparison", {})["champion"] = {
                    "description": f"the destination's champion, run {champion['runId']}", "runId": champion["runId"],
                    "test": ev.with_intervals(champ), "difference": champion_diff}
    verdict = gate.judge(promotion, metric, tested.get("test", {}), base, champion_diff,
                         champion["runId"] if champion else None, why)
    return Challenge(promotion, metric, verdict, manifest, version, tested.get("test", {}))


class NotComparable(Exception):
    """The champion cannot be scored on this run's rows (its files, its labels, a sharded run)."""


def conclude(c: Challenge, job: FineTuneJob, store: Store, run_id: str, spec_hash: str, run_uri: str) -> dict:
    """Acts on the verdict (and on spec.promotion.override) once the run's artifacts are written: the outcome
    for the summary, the termination message and status.promotion, also written to the run's promotion.json."""
    p, v = c.promotion, c.verdict
    out = {"destination": p.destination, "metric": c.metric, "championRunId": c.champion_id,
           "checks": [{k: x for k, x in check.items()} for check in v.checks], "reasons": list(v.reasons)}
    override = p.override
    if override is not None:  # what this run saw: an override in the spec that differs came after it
        out["override"] = {"action": override.action, "runId": override.run_id, "requestedBy": override.requested_by}
    if override is not None and override.action == "rollback":
        out.update(rollback(store, p.destination, override.run_id, override.requested_by, override.reason))
        out["reasons"] = out["reasons"] + [f"this run was not promoted: the override rolls back to {override.run_id}"]
    else:
        forced = override is not None and override.action == "promote" and override.run_id == run_id
        if override is not None and not forced:
            out["reasons"].append(f"override for run {override.run_id} does not apply to this run ({run_id})")
        if v.passed or forced:
            how = "gate" if v.passed else "override"
            new = entry(job, run_id, spec_hash, p.destination, c.test, c.metric, how,
                        override.requested_by if forced else None, override.reason if forced else None)
            if publish(store, p.destination, run_uri, new, c.manifest, c.version):
                out.update(verdict="Promoted" if v.passed else "Overridden",
                           reason=PromotionReason.PROMOTED if v.passed else PromotionReason.OVERRIDDEN,
                           modelUri=new["modelUri"], replacedRunId=c.champion_id)
                if forced:
                    out["requestedBy"] = override.requested_by
                    out["reasons"].append(f"promoted by override: {override.requested_by}: {override.reason}")
            else:
                out.update(verdict="Conflict", reason=PromotionReason.LOST_RACE)
                out["reasons"].append("another run promoted to the destination after this run read its champion "
                                      f"({c.champion_id or 'none'}): the manifest was not written")
        else:
            out.update(verdict="Rejected", reason=v.reason)
    store.put_text(json.dumps(out, indent=2), join(run_uri, RESULT_FILE))
    return out


def apply_override(job: FineTuneJob, store: Store) -> dict:
    """spec.promotion.override carried out on its own, for a run that has already finished (the operator's
    promotion Job, `python -m kubetune.trainer.promote`, or `kubetune override` by hand): a rollback as `rollback`;
    a promote copies the named run from output.uri/<runId>/ (a finished run: its summary.json is there) and writes
    the manifest conditionally, on the record, without a gate. Idempotent: a run already the champion is not
    written again, so a retried or repeated override changes nothing. The outcome names the override (its
    `override`), as a run's verdict names the one it saw."""
    p = job.spec.promotion
    o = p.override if p is not None else None
    if o is None:
        raise BadInput("spec.promotion.override is not set: nothing to carry out")
    seen = {"override": {"action": o.action, "runId": o.run_id, "requestedBy": o.requested_by}}
    return {**_apply_override(job, store, p, o), **seen}  # the status records which override was carried out


def _apply_override(job: FineTuneJob, store: Store, p: Promotion, o) -> dict:
    if o.action == "rollback":
        return rollback(store, p.destination, o.run_id, o.requested_by, o.reason)
    run_uri = join(job.spec.output.uri, o.run_id)
    summary_uri = join(run_uri, contract.SUMMARY_FILE)
    if not store.exists(summary_uri, "output.uri"):
        raise BadInput(f"spec.promotion.override: run {o.run_id} has no finished run at {run_uri}/ (no summary.json)")
    summary = json.loads(store.get_text(summary_uri))
    manifest, version = read_manifest(store, p.destination)
    current = ((manifest or {}).get("champion") or {}).get("runId")
    out = {"destination": p.destination, "championRunId": current, "requestedBy": o.requested_by}
    if current == o.run_id:
        return {**out, "verdict": "Overridden", "reason": PromotionReason.OVERRIDDEN,
                "modelUri": manifest["champion"]["modelUri"], "reasons": [f"{o.run_id} is already the champion"]}
    metric = metric_for(p, (job.spec.early_stopping.metric if job.spec.early_stopping else "loss"),
                        summary.get("test") or {})
    new = entry(job, o.run_id, summary.get("specHash", ""), p.destination, summary.get("test") or {}, metric,
                "override", o.requested_by, o.reason)
    if not publish(store, p.destination, run_uri, new, manifest, version):
        return {**out, "verdict": "Conflict", "reason": PromotionReason.LOST_RACE,
                "reasons": ["another promotion changed the destination meanwhile: nothing written"]}
    return {**out, "verdict": "Overridden", "reason": PromotionReason.OVERRIDDEN, "modelUri": new["modelUri"],
            "replacedRunId": current, "reasons": [f"promoted by override: {o.requested_by}: {o.reason}"]}
