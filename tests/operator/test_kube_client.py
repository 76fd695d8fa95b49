"""kube.Connection: the operator's HTTP pool to the API server, sized for the reconciles that run at once, with
fresh credentials after a 401 (a rotated service account token) and the API server's errors as ApiError."""
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kopf
import pytest

from kubetune.operator.errors import ApiError, api_message, is_transient
from kubetune.operator.kube import Connection, Kube


class FakeApiServer(BaseHTTPRequestHandler):
    """A stand-in answering over plain HTTP: 401 to any token but the valid one, 404 for a missing Lease."""

    valid_token = "rotated"
    seen: list = []

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.command, self.path, self.headers.get("Authorization"),
                          self.headers.get("Content-Type"), json.loads(body) if body else None))
        if self.headers.get("Authorization") != f"Bearer {self.valid_token}":
            status, answer = 401, {"kind": "Status", "message": "Unauthorized"}
        elif "leases/missing" in self.path:
            status, answer = 404, {"kind": "Status", "message": 'leases "missing" not found'}
        else:
            status, answer = 200, {"metadata": {"name": "x"}, "items": []}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    FakeApiServer.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeApiServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_401_logs_in_again_once_and_retries(server):
    tokens = iter(["expired", "rotated"])
    logins = []

    def login():
        logins.append(1)
        return kopf.ConnectionInfo(server=server, token=next(tokens))

    kube = Kube(Connection(login))
    assert kube.get_finetunejob("ns", "x") == {"metadata": {"name": "x"}, "items": []}
    assert len(logins) == 2
    assert [s[2] for s in FakeApiServer.seen] == ["Bearer expired", "Bearer rotated"]


def test_requests_carry_json_and_merge_patches_and_errors_name_the_status(server):
    kube = Kube(Connection(lambda: kopf.ConnectionInfo(server=server, token="rotated")))
    kube.patch_job("team-a", "run-g1", {"spec": {"suspend": True}})
    kube.delete("Job", "team-a", "run-g1", uid="uid-of-run-g1")
    assert kube.read_lease("kubetune-system", "missing") is None
    method, path, _, content_type, body = FakeApiServer.seen[0]
    assert (method, path, content_type, body) == (
        "PATCH", "/apis/batch/v1/namespaces/team-a/jobs/run-g1", "application/merge-patch+json",
        {"spec": {"suspend": True}})
    assert FakeApiServer.seen[1][:2] == ("DELETE", "/apis/batch/v1/namespaces/team-a/jobs/run-g1")
    assert FakeApiServer.seen[1][4] == {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background",
                                        "preconditions": {"uid": "uid-of-run-g1"}}

    FakeApiServer.valid_token = "another"  # every login now gives a token the server refuses
    try:
        with pytest.raises(ApiError) as refused:
            kube.list_pods("team-a", "a=b")
    finally:
        FakeApiServer.valid_token = "rotated"
    assert refused.value.status == 401 and api_message(refused.value) == "Unauthorized"
    assert not is_transient(refused.value) and is_transient(ApiError(503))


def test_the_pool_fits_the_workers(server):
    connection = Connection(lambda: kopf.ConnectionInfo(server=server, token="rotated"), connections=42)
    assert connection.pool.connection_pool_kw["maxsize"] == 42


def test_the_operator_imports_no_kubernetes_client():
    """The operator's image has no `kubernetes` package (kopf imports it only when it is installed, as in this
    venv): nothing of ours may need it."""
    probe = ("import sys; sys.modules['kubernetes'] = None\n"  # as if not installed: importing it fails
             "import kubetune.operator.__main__, kubetune.operator.handlers, kubetune.operator.kube\n"
             "print('ok')")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
