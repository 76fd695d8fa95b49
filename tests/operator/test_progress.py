"""Progress scraping is bounded (fault 6 of issue 15): the trainer's port is the tenant's, so a server that
trickles bytes or answers with gigabytes must cost at most the deadline and the byte cap."""
import socket
import threading
import time

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from kubetune.api import contract
from kubetune.operator import progress


def serve(handler) -> tuple[str, int]:
    """A raw TCP server on 127.0.0.1 running `handler(conn)` per connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def loop():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handler, args=(conn,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
    return "127.0.0.1", listener.getsockname()[1]


def answer(body: bytes, *, trickle: float = 0.0, chunk: int = 1 << 16):
    def handler(conn):
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
            try:
                for i in range(0, len(body), chunk):
                    conn.sendall(body[i:i + chunk])
                    time.sleep(trickle)
            except OSError:
                pass  # the reader gave up, as it should
    return handler


def metrics_text() -> bytes:
    registry = CollectorRegistry()
    Gauge(contract.METRIC_STEP, "step", registry=registry).set(12)
    Gauge(contract.METRIC_TRAIN_LOSS, "loss", registry=registry).set(1.5)
    return generate_latest(registry)


def test_a_well_behaved_endpoint_is_read():
    host, port = serve(answer(metrics_text()))
    assert progress.parse(progress.fetch(host, port, 2.0)) == {"step": 12.0, "train_loss": 1.5}


@pytest.mark.parametrize("body, trickle", [
    (b"# slow\n" * 2000, 0.05),             # a few bytes at a time, never finishing within the deadline
    (b"x" * (8 << 20), 0.0),                # 8 MiB at full speed: over the 1 MiB cap
])
def test_slow_or_huge_answers_cost_at_most_the_deadline_and_the_cap(body, trickle):
    host, port = serve(answer(body, trickle=trickle, chunk=7 if trickle else 1 << 16))
    pods = [{"metadata": {"name": "p"}, "status": {"phase": "Running", "podIP": host}}]
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(contract, "METRICS_PORT", port)
        assert progress.scrape(pods, timeout=1.0) is None
    assert time.monotonic() - started < 1.5


def test_a_silent_server_is_dropped_at_the_deadline():
    host, port = serve(lambda conn: time.sleep(5))
    started = time.monotonic()
    with pytest.raises(OSError):
        progress.fetch(host, port, 0.5)
    assert time.monotonic() - started < 1.0
