"""The operator under the faults of issue 15, on the real local control plane (each failed on the operator before
plan.py: see the commit message)."""
import json
import secrets

import pytest

from kubetune.api import FineTuneJob
from kubetune.operator import children, runs
from kubetune.operator.settings import OperatorSettings
from tests.operator.conftest import manifest, wait_for
from tests.operator.test_operator_cluster import ftj, jobs, kwok, phase_is, status

pytestmark = pytest.mark.cluster
FAST_RETRY = {"RETRY_DELAY_SECONDS": "1"}


def condition(cluster, namespace, name, kind: str) -> dict:
    return {c["type"]: c for c in status(cluster, namespace, name).get("conditions") or []}.get(kind) or {}


def retried_with(cluster, namespace, name, reason: str):
    """A refusal the operator retries: Reconciling with the refusal's reason, never Stalled (kstatus: Failed)."""
    return lambda: (lambda c: c.get("status") == "True" and c.get("reason") == reason and c)(
        condition(cluster, namespace, name, "Reconciling"))


def configmaps(cluster, namespace, name) -> list[dict]:
    return cluster.kubectl_json("get", "configmaps", "-n", namespace, "-l", f"kubetune.io/finetunejob={name}")["items"]


def test_a_refused_configmap_holds_the_job_back_and_is_retried(cluster, namespace, operators):
    """Fault 1 (and 4): dependents first, every reconcile; a quota refusal shows on the conditions and is retried."""
    cluster.kubectl("create", "quota", "no-configmaps", "--hard=configmaps=0", "-n", namespace)
    wait_for("the quota to be counted", lambda: cluster.kubectl_json(
        "get", "quota", "no-configmaps", "-n", namespace).get("status", {}).get("hard"))
    operators.start(**FAST_RETRY)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("quota", annotations=kwok(seconds=30)))
    held = wait_for("held back by the quota", retried_with(cluster, namespace, "quota", "ChildForbidden"))
    assert "exceeded quota" in held["message"] and "ConfigMap quota-g1" in held["message"]
    assert not jobs(cluster, namespace), "the Job was created before the ConfigMap its pods mount"
    assert condition(cluster, namespace, "quota", "Stalled")["status"] == "False"

    cluster.kubectl("delete", "quota", "no-configmaps", "-n", namespace)
    wait_for("Running", phase_is(cluster, namespace, "quota", "Running"), timeout=60)
    [config] = configmaps(cluster, namespace, "quota")
    assert config["metadata"]["ownerReferences"][0]["uid"] == ftj(cluster, namespace, "quota")["metadata"]["uid"]
    # level-based: a dependent deleted mid-run comes back on the next reconcile
    cluster.kubectl("delete", "configmap", "quota-g1", "-n", namespace)
    wait_for("the ConfigMap to be recreated", lambda: configmaps(cluster, namespace, "quota"), timeout=30)


def test_an_orphaned_job_of_the_same_name_is_never_adopted(cluster, namespace, operators):
    """Fault 2: delete --cascade=orphan, apply again: the old Job must not pass for the new object's run."""
    operators.start(**FAST_RETRY)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("again", annotations=kwok(seconds=1)))
    cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/again", "-n", namespace, "--timeout=60s")
    cluster.kubectl("delete", "ftj", "again", "-n", namespace, "--cascade=orphan", "--wait=true")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("again", annotations=kwok(seconds=1)))
    uid = ftj(cluster, namespace, "again")["metadata"]["uid"]
    held = wait_for("a conflict", retried_with(cluster, namespace, "again", "ChildConflict"))
    assert held["message"].startswith("Job again-g1 already exists and is not controlled by this FineTuneJob")
    assert status(cluster, namespace, "again")["phase"] == "Pending"
    # once the orphans are gone, the new object runs its own Job
    cluster.kubectl("delete", "job,configmap", "-n", namespace, "-l", "kubetune.io/finetunejob=again",
                    "--wait=true")
    cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/again", "-n", namespace, "--timeout=60s")
    [job] = jobs(cluster, namespace)
    assert job["metadata"]["ownerReferences"][0]["uid"] == uid


