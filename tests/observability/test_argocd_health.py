"""The Argo CD health check, run under Lua 5.1 exactly as Argo CD runs it, over health_test.yaml (Argo CD's own
test format) whose inputs are statuses captured from the real operator
(tests/operator/test_health_capture.py, which also recaptures them)."""
import json
import shutil
import subprocess
from pathlib import Path

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


def test_the_script_needs_no_library_argo_cd_withholds_from_argocd_cm_scripts():
    """Argo CD runs argocd-cm scripts with base, table, package and a safe os only: string.format, math.floor or
    ("x"):upper() fail there, so they must fail here too."""
    for script in ('return {status = string.format("%s", "Healthy")}', "return {status = math.floor(1)}",
                   'return {status = ("healthy"):upper()}'):
        with pytest.raises(Exception, match="nil value|index a string"):
            health({"metadata": {}}, script)


@pytest.mark.parametrize("loss, shown", [(1.2344, "1.234"), (0.0071, "0.007"), (12.0, "12.000"), (0.05, "0.050")])
def test_progress_in_the_running_message(loss, shown):
    obj = yaml.safe_load((HEALTH_DIR / "testdata" / "running.yaml").read_text())
    obj["status"].update(progress={"step": 30, "totalSteps": 120, "percent": 25}, metrics={"evalLoss": loss})
    assert health(obj) == {"status": "Progressing", "message": f"Running: training (step 30/120, eval loss {shown})"}


def test_gopher_lua_as_argo_cd_runs_it_agrees():
    """The same cases through gopher-lua with Argo CD's library set, object decoding and result encoding
    (hack/observability/argocd-health, a small Go program; the first run downloads and builds it)."""
    go = shutil.which("go")
    assert go, "Go is needed (the local cluster is built with it too)"
    harness = Path(__file__).parents[2] / "hack" / "observability" / "argocd-health"
    out = subprocess.run([go, "run", ".", str(HEALTH_DIR)], cwd=harness, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    got = {r["inputPath"]: r for r in map(json.loads, out.stdout.splitlines())}
    for case in CASES:
        r = got[case["inputPath"]]
        assert not r.get("error") and {"status": r["status"], "message": r["message"]} == case["healthStatus"], r


@pytest.mark.parametrize("reason, status", [
    ("Queued", "Progressing"), ("Admitted", "Progressing"), ("Preempted", "Progressing"),
    ("Suspended", "Suspended"), ("Deactivated", "Suspended"),
    ("Inadmissible", "Degraded"), ("NoWorkload", "Degraded"), ("KueueUnavailable", "Degraded"),
    ("KueueForbidden", "Degraded")])
def test_a_held_run_is_progressing_only_while_it_will_start_by_itself(reason, status):
    """The held reasons the local cluster cannot produce in test_health_capture (no Kueue, no rights) included."""
    obj = yaml.safe_load((HEALTH_DIR / "testdata" / "queued.yaml").read_text())
    held = next(c for c in obj["status"]["conditions"] if c["type"] == "Suspended")
    held["reason"] = reason
    assert health(obj) == {"status": status, "message": f"{reason}: {held['message']}"}
