"""The Dockerfiles' properties that the cluster relies on, read from the files (no build)."""
import importlib.machinery
import importlib.util
import json
import tomllib

import pytest
import yaml

from kubetune.api import FineTuneJob
from kubetune.operator import children
from tests.api.cases import make_job
from kubetune.operator.settings import OperatorSettings
from tests.images.dockerfiles import ROOT, stages

OCI_LABELS = ("version", "source", "revision", "title", "licenses")


def operator_pod() -> dict:
    docs = yaml.safe_load_all((ROOT / "config" / "manager" / "operator.yaml").read_text())
    deployment = next(d for d in docs if d and d.get("kind") == "Deployment")
    return deployment["spec"]["template"]["spec"]


def expected_user(name: str) -> int:
    """The UID the pods run as: the operator's Deployment, and the trainer pods the operator builds."""
    if name == "operator":
        return operator_pod()["securityContext"]["runAsUser"]
    return OperatorSettings.model_fields["run_as_user"].default


def expected_command(name: str) -> list[str]:
    """The command the pods run: the operator's Deployment's, and a one-GPU trainer pod's."""
    if name == "operator":
        return operator_pod()["containers"][0]["command"]
    return children.trainer_command(FineTuneJob.model_validate(make_job()))


@pytest.mark.parametrize("name", ["trainer", "operator"])
def test_multi_stage_from_a_base_build_argument(name):
    preamble, built = stages(name)
    assert len(built) >= 2, "a builder stage and a final stage"
    assert built[-1].base == built[0].base == "${BASE}"
    assert any(kw == "ARG" and rest.startswith("BASE=") for kw, rest in preamble)
    assert any(f"--from={built[0].name}" in rest for rest in built[-1].all("COPY")), "final copies the venv"


@pytest.mark.parametrize("name", ["trainer", "operator"])
def test_final_stage_runs_as_the_pods_numeric_user(name):
    users = stages(name)[1][-1].all("USER")
    assert users, "the final stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric and non-root, so runAsNonRoot can verify it"
    assert int(uid) == expected_user(name)
    assert not gid or int(gid) == int(uid)


@pytest.mark.parametrize("name", ["trainer", "operator", "pause"])
def test_oci_labels(name):
    labels = stages(name)[1][-1].labels()
    for key in OCI_LABELS:
        assert labels.get(f"org.opencontainers.image.{key}"), f"org.opencontainers.image.{key} is set"
    assert labels["org.opencontainers.image.version"] == "${VERSION}", "the version comes from a build arg"


@pytest.mark.parametrize("name", ["trainer", "operator"])
def test_nothing_is_compiled_or_installed_in_the_final_stage(name):
    final = stages(name)[1][-1]
    for run in final.all("RUN"):
        for word in ("apt-get", "pip ", "gcc", "cc ", "make"):
            assert word not in run, f"{word.strip()} in the final stage: {run}"


@pytest.mark.parametrize("name", ["trainer", "operator"])
def test_entrypoint_is_the_console_script_the_pods_run(name):
    entrypoint = json.loads(stages(name)[1][-1].all("ENTRYPOINT")[-1])
    assert entrypoint == expected_command(name)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts


def test_trainer_pod_writable_paths_and_home_match_the_image():
    """The image sets HOME=/tmp (an emptyDir in the pod) and owns the cache mount point for its UID."""
    final = stages("trainer")[1][-1]
    env = " ".join(final.all("ENV"))
    assert "HOME=/tmp" in env
    uid = expected_user("trainer")
    assert any(children.CACHE_DIR in run and f"chown {uid}:{uid}" in run for run in final.all("RUN"))


def load_hack_images():
    loader = importlib.machinery.SourceFileLoader("hack_images", str(ROOT / "hack" / "images"))
    spec = importlib.util.spec_from_loader("hack_images", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["trainer", "operator", "pause"])
def test_build_context_and_cache_key_cover_every_copied_file(name):
    """hack/images stages (and hashes) only its CONTEXTS: a COPY of anything else would miss the build or, worse,
    leave a stale image cached."""
    contexts = load_hack_images().CONTEXTS[name]
    for stage in stages(name)[1]:
        for copy in stage.all("COPY"):
            if copy.startswith("--from="):
                continue
            for source in copy.split()[:-1]:
                assert any(source == c or source.startswith(c.rstrip("/") + "/") for c in contexts), \
                    f"{source} (COPY in images/{name}/Dockerfile) is not in hack/images' CONTEXTS"
