"""Promotion on the real local control plane (kwok runs the trainer pod and hands its termination message to the
operator): a rejected challenger is a finished run with Promoted=False; an override added to it afterwards is
not carried out by the operator, and the status and an event say so, naming `kubetune override`."""
import json

import pytest

from tests.operator.conftest import manifest, wait_for
from tests.operator.test_operator_cluster import SUMMARY, events, kwok, status
from tests.operator.test_status_promotion import GATE, OVERRIDE, REJECTED

pytestmark = pytest.mark.cluster


def promoted(cluster, namespace, name) -> dict:
    return next((c for c in status(cluster, namespace, name).get("conditions", []) if c["type"] == "Promoted"), {})


def test_an_override_added_to_a_finished_run_is_reported_not_ignored(cluster, namespace, operator):
    summary = {**SUMMARY, "promotion": REJECTED}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "gated", GATE["spec"], kwok(seconds=2, message=json.dumps(summary))))
    cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/gated", "-n", namespace, "--timeout=90s")
    first = wait_for("the verdict", lambda: (lambda c: c.get("reason") == "GateFailed" and c)(
        promoted(cluster, namespace, "gated")))
    assert first["status"] == "False" and status(cluster, namespace, "gated")["promotion"]["verdict"] == "Rejected"

    # A GitOps commit adds an override for the finished run: no new run, and the status says what to do.
    patch = {"spec": {"promotion": {**GATE["spec"]["promotion"], "override": OVERRIDE}}}
    cluster.kubectl("patch", "ftj", "gated", "-n", namespace, "--type", "merge", "-p", json.dumps(patch))
    late = wait_for("OverrideAfterRun", lambda: (lambda c: c.get("reason") == "OverrideAfterRun" and c)(
        promoted(cluster, namespace, "gated")))
    assert late["status"] == "False" and "kubetune override" in late["message"]
    assert late["observedGeneration"] == 2
    st = status(cluster, namespace, "gated")
    assert st["phase"] == "Succeeded" and st["runId"].startswith("g1-") and st["observedGeneration"] == 2
    wait_for("the Warning event", lambda: "OverrideAfterRun" in events(cluster, namespace, "gated"))
    jobs = cluster.kubectl_json("get", "jobs", "-n", namespace)["items"]
    assert [j["metadata"]["name"] for j in jobs] == ["gated-g1"]  # nothing new was started
