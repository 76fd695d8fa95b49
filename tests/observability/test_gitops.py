"""examples/gitops: the FineTuneJobs Argo CD and Flux deploy are valid, the Application and the Kustomization point
at them, and Flux's healthCheckExprs give the intended verdict on real statuses captured from the local cluster."""
import subprocess
import sys
from pathlib import Path

import celpy
import pytest
import yaml

from kubetune.api import FineTuneJob
from tests.observability.argocd import HEALTH_DIR

ROOT = Path(__file__).parents[2]
GITOPS = ROOT / "examples" / "gitops"
JOBS = GITOPS / "jobs"
TESTDATA = HEALTH_DIR / "testdata"


def manifests() -> list[Path]:
    return sorted(p for p in JOBS.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_every_job_is_valid(path):
    job = FineTuneJob.model_validate(yaml.safe_load(path.read_text()))
    assert job.metadata.name == path.stem
    cli = subprocess.run([sys.executable, "-m", "kubetune.cli", "validate", str(path)], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert cli.returncode == 0 and "is valid" in cli.stdout, cli.stdout + cli.stderr


def test_the_folder_is_one_kustomization_of_every_job():
    kustomization = yaml.safe_load((JOBS / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in manifests()]
    assert kustomization["namespace"] == "ml-team"


def test_argo_application_and_flux_kustomization_deploy_the_folder():
    app = yaml.safe_load((GITOPS / "argocd" / "application.yaml").read_text())
    assert (ROOT / app["spec"]["source"]["path"]) == JOBS
    assert app["spec"]["destination"]["namespace"] == "ml-team"
    source = yaml.safe_load((GITOPS / "flux" / "gitrepository.yaml").read_text())
    kstatus, completion = (yaml.safe_load((GITOPS / d / "kustomization.yaml").read_text())
                           for d in ("flux", "flux-wait-for-completion"))
    for flux in (kstatus, completion):
        assert (ROOT / flux["spec"]["path"]).resolve() == JOBS
        assert flux["spec"]["sourceRef"] == {"kind": "GitRepository", "name": source["metadata"]["name"]}
    # The variant is the same Kustomization (applying it replaces the other) with healthCheckExprs.
    assert {k: v for k, v in completion["spec"].items() if k not in ("healthCheckExprs", "timeout")} == {
        k: v for k, v in kstatus["spec"].items() if k != "timeout"}
    assert completion["metadata"] == kstatus["metadata"] and "healthCheckExprs" not in kstatus["spec"]
    assert source["spec"]["url"] == app["spec"]["source"]["repoURL"]


def flux_verdict(obj: dict) -> str:
    """kustomize-controller's order: inProgress, then failed, then current; none matching is in progress."""
    flux = yaml.safe_load((GITOPS / "flux-wait-for-completion" / "kustomization.yaml").read_text())
    [check] = [c for c in flux["spec"]["healthCheckExprs"] if c["kind"] == "FineTuneJob"]
    env = celpy.Environment()
    variables = {k: celpy.json_to_cel(v) for k, v in obj.items()}
    for verdict in ("inProgress", "failed", "current"):
        if check.get(verdict) and env.program(env.compile(check[verdict])).evaluate(variables):
            return verdict
    return "inProgress"


@pytest.mark.parametrize("stage, verdict", [
    ("queued", "inProgress"), ("suspended", "inProgress"), ("unschedulable", "inProgress"),
    ("running", "inProgress"), ("running-progress", "inProgress"), ("stale-generation", "inProgress"),
    ("new-run", "inProgress"),
    ("succeeded", "current"), ("failed-oom", "failed"), ("child-rejected", "failed"), ("child-conflict", "inProgress"),
])
def test_flux_health_check_exprs_wait_for_completion(stage, verdict):
    obj = yaml.safe_load((TESTDATA / f"{stage}.yaml").read_text())
    assert flux_verdict(obj) == verdict
