"""The generated dashboard: in sync with its generator, laid out on Grafana's 24-column grid, every query valid
PromQL (promtool) and selecting on the label contract. The queries against real series: test_dashboard_cluster."""
import json
import shutil
import subprocess

import yaml

from hack.observability import dashboard
from tests.observability.panels import DASHBOARD, substitute, targets


def test_committed_json_is_what_the_generator_writes():
    assert DASHBOARD.read_text() == dashboard.render(), "run make generate (hack/observability/dashboard.py)"


def test_layout_fits_the_grid_and_every_panel_has_a_query():
    board = json.loads(DASHBOARD.read_text())
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "namespace", "finetunejob"]
    for p in board["panels"]:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
    titles = {p["title"] for p in board["panels"]}
    assert {"Jobs by phase", "Queue wait", "Failures by reason", "GPU-hours", "Time to Running",
            "Loss and eval loss vs step", "Learning rate", "Gradient norm", "Throughput", "MFU", "ETA",
            "Checkpoint seconds", "Device memory", "Test metrics vs baseline"} <= titles


def test_job_panels_select_on_namespace_and_finetunejob():
    board = json.loads(DASHBOARD.read_text())
    row = [p["title"] for p in board["panels"]].index("Job: $finetunejob")
    for p in board["panels"][row + 1:]:
        for t in p["targets"]:
            for selector in t["expr"].split("{")[1:]:
                assert 'namespace=~"$namespace"' in selector and 'finetunejob=~"$finetunejob"' in selector, t["expr"]


def test_every_query_is_valid_promql(tmp_path):
    rules = {"groups": [{"name": "panels", "rules": [
        {"record": f"kubetune:panel_{i}", "expr": substitute(t.expr)} for i, t in enumerate(targets())]}]}
    path = tmp_path / "panels.yaml"
    path.write_text(yaml.safe_dump(rules))
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: hack/tools.sh installs it"
    result = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
