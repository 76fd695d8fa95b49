"""Flux in the local cluster: source-controller and kustomize-controller, built from their Go modules and run as
processes on this host, and a Git server on loopback holding the repositories they pull.

`hack/cluster` imports this module and passes itself as `c` (state dir, ports, process and build helpers), as with
hack/queues.py. On by default, like Kueue (`KUBETUNE_FLUX=0` leaves it out: a cold build of both controllers is
minutes; hack/README.md has the numbers).

Versions: the newest releases whose whole build list the Go module proxy serves. Flux 2.9's controllers
(v1.10.x) need modules the proxy refuses (fluxcd/pkg/masktoken v0.10.0, spiffe v0.2.0, apis/crypto v0.5.0,
http/fetch v0.30.x, ...); kustomize-controller v1.9.6 resolves as published, source-controller v1.9.6 with one
replacement: fluxcd/pkg/artifact v0.18.3 (not served) -> v0.18.0 (served; the same minor, patch releases only).

How: each controller's `main.go` imports its module's `internal/` packages, so it cannot be linked from a module
of ours (as hack/kueue links Kueue). The build copies the published module out of Go's module cache, drops its
`replace ./api` (the api/ folder is its own module, absent from the zip; the release requires the matching
published version), applies the replacement above and runs `go build` there.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import queues  # hack/queues.py: its YAML-to-objects reader

NAMESPACE = "flux-system"  # RUNTIME_NAMESPACE of both controllers (their events and leases would go there)
SOURCE_CONTROLLER = "v1.9.6"
KUSTOMIZE_CONTROLLER = "v1.9.6"
# Modules the proxy does not serve at the version a release requires, and the served one used instead.
REPLACE = {"source-controller": {"github.com/fluxcd/pkg/artifact": "v0.18.0"}, "kustomize-controller": {}}
VERSIONS = {"source-controller": SOURCE_CONTROLLER, "kustomize-controller": KUSTOMIZE_CONTROLLER}
REPOSITORY = "kubetune"  # the repository `up` creates (tests create their own beside it)
COMPONENTS = ["git-server", "source-controller", "kustomize-controller"]


def enabled() -> bool:
    return os.environ.get("KUBETUNE_FLUX", "1") != "0"


def module_dir(c, name: str) -> Path:
    """The controller's published module in Go's module cache (downloaded on first use)."""
    out = c.run("go", "mod", "download", "-json", f"github.com/fluxcd/{name}@{VERSIONS[name]}",
                env=c._go_env(), capture_output=True, text=True, cwd=c.HACK).stdout
    return Path(json.loads(out)["Dir"])


def _build_one(c, name: str, tmp: Path) -> None:
    src = tmp / "src"
    shutil.copytree(module_dir(c, name), src)
    for path in [src, *src.rglob("*")]:  # the module cache is read-only
        path.chmod(path.stat().st_mode | 0o200)
    env = dict(c._go_env(), GOFLAGS="-mod=mod -buildvcs=false")  # go.sum gains the api module and replacements
    c.run("go", "mod", "edit", f"-dropreplace=github.com/fluxcd/{name}/api", cwd=src, env=env)
    for module, version in REPLACE[name].items():
        c.run("go", "mod", "edit", f"-replace={module}={module}@{version}", cwd=src, env=env)
    c.run("go", "build", "-p", "2", "-trimpath", "-ldflags=-s -w", "-o", tmp / name, ".", cwd=src, env=env)
    shutil.rmtree(src)


def _key(name: str) -> str:
    """A changed replacement rebuilds."""
    return hashlib.sha256(json.dumps(REPLACE[name], sort_keys=True).encode()).hexdigest()[:8]


def build(c) -> dict:
    return {name: c._cached_build(name, f"{version}-{_key(name)}", lambda tmp, name=name: _build_one(c, name, tmp))
            for name, version in VERSIONS.items()}


def git_root(c) -> Path:
    return c.STATE / "git"


def git_url(c) -> str:
    """Where the server answers: repository NAME (a bare repository GIT_ROOT/NAME.git) is at <url>/NAME.git."""
    return f"http://127.0.0.1:{c.PORTS['git']}"


def healthy(c, name: str) -> bool:
    port = {"git-server": "git", "source-controller": "flux-source-health",
            "kustomize-controller": "flux-kustomize-health"}[name]
    path = "/healthz" if name == "git-server" else "/readyz"
    return c._get(f"http://127.0.0.1:{c.PORTS[port]}{path}")


def crds(c) -> list[Path]:
    return [module_dir(c, name) / "config" / "crd" / "bases" for name in VERSIONS]


def up(c, bins: dict, kubectl) -> None:
    started, d = time.monotonic(), c.STATE / "flux"
    (d / "storage").mkdir(parents=True, exist_ok=True)
    root = git_root(c)
    root.mkdir(exist_ok=True)
    c.run("git", "init", "-q", "--bare", "-b", "main", root / f"{REPOSITORY}.git")
    c.start("git-server", [sys.executable, c.HACK / "git_http.py", root, c.PORTS["git"]])
    kubectl("create", "namespace", NAMESPACE)
    objects = [o for path in crds(c) for o in queues._to_json(kubectl, path)]
    kubectl("apply", "--server-side", "--field-manager=kubetune-cluster", "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    kubectl("wait", "--for=condition=Established", "--timeout=60s",
            *[f"crd/{o['metadata']['name']}" for o in objects])
    c._cert("flux", "/O=system:masters/CN=flux", "ca", c.CLIENT_EXT)  # a local cluster: no RBAC to maintain
    env = {"KUBECONFIG": str(c.cert_kubeconfig("flux")), "RUNTIME_NAMESPACE": NAMESPACE}
    common = ["--enable-leader-election=false", "--watch-all-namespaces=true", "--log-encoding=console",
              "--events-addr="]
    # Started through links in the state dir: hack/cluster recognises its processes by that path in their argv.
    (d / "bin").mkdir(exist_ok=True)
    for name in VERSIONS:
        (d / "bin" / name).unlink(missing_ok=True)
        (d / "bin" / name).symlink_to(bins[name])
    storage = f"127.0.0.1:{c.PORTS['flux-source']}"
    c.start("source-controller", [
        d / "bin" / "source-controller", *common, f"--storage-path={d / 'storage'}", f"--storage-addr={storage}",
        f"--storage-adv-addr={storage}", f"--metrics-addr=127.0.0.1:{c.PORTS['flux-source-metrics']}",
        f"--health-addr=127.0.0.1:{c.PORTS['flux-source-health']}"], env=env)
    c.start("kustomize-controller", [
        d / "bin" / "kustomize-controller", *common, "--no-remote-bases=true",
        f"--metrics-addr=127.0.0.1:{c.PORTS['flux-kustomize-metrics']}",
        f"--health-addr=127.0.0.1:{c.PORTS['flux-kustomize-health']}"], env=dict(env, TMPDIR=str(d)))
    for name in COMPONENTS:
        c.wait_for(name, lambda name=name: c.healthy(name), timeout=120)
    c.log(f"flux (source-controller {SOURCE_CONTROLLER}, kustomize-controller {KUSTOMIZE_CONTROLLER}) and the "
          f"git server ready in {time.monotonic() - started:.1f}s")