def test_a_lost_status_write_then_an_edit_adopts_the_running_job(cluster, namespace, operators):
    """Fault 3: the operator created the Job and crashed before writing the status; then suspend was edited."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("crash", annotations=kwok(seconds=60)))
    job = FineTuneJob.model_validate(ftj(cluster, namespace, "crash"))
    run = runs.current_run(job)
    settings = OperatorSettings(trainer_image="kubetune/trainer:test", pod_annotation_prefixes=["kwok.kubetune.io/"])
    for obj in [*children.build_dependents(job, run, settings), children.build_job(job, run, settings)]:
        cluster.kubectl("create", "-f", "-", input=json.dumps(obj))  # what the crashed operator had done
    [before] = jobs(cluster, namespace)
    cluster.kubectl("patch", "ftj", "crash", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    operators.start()
    st = wait_for("Suspended", phase_is(cluster, namespace, "crash", "Suspended"), timeout=30)
    assert (st["runId"], st["jobName"], st["observedGeneration"]) == (run.run_id, "crash-g1", 2)
    [after] = jobs(cluster, namespace)
    assert after["metadata"]["uid"] == before["metadata"]["uid"] and after["spec"]["suspend"] is True


def test_a_job_the_api_server_rejects_fails_the_run_with_its_message(cluster, namespace, operator):
    """Fault 4: an affinity the CRD passes on as it is but the Job API refuses (422)."""
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "Near", "values": ["a"]}]}]}}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("refused", {"scheduling": {
        "affinity": affinity}}))
    st = wait_for("Failed", phase_is(cluster, namespace, "refused", "Failed"))
    failed = {c["type"]: c for c in st["conditions"]}["Failed"]
    assert failed["reason"] == "ChildRejected" and "Job refused-g1" in failed["message"]
    assert "Near" in failed["message"]  # the API server's own words, naming the value
    assert condition(cluster, namespace, "refused", "Stalled")["status"] == "True"
    assert not jobs(cluster, namespace)


def test_ttl_cleanup_then_an_in_place_edit_observes_the_generation(cluster, namespace, operator):
    """Fault 9: kstatus compares observedGeneration; a finished, cleaned-up run must keep it current."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "kept", {"runPolicy": {"ttlSecondsAfterFinished": 1}}, kwok(seconds=1)))
    cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/kept", "-n", namespace, "--timeout=60s")
    wait_for("TTL cleanup", lambda: not jobs(cluster, namespace), timeout=30)
    wait_for("the ConfigMap to go with its run", lambda: not configmaps(cluster, namespace, "kept"), timeout=30)
    cluster.kubectl("patch", "ftj", "kept", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"runPolicy":{"activeDeadlineSeconds":600}}}')
    st = wait_for("observedGeneration 2", lambda: (lambda s: s.get("observedGeneration") == 2 and s)(
        status(cluster, namespace, "kept")), timeout=30)
    assert st["phase"] == "Succeeded" and {c["observedGeneration"] for c in st["conditions"]} == {2}
    assert not jobs(cluster, namespace)


def test_pods_are_the_jobs_by_controller_uid_not_by_name(cluster, namespace, operator):
    """Fault 9: a failed pod that merely carries the Job's name label is not one of its attempts."""
    impostor = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": f"impostor-{secrets.token_hex(2)}", "namespace": namespace,
        "labels": {"batch.kubernetes.io/job-name": "solo-g1", "kubetune.io/finetunejob": "solo"},
        "annotations": kwok(seconds=0, exit_code=1)},
        "spec": {"restartPolicy": "Never", "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                                                "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{"name": "trainer", "image": "busybox", "securityContext": {
                     "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}}
    cluster.kubectl("create", "-f", "-", input=json.dumps(impostor))
    wait_for("the impostor to fail", lambda: cluster.kubectl_json(
        "get", "pod", impostor["metadata"]["name"], "-n", namespace)["status"].get("phase") == "Failed")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("solo", annotations=kwok(seconds=1)))
    cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/solo", "-n", namespace, "--timeout=60s")
    assert status(cluster, namespace, "solo")["attempts"] == 1


def test_an_image_bump_resumes_the_same_run_in_a_new_job(cluster, namespace, operator):
    """Fault 10: image, tolerations, backoffLimit... replace the Job but keep the run (and its checkpoints)."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("bump", annotations=kwok(seconds=60)))
    before = wait_for("Running", phase_is(cluster, namespace, "bump", "Running"), timeout=30)
    cluster.kubectl("patch", "ftj", "bump", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"image":"kubetune/trainer:test-2"}}')
    wait_for("the new Job alone", lambda: [j["metadata"]["name"] for j in jobs(cluster, namespace)] == ["bump-g2"],
             timeout=60)
    st = wait_for("Running again", lambda: (lambda s: s.get("jobName") == "bump-g2" and s.get("phase") == "Running"
                                            and s)(status(cluster, namespace, "bump")), timeout=30)
    assert st["runId"] == before["runId"] and st["runs"] == [] and st["observedGeneration"] == 2
    [job] = jobs(cluster, namespace)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "kubetune/trainer:test-2"
    assert {e["name"]: e.get("value") for e in container["env"]}["KUBETUNE_RUN_ID"] == before["runId"]
