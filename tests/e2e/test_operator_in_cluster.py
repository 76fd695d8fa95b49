"""The operator as users run it: two replicas from its image, installed by helm, on the real node."""
import time

import pytest

from tests.e2e.conftest import E2E_NAMESPACE, wait_until

pytestmark = pytest.mark.cluster

SELECTOR = "app.kubernetes.io/name=kubetune,app.kubernetes.io/component=operator"


def operator_pods(cluster, namespace: str) -> list[dict]:
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", SELECTOR)["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def lease_holder(cluster, namespace: str) -> str | None:
    lease = cluster.kubectl("get", "lease", "kubetune-operator", "-n", namespace, "-o",
                            "jsonpath={.spec.holderIdentity}", check=False)
    return lease.stdout.strip() or None


def test_operator_pods_run_locked_down_on_the_real_node(cluster, deployed):
    pods = operator_pods(cluster, deployed["namespace"])
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] == cluster.real_node
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        [container] = pod["spec"]["containers"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert container["image"] == deployed["operatorImage"]
        ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", pod["metadata"]["name"]
    # Enforced by the runtime, not only declared: the root filesystem refuses writes, the user is not root.
    name = pods[0]["metadata"]["name"]
    probe = cluster.kubectl("exec", "-n", deployed["namespace"], name, "--", "python3", "-c",
                            "import os\ntry:\n open('/probe','w')\nexcept OSError as e: print('refused', e.errno)\n"
                            "print('uid', os.getuid())")
    assert "refused 30" in probe.stdout  # EROFS
    assert "uid 0" not in probe.stdout and "uid 65532" in probe.stdout


def test_the_standby_takes_over_when_the_leader_pod_is_deleted(cluster, deployed, real_jobs, tiny_in_s3):
    namespace = deployed["namespace"]
    names = {p["metadata"]["name"] for p in operator_pods(cluster, namespace)}
    # Right after a rollout the Lease may still name a replaced pod until a current replica acquires it.
    leader = wait_until("a current replica to hold the lease",
                        lambda: (h := lease_holder(cluster, namespace)) in names and h, 60)
    real_jobs.apply("failover", real_jobs.spec(tiny_in_s3["model"], tiny_in_s3["data"],
                                                hyperparameters={"maxSteps": 300}, evaluation={"everySteps": 100}))
    wait_until("the job's Job", lambda: real_jobs.status("failover").get("jobName"), 60)

    deleted_at = time.monotonic()
    cluster.kubectl("delete", "pod", "-n", namespace, leader, "--wait=false")
    lease_seconds = 8  # hack/deploy's leaderElection.leaseDurationSeconds
    successor = wait_until("another replica to hold the lease", lambda: (
        (h := lease_holder(cluster, namespace)) and h != leader and h), lease_seconds + 10, interval=0.2)
    took = time.monotonic() - deleted_at
    assert successor in names and took <= lease_seconds + 2, (successor, took)

    done = real_jobs.wait_phase("failover", ("Succeeded", "Failed"))
    assert done["phase"] == "Succeeded", real_jobs.logs("failover")
    jobs = cluster.kubectl_json("get", "jobs", "-n", E2E_NAMESPACE, "-l", "kubetune.io/finetunejob=failover")
    assert len(jobs["items"]) == 1  # the new leader adopted the run; nothing duplicated
