"""The kubetune CLI as a user runs it: exit codes and one error per line naming file, field and value."""
import subprocess
import sys
from pathlib import Path

import yaml

from kubetune.api.crd import CRD_PATH
from tests.api.cases import make_job

ROOT = Path(__file__).parents[1]


def kubetune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubetune.cli", *args], cwd=ROOT, capture_output=True, text=True)


def test_validate_examples_exit_zero():
    examples = sorted(str(p) for p in ROOT.joinpath("examples").glob("*.yaml"))
    result = kubetune("validate", *examples)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("is valid") == len(examples)


def test_validate_reports_every_error_with_file_field_and_value(tmp_path):
    bad = make_job({"spec": {"task": "translation", "hyperparameters": {"epochs": 2},
                             "baseModel": {"uri": "ftp://x/y"}}})
    path = tmp_path / "bad.yaml"
    other = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}
    path.write_text(yaml.safe_dump_all([other, bad]))
    result = kubetune("validate", str(path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert f"{path}: spec.task: Input should be 'causal-lm' or 'sequence-classification' (got translation)" in lines
    assert any(line.startswith(f"{path}: spec.baseModel.uri: must be a URI") and line.endswith("(got ftp://x/y)")
               for line in lines)
    assert f"{path}: spec.hyperparameters.epochs: set exactly one of epochs and maxSteps (got 2)" in lines
    assert len(lines) == 3


def test_validate_mixed_files_fails_if_any_is_invalid(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(make_job()))
    bad.write_text(yaml.safe_dump(make_job({"spec": {"hyperparameters": {"epochs": 1}}})))
    result = kubetune("validate", str(good), str(bad))
    assert result.returncode == 1
    assert "good.yaml: FineTuneJob/case is valid" in result.stdout
    assert "bad.yaml: spec.hyperparameters.epochs: set exactly one of epochs and maxSteps (got 1)" in result.stderr


def test_validate_file_without_a_finetunejob(tmp_path):
    path = tmp_path / "secret.yaml"
    path.write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n")
    result = kubetune("validate", str(path))
    assert result.returncode == 1 and "no FineTuneJob" in result.stderr


def test_validate_yaml_syntax_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("spec:\n  a: b: c\n")
    result = kubetune("validate", str(path))
    assert result.returncode == 1 and f"{path}: line 2" in result.stderr


def test_crd_command_prints_the_committed_file():
    result = kubetune("crd")
    assert result.returncode == 0
    assert result.stdout == ROOT.joinpath(CRD_PATH).read_text()


def test_validate_names_a_rerun_token_too_long(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(make_job({"spec": {"rerunToken": "x" * 254}})))
    result = kubetune("validate", str(path))
    assert result.returncode == 1 and "spec.rerunToken" in result.stderr and "253" in result.stderr


def test_validate_and_render_know_sweeps(tmp_path):
    from kubetune.testing import sweep_manifest

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_manifest()))
    result = kubetune("validate", str(path))
    assert result.returncode == 0 and "FineTuneSweep/sweep is valid" in result.stdout
    rendered = list(yaml.safe_load_all(kubetune("render", str(path)).stdout))
    assert [(o["kind"], o["metadata"]["name"]) for o in rendered] == [("FineTuneJob", "sweep-t0"),
                                                                        ("FineTuneJob", "sweep-t1")]
    assert rendered[0]["metadata"]["ownerReferences"][0]["kind"] == "FineTuneSweep"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(sweep_manifest({"spec": {"algorithm": "random"}})))
    result = kubetune("validate", str(bad))
    assert result.returncode == 1
    assert "spec.maxTrials: random and tpe need maxTrials" in result.stderr


def test_crd_command_prints_the_sweep_crd():
    from kubetune.api.crd import SWEEP_CRD_PATH

    assert kubetune("crd", "--kind", "FineTuneSweep").stdout == ROOT.joinpath(SWEEP_CRD_PATH).read_text()
