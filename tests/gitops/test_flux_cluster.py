"""GitOps for real (issue 25): Flux's source-controller and kustomize-controller, built from their modules and run
by hack/cluster, pull commits from the cluster's Git server and apply FineTuneJobs; the real operator runs them on
kwok. Each Git operation of docs/gitops.md is one test here; kwok plays the trainer (its pods' lifetime comes from
the FineTuneJob's kwok.kubetune.io/ annotations, which the operator passes to the pods)."""
from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from tests.api.cases import make_job
from tests.gitops.conftest import GitOps
from tests.operator import kstatus
from tests.operator.test_gang_cluster import run_id_of
from tests.operator.test_operator_cluster import ftj, jobs, kwok, status
from tests.plugins.cluster import wait_for

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples" / "gitops"
RUNNING = kwok(seconds=600)  # pods that train until deleted
SETTLE_SECONDS = 4  # how long "nothing happens" is watched for


def job(name: str, spec: dict | None = None, notes: dict | None = RUNNING) -> dict:
    doc = make_job({"spec": spec or {}}, name=name)
    if notes:
        doc["metadata"]["annotations"] = dict(notes)
    return doc


def live_jobs(cluster, namespace) -> list[str]:
    return sorted(j["metadata"]["name"] for j in jobs(cluster, namespace) if not j["metadata"].get("deletionTimestamp"))


def phase(cluster, namespace, name, want: str, **fields):
    """A probe: the FineTuneJob's status once its phase is `want`, its spec observed, and `fields` as given."""
    def probe():
        got = cluster.kubectl("get", "ftj", name, "-n", namespace, "-o", "json", check=False)
        if got.returncode != 0:  # not applied yet
            return False
        obj = json.loads(got.stdout)
        st = obj.get("status") or {}
        current = st.get("observedGeneration") == obj["metadata"]["generation"]
        return st.get("phase") == want and current and all(st.get(k) == v for k, v in fields.items()) and st
    return probe


def one_running_job(gitops: GitOps, name: str, message: str) -> dict:
    """Installs the Flux objects, commits one job `name`, waits for Flux to apply it; the run's status once
    Running."""
    gitops.install()
    gitops.write(f"jobs/{name}.yaml", job(name))
    gitops.ready(gitops.commit(message))
    return wait_for(f"{name} running", phase(gitops.cluster, gitops.namespace, name, "Running"), timeout=30)


def test_the_example_folder_runs_from_a_commit_and_flux_is_ready_while_it_trains(gitops: GitOps, operator):
    """examples/gitops/ as written: the jobs folder committed at its path, the example GitRepository and
    Kustomization with only the repository's URL, the namespaces and the intervals changed."""
    shutil.copytree(EXAMPLES / "jobs", gitops.clone / "examples" / "gitops" / "jobs")
    source, kustomization = (yaml.safe_load((EXAMPLES / "flux" / f).read_text())
                             for f in ("gitrepository.yaml", "kustomization.yaml"))
    source["spec"].update(url=gitops.url, interval="2s")
    kustomization["spec"].update(targetNamespace=gitops.namespace, retryInterval="2s",
                                 # kwok's pods train until deleted (the operator passes these to the pods)
                                 commonMetadata={"annotations": RUNNING})
    for obj in (source, kustomization):
        obj["metadata"]["namespace"] = gitops.namespace
    gitops.name = kustomization["metadata"]["name"]
    gitops.install(objects=[source, kustomization])
    sha = gitops.commit("the team's fine-tunes")

    ready = gitops.ready(sha, timeout=90)
    names = sorted(p.stem for p in (EXAMPLES / "jobs").glob("*.yaml") if p.name != "kustomization.yaml")
    objs = [ftj(gitops.cluster, gitops.namespace, n) for n in names]
    # Ready while every run trains: kstatus (what `wait: true` runs) reads a Running FineTuneJob as Current.
    assert [o["status"]["phase"] for o in objs] == ["Running"] * len(names), [o.get("status") for o in objs]
    assert ready["reason"] == "ReconciliationSucceeded", ready
    assert [s for s, _ in kstatus.compute_all(objs)] == ["Current"] * len(names)
    assert live_jobs(gitops.cluster, gitops.namespace) == [f"{n}-g1" for n in names]
    inventory = [e["id"] for e in gitops.kustomization()["status"]["inventory"]["entries"]]
    assert inventory == [f"{gitops.namespace}_{n}_kubetune.io_FineTuneJob" for n in names]


