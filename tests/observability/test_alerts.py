"""The alert rules, checked and unit-tested with Prometheus' own promtool (Debian `prometheus`, hack/tools.sh)."""
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[2]
RULES = ROOT / "charts" / "kubetune" / "files" / "alerts" / "kubetune.rules.yaml"
TESTS = sorted((Path(__file__).parent / "promtool").glob("*.yaml"))


def promtool(*args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: hack/tools.sh installs Debian's prometheus package, which ships it"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def test_rules_are_valid():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_and_stays_silent_as_its_unit_tests_say():
    result = promtool("test", "rules", *map(str, TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_case_and_a_runbook():
    alerts = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    fired = {t["alertname"] for f in TESTS for case in yaml.safe_load(f.read_text())["tests"]
             for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert set(alerts) - fired == set(), "alerts without a promtool case that fires them"
    docs = (ROOT / "docs" / "alerts.md").read_text()
    for name, rule in alerts.items():
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == name.lower() and f"## {name}" in docs, name
