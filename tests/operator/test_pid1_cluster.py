"""The operator is PID 1 in its container, and the kernel gives PID 1 no default action for SIGTERM: only a handler
makes it leave. A standby that ignored the kubelet's SIGTERM kept trying for the Lease through its grace period and,
in a rollout, an old pod being deleted became the leader (tests/e2e/test_operator_in_cluster.py saw it take over).
Here the operator runs as PID 1 of a new PID namespace (`unshare`), as in its container."""
import json
import os
import signal
import time
from datetime import datetime, timezone

import pytest

from tests.operator.conftest import wait_for

pytestmark = pytest.mark.cluster
PID1 = ("unshare", "--pid", "--fork", "--kill-child")


def namespace_init(operator) -> int:
    """The operator's own process: the child unshare forked, PID 1 in its namespace."""
    children = wait_for("unshare's child", lambda: open(
        f"/proc/{operator.proc.pid}/task/{operator.proc.pid}/children").read().split(), timeout=10)
    return int(children[0])


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_standby_that_is_pid_1_leaves_on_sigterm(cluster, operators):
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": operators.lease, "namespace": "kubetune-system"},
        "spec": {"holderIdentity": "another-replica", "leaseDurationSeconds": 3600, "acquireTime": stamp,
                 "renewTime": stamp}}))
    operator = operators.start(wrap=PID1)
    wait_for("the operator to stand by", lambda: "waiting for leadership" in operator.output(), timeout=60)
    pid = namespace_init(operator)
    nspid = next(line for line in open(f"/proc/{pid}/status") if line.startswith("NSpid:")).split()
    assert nspid[-1] == "1", f"not PID 1 in its namespace: {nspid}"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running(pid), f"a standby ignored SIGTERM as PID 1:\n{operator.output()[-2000:]}"
    assert "leading as" not in operator.output()
