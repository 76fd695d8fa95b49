"""The operator's sweep metrics, fed by the planner's real status: trials by phase, each scored trial's objective
with its interval bounds and where it stands against the best; series of a trial whose standing changed, and of a
deleted sweep, are removed."""
from prometheus_client import REGISTRY

from kubetune.operator import metrics
from tests.operator.test_sweep_rank import OUTCOMES, PROMOTED, status_of_trial
from tests.operator.test_sweep_plan import make_sweep, world_after


def sample(name: str, **labels) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def objective(trial: str, bound: str, vs_best: str) -> float | None:
    return sample("kubetune_operator_sweep_trial_objective", namespace="ml", finetunesweep="sweep",
                  trial=trial, bound=bound, vs_best=vs_best)


def finished(outcomes) -> object:
    def finish(observed):
        for obj in observed:
            if not obj.get("status"):
                n = int(obj["metadata"]["name"].rsplit("-t", 1)[1])
                obj["status"] = status_of_trial(*outcomes[n], run_id=f"g1-run{n}")
    _, sweep = world_after(make_sweep(PROMOTED), [finish, finish, lambda o: None])
    return sweep.status


def test_trials_by_phase_and_objectives_with_their_standing():
    status = finished(OUTCOMES)
    metrics.observe_sweep("ml", "sweep", status)
    phases = {p: sample("kubetune_operator_sweep_trials", namespace="ml", finetunesweep="sweep", phase=p)
              for p in metrics.TRIAL_PHASES}
    assert phases == {"Pending": 0, "Running": 0, "Succeeded": 4, "Failed": 0, "Pruned": 0}
    assert objective("sweep-t2", "value", "best") == 1.15
    assert (objective("sweep-t2", "low", "best"), objective("sweep-t2", "high", "best")) == (1.11, 1.19)
    assert objective("sweep-t1", "value", "indistinguishable") == 1.17
    assert objective("sweep-t0", "value", "worse") == 1.30
    assert sample("kubetune_operator_sweep_trials_pruned_total", namespace="ml") is not None

    # t1 now apart from the best: its "indistinguishable" series goes, a "worse" one comes.
    moved = list(OUTCOMES)
    moved[1] = (1.25, 1.21, 1.29)
    metrics.observe_sweep("ml", "sweep", finished(moved))
    assert objective("sweep-t1", "value", "indistinguishable") is None
    assert objective("sweep-t1", "value", "worse") == 1.25

    metrics.forget_sweep("ml", "sweep")
    assert objective("sweep-t2", "value", "best") is None
    assert sample("kubetune_operator_sweep_trials", namespace="ml", finetunesweep="sweep", phase="Succeeded") is None
