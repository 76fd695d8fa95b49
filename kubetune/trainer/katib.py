"""The trainer as a Katib trial: its metrics pushed to Katib's db-manager (Katib's Push metrics collector).

When Katib runs a FineTuneJob as a trial with `metricsCollectorSpec: {collector: {kind: Push}}`, its pod webhook
gives the trainer container KATIB_TRIAL_NAME (the only variable it injects). The trainer then reports to
db-manager's `DBManager.ReportObservationLog` (what the kubeflow-katib SDK's `report_metrics()` calls; that
function cannot run in a trainer pod: it first reads the pod's namespace from the service-account mount, which
trainer pods do not have). Metric names (docs/katib.md#the-objective):

- `eval_<metric>` (`eval_loss`, `eval_accuracy`, ...): each validation during training, as it happens;
- `test_<metric>` (`test_loss`, ...): the shipped model's test-set metrics, once at the end (jobs with a test set);
- `<metric>` (`loss`, ...): the shipped model's validation metrics, once at the end (the test metrics where the
  job has no validation set): the value an Experiment's objective usually names (`objectiveMetricName: loss`).

db-manager's address: KATIB_DB_MANAGER_ADDRESS (host:port; the operator's KUBETUNE_OPERATOR_TRAINER_ENV puts it
into every trainer pod), default `katib-db-manager.kubeflow:6789` as in the SDK. Katib being unreachable never
fails the run: the first failed push logs one warning, everything after it is kept and sent with the final push,
whose failure is logged as an error (Katib then ends the trial MetricsUnavailable).

The messages are encoded here by hand (four messages of strings, field numbers from Katib v0.19.0's
pkg/apis/manager/v1beta1/api.proto), so the only dependency is grpcio (the `katib` extra), imported only when
KATIB_TRIAL_NAME is set: the kubeflow-katib package would bring the Kubernetes client and pin protobuf<5.
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from datetime import datetime, timezone

from kubetune.trainer.errors import BadInput

TRIAL_ENV = "KATIB_TRIAL_NAME"
ADDRESS_ENV = "KATIB_DB_MANAGER_ADDRESS"
DEFAULT_ADDRESS = "katib-db-manager.kubeflow:6789"
REPORT_METHOD = "/api.v1.beta1.DBManager/ReportObservationLog"
TIMEOUT_SECONDS = 10.0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes | str) -> bytes:
    """A length-delimited field (wire type 2): a string or an embedded message."""
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def report_request(trial: str, logs: list[tuple[float, str, float]]) -> bytes:
    """ReportObservationLogRequest{trial_name=1, observation_log=2: ObservationLog{metric_logs=1: MetricLog{
    time_stamp=1 (RFC3339), metric=2: Metric{name=1, value=2 (a string)}}}}."""
    metric_logs = b"".join(_field(1, _field(1, rfc3339(t)) + _field(2, _field(1, name) + _field(2, repr(value))))
                           for t, name, value in logs)
    return _field(1, trial) + _field(2, metric_logs)


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _numbers(values: dict, prefix: str = "") -> dict[str, float]:
    return {prefix + k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _say(kind: str, **values) -> None:
    print(json.dumps({"kind": kind, **values}), file=sys.stderr, flush=True)


class Reporter:
    """Pushes one trial's metrics; `observe` gets every Telemetry row, `finish` the run's summary."""

    def __init__(self, trial: str, address: str, timeout: float = TIMEOUT_SECONDS):
        import grpc

        self.trial, self.address, self.timeout = trial, address, timeout
        self._grpc = grpc
        self._channel = grpc.insecure_channel(address)
        self._call = self._channel.unary_unary(REPORT_METHOD, request_serializer=lambda b: b,
                                               response_deserializer=lambda b: b)
        self.pending: list[tuple[float, str, float]] = []
        self.sent = 0
        self.failed = False  # after one failure, the rest waits for the final push: one timeout per phase at most

    def observe(self, row: dict) -> None:
        if row.get("kind") != "eval":
            return
        t = row.get("time", time.time())
        metrics = {k: v for k, v in row.items() if k not in ("kind", "time", "step")}
        self.pending += [(t, k, v) for k, v in _numbers(metrics, "eval_").items()]
        if not self.failed:
            error = self._push()
            if error:
                self.failed = True
                _say("warning", message=f"Katib: could not report to db-manager at {self.address} ({error}); "
                     "training goes on, the metrics are kept for the final push")

    def finish(self, summary: dict) -> bool:
        """The final metrics, and whatever earlier pushes left; True when db-manager has them all."""
        t = time.time()
        test = _numbers(summary.get("test") or {})
        final = _numbers(summary.get("eval") or {}) or test
        self.pending += [(t, f"test_{k}", v) for k, v in test.items()] + [(t, k, v) for k, v in final.items()]
        error = self._push()
        self._channel.close()
        if error:
            _say("error", message=f"Katib: the final report to db-manager at {self.address} failed ({error}); "
                 f"{len(self.pending)} metric values of trial {self.trial} were not reported, Katib will mark "
                 "the trial MetricsUnavailable")
            return False
        _say("katib", trial=self.trial, address=self.address, reported=self.sent, objective=final)
        return True

    def _push(self) -> str | None:
        if not self.pending:
            return None
        try:
            self._call(report_request(self.trial, self.pending), timeout=self.timeout)
        except self._grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            return f"{code.name if code else 'error'}: {details}"
        self.sent += len(self.pending)
        self.pending = []
        return None


@functools.cache
def reporter() -> Reporter | None:
    """This process's reporter when it runs as a Katib trial (KATIB_TRIAL_NAME set), else None."""
    trial = os.environ.get(TRIAL_ENV)
    if not trial:
        return None
    try:
        import grpc  # noqa: F401
    except ImportError as exc:
        raise BadInput(f"{TRIAL_ENV} is set (a Katib trial with the Push collector) but grpcio is not installed: "
                       "the trainer image needs kubetune's `katib` extra (pip install 'kubetune[trainer,katib]')"
                       ) from exc
    return Reporter(trial, os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS)
