"""Checkpoint uploads feed the gauges the checkpoint alerts read: duration and last success, or a failure count."""
import pytest

from kubetune.api.spec import Storage
from kubetune.trainer.checkpoint import Checkpointer
from kubetune.trainer.metrics import Telemetry
from kubetune.trainer.storage import Store


class FailingStore(Store):
    def put_file(self, local, uri):
        raise ConnectionError("S3 went away")


def sample(metric) -> float:
    return next(s.value for m in metric.collect() for s in m.samples if not s.name.endswith("_created"))


def test_a_successful_upload_sets_duration_and_last_success(tmp_path):
    telemetry = Telemetry(None, on_log=lambda row: None)
    ckpt = Checkpointer(Store(Storage(), tmp_path / "cache"), f"file://{tmp_path}/run", 2, tmp_path, telemetry)
    ckpt.save(3, {"step": 3}, background=False)
    assert ckpt.complete_steps() == [3]
    assert sample(telemetry.upload_last_success) > 0 and sample(telemetry.upload_seconds) >= 0
    assert sample(telemetry.upload_failures) == 0


def test_a_failed_upload_counts_and_still_raises_in_the_training_thread(tmp_path):
    rows = []
    telemetry = Telemetry(None, on_log=rows.append)
    ckpt = Checkpointer(FailingStore(Storage(), tmp_path / "cache"), f"file://{tmp_path}/run", 2, tmp_path, telemetry)
    with pytest.raises(ConnectionError):
        ckpt.save(5, {"step": 5}, background=False)
    assert sample(telemetry.upload_failures) == 1 and sample(telemetry.upload_last_success) == 0
    assert rows[-1]["kind"] == "checkpoint-upload-failed" and rows[-1]["step"] == 5
