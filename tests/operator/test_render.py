"""`kubetune render` prints exactly what the operator's builder creates."""
from pathlib import Path

import yaml
from typer.testing import CliRunner

from kubetune.api.validate import load_documents, validate_manifest
from kubetune.cli import PLACEHOLDER_UID, app
from kubetune.operator.children import render
from kubetune.operator.settings import OperatorSettings

ROOT = Path(__file__).parents[2]


def test_render_prints_the_builders_objects():
    result = CliRunner().invoke(app, ["render", str(ROOT / "examples" / "multi-node.yaml")])
    assert result.exit_code == 0, result.output
    printed = list(yaml.safe_load_all(result.stdout))
    [doc] = load_documents((ROOT / "examples" / "multi-node.yaml").read_text())
    doc["metadata"].update(namespace="default", uid=PLACEHOLDER_UID, generation=1)
    job, errors = validate_manifest(doc)
    assert not errors
    assert printed == render(job, OperatorSettings())
    assert [o["kind"] for o in printed] == ["ConfigMap", "Service", "Job"]


def test_render_refuses_an_invalid_manifest(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (ROOT / "examples" / "chat-lora.yaml").read_text().replace("maxSeqLength:", "maxSeqLength: 1\n#")
    bad.write_text(text)
    result = CliRunner().invoke(app, ["render", str(bad)])
    assert result.exit_code == 1
    assert "maxSeqLength" in result.output


def test_render_of_a_failed_object_with_a_new_rerun_token_prints_the_reruns_children(tmp_path):
    """`kubectl get ftj -o yaml`, the token edited: what the operator will create for the rerun."""
    from tests.operator.test_rerun import failed

    path = tmp_path / "failed.yaml"
    path.write_text(yaml.safe_dump(failed("again-1").to_wire()))
    result = CliRunner().invoke(app, ["render", str(path)])
    assert result.exit_code == 0, result.output
    config, job = list(yaml.safe_load_all(result.stdout))
    assert config["metadata"]["name"] == job["metadata"]["name"] == "chat-g1-a2"
    assert "'again-1' of Job chat-g1, which failed" in job["metadata"]["annotations"]["kubetune.io/restart-reason"]
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_RUN_ID"] == failed().status.run_id  # the same run: it resumes from its checkpoints