def test_add_edit_in_place_edit_and_revert(gitops: GitOps, operator):
    cluster, ns = gitops.cluster, gitops.namespace
    first = one_running_job(gitops, "chat", "a new file: a run")
    assert live_jobs(cluster, ns) == ["chat-g1"]

    # A training field: a new run; the old one recorded in status.runs.
    gitops.write("jobs/chat.yaml", job("chat", {"hyperparameters": {"learningRate": 1e-4}}))
    training_edit = gitops.commit("a training field: a new run")
    gitops.ready(training_edit)
    second = wait_for("the second run", phase(cluster, ns, "chat", "Running", jobName="chat-g2"), timeout=30)
    assert second["runId"] != first["runId"]
    assert [(r["generation"], r["jobName"]) for r in second["runs"]] == [(1, "chat-g1")]
    wait_for("the first run's Job to go", lambda: live_jobs(cluster, ns) == ["chat-g2"], timeout=30)

    # An in-place field: the same run goes on.
    gitops.write("jobs/chat.yaml", job("chat", {"hyperparameters": {"learningRate": 1e-4},
                                                "runPolicy": {"activeDeadlineSeconds": 7200}}))
    gitops.ready(gitops.commit("an in-place field: the same run"))
    same = wait_for("the edit observed", phase(cluster, ns, "chat", "Running", jobName="chat-g2"), timeout=30)
    time.sleep(SETTLE_SECONDS)
    assert same["runId"] == second["runId"] and live_jobs(cluster, ns) == ["chat-g2"]

    # Reverting the training edit is another change of the training spec: a new run with the old spec.
    reverted = gitops.revert(training_edit)
    gitops.ready(reverted)
    third = wait_for("the revert's run", phase(cluster, ns, "chat", "Running", jobName="chat-g4"), timeout=30)
    spec = ftj(cluster, ns, "chat")["spec"]
    assert "learningRate" not in spec["hyperparameters"] or spec["hyperparameters"]["learningRate"] != 1e-4
    assert spec["runPolicy"]["activeDeadlineSeconds"] == 7200  # the later in-place edit stays
    assert third["runId"] not in (first["runId"], second["runId"])
    assert [r["jobName"] for r in third["runs"]] == ["chat-g2", "chat-g1"]


def test_a_deleted_file_is_pruned_with_its_children_not_its_artifacts(gitops: GitOps, operator, s3):
    cluster, ns = gitops.cluster, gitops.namespace
    prefix = f"prune/{ns}"
    gitops.install()
    gitops.write("jobs/keep.yaml", job("keep"))
    gitops.write("jobs/drop.yaml", job("drop", {"output": {"uri": f"s3://{cluster.bucket}/{prefix}/"}}))
    gitops.ready(gitops.commit("two jobs"))
    for name in ("keep", "drop"):
        wait_for(f"{name} running", phase(cluster, ns, name, "Running"), timeout=30)
    uid, run_id = ftj(cluster, ns, "drop")["metadata"]["uid"], status(cluster, ns, "drop")["runId"]
    # What the trainer would have written by now (kwok runs none): a checkpoint under the run's prefix.
    key = f"{prefix}/{run_id}/checkpoints/step-00000010/COMPLETE"
    s3.put_object(Bucket=cluster.bucket, Key=key, Body=b"")

    def owned(kind: str) -> list[str]:
        return [o["metadata"]["name"] for o in cluster.kubectl_json("get", kind, "-n", ns)["items"]
                if any(r["uid"] == uid for r in o["metadata"].get("ownerReferences") or [])]
    assert owned("jobs") == ["drop-g1"] and owned("configmaps")

    gitops.remove("jobs/drop.yaml")
    gitops.ready(gitops.commit("delete a file: prune: true deletes the FineTuneJob"))
    wait_for("drop to go", lambda: cluster.kubectl("get", "ftj", "drop", "-n", ns, check=False).returncode != 0,
             timeout=30)
    # Its Job and ConfigMap go by owner reference (the garbage collector), its pods with the Job.
    wait_for("drop's children to go", lambda: not owned("jobs") and not owned("configmaps"), timeout=60)
    wait_for("drop's pods to go", lambda: not [p for p in cluster.kubectl_json("get", "pods", "-n", ns)["items"]
                                               if p["metadata"]["name"].startswith("drop-")], timeout=60)
    assert phase(cluster, ns, "keep", "Running")()
    inventory = [e["id"] for e in gitops.kustomization()["status"]["inventory"]["entries"]]
    assert inventory == [f"{ns}_keep_kubetune.io_FineTuneJob"]
    assert s3.head_object(Bucket=cluster.bucket, Key=key)  # nothing deletes artifacts


