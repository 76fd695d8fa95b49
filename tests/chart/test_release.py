"""The release workflow, checked with what runs here: actionlint (with shellcheck on every `run:` script), the
version check the workflow runs first, its chart packaging step run as it is written, and that it builds the
same Dockerfiles hack/images builds, for two architectures, signed, with SBOMs."""
import os
import re
import subprocess
import tarfile
from pathlib import Path

import yaml

from tests.images.test_dockerfiles import load_hack_images

ROOT = Path(__file__).parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yaml"
CHART = yaml.safe_load((ROOT / "charts" / "kubetune" / "Chart.yaml").read_text())


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def steps(job: str) -> list[dict]:
    return workflow()["jobs"][job]["steps"]


def test_actionlint_passes():
    done = subprocess.run([ROOT / "hack" / "actionlint", "-no-color", WORKFLOW], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr


def test_runs_on_version_tags_with_least_privilege():
    wf = workflow()
    assert wf[True] == {"push": {"tags": ["v*"]}}  # YAML 1.1 reads the key `on` as true
    assert wf["permissions"] == {}
    for name, job in wf["jobs"].items():
        assert "permissions" in job, f"job {name} names what it needs"
        if name in ("images", "chart"):
            assert job["permissions"]["id-token"] == "write", "cosign keyless signs with the job's OIDC token"


def test_builds_the_dockerfiles_hack_images_builds_for_two_architectures():
    job = workflow()["jobs"]["images"]
    built = set(job["strategy"]["matrix"]["image"])
    assert built == set(load_hack_images().CONTEXTS) - {"pause"}  # pause is the local node's sandbox only
    [build] = [s for s in job["steps"] if s.get("uses", "").startswith("docker/build-push-action@")]
    assert build["with"]["file"] == "images/${{ matrix.image }}/Dockerfile" and build["with"]["context"] == "."
    assert all((ROOT / "images" / name / "Dockerfile").is_file() for name in built)
    assert set(build["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert build["with"]["push"] is True and build["with"]["sbom"] is True
    args = dict(line.split("=", 1) for line in build["with"]["build-args"].splitlines())
    assert args["VERSION"] == "${{ env.VERSION }}" and args["REVISION"] == "${{ github.sha }}"


def test_signs_images_and_chart_and_attests_sboms():
    image_script = "\n".join(s.get("run", "") for s in steps("images"))
    assert 'cosign sign --yes --recursive "$IMAGE@$DIGEST"' in image_script  # by digest, every platform
    assert 'cosign attest --yes --type spdxjson --predicate "$NAME.spdx.json" "$IMAGE@$DIGEST"' in image_script
    [sbom] = [s for s in steps("images") if s.get("uses", "").startswith("anchore/sbom-action@")]
    assert sbom["with"]["format"] == "spdx-json" and sbom["with"]["output-file"] == "${{ matrix.image }}.spdx.json"
    chart_script = "\n".join(s.get("run", "") for s in steps("chart"))
    assert 'helm push "dist/kubetune-$VERSION.tgz" "oci://$CHARTS"' in chart_script
    assert 'cosign sign --yes "$CHARTS/kubetune@$digest"' in chart_script


def test_the_tag_must_name_the_chart_app_and_package_version():
    def run(tag: str) -> subprocess.CompletedProcess:
        return subprocess.run([ROOT / "hack" / "release-version", tag], capture_output=True, text=True)
    assert CHART["version"] == CHART["appVersion"]
    ok = run(f"v{CHART['version']}")
    assert ok.returncode == 0 and ok.stdout.strip() == CHART["version"], ok.stderr
    wrong = run("v99.0.0")
    assert wrong.returncode == 1 and f"Chart.yaml version {CHART['version']}" in wrong.stderr
    [step] = [s for s in steps("version") if s.get("id") == "version"]
    assert 'hack/release-version "$TAG"' in step["run"] and step["env"]["TAG"] == "${{ github.ref_name }}"


def test_the_packaging_step_as_written_gives_the_chart_of_this_version(helm, tmp_path):
    """The workflow's own script, run in a copy of the chart with the workflow's environment: the package carries
    Chart.yaml's version and the owner's images."""
    [step] = [s for s in steps("chart") if s.get("name", "").startswith("Package the chart")]
    (tmp_path / "charts").mkdir()
    subprocess.run(["cp", "-r", ROOT / "charts" / "kubetune", tmp_path / "charts"], check=True)
    env = dict(os.environ, VERSION=CHART["version"], OWNER="example-org",
               PATH=f"{Path(helm).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", step["run"]], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with tarfile.open(tmp_path / "dist" / f"kubetune-{CHART['version']}.tgz") as tgz:
        packaged = yaml.safe_load(tgz.extractfile("kubetune/Chart.yaml"))
        values = yaml.safe_load(tgz.extractfile("kubetune/values.yaml"))
        names = tgz.getnames()
    assert (packaged["version"], packaged["appVersion"]) == (CHART["version"], CHART["version"])
    assert values["image"]["repository"] == "ghcr.io/example-org/operator"
    assert values["trainer"]["image"]["repository"] == "ghcr.io/example-org/trainer"
    assert "kubetune/files/crds/kubetune.io_finetunejobs.yaml" in names
    assert not [n for n in names if re.search(r"/(\.git|__pycache__)/", n)]
