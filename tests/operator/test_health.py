"""/healthz and /readyz over HTTP: what the kubelet's probes read (kubetune/operator/health.py)."""
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kubetune.operator.health import Health
from tests.operator.conftest import free_port
from tests.plugins.cluster import wait_for

ROOT = Path(__file__).parents[2]


def probe(port: int, path: str) -> int | None:
    """The HTTP status of GET path, or None while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


@pytest.fixture
def served():
    health = Health()
    port = free_port()
    server = health.serve(port, host="127.0.0.1")
    yield health, port
    server.shutdown()
    server.server_close()


def test_readyz_is_503_until_kopf_watches_and_after_it_stops(served):
    health, port = served
    assert (probe(port, "/healthz"), probe(port, "/readyz")) == (200, 503)  # alive, not serving yet
    health.kopf_ready.set()
    assert (probe(port, "/healthz"), probe(port, "/readyz")) == (200, 200)
    health.kopf_stopped.set()
    assert (probe(port, "/healthz"), probe(port, "/readyz")) == (503, 503)
    assert probe(port, "/metrics") == 404


def test_a_replica_cut_off_from_the_api_server_is_unready_not_dead(tmp_path):
    """The real operator process, its API server unreachable (a port nothing listens on): it cannot read the
    Lease, so the Service stops routing to it (/readyz 503) while the kubelet leaves it running (/healthz 200)."""
    closed = free_port()  # bound and released: connections are refused
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: gone, cluster: {{server: "https://127.0.0.1:{closed}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: not-a-real-token}}}}]
contexts: [{{name: c, context: {{cluster: gone, user: u}}}}]
current-context: c
""")
    port = free_port()
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), KUBETUNE_OPERATOR_HEALTH_PORT=str(port),
               KUBETUNE_OPERATOR_METRICS_PORT="0", KUBETUNE_OPERATOR_LEASE_DURATION_SECONDS="2",
               KUBETUNE_OPERATOR_NAMESPACES="nowhere")
    log = tmp_path / "operator.log"
    proc = subprocess.Popen([sys.executable, "-m", "kubetune.operator"], cwd=ROOT, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for("the health endpoints", lambda: probe(port, "/healthz"), timeout=30)
        wait_for("a failed Lease read", lambda: "lease kubetune-system/kubetune-operator:" in log.read_text(),
                 timeout=30)
        assert (probe(port, "/healthz"), probe(port, "/readyz")) == (200, 503), log.read_text()[-2000:]
        assert proc.poll() is None, log.read_text()[-2000:]
    finally:
        proc.terminate()
        proc.wait(20)
