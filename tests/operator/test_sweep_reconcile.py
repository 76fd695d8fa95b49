"""reconcile_sweep against an in-memory stand-in for kube.Kube: what it creates, patches and writes, in which
order, and how a refusal, a conflict or an invalid sweep shows on the status."""
import copy

import pytest
from prometheus_client import REGISTRY

from kubetune.operator.errors import ApiError, PermanentFailure, RetryLater
from kubetune.operator.labels import ANNOTATION_PRUNED, LABEL_SWEEP
from kubetune.operator.sweep import reconcile_sweep
from kubetune.testing import sweep_manifest

UID = "5f1e2d3c-0000-4000-8000-000000000001"


class MemoryKube:
    """The few Kube methods a sweep reconcile calls, on dicts; `log` records every write."""

    def __init__(self, sweep: dict):
        self.objects = {("FineTuneSweep", sweep["metadata"]["name"]): sweep}
        self.log: list[tuple] = []
        self.refuse_create: ApiError | None = None
        self.version = 1

    def read(self, kind, namespace, name):
        obj = self.objects.get((kind, name))
        return copy.deepcopy(obj) if obj else None

    def list_objects(self, kind, namespace, selector):
        key, value = selector.split("=")
        return [copy.deepcopy(o) for (k, _), o in self.objects.items()
                if k == kind and (o["metadata"].get("labels") or {}).get(key) == value]

    def create(self, obj):
        if self.refuse_create:
            raise self.refuse_create
        key = (obj["kind"], obj["metadata"]["name"])
        if key in self.objects:
            return copy.deepcopy(self.objects[key])
        self.log.append(("create", obj["metadata"]["name"]))
        self.objects[key] = copy.deepcopy(obj)
        return copy.deepcopy(obj)

    def patch(self, kind, namespace, name, patch):
        self.log.append(("patch", name, patch))
        obj = self.objects[(kind, name)]
        obj["metadata"].setdefault("annotations", {}).update(patch["metadata"]["annotations"])
        obj["spec"].update(patch["spec"])

    def patch_status(self, namespace, name, patch, resource_version=None, kind="FineTuneJob"):
        obj = self.objects[(kind, name)]
        if resource_version and resource_version != obj["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict")
        status = obj.setdefault("status", {})
        for key, value in patch.items():
            if value is None:
                status.pop(key, None)
            elif isinstance(value, dict) and isinstance(status.get(key), dict):
                status[key].update(value)
            else:
                status[key] = value
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.log.append(("status", status.get("phase")))
        return copy.deepcopy(obj)

    def post_event(self, obj, type_, reason, message, component):
        self.log.append(("event", reason))

    def trials(self):
        return sorted(n for k, n in self.objects if k == "FineTuneJob")


def sweep(patch=None) -> dict:
    doc = sweep_manifest(patch)
    doc["metadata"].update(namespace="ml", uid=UID, generation=1, resourceVersion="1")
    return doc


def test_creates_the_first_trials_then_writes_the_status_then_posts_events():
    kube = MemoryKube(sweep())
    status = reconcile_sweep(kube, "ml", "sweep")
    assert kube.trials() == ["sweep-t0", "sweep-t1"]
    assert [entry[0] for entry in kube.log] == ["create", "create", "status", "event", "event"]
    assert status.counts.running == 2 and kube.objects[("FineTuneSweep", "sweep")]["status"]["phase"] == "Running"
    # Again, with nothing new: no create, no status write.
    kube.log.clear()
    reconcile_sweep(kube, "ml", "sweep")
    assert kube.log == []


def test_a_finished_trial_makes_room_for_the_next():
    kube = MemoryKube(sweep())
    reconcile_sweep(kube, "ml", "sweep")
    kube.objects[("FineTuneJob", "sweep-t0")]["status"] = {"phase": "Succeeded", "metrics": {"evalLoss": 1.2}}
    status = reconcile_sweep(kube, "ml", "sweep")
    assert kube.trials() == ["sweep-t0", "sweep-t1", "sweep-t2"]
    assert status.best.name == "sweep-t0" and status.counts.done == 1 and status.counts.running == 2