def test_a_kubectl_edit_is_put_back_by_flux_and_what_that_costs(gitops: GitOps, operator):
    """Flux restores what Git says at its next reconcile (spec.interval, or `flux reconcile`): the fields Git sets,
    and whatever kubectl changed; a field Git does not set, changed by another client, stays."""
    cluster, ns = gitops.cluster, gitops.namespace
    first = one_running_job(gitops, "chat", "a job")

    # A training field set in Git, edited by hand: the operator starts a run of the edited spec...
    cluster.kubectl("patch", "ftj", "chat", "-n", ns, "--type=merge", "-p",
                    json.dumps({"spec": {"hyperparameters": {"maxSteps": 99}}}))
    wait_for("the hand edit's run", phase(cluster, ns, "chat", "Running", jobName="chat-g2"), timeout=30)
    # ...and Flux, at its next reconcile, applies Git's value again: a third run, of Git's spec.
    gitops.reconcile()
    back = wait_for("Git's spec back, as a new run", phase(cluster, ns, "chat", "Running", jobName="chat-g3"),
                    timeout=60)
    assert ftj(cluster, ns, "chat")["spec"]["hyperparameters"]["maxSteps"] == 10
    assert [r["jobName"] for r in back["runs"]] == ["chat-g2", "chat-g1"]
    assert back["runId"] != first["runId"]  # a run id names a generation: rewinding is a new run

    # A field Git leaves out (suspend), set with kubectl: Flux still undoes it. kustomize-controller drops every
    # field manager named kubectl* (kubectl apply, edit, patch) before it applies, so the field goes back to
    # the CRD's default and the run resumes.
    suspend = json.dumps({"spec": {"suspend": True}})
    cluster.kubectl("patch", "ftj", "chat", "-n", ns, "--type=merge", "-p", suspend)
    wait_for("suspended", phase(cluster, ns, "chat", "Suspended"), timeout=30)
    assert gitops.handled(gitops.reconcile())["status"] == "True"
    assert ftj(cluster, ns, "chat")["spec"]["suspend"] is False
    wait_for("running again", phase(cluster, ns, "chat", "Running", jobName="chat-g3"), timeout=30)

    # The same edit by another client (its own field manager): a field Git leaves out is not Flux's, it stays.
    cluster.kubectl("patch", "ftj", "chat", "-n", ns, "--type=merge", "-p", suspend, "--field-manager=ml-console")
    wait_for("suspended", phase(cluster, ns, "chat", "Suspended"), timeout=30)
    assert gitops.handled(gitops.reconcile())["status"] == "True"  # Suspended is Current too
    time.sleep(SETTLE_SECONDS)
    assert ftj(cluster, ns, "chat")["spec"]["suspend"] is True


def test_suspend_and_resume_through_git(gitops: GitOps, operator):
    cluster, ns = gitops.cluster, gitops.namespace
    first = one_running_job(gitops, "chat", "a job")

    gitops.write("jobs/chat.yaml", job("chat", {"suspend": True}))
    gitops.ready(gitops.commit("suspend"))  # Suspended is Current for kstatus: the Kustomization stays Ready
    held = wait_for("suspended", phase(cluster, ns, "chat", "Suspended"), timeout=30)
    assert held["runId"] == first["runId"]
    wait_for("its pods gone", lambda: not cluster.kubectl_json("get", "pods", "-n", ns)["items"], timeout=30)

    gitops.write("jobs/chat.yaml", job("chat", {"suspend": False}))
    gitops.ready(gitops.commit("resume"))
    resumed = wait_for("running again", phase(cluster, ns, "chat", "Running"), timeout=30)
    assert resumed["runId"] == first["runId"] and not resumed.get("runs")


