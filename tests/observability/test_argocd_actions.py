"""The Argo CD resource actions (suspend, resume, rerun), run under Lua 5.1 as Argo CD runs argocd-cm scripts, over
action_test.yaml (Argo CD's own test format): what each offers, and that each changes exactly the spec field a Git
commit would (tests/operator/test_argocd_actions_cluster.py applies their patches to live objects)."""
import calendar
import time

import pytest
import yaml

from kubetune.operator.reconcile import merge_patch
from tests.observability.argocd import ACTIONS_DIR, discover, run_action

SPEC = yaml.safe_load((ACTIONS_DIR / "action_test.yaml").read_text())
CLOCK = calendar.timegm(time.strptime("2026-12-07T06:30:00Z", "%Y-%m-%dT%H:%M:%SZ"))
# What a Git commit changes for each action (docs/gitops.md), the value of rerun's token aside.
COMMIT = {"suspend": {"spec": {"suspend": True}}, "resume": {"spec": {"suspend": False}},
          "rerun": {"spec": {"rerunToken": "argocd-2026-12-07T06:30:00Z"}}}


def load(path: str) -> dict:
    return yaml.safe_load((ACTIONS_DIR / path).read_text())


@pytest.mark.parametrize("case", SPEC["discoveryTests"], ids=lambda c: c["inputPath"])
def test_discovery_offers_what_the_operator_acts_on(case):
    assert discover(load(case["inputPath"])) == case["result"]


@pytest.mark.parametrize("case", SPEC["actionTests"], ids=lambda c: c["action"])
def test_each_action_sets_exactly_the_field_a_commit_would(case):
    before = load(case["inputPath"])
    after = run_action(before, case["action"], clock=CLOCK)
    assert after == load(case["expectedOutputPath"])
    assert merge_patch(before, after) == COMMIT[case["action"]]  # the patch Argo CD sends (live → returned)


def test_every_action_is_tested_and_shipped_in_the_argocd_cm_snippet_verbatim():
    names = sorted(p.parent.name for p in ACTIONS_DIR.glob("*/action.lua"))
    assert names == sorted(COMMIT) == sorted({c["action"] for c in SPEC["actionTests"]})
    assert all(sorted(r["name"] for r in c["result"]) == names for c in SPEC["discoveryTests"])
    cm = yaml.safe_load((ACTIONS_DIR.parents[3] / "argocd-cm.yaml").read_text())
    shipped = yaml.safe_load(cm["data"]["resource.customizations.actions.kubetune.io_FineTuneJob"])
    assert shipped["discovery.lua"] == (ACTIONS_DIR / "discovery.lua").read_text()
    assert {d["name"]: d["action.lua"] for d in shipped["definitions"]} == {
        name: (ACTIONS_DIR / name / "action.lua").read_text() for name in names}


def test_two_reruns_a_second_apart_ask_twice():
    failed = load("testdata/failed-backoff-limit.yaml")
    first, second = (run_action(failed, "rerun", clock=CLOCK + s)["spec"]["rerunToken"] for s in (0, 1))
    assert first != second