def test_pruning_patches_the_trial_before_the_status():
    kube = MemoryKube(sweep({"spec": {"parallelism": 4, "pruning": {"startupTrials": 1}}}))
    reconcile_sweep(kube, "ml", "sweep")
    # t0's eval loss at step 10 is recorded while it runs; then it succeeds and t1 runs far worse.
    kube.objects[("FineTuneJob", "sweep-t0")]["status"] = {"phase": "Running", "metrics": {"evalLoss": 1.0},
                                                          "progress": {"step": 10}}
    reconcile_sweep(kube, "ml", "sweep")
    kube.objects[("FineTuneJob", "sweep-t0")]["status"]["phase"] = "Succeeded"
    kube.objects[("FineTuneJob", "sweep-t1")]["status"] = {"phase": "Running", "metrics": {"evalLoss": 5.0},
                                                          "progress": {"step": 10}}
    kube.log.clear()
    pruned_before = REGISTRY.get_sample_value("kubetune_operator_sweep_trials_pruned_total", {"namespace": "ml"})
    status = reconcile_sweep(kube, "ml", "sweep")
    assert REGISTRY.get_sample_value("kubetune_operator_sweep_trials_pruned_total", {"namespace": "ml"}) == \
        (pruned_before or 0) + 1
    assert [e[:2] for e in kube.log if e[0] == "patch"] == [("patch", "sweep-t1")]
    assert kube.objects[("FineTuneJob", "sweep-t1")]["metadata"]["annotations"][ANNOTATION_PRUNED] == "true"
    assert kube.objects[("FineTuneJob", "sweep-t1")]["spec"]["suspend"] is True
    assert [e[0] for e in kube.log].index("patch") < [e[0] for e in kube.log].index("status")
    assert status.counts.pruned == 1 and ("event", "TrialPruned") in kube.log


def test_a_refused_trial_is_on_the_status_and_retried_or_not():
    kube = MemoryKube(sweep())
    kube.refuse_create = ApiError(403, "Forbidden", '{"message": "exceeded quota"}')
    with pytest.raises(RetryLater):
        reconcile_sweep(kube, "ml", "sweep")
    conditions = {c["type"]: c for c in kube.objects[("FineTuneSweep", "sweep")]["status"]["conditions"]}
    assert conditions["Reconciling"]["reason"] == "ChildForbidden" and "quota" in conditions["Reconciling"]["message"]
    assert conditions["Stalled"]["status"] == "False" and conditions["Stalled"]["reason"] == "Retrying"
    kube.refuse_create = ApiError(422, "Invalid", '{"message": "spec.x: bad"}')
    with pytest.raises(PermanentFailure):
        reconcile_sweep(kube, "ml", "sweep")
    conditions = {c["type"]: c for c in kube.objects[("FineTuneSweep", "sweep")]["status"]["conditions"]}
    assert conditions["Stalled"]["status"] == "True" and conditions["Stalled"]["reason"] == "ChildRejected"


def test_a_trial_someone_else_owns_is_a_conflict():
    kube = MemoryKube(sweep())
    kube.objects[("FineTuneJob", "sweep-t0")] = {
        "kind": "FineTuneJob", "spec": {}, "metadata": {"name": "sweep-t0", "labels": {LABEL_SWEEP: "sweep",
                                                                                       "kubetune.io/trial": "0"}}}
    with pytest.raises(RetryLater, match="not controlled"):
        reconcile_sweep(kube, "ml", "sweep")
    assert kube.trials() == ["sweep-t0"]


def test_an_invalid_sweep_fails_with_the_field_named():
    doc = sweep({"spec": {"searchSpace": [{"path": "hyperparameters.learningRate", "values": [5.0]}]}})
    kube = MemoryKube(doc)
    with pytest.raises(PermanentFailure, match="learningRate"):
        reconcile_sweep(kube, "ml", "sweep")
    status = kube.objects[("FineTuneSweep", "sweep")]["status"]
    assert status["phase"] == "Failed" and kube.trials() == []
    assert {c["type"]: c for c in status["conditions"]}["Stalled"]["reason"] == "InvalidSpec"


def test_a_deleted_sweep_does_nothing():
    kube = MemoryKube(sweep())
    assert reconcile_sweep(kube, "ml", "other") is None and kube.log == []


def test_an_operator_without_sweeps_does_not_load_optuna():
    """Optuna, numpy and SQLAlchemy come with the first sweep reconcile (17 MB of memory, half a second)."""
    import subprocess
    import sys

    code = "import sys, kubetune.operator.__main__; assert 'optuna' not in sys.modules, 'optuna loaded at start'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_gated_sweep_posts_its_promotion_candidate_after_completed():
    kube = MemoryKube(sweep({"spec": {"maxTrials": 2, "objective": {"dataset": "test"}, "template": {"spec": {
        "dataset": {"test": "s3://data/test.jsonl"}, "evaluation": {"baseline": True},
        "promotion": {"destination": "s3://models/bot/"}}}}}))
    reconcile_sweep(kube, "ml", "sweep")
    assert all("promotion" not in kube.objects[("FineTuneJob", n)]["spec"] for n in kube.trials())
    for n, loss in (("sweep-t0", 1.3), ("sweep-t1", 1.1)):
        kube.objects[("FineTuneJob", n)]["status"] = {
            "phase": "Succeeded", "runId": f"g1-{n}",
            "metrics": {"test": {"loss": loss, "lossLow": loss - 0.05, "lossHigh": loss + 0.05}}}
    kube.log.clear()
    status = reconcile_sweep(kube, "ml", "sweep")
    assert status.promotion_candidate.trial == "sweep-t1" and status.promotion_candidate.clear_winner is True
    assert status.promotion_candidate.run_id == "g1-sweep-t1"
    events = [e[1] for e in kube.log if e[0] == "event"]
    assert events == ["Completed", "PromotionCandidate"]
