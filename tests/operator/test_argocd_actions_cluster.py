"""The Argo CD actions (argocd/.../FineTuneJob/actions) on live FineTuneJobs of the real API server, beside the Git
commit each stands for: the action runs under Lua 5.1 as Argo CD runs it on the object read from the API server,
its result is sent as Argo CD sends it (a merge patch from the live object), and the operator must do the same
with it as with the commit, applied to a twin object."""
import json

import pytest

from kubetune.operator.reconcile import merge_patch
from tests.observability.argocd import discover, run_action
from tests.operator.conftest import manifest, wait_for
from tests.operator.test_operator_cluster import ftj, jobs, kwok, phase_is, status

pytestmark = pytest.mark.cluster


def offered(obj: dict) -> set[str]:
    return {a["name"] for a in discover(obj) if not a["disabled"]}


def by_action(cluster, namespace, name: str, action: str) -> dict:
    """Argo CD's way: discovery offers the action; its result, diffed against the live object, is the patch."""
    live = ftj(cluster, namespace, name)
    live["metadata"].pop("managedFields", None)
    assert action in offered(live), discover(live)
    patch = merge_patch(live, run_action(live, action))
    cluster.kubectl("patch", "ftj", name, "-n", namespace, "--type=merge", "-p", json.dumps(patch))
    return patch


def by_commit(cluster, namespace, name: str, spec: dict, notes: dict) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(name, spec, notes))


def outcome(cluster, namespace, name: str) -> tuple:
    """What the operator made of it, without the names: phase, Ready's reason, the run (g<N>) and its Jobs'
    suffixes (-g1, -g1-a2) with their suspend, and the observed generation."""
    st = status(cluster, namespace, name)
    ready = next((c["reason"] for c in st.get("conditions") or [] if c["type"] == "Ready"), None)
    mine = tuple(sorted((j["metadata"]["name"].removeprefix(name), j["spec"].get("suspend"))
                        for j in jobs(cluster, namespace)
                        if j["metadata"]["labels"].get("kubetune.io/finetunejob") == name
                        and not j["metadata"].get("deletionTimestamp")))
    return st.get("phase"), ready, st.get("runId", "").split("-")[0], mine, st.get("observedGeneration")


def settled(cluster, namespace, names: list[str], phase: str):
    def probe():
        seen = [outcome(cluster, namespace, n) for n in names]
        return all(o[0] == phase and o[4] == seen[0][4] for o in seen) and len(set(seen)) == 1 and seen
    return probe


def test_suspend_and_resume_actions_do_what_the_commits_do(cluster, namespace, operator):
    notes = kwok(seconds=600)
    for name in ("git", "argo"):
        by_commit(cluster, namespace, name, {}, notes)
        wait_for("Running", phase_is(cluster, namespace, name, "Running"), timeout=30)
    run_ids = {n: status(cluster, namespace, n)["runId"] for n in ("git", "argo")}
    by_commit(cluster, namespace, "git", {"suspend": True}, notes)
    assert by_action(cluster, namespace, "argo", "suspend") == {"spec": {"suspend": True}}
    wait_for("both suspended alike", settled(cluster, namespace, ["git", "argo"], "Suspended"), timeout=30)
    assert offered(ftj(cluster, namespace, "argo")) == {"resume"}
    by_commit(cluster, namespace, "git", {"suspend": False}, notes)
    assert by_action(cluster, namespace, "argo", "resume") == {"spec": {"suspend": False}}
    _, _, _, job, _ = wait_for("both running alike", settled(cluster, namespace, ["git", "argo"], "Running"),
                               timeout=30)[0]
    assert job == (("-g1", False),)  # the same Job went on: a resume resumes the run, it does not restart it
    assert {n: status(cluster, namespace, n)["runId"] for n in ("git", "argo")} == run_ids


def test_the_rerun_action_does_what_a_new_token_in_a_commit_does(cluster, namespace, operator):
    notes, spec = kwok(seconds=1, exit_code=1), {"runPolicy": {"backoffLimit": 0}}
    for name in ("git", "argo"):
        by_commit(cluster, namespace, name, spec, notes)
    wait_for("both failed alike", settled(cluster, namespace, ["git", "argo"], "Failed"), timeout=60)
    run_ids = {n: status(cluster, namespace, n)["runId"] for n in ("git", "argo")}
    assert offered(ftj(cluster, namespace, "argo")) == {"rerun"}
    by_commit(cluster, namespace, "git", {**spec, "rerunToken": "from-git"}, notes)
    patch = by_action(cluster, namespace, "argo", "rerun")
    assert list(patch) == ["spec"] and list(patch["spec"]) == ["rerunToken"]
    assert "rerun" not in offered(ftj(cluster, namespace, "argo"))  # asked: not offered again until it fails
    _, reason, run, job, _ = wait_for("both rerun and failed again alike", settled(
        cluster, namespace, ["git", "argo"], "Failed"), timeout=60)[0]
    assert (run, job, reason) == ("g1", (("-g1-a2", False),), "BackoffLimitExceeded")
    assert {n: status(cluster, namespace, n)["runId"] for n in ("git", "argo")} == run_ids  # the same runs
    assert status(cluster, namespace, "argo")["rerunToken"] == patch["spec"]["rerunToken"]
    assert status(cluster, namespace, "git")["rerunToken"] == "from-git"
