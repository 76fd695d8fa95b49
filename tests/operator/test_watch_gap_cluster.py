"""Issue 20 (6), on the real API server: the API server the operator talks to restarts while a current Job, a Job
being replaced and a FineTuneJob are deleted. Its new watch cache answers the operator's resumed watches with
410, kopf lists again and never reports those deletions: the indexes keep ghosts. The periodic relist evicts
them; the operator converges within two relist periods and then stops reconciling (no retry loop).

The restarted API server is a second kube-apiserver of the test's cluster (an HA control plane in small): same
binary, flags, etcd and port, bound to 127.0.0.2 with a serving certificate from the cluster's CA, no endpoint
reconciler. The cluster's own API server (used by the controllers, kwok and the test) never stops, so other
tests sharing the cluster do not notice.
"""
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from tests.operator.conftest import Operators, manifest, wait_for
from tests.operator.test_operator_cluster import jobs, kwok, phase_is, status

pytestmark = pytest.mark.cluster
RELIST_SECONDS = 4
REPLICA_ADDRESS = "127.0.0.2"
HOLD = "kubetune.io/test-hold"


class ApiServerReplica:
    def __init__(self, cluster, workdir: Path):
        self.cluster, self.workdir = cluster, workdir
        state = cluster.state_dir
        pid = int((state / "run" / "apiserver.pid").read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        port = next(a.split("=", 1)[1] for a in argv if a.startswith("--secure-port="))
        self.server = f"https://{REPLICA_ADDRESS}:{port}"
        key, cert = workdir / "replica.key", workdir / "replica.crt"
        self._certificate(state / "pki", key, cert)
        own = {"--bind-address": REPLICA_ADDRESS, "--tls-cert-file": str(cert), "--tls-private-key-file": str(key),
               "--audit-log-path": str(workdir / "audit.log"), "--endpoint-reconciler-type": "none"}
        self.argv = [a for a in argv if a.split("=", 1)[0] not in own] + [f"{k}={v}" for k, v in own.items()]
        self.cwd = state
        self.proc: subprocess.Popen | None = None

    def _certificate(self, pki: Path, key: Path, cert: Path) -> None:
        ext = self.workdir / "replica.ext"
        ext.write_text(f"[v3]\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
                       f"subjectAltName=IP:{REPLICA_ADDRESS}\n")
        csr = self.workdir / "replica.csr"
        run = lambda *a: subprocess.run(["openssl", *map(str, a)], check=True, capture_output=True)  # noqa: E731
        run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
        run("req", "-new", "-key", key, "-subj", "/CN=kube-apiserver-replica", "-out", csr)
        # -set_serial, not -CAcreateserial: nothing is written beside the cluster's CA.
        run("x509", "-req", "-in", csr, "-CA", pki / "ca.crt", "-CAkey", pki / "ca.key", "-days", "1",
            "-set_serial", str(secrets.randbits(63)), "-out", cert, "-extfile", ext, "-extensions", "v3")

    def kubeconfig(self, source: Path) -> Path:
        config = json.loads(source.read_text())
        for entry in config["clusters"]:
            entry["cluster"]["server"] = self.server
        path = self.workdir / f"replica-{source.name}"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def ready(self) -> bool:
        return self.cluster.kubectl(f"--server={self.server}", "get", "--raw", "/readyz", check=False).returncode == 0

    def start(self) -> None:
        with open(self.workdir / "apiserver.log", "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.cwd, start_new_session=True)
        wait_for("the API server replica to be ready", self.ready, timeout=60, interval=0.5)

    def stop(self) -> None:
        """A crash (SIGKILL): its graceful shutdown takes 30 s and changes nothing for the watches, which break
        either way."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def replica(cluster, tmp_path):
    server = ApiServerReplica(cluster, tmp_path)
    server.start()
    yield server
    server.stop()


def metric_lines(operator, name: str) -> list[str]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
    return [line for line in text.splitlines() if line.startswith(name)]


def reconciles(operator) -> float:
    [line] = metric_lines(operator, "kubetune_operator_reconcile_duration_seconds_count")
    return float(line.split()[-1])


def job_of(cluster, namespace, ftj: str) -> list[dict]:
    return [j for j in jobs(cluster, namespace)
            if (j["metadata"].get("labels") or {}).get("kubetune.io/finetunejob") == ftj]


def test_ghosts_of_a_watch_gap_are_evicted_and_the_operator_settles(cluster, namespace, operators, replica):
    through_replica = replace(cluster, env={**cluster.env, "KUBETUNE_OPERATOR_KUBECONFIG": str(
        replica.kubeconfig(cluster.operator_kubeconfig))})
    ops = Operators(through_replica, namespace, operators.tmp, lease=operators.lease)
    # One replica, no Lease: it could not renew while its API server is away, and that is not this test's subject.
    operators.started.append(operator := ops.start(RELIST_SECONDS=str(RELIST_SECONDS), RESYNC_SECONDS="600",
                                                   LEADER_ELECTION="false"))
    for name in ("current", "replaced", "gone"):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(name, annotations=kwok(seconds=600)))
    for name in ("current", "replaced", "gone"):
        wait_for(f"{name} Running", phase_is(cluster, namespace, name, "Running"), timeout=60)
    [old] = job_of(cluster, namespace, "replaced")
    cluster.kubectl("patch", "job", old["metadata"]["name"], "-n", namespace, "--type=merge",
                    "-p", json.dumps({"metadata": {"finalizers": [HOLD]}}))
    cluster.kubectl("patch", "ftj", "replaced", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"image": "kubetune/trainer:bumped"}}))
    wait_for("the old Job of `replaced` being deleted", lambda: any(
        j["metadata"].get("deletionTimestamp") for j in job_of(cluster, namespace, "replaced")), timeout=30)
    [current] = job_of(cluster, namespace, "current")

    replica.stop()  # the operator's API server crashes; the cluster's own stays
    cluster.kubectl("delete", "job", current["metadata"]["name"], "-n", namespace, "--wait=false")
    cluster.kubectl("patch", "job", old["metadata"]["name"], "-n", namespace, "--type=json",
                    "-p", json.dumps([{"op": "remove", "path": "/metadata/finalizers"}]))
    cluster.kubectl("delete", "ftj", "gone", "-n", namespace, "--timeout=30s")
    wait_for("the deleted Jobs gone", lambda: {j["metadata"]["uid"] for j in jobs(cluster, namespace)}.isdisjoint(
        {old["metadata"]["uid"], current["metadata"]["uid"]}), timeout=30)
    replica.start()
    back = time.monotonic()

    def unsettled() -> list[str]:
        """What the operator has yet to put right: a Job for `current` again, the new image's Job for
        `replaced`, each Running by the status, and `gone` forgotten."""
        left = []
        for name, fits in (("current", lambda j: True), ("replaced", lambda j: j["spec"]["template"]["spec"][
                "containers"][0]["image"] == "kubetune/trainer:bumped")):
            live = [j["metadata"]["name"] for j in job_of(cluster, namespace, name)
                    if not j["metadata"].get("deletionTimestamp") and fits(j)]
            st = status(cluster, namespace, name)
            if not live or st.get("jobName") not in live or st.get("phase") != "Running":
                left.append(f"`{name}`: Jobs {live}, status {st.get('phase')} of {st.get('jobName')}")
        if [m for m in metric_lines(operator, "kubetune_operator_finetunejob_phase") if 'finetunejob="gone"' in m]:
            left.append("`gone` is still in the operator's metrics")
        return left

    deadline, left = time.monotonic() + 2 * RELIST_SECONDS + 20, unsettled()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = unsettled()
    assert not left, f"{time.monotonic() - back:.0f} s after the API server came back: " + "; ".join(left)
    took = time.monotonic() - back
    print(f"converged {took:.1f} s after the API server came back (relist period {RELIST_SECONDS} s)")
    assert took < 2 * RELIST_SECONDS
    assert "deleted while the watch was away" in operator.output(), "the relist, not luck, found the ghosts"

    # Settled: the reconcile counter goes flat for two relist periods (kwok's pods and the Job controller may
    # still report the new runs' start at first: a quiet window is waited for, within a bound), and the work queue
    # holds no pending requeue and nothing backing off. A retry loop on a ghost (every 2 s) never goes quiet.
    quiet, bound = 2 * RELIST_SECONDS, time.monotonic() + 30
    count, changed = reconciles(operator), time.monotonic()
    while time.monotonic() - changed < quiet:
        assert time.monotonic() < bound, f"still reconciling {quiet} s after convergence: a retry loop"
        time.sleep(0.5)
        if (now := reconciles(operator)) != count:
            count, changed = now, time.monotonic()
    queue = {line.split('"')[1]: float(line.split()[-1])
             for line in metric_lines(operator, "kubetune_operator_workqueue_objects{")}
    assert queue["delayed"] == 0 and queue["failing"] == 0, queue
    operator.stop()  # before its API server goes (the fixture's teardown)
