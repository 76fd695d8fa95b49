"""Helm for the chart tests: the pinned binary from hack/tools.sh (or $KUBETUNE_HELM) and `helm template` parsed."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]
CHART = ROOT / "charts" / "kubetune"


@pytest.fixture(scope="session")
def helm() -> str:
    if os.environ.get("KUBETUNE_HELM"):
        return os.environ["KUBETUNE_HELM"]
    tools = subprocess.run([ROOT / "hack" / "tools.sh"], check=True, capture_output=True, text=True)
    return str(Path(tools.stdout.strip().splitlines()[-1]) / "helm")


class Rendered(list):
    """The documents of one `helm template`, with lookups by kind and name."""

    def kinds(self, kind: str) -> list[dict]:
        return [d for d in self if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [d for d in self.kinds(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
        return found[0]


@pytest.fixture(scope="session")
def template(helm, tmp_path_factory):
    """template(values, chart=CHART, release="kubetune", namespace="kubetune-system") -> Rendered; raises
    subprocess.CalledProcessError (with stderr) when helm refuses."""
    tmp = tmp_path_factory.mktemp("values")

    def run(values: dict | None = None, chart: Path = CHART, release: str = "kubetune",
            namespace: str = "kubetune-system") -> Rendered:
        values_file = tmp / f"values-{len(list(tmp.iterdir()))}.yaml"
        values_file.write_text(yaml.safe_dump(values or {}))
        out = subprocess.run([helm, "template", release, str(chart), "--namespace", namespace,
                              "--values", str(values_file)], check=True, capture_output=True, text=True)
        return Rendered(d for d in yaml.safe_load_all(out.stdout) if d)
    return run


@pytest.fixture
def bare_chart(tmp_path) -> Path:
    """A copy of the chart without the generated dashboards and alerts, for tests that add their own."""
    chart = tmp_path / "kubetune"
    shutil.copytree(CHART, chart)
    for generated in ("dashboards", "alerts"):
        shutil.rmtree(chart / "files" / generated, ignore_errors=True)
    return chart
