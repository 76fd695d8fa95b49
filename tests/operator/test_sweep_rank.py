"""The sweep's ranking on plain values: the best trial, its rank order, and which trials' 95% intervals overlap
the best's (indistinguishable from it); the test behind it (non-overlap shows a difference) checked against a
paired bootstrap on synthetic per-row scores; and the ranking and promotion candidate in the planner's status."""
import numpy as np
import pytest

from kubetune.api.sweep import Interval, Trial
from kubetune.operator.sweep_plan import objective_of, plan
from kubetune.operator.sweep_rank import rank
from tests.operator.test_sweep_plan import NOW, make_sweep, world_after

BASE = 1.50  # the base model's test loss every trial was compared against


def paired(low: float, high: float, baseline: float = BASE) -> Interval:
    return Interval(low=low, high=high, basis="pairedWithBaseModel", baseline=baseline)


def own(low: float, high: float) -> Interval:
    return Interval(low=low, high=high, basis="ownBootstrap")


def trial(number: int, objective: float | None, interval: Interval | None = None, phase: str = "Succeeded",
          own_interval: Interval | None = None) -> Trial:
    return Trial(name=f"s-t{number}", number=number, params={}, phase=phase, objective=objective,
                 interval=interval, own_interval=own_interval)


def marks(trials: list[Trial]) -> dict[str, tuple]:
    return {t.name: (t.rank, t.indistinguishable_from_best) for t in trials}


def test_overlapping_intervals_are_indistinguishable_and_apart_ones_are_not():
    trials = [trial(0, 1.30, paired(1.25, 1.36)), trial(1, 1.15, paired(1.10, 1.20)),
              trial(2, 1.18, paired(1.12, 1.24)), trial(3, 1.40, phase="Pruned"), trial(4, None, phase="Failed")]
    best, ranked = rank(trials, minimize=True)
    assert best.name == "s-t1"
    assert marks(ranked) == {"s-t0": (3, False), "s-t1": (1, True), "s-t2": (2, True), "s-t3": (None, None),
                             "s-t4": (None, None)}
    assert [t.name for t in ranked] == [t.name for t in trials]  # the order given


def test_a_maximised_metric_ranks_the_highest_first():
    trials = [trial(0, 0.79, own(0.76, 0.82)), trial(1, 0.86, own(0.83, 0.89)), trial(2, 0.84, own(0.80, 0.88))]
    best, ranked = rank(trials, minimize=False)
    assert best.name == "s-t1"
    assert marks(ranked) == {"s-t0": (3, False), "s-t1": (1, True), "s-t2": (2, True)}


def test_paired_intervals_against_another_base_value_fall_back_to_the_own_intervals():
    # t1's paired interval was computed against another base value (another test set, say): pairing with the base
    # says nothing about t0 - t1, so the own (wider) intervals decide, and they overlap.
    trials = [trial(0, 1.10, paired(1.08, 1.12), own_interval=own(1.00, 1.20)),
              trial(1, 1.25, paired(1.22, 1.28, baseline=1.70), own_interval=own(1.15, 1.35))]
    _, ranked = rank(trials, minimize=True)
    assert marks(ranked)["s-t1"] == (2, True)
    # The same pair against one base value: the narrow paired intervals are apart.
    trials[1] = trial(1, 1.25, paired(1.22, 1.28), own_interval=own(1.15, 1.35))
    _, ranked = rank(trials, minimize=True)
    assert marks(ranked)["s-t1"] == (2, False)


def test_a_trial_without_an_interval_is_neither_tied_nor_beaten():
    trials = [trial(0, 1.10, own(1.0, 1.2)), trial(1, 1.3), trial(2, 1.1)]
    best, ranked = rank(trials, minimize=True)
    assert best.name == "s-t0"  # the tie in value goes to the earlier trial
    assert marks(ranked) == {"s-t0": (1, True), "s-t1": (3, None), "s-t2": (2, None)}
    best, ranked = rank([trial(0, 1.2), trial(1, 1.1)], minimize=True)
    assert best.name == "s-t1" and marks(ranked) == {"s-t0": (2, None), "s-t1": (1, None)}


@pytest.mark.parametrize("correlation", [-0.9, 0.0, 0.5, 0.95])
def test_apart_intervals_mean_the_paired_difference_excludes_zero_whatever_the_correlation(correlation):
    """Why non-overlap is a valid test (docs/sweeps.md): per-row losses of two models on the same rows, correlated
    from -0.9 to 0.95; over a range of true differences, whenever the two own 95% bootstrap intervals are apart,
    the paired bootstrap interval of the difference (the exact test) excludes zero. The converse fails: some
    differences are shown by the paired test but not by overlap (the price of the shortcut)."""
    rng = np.random.default_rng(7)
    rows, resamples = 400, 1000
    apart_count = shown_only_paired = 0
    for gap in np.linspace(0.0, 0.3, 13):
        common, noise = rng.normal(size=rows), rng.normal(size=rows)
        a = 1.0 + common
        b = 1.0 + gap + correlation * common + np.sqrt(1 - correlation ** 2) * noise
        idx = rng.integers(0, rows, size=(resamples, rows))
        ma, mb, diff = a[idx].mean(1), b[idx].mean(1), (b[idx] - a[idx]).mean(1)
        (a_low, a_high), (b_low, b_high) = np.percentile(ma, [2.5, 97.5]), np.percentile(mb, [2.5, 97.5])
        d_low, d_high = np.percentile(diff, [2.5, 97.5])
        if a_high < b_low:
            apart_count += 1
            assert d_low > 0, (correlation, gap)
        elif d_low > 0:
            shown_only_paired += 1
    assert apart_count > 0
    if correlation > 0:
        assert shown_only_paired > 0


def status_of_trial(loss: float, low: float, high: float, run_id: str, baseline: float = BASE) -> dict:
    """A finished trial FineTuneJob's status as the operator writes it: test metrics with their own intervals
    and the headline comparison with the base model (difference and its paired interval)."""
    return {"phase": "Succeeded", "runId": run_id, "conditions": [{"type": "Ready", "reason": "Succeeded"}],
            "metrics": {"test": {"loss": loss, "lossLow": loss - 0.2, "lossHigh": loss + 0.2},
                        "comparisons": [{"against": "baseModel", "metric": "loss", "baseline": baseline,
                                         "fineTuned": loss, "difference": loss - baseline, "low": low - baseline,
                                         "high": high - baseline, "excludesZero": True}]}}


def test_objective_of_reads_the_paired_and_the_own_interval():
    sweep = make_sweep({"spec": {"objective": {"dataset": "test"},
                                 "template": {"spec": {"dataset": {"test": "s3://data/test.jsonl"}}}}})
    value, interval, own_interval = objective_of(sweep, status_of_trial(1.2, 1.15, 1.26, "g1-a"))
    assert value == 1.2
    assert interval.model_dump() == pytest.approx({"low": 1.15, "high": 1.26, "basis": "pairedWithBaseModel",
                                                   "baseline": BASE})
    assert (own_interval.low, own_interval.high, own_interval.basis) == pytest.approx((1.0, 1.4, "ownBootstrap"))
    status = status_of_trial(1.2, 1.15, 1.26, "g1-a")
    status["metrics"]["comparisons"] = []
    value, interval, own_interval = objective_of(sweep, status)
    assert interval.basis == "ownBootstrap" and own_interval is None


PROMOTED = {"spec": {"objective": {"dataset": "test"}, "template": {"spec": {
    "dataset": {"test": "s3://data/test.jsonl"}, "evaluation": {"baseline": True},
    "promotion": {"destination": "s3://models/bot/", "metric": "loss"}}}}}
# (test loss, paired interval) of trials t0..t3: t2 is best, t1 overlaps it, t0 and t3 are apart.
OUTCOMES = [(1.30, 1.26, 1.34), (1.17, 1.12, 1.22), (1.15, 1.11, 1.19), (1.40, 1.35, 1.45)]


def test_a_sweep_with_a_promotion_gate_runs_its_trials_without_it_and_offers_the_best():
    sweep = make_sweep(PROMOTED)

    def finish(observed):
        for obj in observed:
            if not obj.get("status"):
                n = int(obj["metadata"]["name"].rsplit("-t", 1)[1])
                obj["status"] = status_of_trial(*OUTCOMES[n], run_id=f"g1-run{n}")

    observed, sweep = world_after(sweep, [finish, finish, lambda o: None])
    assert len(observed) == 4 and all("promotion" not in o["spec"] for o in observed)
    status = sweep.status
    assert status.phase == "Succeeded"
    best = status.best
    assert (best.name, best.comparison, best.indistinguishable) == ("sweep-t2", "intervalOverlap", ["sweep-t1"])
    assert (best.interval.low, best.interval.high) == pytest.approx((1.11, 1.19))
    assert {t.name: (t.rank, t.indistinguishable_from_best) for t in status.trials} == {
        "sweep-t0": (3, False), "sweep-t1": (2, True), "sweep-t2": (1, True), "sweep-t3": (4, False)}
    c = status.promotion_candidate
    assert (c.trial, c.run_id, c.destination, c.clear_winner) == ("sweep-t2", "g1-run2", "s3://models/bot/", False)
    assert "sweep-t1" in c.message and "kubetune override" in c.message
    completed = next(x for x in status.conditions if x.type == "Succeeded")
    assert "indistinguishable from it (overlapping 95% intervals): sweep-t1" in completed.message


