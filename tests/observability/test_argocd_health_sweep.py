"""Argo CD health of a FineTuneSweep, under Lua 5.1 with Argo CD's libraries: health_test.yaml's cases, the same
statuses made afresh by the operator's planner (so the testdata cannot drift from what the operator writes), and
argocd-cm.yaml carrying the script verbatim."""
from datetime import datetime, timezone

import pytest
import yaml

from kubetune.api.sweep import FineTuneSweep
from kubetune.operator.labels import LABEL_SWEEP, LABEL_TRIAL
from kubetune.operator.sweep_plan import plan
from kubetune.testing import sweep_manifest
from tests.observability.argocd import CUSTOMIZATIONS, health

SWEEP_DIR = CUSTOMIZATIONS / "kubetune.io" / "FineTuneSweep"
SCRIPT = (SWEEP_DIR / "health.lua").read_text()
CASES = yaml.safe_load((SWEEP_DIR / "health_test.yaml").read_text())["tests"]
NOW = datetime(2026, 12, 7, 14, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["inputPath"])
def test_health_of_each_case(case):
    assert health(yaml.safe_load((SWEEP_DIR / case["inputPath"]).read_text()), SCRIPT) == case["healthStatus"]


def test_the_argocd_cm_snippet_carries_the_script_verbatim():
    cm = yaml.safe_load((CUSTOMIZATIONS.parent / "argocd-cm.yaml").read_text())
    assert cm["data"]["resource.customizations.health.kubetune.io_FineTuneSweep"] == SCRIPT


def wire(sweep: FineTuneSweep, status) -> dict:
    doc = sweep.to_wire()
    doc["status"] = status.to_wire()
    return doc


def make(patch=None) -> FineTuneSweep:
    doc = sweep_manifest(patch, name="grid")
    doc["metadata"].update(namespace="ml", uid="00000000-0000-0000-0000-000000000001", generation=1)
    return FineTuneSweep.model_validate(doc)


def test_what_the_planner_writes_reads_as_each_health():
    sweep = make()
    first = plan(sweep, [], NOW)
    assert health(wire(sweep, first.status), SCRIPT) == {
        "status": "Progressing", "message": "Searching: 0/4 trials done, 2 running (parallelism 2)"}
    trials = first.create
    for _ in range(3):
        for t in trials:
            t.setdefault("status", {"phase": "Succeeded", "metrics": {"evalLoss": 1.4}})
        p = plan(sweep.model_copy(update={"status": first.status}), trials, NOW)
        trials += p.create
    done = plan(sweep, trials, NOW).status
    assert health(wire(sweep, done), SCRIPT) == {  # a validation objective: no intervals to rank by
        "status": "Healthy",
        "message": "Completed: 4 trials ended; best grid-t0 with loss 1.4; no intervals to compare trials by"}
    for t in trials:
        t["status"] = {"phase": "Failed"}
    failed = plan(sweep, trials, NOW).status
    assert health(wire(sweep, failed), SCRIPT) == {
        "status": "Degraded", "message": "NoObjective: 4 trials ended and none reported validation loss"}
    stranger = {"metadata": {"name": "grid-t0", "labels": {LABEL_SWEEP: "grid", LABEL_TRIAL: "0"}}}
    conflict = plan(sweep, [stranger], NOW).status
    result = health(wire(sweep, conflict), SCRIPT)
    assert result["status"] == "Degraded" and result["message"].startswith("ChildConflict: FineTuneJob grid-t0")


def test_a_status_older_than_the_spec_is_progressing():
    obj = yaml.safe_load((SWEEP_DIR / "testdata" / "succeeded.yaml").read_text())
    obj["metadata"]["generation"] = 2
    assert health(obj, SCRIPT) == {"status": "Progressing",
                                   "message": "Waiting for the operator to observe generation 2"}
    del obj["status"]
    assert health(obj, SCRIPT)["status"] == "Progressing"
