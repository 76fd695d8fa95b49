"""Real Flux on the local cluster (hack/flux.py): each test gets a Git repository on the cluster's Git server, a
working clone to commit to, a GitRepository and a Kustomization in its namespace that apply the repository's
`jobs/` folder there, and the operator watching that namespace (tests/operator/conftest.py).

`hack/cluster` runs Flux unless started with `KUBETUNE_FLUX=0` (a cold build of its controllers takes minutes,
hack/README.md): without it these tests skip, saying how to run them.
"""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.operator.conftest import operator, operators  # noqa: F401  (fixtures)
from tests.plugins.cluster import wait_for

ROOT = Path(__file__).parents[2]
SKIP = ("Flux is not running in this cluster (started with KUBETUNE_FLUX=0): `hack/cluster down`, then `hack/cluster "
        "up` without it; hack/README.md has the build times")


def git(*args, cwd: Path) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, f"git {' '.join(args)}: {out.stderr}"
    return out.stdout.strip()


@dataclass
class GitOps:
    """One test's repository, its clone, and the Flux objects that deploy its `path` into `namespace`."""

    cluster: object
    namespace: str
    clone: Path
    url: str
    path: str = "jobs"
    name: str = "jobs"

    # ------------------------------------------------------------------ Git
    def write(self, relative: str, doc: dict | str) -> None:
        target = self.clone / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=2) + "\n")  # JSON is YAML

    def remove(self, relative: str) -> None:
        (self.clone / relative).unlink()

    def commit(self, message: str) -> str:
        git("add", "-A", ".", cwd=self.clone)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.clone)
        git("push", "-q", "origin", "HEAD:main", cwd=self.clone)
        return git("rev-parse", "HEAD", cwd=self.clone)

    def revert(self, sha: str) -> str:
        git("revert", "--no-edit", sha, cwd=self.clone)
        git("push", "-q", "origin", "HEAD:main", cwd=self.clone)
        return git("rev-parse", "HEAD", cwd=self.clone)

    # ------------------------------------------------------------------ Flux
    def flux_objects(self, kustomization: dict | None = None) -> list[dict]:
        source = {"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
                  "metadata": {"name": self.name, "namespace": self.namespace},
                  "spec": {"interval": "2s", "url": self.url, "ref": {"branch": "main"}, "timeout": "20s"}}
        spec = {"interval": "1m", "retryInterval": "2s", "sourceRef": {"kind": "GitRepository", "name": self.name},
                "path": f"./{self.path}", "targetNamespace": self.namespace, "prune": True, "wait": True,
                "timeout": "45s"}
        spec.update(kustomization or {})
        return [source, {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
                         "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}]

    def install(self, kustomization: dict | None = None, objects: list[dict] | None = None) -> None:
        items = objects or self.flux_objects(kustomization)
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                   "items": items}))

    def kustomization(self) -> dict:
        return self.cluster.kubectl_json("get", "kustomizations.kustomize.toolkit.fluxcd.io", self.name,
                                         "-n", self.namespace)

    def condition(self, kind: str = "Ready") -> dict:
        conditions = (self.kustomization().get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == kind), {})

    def reconcile(self) -> str:
        """What `flux reconcile kustomization --with-source` does: ask both controllers now; the request's stamp."""
        stamp = str(time.time_ns())
        for kind in ("gitrepositories.source.toolkit.fluxcd.io", "kustomizations.kustomize.toolkit.fluxcd.io"):
            self.cluster.kubectl("annotate", "--overwrite", kind, self.name, "-n", self.namespace,
                                 f"reconcile.fluxcd.io/requestedAt={stamp}")
        return stamp

    def handled(self, stamp: str, timeout: float = 60) -> dict:
        """Waits until the Kustomization has finished the reconcile requested with `stamp`; its Ready condition."""
        def probe():
            status = self.kustomization().get("status") or {}
            ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
            return status.get("lastHandledReconcileAt") == stamp and ready.get("status") in ("True", "False") and ready
        return wait_for("Flux to handle the reconcile request", probe, timeout=timeout, interval=0.5)

    def applied(self, sha: str, timeout: float = 60) -> dict:
        """Waits until Flux has applied commit `sha` and its health check is over, either way; the Kustomization."""
        def probe():
            k = self.kustomization()
            status = k.get("status") or {}
            ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
            attempted = status.get("lastAttemptedRevision", "").endswith(sha)
            settled = ready.get("status") in ("True", "False") and ready.get("reason") != "Progressing"
            return attempted and settled and status.get("observedGeneration") == k["metadata"]["generation"] and k
        return wait_for(f"Flux to apply {sha[:8]}", probe, timeout=timeout, interval=0.5)

    def ready(self, sha: str, timeout: float = 60) -> dict:
        """Waits until commit `sha` is applied and the Kustomization Ready=True; its Ready condition."""
        def probe():
            k = self.kustomization()
            status = k.get("status") or {}
            ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
            return status.get("lastAppliedRevision", "").endswith(sha) and ready.get("status") == "True" and ready
        try:
            return wait_for(f"the Kustomization Ready at {sha[:8]}", probe, timeout=timeout, interval=0.5)
        except AssertionError as error:
            raise AssertionError(f"{error}\nKustomization status: {json.dumps(self.kustomization().get('status'))}")


@pytest.fixture(scope="session")
def flux(cluster):
    if cluster.env.get("KUBETUNE_FLUX") != "1":
        pytest.skip(SKIP)
    return cluster


def new_repository(cluster, namespace: str, repo: str, work: Path, name: str = "jobs") -> GitOps:
    """An empty repository `<repo>.git` on the cluster's Git server and its clone under `work`, whose Flux objects
    (named `name`) deploy into `namespace`."""
    root = Path(cluster.env["KUBETUNE_GIT_ROOT"])
    git("init", "-q", "--bare", "-b", "main", str(root / f"{repo}.git"), cwd=work)
    url = f"{cluster.env['KUBETUNE_GIT_URL']}/{repo}.git"
    clone = work / "clone"
    git("clone", "-q", url, str(clone), cwd=work)
    git("checkout", "-q", "-b", "main", cwd=clone)
    for key, value in {"user.name": "kubetune tests", "user.email": "tests@kubetune.invalid"}.items():
        git("config", key, value, cwd=clone)
    return GitOps(cluster, namespace, clone, url, name=name)


@pytest.fixture
def gitops(flux, namespace, tmp_path) -> GitOps:
    """An empty repository `<namespace>.git` and its clone."""
    return new_repository(flux, namespace, namespace, tmp_path)
