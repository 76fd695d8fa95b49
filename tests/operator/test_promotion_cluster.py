"""Promotion on the real local control plane (kwok runs the trainer pod and hands its termination message to the
operator): a rejected challenger is a finished run with Promoted=False; an override added to it afterwards is
carried out by the operator's promotion Job (kwok runs its pod too, with the outcome the FineTuneJob's annotation
gives it), whose outcome becomes the verdict; a failed one is reported and not retried."""
import json

import pytest

from kubetune.api import contract
from tests.operator.conftest import manifest, wait_for
from tests.operator.test_operator_cluster import SUMMARY, events, kwok, status
from tests.operator.test_status import error
from tests.operator.test_status_promotion import CARRIED_OUT, GATE, OVERRIDE, REJECTED

pytestmark = pytest.mark.cluster


def promoted(cluster, namespace, name) -> dict:
    return next((c for c in status(cluster, namespace, name).get("conditions", []) if c["type"] == "Promoted"), {})


def job_names(cluster, namespace) -> list[str]:
    return sorted(j["metadata"]["name"] for j in cluster.kubectl_json("get", "jobs", "-n", namespace)["items"])


def test_an_override_added_to_a_finished_run_is_carried_out_by_a_promotion_job(cluster, namespace, operator):
    summary = {**SUMMARY, "promotion": REJECTED}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "gated", GATE["spec"], kwok(seconds=2, message=json.dumps(summary))))
    cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/gated", "-n", namespace, "--timeout=90s")
    first = wait_for("the verdict", lambda: (lambda c: c.get("reason") == "GateFailed" and c)(
        promoted(cluster, namespace, "gated")))
    assert first["status"] == "False" and status(cluster, namespace, "gated")["promotion"]["verdict"] == "Rejected"

    # What kwok's promotion pod will say (the FineTuneJob's kwok annotations reach the pods the operator makes).
    def pods_say(**notes) -> None:
        cluster.kubectl("annotate", "--overwrite", "ftj", "gated", "-n", namespace,
                        *(f"{k}={v}" for k, v in kwok(**notes).items()))

    pods_say(seconds=1, message=json.dumps({"promotion": CARRIED_OUT}))
    # A GitOps commit adds an override for the finished run: no new run; a promotion Job carries it out.
    patch = {"spec": {"promotion": {**GATE["spec"]["promotion"], "override": OVERRIDE}}}
    cluster.kubectl("patch", "ftj", "gated", "-n", namespace, "--type", "merge", "-p", json.dumps(patch))
    done = wait_for("PromotedByOverride", lambda: (lambda c: c.get("reason") == "PromotedByOverride" and c)(
        promoted(cluster, namespace, "gated")))
    assert done["status"] == "True" and done["observedGeneration"] == 2
    st = status(cluster, namespace, "gated")
    assert st["phase"] == "Succeeded" and st["runId"].startswith("g1-") and st["observedGeneration"] == 2
    assert st["promotion"]["verdict"] == "Overridden" and st["promotion"]["requestedBy"] == OVERRIDE["requestedBy"]
    assert st["promotion"]["override"]["runId"] == OVERRIDE["runId"]
    said = wait_for("the events", lambda: (lambda e: "PromotedByOverride" in e and e)(
        events(cluster, namespace, "gated")))
    assert "OverrideInProgress" in said and "OverrideAfterRun" not in said
    [promotion_job] = [n for n in job_names(cluster, namespace) if n != "gated-g1"]
    assert promotion_job.startswith("gated-promote-")
    body = cluster.kubectl_json("get", "job", promotion_job, "-n", namespace)
    assert body["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
    assert body["spec"]["template"]["spec"]["containers"][0]["command"] == ["python", "-m",
                                                                           "kubetune.trainer.promote"]

    # A changed override whose Job fails: reported with the pod's message, a Warning event, and not retried.
    why = "spec.promotion.override: run g7-0f1e2d3c has no finished run at s3://artifacts/g7-0f1e2d3c/"
    pods_say(seconds=1, exit_code=contract.EXIT_BAD_INPUT, message=error("BadInput", why))
    other = {**OVERRIDE, "runId": "g7-0f1e2d3c", "reason": "another try"}
    patch = {"spec": {"promotion": {**GATE["spec"]["promotion"], "override": other}}}
    cluster.kubectl("patch", "ftj", "gated", "-n", namespace, "--type", "merge", "-p", json.dumps(patch))
    failed = wait_for("OverrideFailed", lambda: (lambda c: c.get("reason") == "OverrideFailed" and c)(
        promoted(cluster, namespace, "gated")))
    assert failed["status"] == "False" and why in failed["message"]
    wait_for("the Warning event", lambda: "OverrideFailed" in events(cluster, namespace, "gated"))
    names = job_names(cluster, namespace)
    assert len(names) == 3 and "gated-g1" in names
    failed_job = next(n for n in names if n not in ("gated-g1", promotion_job))
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                f"batch.kubernetes.io/job-name={failed_job}")["items"]
    assert len(pods) == 1  # the exit code of bad input fails the Job at once (its pod failure policy)
    assert status(cluster, namespace, "gated")["promotion"]["verdict"] == "Overridden"  # the last verdict stands
