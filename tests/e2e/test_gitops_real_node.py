"""GitOps end to end on the real node (issue 25): a FineTuneJob committed to Git, applied by real Flux
(source-controller and kustomize-controller from hack/cluster), trained by the deployed operator in a container on
the real node; the Kustomization is Ready while the run trains; deleting the file (prune: true) removes the
FineTuneJob and its children and leaves its artifacts in S3."""
import secrets

import pytest

from tests.e2e.conftest import E2E_NAMESPACE, wait_until
from tests.gitops.conftest import GitOps, flux, new_repository  # noqa: F401  (fixture)

pytestmark = pytest.mark.cluster


@pytest.fixture
def repo(flux, tmp_path) -> GitOps:
    name = f"real-{secrets.token_hex(3)}"
    ops = new_repository(flux, E2E_NAMESPACE, name, tmp_path, name=name)
    yield ops
    for kind in ("kustomizations.kustomize.toolkit.fluxcd.io", "gitrepositories.source.toolkit.fluxcd.io"):
        flux.kubectl("delete", kind, name, "-n", E2E_NAMESPACE, "--wait=false", check=False)


def test_a_commit_trains_on_the_real_node_and_a_deleted_file_prunes_the_run(cluster, real_jobs, tiny_in_s3, repo):
    job = f"gitops-{secrets.token_hex(3)}"
    spec = real_jobs.spec(tiny_in_s3["model"], tiny_in_s3["data"], hyperparameters={"maxSteps": 60})
    repo.write(f"jobs/{job}.yaml", {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                                    "metadata": {"name": job}, "spec": spec})
    repo.write("jobs/README.md", "FineTuneJobs Flux applies to kubetune-e2e.\n")  # Git keeps no empty folder
    sha = repo.commit(f"train {job}")
    repo.install({"timeout": "3m"})  # the health check waits for the trainer pod to start on the real node
    real_jobs.applied.append(job)  # cleaned up with the rest if the test fails before the prune

    ready = repo.ready(sha, timeout=240)  # wait: true, and a Running FineTuneJob reads Current
    running = real_jobs.status(job)
    assert running.get("phase") in ("Pending", "Queued", "Running", "Succeeded"), running
    pods = real_jobs.pods(job)
    assert pods and {p["spec"].get("nodeName") for p in pods} == {cluster.real_node}, pods
    print(f"Kustomization Ready ({ready.get('reason')}) while the run is {running.get('phase')}")

    done = real_jobs.wait_phase(job, ("Succeeded", "Failed"), timeout=600)
    assert done["phase"] == "Succeeded", (done, real_jobs.logs(job))
    run_id = done["runId"]
    artifacts = real_jobs.objects(f"out/{run_id}/")
    assert any(k.endswith("/summary.json") for k in artifacts), artifacts
    assert repo.condition().get("status") == "True", "a Succeeded run keeps the Kustomization Ready"

    repo.remove(f"jobs/{job}.yaml")
    gone = repo.commit(f"remove {job}")
    repo.reconcile()
    repo.ready(gone, timeout=120)
    wait_until(f"{job} pruned with its children", lambda: not cluster.kubectl(
        "get", "finetunejob,jobs,configmaps", "-n", E2E_NAMESPACE, "-l", f"kubetune.io/finetunejob={job}",
        "-o", "name", check=False).stdout.strip() and cluster.kubectl(
        "get", "finetunejob", job, "-n", E2E_NAMESPACE, check=False).returncode != 0, 120)
    assert real_jobs.objects(f"out/{run_id}/") == artifacts, "pruning the run leaves its artifacts in S3"
