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
