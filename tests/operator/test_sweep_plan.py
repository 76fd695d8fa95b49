"""The sweep planner on plain dicts: which trials to create (never more unfinished than parallelism, never beyond
the budget, never a name twice), which to prune (Optuna's pruners on the recorded eval losses), and the status;
the same world, replayed by a fresh call (an operator restart), gives the same answer."""
import json
from datetime import datetime, timezone

import pytest

from kubetune.api.sweep import FineTuneSweep
from kubetune.operator.labels import ANNOTATION_PRUNED, ANNOTATION_TRIAL_PARAMS, LABEL_SWEEP, LABEL_TRIAL
from kubetune.operator.sweep_plan import plan, seed, trial_name
from kubetune.testing import sweep_manifest

NOW = datetime(2026, 12, 7, 14, 0, tzinfo=timezone.utc)
UID = "5f1e2d3c-0000-4000-8000-000000000001"
LR = "hyperparameters.learningRate"


def make_sweep(patch: dict | None = None, status: dict | None = None) -> FineTuneSweep:
    doc = sweep_manifest(patch)
    doc["metadata"].update(namespace="ml", uid=UID, generation=1)
    if status is not None:
        doc["status"] = status
    return FineTuneSweep.model_validate(doc)


def world_after(sweep: FineTuneSweep, steps: list) -> tuple[list[dict], FineTuneSweep]:
    """Applies plans as the operator would: each step is a function editing the created trials (their status)."""
    observed: list[dict] = []
    for step in steps:
        p = plan(sweep, observed, NOW)
        for manifest in p.create:
            observed.append({**manifest, "metadata": {**manifest["metadata"], "uid": f"u-{len(observed)}"}})
        for name, patch in p.prune:
            obj = next(o for o in observed if o["metadata"]["name"] == name)
            obj["metadata"]["annotations"].update(patch["metadata"]["annotations"])
            obj["spec"]["suspend"] = True
        sweep = sweep.model_copy(update={"status": p.status})
        step(observed)
    return observed, sweep


def set_phase(obj: dict, phase: str, **metrics) -> None:
    obj["status"] = {"phase": phase, "metrics": metrics, "conditions": [{"type": "Ready", "reason": phase}]}


def succeed(obj: dict, loss: float) -> None:
    set_phase(obj, "Succeeded", evalLoss=loss, best={"name": "loss", "value": loss, "step": 10})


