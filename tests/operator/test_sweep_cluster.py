"""A FineTuneSweep on the real local control plane, run by the real operator (its ServiceAccount, config/rbac/):
trial FineTuneJobs owned by the sweep, whose kwok trainer pods finish after a few seconds (hack/README.md)."""
import json
import threading
import time

import pytest

from kubetune.testing import sweep_manifest
from tests.api.cases import make_job
from tests.operator.conftest import wait_for
from tests.operator.test_operator_cluster import SUMMARY, kwok

pytestmark = pytest.mark.cluster
TERMINAL = ("Succeeded", "Failed")


def trials(cluster, namespace, sweep) -> list[dict]:
    return cluster.kubectl_json("get", "ftj", "-n", namespace, "-l", f"kubetune.io/finetunesweep={sweep}")["items"]


def sweep_status(cluster, namespace, name) -> dict:
    return cluster.kubectl_json("get", "fts", name, "-n", namespace).get("status") or {}


class Sampler(threading.Thread):
    """Reads the trials every 0.5 s: how many were unfinished at once, and every uid seen under each name."""

    def __init__(self, cluster, namespace, sweep):
        super().__init__(daemon=True)
        self.cluster, self.namespace, self.sweep = cluster, namespace, sweep
        self.most_unfinished, self.samples, self.uids = 0, 0, {}
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            try:
                items = trials(self.cluster, self.namespace, self.sweep)
            except Exception:  # one failed read (a kubectl timeout) is not a finding
                items = None
            if items is not None:
                unfinished = [t for t in items if (t.get("status") or {}).get("phase") not in TERMINAL
                              and not t["spec"].get("suspend")]
                self.most_unfinished = max(self.most_unfinished, len(unfinished))
                self.samples += 1
                for t in items:
                    self.uids.setdefault(t["metadata"]["name"], set()).add(t["metadata"]["uid"])
            time.sleep(0.5)


def test_grid_sweep_of_four_with_parallelism_two_survives_a_sigkill(cluster, namespace, operators,
                                                                    finetunesweep_crd):
    first = operators.start()
    doc = sweep_manifest({"spec": {"template": {"metadata": {"annotations": kwok(seconds=6, message=json.dumps(
        SUMMARY))}, "spec": {"resources": {"gpusPerNode": 1}}}}}, name="grid")
    sampler = Sampler(cluster, namespace, "grid")
    sampler.start()
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))
        wait_for("two trials running", lambda: sum((t.get("status") or {}).get("phase") == "Running"
                                                   for t in trials(cluster, namespace, "grid")) == 2, timeout=60)
        before_kill = {t["metadata"]["name"] for t in trials(cluster, namespace, "grid")}
        first.stop(sig=9)  # mid-sweep, no goodbye: the next replica waits for the Lease to expire
        second = operators.start()
        cluster.kubectl("wait", "--for=condition=Succeeded", "fts/grid", "-n", namespace, "--timeout=120s")
    finally:
        sampler.halt.set()
        sampler.join(5)
    found = trials(cluster, namespace, "grid")
    assert sorted(t["metadata"]["name"] for t in found) == ["grid-t0", "grid-t1", "grid-t2", "grid-t3"]
    # The killed replica made the first two; the next one rebuilt the study from them and made the rest.
    assert before_kill == {"grid-t0", "grid-t1"} and "leading as" in second.output()
    assert all(len(uids) == 1 for uids in sampler.uids.values()), sampler.uids  # none deleted and made again
    print(f"trials sampled {sampler.samples} times; at most {sampler.most_unfinished} unfinished at once")
    assert sampler.samples >= 20 and sampler.most_unfinished == 2, (sampler.samples, sampler.most_unfinished)
    uid = cluster.kubectl_json("get", "fts", "grid", "-n", namespace)["metadata"]["uid"]
    for t in found:
        owner = t["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("FineTuneSweep", uid, True)
        assert t["status"]["phase"] == "Succeeded"
    combos = {(t["spec"]["hyperparameters"]["learningRate"], t["spec"]["method"]["lora"]["r"]) for t in found}
    assert combos == {(1e-4, 8), (1e-4, 16), (2e-4, 8), (2e-4, 16)}

    st = sweep_status(cluster, namespace, "grid")
    assert st["phase"] == "Succeeded" and st["observedGeneration"] == 1
    assert st["counts"] == {"created": 4, "running": 0, "succeeded": 4, "failed": 0, "pruned": 0, "done": 4,
                            "total": 4}
    assert [t["name"] for t in st["trials"]] == ["grid-t0", "grid-t1", "grid-t2", "grid-t3"]
    assert all(t["phase"] == "Succeeded" and t["objective"] == 1.4 for t in st["trials"])  # best validation loss
    assert st["best"]["name"] == "grid-t0" and st["best"]["objective"] == 1.4  # a tie goes to the first
    conditions = {c["type"]: c for c in st["conditions"]}
    assert conditions["Succeeded"]["reason"] == "Completed" and conditions["Ready"]["status"] == "True"
    assert conditions["Reconciling"]["status"] == "False" and conditions["Stalled"]["status"] == "False"
    table = cluster.kubectl("get", "fts", "grid", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "DONE", "RUNNING", "PRUNED", "TOTAL", "BEST", "AGE"]
    assert table[1].split()[:7] == ["grid", "Succeeded", "4", "0", "0", "4", "1.4"]
    events = cluster.kubectl_json("get", "events", "-n", namespace, "--field-selector",
                                  "involvedObject.name=grid")["items"]
    reasons = [e["reason"] for e in events]
    assert reasons.count("TrialCreated") >= 4 and "Completed" in reasons


def test_a_stranger_holding_a_trial_name_holds_the_sweep(cluster, namespace, operator, finetunesweep_crd):
    stranger = make_job({"metadata": {"labels": {"kubetune.io/finetunesweep": "held", "kubetune.io/trial": "0"}},
                         "spec": {"suspend": True}}, name="held-t0")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(stranger))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(sweep_manifest(name="held")))

    def conditions():
        return {c["type"]: c for c in sweep_status(cluster, namespace, "held").get("conditions", [])}

    held = wait_for("ChildConflict", lambda: conditions().get("Reconciling", {}).get("reason") == "ChildConflict"
                    and conditions())
    assert "held-t0" in held["Reconciling"]["message"]
    assert held["Stalled"]["status"] == "False" and held["Stalled"]["reason"] == "Retrying"  # retried, not failed
    assert [t["metadata"]["name"] for t in trials(cluster, namespace, "held")] == ["held-t0"]
    # Once the stranger goes, the sweep goes on (a retry, not a spec change).
    cluster.kubectl("delete", "ftj", "held-t0", "-n", namespace)
    wait_for("the sweep's own trials", lambda: sorted(
        (t["metadata"]["name"], bool(t["metadata"].get("ownerReferences"))) for t in trials(
            cluster, namespace, "held")) == [("held-t0", True), ("held-t1", True)], timeout=60)