def test_a_commit_with_one_invalid_job_is_refused_whole(gitops: GitOps, operator):
    """kustomize-controller validates every object of a revision with a server-side dry run before it applies any:
    one invalid FineTuneJob holds back the valid ones of the same commit; what the last good commit applied runs
    on untouched."""
    cluster, ns = gitops.cluster, gitops.namespace
    one_running_job(gitops, "old", "a good commit")

    gitops.write("jobs/new.yaml", job("new"))
    gitops.write("jobs/bad.yaml", job("bad", {"hyperparameters": {"epochs": 2}}))  # epochs and maxSteps
    bad = gitops.commit("one valid, one invalid")
    k = gitops.applied(bad)
    ready = next(c for c in k["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ReconciliationFailed", ready
    assert "FineTuneJob/" in ready["message"] and "bad" in ready["message"], ready
    assert "spec.hyperparameters" in ready["message"] and "epochs" in ready["message"], ready
    print(f"Ready=False {ready['reason']}: {ready['message']}")
    assert not k["status"]["lastAppliedRevision"].endswith(bad)
    names = [o["metadata"]["name"] for o in cluster.kubectl_json("get", "ftj", "-n", ns)["items"]]
    assert names == ["old"]  # the valid new one was not applied either
    assert phase(cluster, ns, "old", "Running")()

    gitops.remove("jobs/bad.yaml")
    gitops.ready(gitops.commit("the invalid one removed: the rest applies"))
    wait_for("new running", phase(cluster, ns, "new", "Running"), timeout=30)


def test_a_failed_run_fails_the_kustomization_and_a_token_commit_reruns_it(gitops: GitOps, operator):
    cluster, ns = gitops.cluster, gitops.namespace
    gitops.install()
    spec = {"runPolicy": {"backoffLimit": 0}}
    gitops.write("jobs/flaky.yaml", job("flaky", spec, kwok(seconds=1, exit_code=1)))
    gitops.commit("a run that fails")
    failed = wait_for("the run to fail", phase(cluster, ns, "flaky", "Failed"), timeout=30)
    # kstatus reads Failed (Stalled=True) as Failed: the health check fails, naming the FineTuneJob. A run that
    # fails while Flux waits fails it at once; one that fails after the Kustomization went Ready shows at the next
    # reconcile (spec.interval; here asked for, as `flux reconcile` does).
    gitops.reconcile()
    ready = wait_for("the Kustomization to report the failure", lambda: (lambda c: c.get("reason") == (
        "HealthCheckFailed") and c)(gitops.condition()), timeout=60)
    assert ready["status"] == "False" and f"FineTuneJob/{ns}/flaky" in ready["message"], ready
    assert "Failed" in ready["message"], ready
    print(f"Ready=False {ready['reason']}: {ready['message']}")

    # Only the token changes in Git: a new attempt of the same run (same run id: the trainer resumes from its
    # checkpoint), and the Kustomization is Ready again while it trains.
    gitops.write("jobs/flaky.yaml", job("flaky", {**spec, "rerunToken": "after-the-fix"}, RUNNING))
    gitops.ready(gitops.commit("rerun"), timeout=90)
    rerun = wait_for("the rerun", phase(cluster, ns, "flaky", "Running", rerunToken="after-the-fix"), timeout=30)
    assert (rerun["runId"], rerun["jobName"]) == (failed["runId"], "flaky-g1-a2")
    [k8s_job] = [j for j in jobs(cluster, ns) if j["metadata"]["name"] == rerun["jobName"]]
    assert run_id_of(k8s_job) == failed["runId"]  # the trainer resumes from <output>/<runId>/checkpoints/
    assert rerun["artifacts"]["checkpointUri"] == failed["artifacts"]["checkpointUri"]
    assert not rerun.get("runs")


def test_twenty_jobs_in_one_commit(gitops: GitOps, operator):
    cluster, ns = gitops.cluster, gitops.namespace
    gitops.install()
    names = [f"sweep-{i:02d}" for i in range(20)]
    for name in names:  # 1 GPU each: 20 of the kwok nodes' 24
        gitops.write(f"jobs/{name}.yaml", job(name))
    started = time.monotonic()
    sha = gitops.commit("twenty runs")
    gitops.ready(sha, timeout=120)
    ready_after = time.monotonic() - started
    objs = wait_for("every run to train", lambda: (lambda items: len(items) == 20 and all(
        (o.get("status") or {}).get("phase") == "Running" for o in items) and items)(
        cluster.kubectl_json("get", "ftj", "-n", ns)["items"]), timeout=90)
    running_after = time.monotonic() - started
    assert sorted(o["metadata"]["name"] for o in objs) == names
    assert [s for s, _ in kstatus.compute_all(objs)] == ["Current"] * 20
    assert live_jobs(cluster, ns) == [f"{n}-g1" for n in names]
    print(f"twenty jobs: Kustomization Ready {ready_after:.1f}s, all Running {running_after:.1f}s after the push")


def test_the_wait_for_completion_variant_is_ready_only_when_the_runs_succeed(gitops: GitOps, operator):
    """examples/gitops/flux-wait-for-completion: healthCheckExprs instead of kstatus for FineTuneJobs."""
    cluster, ns = gitops.cluster, gitops.namespace
    variant = yaml.safe_load((EXAMPLES / "flux-wait-for-completion" / "kustomization.yaml").read_text())
    gitops.install({"healthCheckExprs": variant["spec"]["healthCheckExprs"]})
    gitops.write("jobs/short.yaml", job("short", notes=kwok(seconds=12)))
    sha = gitops.commit("a run of 12 seconds")
    wait_for("the run", phase(cluster, ns, "short", "Running"), timeout=30)
    waiting = gitops.condition()
    assert waiting["status"] == "Unknown" and waiting["reason"] == "Progressing", waiting  # kstatus: Ready
    ready = gitops.ready(sha, timeout=60)
    assert status(cluster, ns, "short")["phase"] == "Succeeded", ready