def test_no_candidate_while_trials_run_or_without_a_gate():
    sweep = make_sweep(PROMOTED)
    first = plan(sweep, [], NOW)
    assert first.status.promotion_candidate is None

    def finish(observed):
        for obj in observed:
            if not obj.get("status"):
                n = int(obj["metadata"]["name"].rsplit("-t", 1)[1])
                obj["status"] = status_of_trial(*OUTCOMES[n], run_id=f"g1-run{n}")

    ungated = {"spec": {"objective": {"dataset": "test"},
                        "template": {"spec": {"dataset": {"test": "s3://data/test.jsonl"}}}}}
    _, done = world_after(make_sweep(ungated), [finish, finish, lambda o: None])
    assert done.status.phase == "Succeeded" and done.status.best.name == "sweep-t2"
    assert done.status.promotion_candidate is None


# Eval losses at steps 60..300 and test losses of the tiny model per learning rate, measured with the in-process
# trainer (tests/e2e/test_sweep_pruning.py's spec).
CURVES = {3e-3: ([4.700, 4.511, 4.458, 4.446, 4.443], 4.453), 1e-3: ([5.053, 4.717, 4.612, 4.573, 4.569], 4.594),
          1e-6: ([5.730, 5.729, 5.729, 5.729, 5.729], 5.701), 3e-7: ([5.731, 5.730, 5.730, 5.730, 5.730], 5.702)}


@pytest.mark.parametrize("uid, first", [
    ("00000000", 1e-6), ("15555555", 3e-3), ("7ffffffe", 1e-6), ("95555553", 3e-7), ("bffffffd", 3e-3),
    ("eaaaaaa7", 1e-3), ("fffffffc", 1e-3)])
def test_the_real_node_pruning_sweep_on_measured_curves(uid, first):
    """tests/e2e/test_sweep_pruning.py's sweep played through the planner with the measured curves, each loss read a
    few steps after its evaluation (a different lag per trial): whatever the grid's order, every trial ends, some
    are pruned, the best is the lowest test loss of the finished ones; when 1e-3 runs first (the order the e2e
    test picks), exactly the two that learn nothing are pruned, at their first evaluation after the warm-up.
    With each loss filed under the step it was read at, no order prunes anything (every case fails)."""
    from kubetune.api.sweep import FineTuneSweep
    from kubetune.testing import sweep_manifest

    doc = sweep_manifest({"spec": {
        "searchSpace": [{"path": "hyperparameters.learningRate", "values": list(CURVES)}], "parallelism": 1,
        "objective": {"dataset": "test"}, "pruning": {"type": "median", "startupTrials": 1, "warmupSteps": 60},
        "template": {"spec": {"dataset": {"test": "s3://data/test.jsonl"}, "evaluation": {"everySteps": 60},
                              "hyperparameters": {"maxSteps": 300}}}}})
    doc["metadata"].update(namespace="ml", uid=f"{uid}-0000-4000-8000-000000000000", generation=1)
    sweep, observed, order = FineTuneSweep.model_validate(doc), [], []
    for _ in range(40):
        p = plan(sweep, observed, NOW)
        observed += [dict(m, status={}) for m in p.create]
        order += [m["spec"]["hyperparameters"]["learningRate"] for m in p.create]
        for name, _ in p.prune:
            obj = next(o for o in observed if o["metadata"]["name"] == name)
            obj["metadata"]["annotations"]["kubetune.io/pruned"] = "true"
        sweep = sweep.model_copy(update={"status": p.status})
        if p.status.phase != "Running":
            break
        for obj in observed:  # the running trial's next evaluation, read a few steps after it
            if obj["status"].get("phase") in ("Succeeded",) or obj["metadata"]["annotations"].get(
                    "kubetune.io/pruned"):
                continue
            losses, test = CURVES[obj["spec"]["hyperparameters"]["learningRate"]]
            seen = obj["status"].get("progress", {}).get("step", 0) // 60
            if seen < len(losses):
                late = 3 + 4 * int(obj["metadata"]["labels"]["kubetune.io/trial"])  # each trial read at its own lag
                obj["status"] = {"phase": "Running", "progress": {"step": 60 * (seen + 1) + late, "totalSteps": 300},
                                 "metrics": {"evalLoss": losses[seen]}}
            else:
                obj["status"] = {"phase": "Succeeded", "progress": {"step": 300, "totalSteps": 300},
                                 "metrics": {"test": {"loss": test}, "evalLoss": losses[-1]}}
    status = sweep.status
    assert order[0] == first  # the grid's order, fixed by the uid (GridSampler's seed)
    assert status.phase == "Succeeded" and len(status.trials) == 4
    assert any(t.phase == "Pruned" for t in status.trials)
    finished = {t.params["hyperparameters.learningRate"]: t for t in status.trials if t.phase == "Succeeded"}
    assert status.best.name == finished[min(finished, key=lambda lr: CURVES[lr][1])].name
    if order[0] == 1e-3:
        pruned = {t.params["hyperparameters.learningRate"]: t for t in status.trials if t.phase == "Pruned"}
        assert set(pruned) == {1e-6, 3e-7} and set(finished) == {3e-3, 1e-3}
        assert all([e.step for e in t.eval_losses] == [60] for t in pruned.values())
