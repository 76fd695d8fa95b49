"""The Argo CD health check, run under Lua 5.1 exactly as Argo CD runs it, over health_test.yaml (Argo CD's own
test format) whose inputs are statuses captured from the real operator (hack/observability/capture_health_testdata.py)."""
import pytest
import yaml

from tests.observability.argocd import HEALTH_DIR, health

CASES = yaml.safe_load((HEALTH_DIR / "health_test.yaml").read_text())["tests"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["inputPath"])
def test_health_of_captured_status(case):
    obj = yaml.safe_load((HEALTH_DIR / case["inputPath"]).read_text())
    assert health(obj) == case["healthStatus"]


def test_every_argo_health_state_is_covered():
    assert {c["healthStatus"]["status"] for c in CASES} == {"Healthy", "Progressing", "Degraded", "Suspended"}
    assert sorted(p.name for p in (HEALTH_DIR / "testdata").glob("*.yaml")) == sorted(
        c["inputPath"].removeprefix("testdata/") for c in CASES)


def test_a_status_older_than_the_spec_is_progressing_whatever_it_says():
    obj = yaml.safe_load((HEALTH_DIR / "testdata" / "succeeded.yaml").read_text())
    obj["metadata"]["generation"] += 1
    assert health(obj) == {"status": "Progressing",
                           "message": f"Waiting for the operator to observe generation {obj['metadata']['generation']}"}
    del obj["status"]
    assert health(obj)["status"] == "Progressing"


def test_the_argocd_cm_snippet_carries_the_script_verbatim():
    cm = yaml.safe_load((HEALTH_DIR.parents[2] / "argocd-cm.yaml").read_text())
    assert cm["data"]["resource.customizations.health.kubetune.io_FineTuneJob"] == (HEALTH_DIR / "health.lua").read_text()
