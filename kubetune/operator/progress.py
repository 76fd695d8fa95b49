"""Live progress: the operator reads the trainer's Prometheus endpoint (rank 0's pod IP, contract port) on a
timer. Trainer pods need no rights over any object for their progress to reach the FineTuneJob status.

What answers on that port is the tenant's (spec.image), so a read is bounded: one deadline for connecting and
reading everything, and a byte cap (the contract's gauges are a few KB). It runs outside the per-object lock.
"""
import http.client
import math
import time

from prometheus_client.parser import text_string_to_metric_families

from kubetune.api import contract

FIELDS = {contract.METRIC_STEP: "step", contract.METRIC_TOTAL_STEPS: "total_steps", contract.METRIC_EPOCH: "epoch",
          contract.METRIC_TRAIN_LOSS: "train_loss", contract.METRIC_EVAL_LOSS: "eval_loss",
          contract.METRIC_LEARNING_RATE: "learning_rate", contract.METRIC_TOKENS_PER_SECOND: "tokens_per_second",
          contract.METRIC_ETA_SECONDS: "eta_seconds"}


def parse(text: str) -> dict:
    """The contract's gauges as a sample dict; `best` is (metric name, value), `eval_losses` the served
    evaluations as (step, loss) by step. Absent gauges are absent keys."""
    sample: dict = {}
    history: dict[int, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in FIELDS:
                sample[FIELDS[s.name]] = s.value
            elif s.name == contract.METRIC_BEST:
                sample["best"] = (s.labels.get("metric", "loss"), s.value)
            elif s.name == contract.METRIC_EVAL_LOSS_AT_STEP and s.labels.get("step", "").isdigit() \
                    and math.isfinite(s.value):
                history[int(s.labels["step"])] = s.value
    if not sample.get("eval_loss"):
        sample.pop("eval_loss", None)  # a gauge that was never set reads 0, which is no evaluation yet
    if history:  # the port is the tenant's: no more points than the trainer's contract serves
        sample["eval_losses"] = sorted(history.items())[-contract.EVAL_HISTORY_POINTS:]
    return sample


def metrics_pod(pods: list[dict]) -> dict | None:
    """The running pod of rank 0 (completion index 0 for several nodes), which serves the metrics."""
    running = [p for p in pods if p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP")]
    index = "batch.kubernetes.io/job-completion-index"
    running.sort(key=lambda p: (p["metadata"].get("annotations", {}).get(index, "0") != "0",
                                p["metadata"].get("creationTimestamp", "")))
    return running[0] if running else None


MAX_BYTES = 1 << 20


def fetch(host: str, port: int, deadline_seconds: float, max_bytes: int = MAX_BYTES) -> str | None:
    """GET /metrics within one total deadline (a server that trickles bytes cannot stretch it) and at most
    `max_bytes` (a huge answer is dropped, not buffered)."""
    deadline = time.monotonic() + deadline_seconds

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("progress scrape deadline")
        return remaining

    conn = http.client.HTTPConnection(host, port, timeout=left())
    try:
        conn.request("GET", "/metrics", headers={"Accept": "text/plain"})
        sock = conn.sock  # kept: the connection lets go of it once a response says Connection: close
        sock.settimeout(left())
        response = conn.getresponse()
        if response.status != 200:
            return None
        body = bytearray()
        while True:
            sock.settimeout(left())
            chunk = response.read1(65536)
            if not chunk:
                return body.decode(errors="replace")
            body += chunk
            if len(body) > max_bytes:
                return None
    finally:
        conn.close()


def scrape(pods: list[dict], timeout: float, max_bytes: int = MAX_BYTES) -> dict | None:
    """The latest sample, or None when no pod serves one (yet): the status then keeps the previous one."""
    pod = metrics_pod(pods)
    if pod is None:
        return None
    try:
        text = fetch(pod["status"]["podIP"], contract.METRICS_PORT, timeout, max_bytes)
        return parse(text) or None if text else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
