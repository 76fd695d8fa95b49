"""The trainer's checkpoint-upload metrics the alerts read: duration, last success time, failures."""
import time

from kubetune.trainer.metrics import Telemetry


def test_checkpoint_upload_metrics():
    rows = []
    t = Telemetry(None, on_log=rows.append)
    value = lambda name: t.registry.get_sample_value(name)  # noqa: E731
    assert value("kubetune_checkpoint_upload_failures_total") == 0  # exported from the start, so increase() works
    before = time.time()
    t.checkpoint_uploaded(50, 12.5)
    assert value("kubetune_checkpoint_upload_seconds") == 12.5
    assert before <= value("kubetune_checkpoint_last_success_timestamp_seconds") <= time.time()
    t.checkpoint_upload_failed(100, ConnectionError("endpoint unreachable"))
    t.checkpoint_upload_failed(150, PermissionError("AccessDenied"))
    assert value("kubetune_checkpoint_upload_failures_total") == 2
    assert rows[-1] == {"kind": "checkpoint-upload-failed", "time": rows[-1]["time"], "step": 150,
                        "error": "PermissionError"}  # the class, never the message (it may hold a URL with keys)
