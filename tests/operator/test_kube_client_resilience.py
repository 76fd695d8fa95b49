"""kube.Connection under what client-go handles and our hand-written client did not (issue 20, item 10): the API
server's throttling (429 with Retry-After, from API Priority and Fairness), a service account token that the
kubelet rotates (re-read before it expires, not only after a 401), and a proxy named by the kubeconfig. The API
server is a stand-in here (plain HTTP on loopback) because these answers are the point of the test."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kopf
import pytest

from kubetune.operator.errors import ApiError, is_transient
from kubetune.operator.kube import Connection, Kube


class Throttling(BaseHTTPRequestHandler):
    throttled = 0  # how many requests to answer 429 first
    seen: list = []

    def do_GET(self) -> None:
        self.seen.append((time.monotonic(), self.path, self.headers.get("Authorization")))
        if Throttling.throttled > 0:
            Throttling.throttled -= 1
            status, answer, extra = 429, {"kind": "Status", "message": "too many requests"}, {"Retry-After": "1"}
        else:
            status, answer, extra = 200, {"metadata": {"name": "x"}}, {}
        data = json.dumps(answer).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", "Content-Length": str(len(data)), **extra}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    Throttling.seen, Throttling.throttled = [], 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Throttling)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_429_is_retried_after_the_servers_retry_after(server):
    Throttling.throttled = 2
    kube = Kube(Connection(lambda: kopf.ConnectionInfo(server=server, token="t")))
    assert kube.get_finetunejob("ns", "x") == {"metadata": {"name": "x"}}
    times = [t for t, _, _ in Throttling.seen]
    assert len(times) == 3
    assert all(later - earlier >= 0.9 for earlier, later in zip(times, times[1:])), "Retry-After not honoured"


def test_throttling_that_outlasts_the_retries_is_a_transient_error_carrying_the_delay(server):
    Throttling.throttled = 100
    kube = Kube(Connection(lambda: kopf.ConnectionInfo(server=server, token="t")), throttle_retries=1)
    with pytest.raises(ApiError) as raised:
        kube.get_finetunejob("ns", "x")
    assert raised.value.status == 429 and raised.value.retry_after == 1.0 and is_transient(raised.value)


def test_the_token_is_read_again_before_it_expires_without_waiting_for_a_401(server):
    token_file = ["first"]  # what the kubelet has projected into the pod
    kube = Kube(Connection(lambda: kopf.ConnectionInfo(server=server, token=token_file[0]), refresh_seconds=0))
    kube.get_finetunejob("ns", "x")
    token_file[0] = "rotated"
    kube.get_finetunejob("ns", "x")
    assert [auth for _, _, auth in Throttling.seen] == ["Bearer first", "Bearer rotated"]


def test_the_kubeconfigs_proxy_url_carries_every_request(server):
    # The API server's name resolves nowhere: only the proxy (the stand-in, answering for it) can reach it.
    info = kopf.ConnectionInfo(server="http://api.cluster.invalid:6443", token="t", proxy_url=server)
    assert Kube(Connection(lambda: info)).get_finetunejob("ns", "x") == {"metadata": {"name": "x"}}
    [(_, target, _)] = Throttling.seen
    assert target.startswith("http://api.cluster.invalid:6443/apis/kubetune.io/")


def test_the_periodic_relist_waits_out_throttling_like_every_other_read(server):
    """The relist pages through every kind each period: a 429 must not cost it the round (and the ghosts it finds)."""
    from kubetune.operator.relist import Relister

    Throttling.throttled = 1
    kube = Kube(Connection(lambda: kopf.ConnectionInfo(server=server, token="t")))
    relister = Relister(kube, ["ns"], 60, evict=lambda *a: [], enqueue=lambda *a: None)
    assert relister.list_uids("Job", "ns", "kubetune.io/finetunejob") == ("", set())
    assert len(Throttling.seen) == 2
