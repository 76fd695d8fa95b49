"""The local cluster's OCI registry: where `make deploy` pushes the images and the chart, as a release would push
them to ghcr.io, and where the real node's containerd pulls from.

`hack/cluster` imports this module and passes itself as `c` (state dir, ports, process helpers). The registry is
the CNCF distribution registry (the open-source registry Docker Hub grew from; Harbor's and GitLab's build on it),
built from its Go module by `hack/distribution` with only the filesystem storage driver linked. It serves plain HTTP on
127.0.0.1 only, without auth: nothing off this machine can reach it, and containerd is told to use HTTP for it
(a hosts.toml, `containerd_hosts`). Its storage sits in the cluster dir and survives `down` (as the node's
containerd images do): an image pushed once is found again, so a warm `make deploy` pushes nothing.
"""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

# What a pull asks for: an image index or manifest in either media-type family (containerd's and helm's Accepts).
MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json"])


def version(c) -> str:
    """The distribution release hack/distribution/go.mod requires: the one source of the version."""
    return re.search(r"github\.com/distribution/distribution/v3 (v\S+)",
                     (c.HACK / "distribution" / "go.mod").read_text()).group(1)


def build(c, go_build: list) -> Path:
    return c._cached_build("registry", f"{version(c)}-{c._module_key('distribution')}", lambda tmp: c.run(
        *go_build, "-ldflags=-s -w", "-o", tmp / "registry", ".", cwd=c.HACK / "distribution", env=c._go_env()))


def address(c) -> str:
    return f"127.0.0.1:{c.PORTS['registry']}"


def storage(c) -> Path:
    return c.STATE / "registry"


def configuration(c) -> dict:
    return {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "fields": {"service": "registry"}},
        "storage": {"filesystem": {"rootdirectory": str(storage(c) / "data")}},
        "http": {"addr": address(c)},
    }


def start(c, bins: dict) -> None:
    storage(c).mkdir(parents=True, exist_ok=True)
    config = c.STATE / "registry.yaml"
    config.write_text(json.dumps(configuration(c), indent=2))  # JSON is YAML
    # OpenTelemetry's exporter would otherwise try an OTLP collector on localhost:4318 for every request.
    c.start("registry", [bins["registry"], "serve", config], env={"OTEL_TRACES_EXPORTER": "none"})


def healthy(c) -> bool:
    """The API's base endpoint answers 200 (an empty JSON object) once the storage driver is ready."""
    return c._get(f"http://{address(c)}/v2/")


def containerd_hosts(c, hosts_dir: Path) -> Path:
    """containerd's registry host configuration (`config_path`): the registry speaks plain HTTP on loopback.
    The directory is named as the image references name the registry (host:port)."""
    d = hosts_dir / address(c)
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.toml").write_text(f'server = "http://{address(c)}"\n\n'
                                  f'[host."http://{address(c)}"]\n  capabilities = ["pull", "resolve", "push"]\n')
    return hosts_dir


def manifest_digest(registry: str, repository: str, reference: str) -> str | None:
    """The digest the registry serves for repository:reference (a tag), as a pull resolves it; None when absent."""
    request = urllib.request.Request(f"http://{registry}/v2/{repository}/manifests/{reference}", method="HEAD",
                                     headers={"Accept": MANIFEST_TYPES + ", application/vnd.cncf.helm.config.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.headers["Docker-Content-Digest"]
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise
