"""kwok's pod-stop stage (hack/kwok/stages.yaml) ends a deleted pod as the real trainer ends on SIGTERM: it writes a
checkpoint and exits 75 (contract.EXIT_RETRY) with a Preempted termination message (the trainer side is asserted
on a real process in tests/trainer/test_resume.py). Operator tests on kwok then see what a real node shows."""
import json
import re
from pathlib import Path

import pytest
import yaml

from kubetune.api import contract
from kubetune.operator.observed import failure_of
from kubetune.trainer.errors import Preempted
from tests.plugins.cluster import wait_for

STAGES = Path(__file__).parents[2] / "hack" / "kwok" / "stages.yaml"


def stop_stage_terminated() -> tuple[int, str]:
    """The exit code and termination message pod-stop's status template writes (literal values, no template
    expressions: checked here, and by the cluster test below through kwok itself)."""
    [stage] = [d for d in yaml.safe_load_all(STAGES.read_text()) if d and d["metadata"]["name"] == "pod-stop"]
    template = stage["spec"]["next"]["statusTemplate"]
    code = re.search(r"^\s*exitCode: (\d+)$", template, re.M)
    message = re.search(r"^\s*message: '(.*)'$", template, re.M)
    assert code and message, template
    return int(code.group(1)), message.group(1)


def test_the_stop_stage_exits_as_the_trainer_does_on_sigterm():
    code, message = stop_stage_terminated()
    assert code == Preempted.exit_code == contract.EXIT_RETRY
    assert json.loads(message)["error"]["reason"] == Preempted.reason
    pod = {"status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
        "exitCode": code, "reason": "Error", "message": message}}}]}}
    assert failure_of(pod) == ("Preempted", "SIGTERM: checkpoint written, the next start resumes")


@pytest.mark.cluster
def test_a_deleted_pod_on_a_kwok_node_ends_with_the_trainers_sigterm_exit(cluster, namespace):
    # A finalizer holds the pod after pod-stop ended it, so its last status can be read before it goes.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "stopped", "finalizers": ["kubetune.io/test-hold"],
        "annotations": {"kwok.kubetune.io/stop-seconds": "0.2"}},
        "spec": {"nodeName": "cpu-node-0", "restartPolicy": "Never", "containers": [{
            "name": "trainer", "image": "kubetune/trainer:test", "securityContext": {
                "runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}]}}
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod))
    get = lambda: cluster.kubectl_json("get", "pod", "stopped", "-n", namespace)  # noqa: E731
    try:
        wait_for("Running", lambda: get()["status"].get("phase") == "Running", timeout=30)
        cluster.kubectl("delete", "pod", "stopped", "-n", namespace, "--wait=false")
        ended = wait_for("the pod's end", lambda: (p := get())["status"].get("phase") == "Failed" and p, timeout=30)
        [status] = ended["status"]["containerStatuses"]
        terminated = status["state"]["terminated"]
        assert terminated["exitCode"] == contract.EXIT_RETRY, terminated
        assert json.loads(terminated["message"])["error"]["reason"] == "Preempted"
    finally:
        cluster.kubectl("patch", "pod", "stopped", "-n", namespace, "--type=json",
                        "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]', check=False)
