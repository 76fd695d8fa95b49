"""The trainer serves its recent evaluations, each under its step, so a reader that comes by every few seconds
misses none of them (a sweep's pruner compares trials at equal steps); the operator's parser reads them back."""
from prometheus_client import generate_latest

from kubetune.api import contract
from kubetune.operator import progress
from kubetune.trainer.metrics import Telemetry


def test_every_recent_evaluation_is_served_under_its_step_and_read_back():
    telemetry = Telemetry(None, on_log=lambda row: None)
    for step in range(10, 10 * (contract.EVAL_HISTORY_POINTS + 3) + 1, 10):
        telemetry.evaluation(step, {"loss": 1000.0 / step}, "loss", None)
    telemetry.evaluation(999, {"loss": 0.1}, "loss", None, tag="test")  # the test set is not an evaluation
    sample = progress.parse(generate_latest(telemetry.registry).decode())
    served = sample["eval_losses"]
    assert len(served) == contract.EVAL_HISTORY_POINTS  # the newest ones: the scrape stays a few KB
    assert served[0] == (40, 25.0) and served[-1] == (10 * (contract.EVAL_HISTORY_POINTS + 3), 1000.0 / served[-1][0])
    assert [s for s, _ in served] == sorted(s for s, _ in served)
    assert sample["eval_loss"] == served[-1][1]


def test_a_tenant_endpoint_with_odd_labels_or_too_many_points_is_read_safely():
    lines = [f'{contract.METRIC_EVAL_LOSS_AT_STEP}{{step="{s}"}} 1.5' for s in range(500)]
    name = contract.METRIC_EVAL_LOSS_AT_STEP
    lines += [f'{name}{{step="x"}} 2.0', f'{name} 2.0', f'{name}{{step="-5"}} 2.0', f'{name}{{step="7"}} NaN']
    served = progress.parse("\n".join(lines) + "\n")["eval_losses"]
    assert len(served) == contract.EVAL_HISTORY_POINTS and served[-1] == (499, 1.5)