def test_a_grid_of_four_with_parallelism_two():
    sweep = make_sweep()
    first = plan(sweep, [], NOW)
    assert [m["metadata"]["name"] for m in first.create] == ["sweep-t0", "sweep-t1"]
    trial = first.create[0]
    assert trial["metadata"]["labels"][LABEL_SWEEP] == "sweep" and trial["metadata"]["labels"][LABEL_TRIAL] == "0"
    owner = trial["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("FineTuneSweep", UID, True)
    params = json.loads(trial["metadata"]["annotations"][ANNOTATION_TRIAL_PARAMS])
    assert trial["spec"]["hyperparameters"]["learningRate"] == params[LR]
    assert trial["spec"]["method"]["lora"]["r"] == params["method.lora.r"]
    assert first.status.counts.model_dump() == {"created": 2, "running": 2, "succeeded": 0, "failed": 0,
                                                "pruned": 0, "done": 0, "total": 4}
    assert first.status.phase == "Running"

    def finish_all(observed):
        for i, obj in enumerate(observed):
            if not obj.get("status"):
                succeed(obj, 2.0 - 0.1 * i)

    observed, sweep = world_after(sweep, [finish_all, finish_all, lambda o: None])
    assert [o["metadata"]["name"] for o in observed] == [f"sweep-t{i}" for i in range(4)]
    combos = {(o["spec"]["hyperparameters"]["learningRate"], o["spec"]["method"]["lora"]["r"]) for o in observed}
    assert combos == {(1e-4, 8), (1e-4, 16), (2e-4, 8), (2e-4, 16)}  # the whole grid, each point once
    status = sweep.status
    assert status.phase == "Succeeded" and status.counts.done == 4 and status.counts.running == 0
    assert status.best.name == "sweep-t3" and status.best.objective == pytest.approx(1.7)
    conditions = {c.type: c for c in status.conditions}
    assert conditions["Succeeded"].status == "True" and conditions["Succeeded"].reason == "Completed"
    assert conditions["Reconciling"].status == "False" and conditions["Ready"].status == "True"
    assert all(c.observed_generation == 1 for c in status.conditions)
    assert plan(sweep, observed, NOW).create == []


def test_never_more_unfinished_than_parallelism():
    sweep = make_sweep({"spec": {"parallelism": 3, "algorithm": "random", "maxTrials": 7, "searchSpace": [
        {"path": LR, "floatRange": {"min": 1e-5, "max": 1e-3, "log": True}}]}})
    observed: list[dict] = []
    for round_ in range(10):
        p = plan(sweep, observed, NOW)
        observed += p.create
        unfinished = [o for o in observed if (o.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        assert len(unfinished) <= 3
        sweep = sweep.model_copy(update={"status": p.status})
        if unfinished:
            succeed(unfinished[0], 1.0 + round_)  # one ends per round
    assert len(observed) == 7
    assert len({o["spec"]["hyperparameters"]["learningRate"] for o in observed}) == 7
    assert sweep.status.phase == "Succeeded"


def test_a_restarted_operator_proposes_the_same_trials_and_no_duplicate():
    sweep = make_sweep({"spec": {"algorithm": "tpe", "maxTrials": 5, "parallelism": 2, "searchSpace": [
        {"path": LR, "floatRange": {"min": 1e-5, "max": 1e-3, "log": True}},
        {"path": "method.lora.r", "intRange": {"min": 4, "max": 64, "step": 4}}]}})
    first = plan(sweep, [], NOW)
    again = plan(sweep, [], NOW)  # the same world, seen by a restarted operator that lost everything
    assert [m["spec"] for m in first.create] == [m["spec"] for m in again.create]
    # Only the first trial was created before the crash: the next plan asks for t1 (same params), not t0 again.
    after_crash = plan(sweep, first.create[:1], NOW)
    assert [m["metadata"]["name"] for m in after_crash.create] == ["sweep-t1"]
    assert after_crash.create[0]["spec"] == first.create[1]["spec"]


def test_status_and_params_survive_from_the_children_alone():
    sweep = make_sweep()
    p = plan(sweep, [], NOW)
    succeed(p.create[0], 1.5)
    rebuilt = plan(sweep, p.create, NOW).status  # no prior status: everything read from the trials
    assert [t.name for t in rebuilt.trials] == ["sweep-t0", "sweep-t1", "sweep-t2"]
    assert rebuilt.trials[0].objective == 1.5 and rebuilt.trials[0].phase == "Succeeded"
    assert rebuilt.trials[0].params == json.loads(p.create[0]["metadata"]["annotations"][ANNOTATION_TRIAL_PARAMS])


def test_a_trial_not_controlled_by_the_sweep_is_a_conflict_and_nothing_is_created():
    stranger = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                "metadata": {"name": "sweep-t0", "namespace": "ml", "labels": {LABEL_SWEEP: "sweep", LABEL_TRIAL: "0"},
                             "ownerReferences": [{"uid": "someone-else", "controller": True}]}}
    p = plan(make_sweep(), [stranger], NOW)
    assert p.create == [] and "sweep-t0" in p.conflict
    conditions = {c.type: c for c in p.status.conditions}  # retried: in progress for kstatus, not Failed
    assert conditions["Reconciling"].status == "True" and conditions["Reconciling"].reason == "ChildConflict"
    assert conditions["Stalled"].status == "False" and conditions["Stalled"].reason == "Retrying"


def test_a_trial_deleted_before_it_ended_is_created_again_with_its_params():
    sweep = make_sweep()
    p = plan(sweep, [], NOW)
    sweep = sweep.model_copy(update={"status": p.status})
    again = plan(sweep, p.create[1:], NOW)  # t0 was deleted
    assert [m["metadata"]["name"] for m in again.create] == ["sweep-t0"]
    assert again.create[0]["spec"] == p.create[0]["spec"]


def test_failed_and_objectiveless_sweeps_fail():
    sweep = make_sweep({"spec": {"maxTrials": 2}})
    p = plan(sweep, [], NOW)
    for obj in p.create:
        set_phase(obj, "Failed")
    done = plan(sweep.model_copy(update={"status": p.status}), p.create, NOW).status
    assert done.phase == "Failed" and {c.type: c for c in done.conditions}["Failed"].reason == "NoObjective"


def test_test_objective_with_its_interval_and_maximised_metrics():
    sweep = make_sweep({"spec": {"maxTrials": 2, "objective": {"dataset": "test", "metric": "tokenAccuracy"},
                                 "template": {"spec": {"dataset": {"test": "s3://datasets/chat/test.jsonl"}}}}})
    p = plan(sweep, [], NOW)
    comparison = {"against": "baseModel", "metric": "tokenAccuracy", "baseline": 0.5, "fineTuned": 0.6,
                  "difference": 0.1, "low": 0.05, "high": 0.15, "excludesZero": True}
    set_phase(p.create[0], "Succeeded", test={"tokenAccuracy": 0.6}, comparisons=[comparison])
    set_phase(p.create[1], "Succeeded", test={"tokenAccuracy": 0.4})
    status = plan(sweep, p.create, NOW).status
    assert status.best.name == "sweep-t0"  # maximised: higher is better
    interval = status.trials[0].interval
    assert (interval.low, interval.high) == (pytest.approx(0.55), pytest.approx(0.65))
    assert status.trials[1].interval is None


def running(obj: dict, history: list[tuple[int, float]]) -> None:
    step, loss = history[-1]
    obj["status"] = {"phase": "Running", "progress": {"step": step}, "metrics": {"evalLoss": loss}}


@pytest.mark.parametrize("pruning", [{"type": "median", "startupTrials": 2},
                                     {"type": "successiveHalving", "minResource": 10, "reductionFactor": 2}])
def test_a_losing_trial_is_pruned_on_its_eval_loss(pruning):
    sweep = make_sweep({"spec": {"parallelism": 4, "maxTrials": 4, "pruning": pruning,
                                 "searchSpace": [{"path": LR, "values": [1e-4, 2e-4, 3e-4, 4e-4]}]}})
    p = plan(sweep, [], NOW)
    trials = p.create
    sweep = sweep.model_copy(update={"status": p.status})
    # Two trials finished with low eval losses at steps 10 and 20; t2 runs well, t3 badly.
    for obj, losses in ((trials[0], [1.0, 0.8]), (trials[1], [1.1, 0.9])):
        for step, loss in zip((10, 20), losses):
            running(obj, [(step, loss)])
            p = plan(sweep, trials, NOW)
            sweep = sweep.model_copy(update={"status": p.status})
        succeed(obj, losses[-1])
    running(trials[2], [(10, 0.95)])
    running(trials[3], [(10, 3.0)])
    p = plan(sweep, trials, NOW)
    assert [name for name, _ in p.prune] == ["sweep-t3"]
    name, patch = p.prune[0]
    assert patch == {"metadata": {"annotations": {ANNOTATION_PRUNED: "true"}}, "spec": {"suspend": True}}
    t3 = p.status.trials[3]
    assert t3.phase == "Pruned" and t3.pruned and t3.eval_losses[-1].value == 3.0
    assert p.status.counts.pruned == 1 and ("Normal", "TrialPruned") == p.events[0][:2]
    # Level-based: the pruned annotation alone keeps it pruned, and the next plan prunes nothing more.
    trials[3]["metadata"]["annotations"][ANNOTATION_PRUNED] = "true"
    again = plan(sweep.model_copy(update={"status": p.status}), trials, NOW)
    assert again.prune == [] and again.status.trials[3].phase == "Pruned"


def test_without_pruning_nothing_is_pruned():
    sweep = make_sweep({"spec": {"parallelism": 2}})
    p = plan(sweep, [], NOW)
    running(p.create[0], [(10, 9.0)])
    assert plan(sweep, p.create, NOW).prune == []


def test_eval_losses_are_recorded_once_per_new_value():
    sweep = make_sweep()
    p = plan(sweep, [], NOW)
    trials = p.create
    for step, loss in ((5, 2.0), (7, 2.0), (10, 1.5)):
        running(trials[0], [(step, loss)])
        p = plan(sweep, trials, NOW)
        sweep = sweep.model_copy(update={"status": p.status})
    assert [(e.step, e.value) for e in sweep.status.trials[0].eval_losses] == [(5, 2.0), (10, 1.5)]


def test_a_trial_whose_params_break_a_rule_fails_without_being_created():
    # Each value fits the template alone, but batchSize 12 with microBatchSize 8 breaks the multiple rule.
    sweep = make_sweep({"spec": {"parallelism": 4, "searchSpace": [
        {"path": "hyperparameters.batchSize", "values": [8, 12]},
        {"path": "hyperparameters.microBatchSize", "values": [4, 8]}]}})
    p = plan(sweep, [], NOW)
    assert len(p.create) == 3
    (bad,) = [t for t in p.status.trials if t.phase == "Failed"]
    assert bad.reason == "InvalidSpec"
    assert bad.params == {"hyperparameters.batchSize": 12, "hyperparameters.microBatchSize": 8}
    assert ("Warning", "InvalidSpec") in [e[:2] for e in p.events]
    # The record keeps it failed: the next plan neither creates it nor counts it as running.
    again = plan(sweep.model_copy(update={"status": p.status}), p.create, NOW)
    assert again.create == [] and again.status.counts.failed == 1 and again.status.counts.running == 3


def test_seeds_differ_by_trial_and_sweep():
    assert seed(UID, 0) != seed(UID, 1) and seed(UID, 0) != seed("00000000-0000", 0)
    assert trial_name("sweep", 12) == "sweep-t12"


def test_trial_specs_are_written_as_the_model_writes_them():
    sweep = make_sweep({"spec": {"parallelism": 4, "searchSpace": [
        {"path": "dataset.packing", "choices": ["true", "false"]},
        {"path": "method.lora.r", "values": [8.0, 16]}]}})
    created = plan(sweep, [], NOW).create
    assert {(m["spec"]["dataset"]["packing"], m["spec"]["method"]["lora"]["r"]) for m in created} == {
        (True, 8), (True, 16), (False, 8), (False, 16)}
    assert all(type(m["spec"]["method"]["lora"]["r"]) is int for m in created)  # the CRD says integer


@pytest.mark.parametrize("uid", [UID, "00000000-0000-4000-8000-000000000000", "ffffffff-1234-4000-8000-00000000000f",
                                 "0badcafe-0000-4000-8000-000000000002"])
def test_a_grid_takes_every_point_once_whatever_the_uid_and_the_pace(uid):
    """Trials created one reconcile at a time (one ends, one starts): each is a new point of the grid."""
    doc = sweep_manifest({"spec": {"parallelism": 2, "searchSpace": [
        {"path": LR, "values": [1e-4, 2e-4, 3e-4]}, {"path": "method.lora.r", "values": [8, 16]}]}})
    doc["metadata"].update(namespace="ml", uid=uid, generation=1)
    sweep = FineTuneSweep.model_validate(doc)
    observed: list[dict] = []
    for _ in range(8):
        p = plan(sweep, observed, NOW)
        observed += p.create
        sweep = sweep.model_copy(update={"status": p.status})
        pending = [o for o in observed if not o.get("status")]
        if pending:
            succeed(pending[0], 1.0)
    combos = [(o["spec"]["hyperparameters"]["learningRate"], o["spec"]["method"]["lora"]["r"]) for o in observed]
    assert len(combos) == 6 and len(set(combos)) == 6, combos


@pytest.mark.parametrize("step, every, total, expected", [
    (23, 20, 200, 20), (40, 20, 200, 40), (59, 20, 200, 40), (200, 20, 200, 200), (205, 20, 205, 205),
    (47, None, 200, 40), (47, None, None, 47), (3, 20, 200, 0)])
def test_an_eval_loss_is_filed_under_the_step_of_its_evaluation(step, every, total, expected):
    from kubetune.operator.sweep_plan import eval_step
    spec = {"evaluation": {"everySteps": every}} if every else {}
    assert eval_step(step, spec, {"progress": {"step": step, "totalSteps": total}}) == expected


def test_median_pruning_compares_trials_read_at_different_steps():
    """Two trials whose eval losses the operator read at different progress steps (23 and 27 for the evaluation
    of step 20): filed under step 20 both, so the pruner compares them and stops the worse one. Filed under the
    steps read, no finished trial has the running one's step and it is never pruned."""
    sweep = make_sweep({"spec": {"parallelism": 1, "pruning": {"startupTrials": 1},
                                 "template": {"spec": {"evaluation": {"everySteps": 20}}}}})

    def running(obj, step, loss):
        obj["status"] = {"phase": "Running", "metrics": {"evalLoss": loss}, "progress": {"step": step,
                                                                                      "totalSteps": 100}}
    steps = [lambda o: running(o[0], 23, 1.0), lambda o: succeed(o[0], 1.0), lambda o: running(o[1], 27, 3.0)]
    observed, sweep = world_after(sweep, steps)
    p = plan(sweep, observed, NOW)
    assert [name for name, _ in p.prune] == ["sweep-t1"]
    assert [(e.step, e.value) for e in p.status.trials[1].eval_losses] == [(20, 3.0)]


def test_evaluations_the_operator_never_read_still_reach_the_pruner():
    """A fast trial's evaluations can fall between two progress reads (seen on CI: a 300-step trial in seconds, so
    the finished trial's history held steps 120 and 300 only and a running one's step 60 had nothing to be compared
    with). The trainer serves its recent evaluations, the FineTuneJob status keeps them (metrics.evalLosses), and
    the planner files each under its own step: the finished trial's step 20 is there though no read caught it."""
    sweep = make_sweep({"spec": {"parallelism": 1, "pruning": {"startupTrials": 1},
                                 "template": {"spec": {"evaluation": {"everySteps": 20}}}}})
    history = lambda *points: [{"step": s, "value": v} for s, v in points]  # noqa: E731

    def finished(obj):  # only its final state was ever read
        obj["status"] = {"phase": "Succeeded", "progress": {"step": 100, "totalSteps": 100},
                         "metrics": {"evalLoss": 0.5, "evalLosses": history((20, 1.0), (40, 0.8), (100, 0.5))}}

    def running(obj):
        obj["status"] = {"phase": "Running", "progress": {"step": 33, "totalSteps": 100},
                         "metrics": {"evalLoss": 3.0, "evalLosses": history((20, 3.0))}}
    observed, sweep = world_after(sweep, [lambda o: finished(o[0]), lambda o: running(o[1])])
    p = plan(sweep, observed, NOW)
    assert [(e.step, e.value) for e in p.status.trials[0].eval_losses] == [(20, 1.0), (40, 0.8), (100, 0.5)]
    assert [name for name, _ in p.prune] == ["sweep-t1"]


def test_a_trial_at_its_last_evaluation_is_left_to_finish():
    """Pruning saves the steps a trial has left; one whose latest evaluation is at its last step has none, and
    suspending it would throw away its test evaluation and call a full-cost run Pruned. It finishes and is ranked."""
    sweep = make_sweep({"spec": {"parallelism": 1, "pruning": {"startupTrials": 1},
                                 "template": {"spec": {"evaluation": {"everySteps": 20}}}}})

    def state(obj, phase, step, points):
        obj["status"] = {"phase": phase, "progress": {"step": step, "totalSteps": 40},
                         "metrics": {"evalLoss": points[-1][1],
                                     "evalLosses": [{"step": s, "value": v} for s, v in points]}}
    observed, sweep = world_after(sweep, [lambda o: state(o[0], "Succeeded", 40, [(20, 1.0), (40, 0.8)]),
                                          lambda o: state(o[1], "Running", 40, [(20, 0.9), (40, 3.0)])])
    p = plan(sweep, observed, NOW)
    assert p.prune == [] and p.status.trials[1].phase == "Running"


def test_a_trial_that_finished_before_its_suspension_landed_counts_as_finished():
    sweep = make_sweep({"spec": {"parallelism": 1, "pruning": {"startupTrials": 1}}})
    observed, sweep = world_after(sweep, [lambda o: succeed(o[0], 1.0)])
    observed[0]["metadata"]["annotations"][ANNOTATION_PRUNED] = "true"
    p = plan(sweep, observed, NOW)
    assert p.status.trials[0].phase == "Succeeded" and p.status.trials[0].objective == 1.0
