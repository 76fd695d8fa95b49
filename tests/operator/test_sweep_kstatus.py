"""kstatus (Flux `wait: true`, through the real cli-utils library in hack/kstatus) over the statuses the sweep
planner writes: InProgress while trials run or a refusal is retried, Current once Completed, Failed for
NoObjective or a trial the API server calls invalid."""
from datetime import datetime, timezone

from kubetune.api.sweep import FineTuneSweep, SweepReason
from kubetune.operator.labels import LABEL_SWEEP, LABEL_TRIAL
from kubetune.operator.sweep_plan import plan, sweep_conditions
from kubetune.testing import sweep_manifest
from tests.operator import kstatus

NOW = datetime(2026, 12, 7, 14, 0, tzinfo=timezone.utc)


def test_each_stage_of_a_sweep_reads_as_kstatus_reads_it():
    doc = sweep_manifest({"spec": {"maxTrials": 2}}, name="grid")
    doc["metadata"].update(namespace="ml", uid="00000000-0000-0000-0000-000000000001", generation=1)
    sweep = FineTuneSweep.model_validate(doc)
    first = plan(sweep, [], NOW)
    trials = first.create
    for t in trials:
        t["status"] = {"phase": "Succeeded", "metrics": {"evalLoss": 1.0}}
    done = plan(sweep, trials, NOW).status
    for t in trials:
        t["status"] = {"phase": "Failed"}
    failed = plan(sweep, trials, NOW).status
    stranger = {"metadata": {"name": "grid-t0", "labels": {LABEL_SWEEP: "grid", LABEL_TRIAL: "0"}}}
    conflict = plan(sweep, [stranger], NOW).status
    rejected = first.status.model_copy(update={"conditions": sweep_conditions(
        "Running", SweepReason.CHILD_REJECTED, "spec.x: bad", "permanent", [], 1, NOW)})
    stages = {"trials running": first.status, "completed": done, "no objective": failed,
              "name taken (retried)": conflict, "trial rejected as invalid": rejected}
    objs = [{"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneSweep",
             "metadata": {"name": "grid", "generation": 1}, "status": s.to_wire()} for s in stages.values()]
    got = dict(zip(stages, (status for status, _ in kstatus.compute_all(objs))))
    assert got == {"trials running": "InProgress", "completed": "Current", "no objective": "Failed",
                   "name taken (retried)": "InProgress", "trial rejected as invalid": "Failed"}
