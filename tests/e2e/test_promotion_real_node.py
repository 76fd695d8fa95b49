"""The promotion gate through the deployed operator on the real node (issue 23): three FineTuneJobs with one
`spec.promotion` destination train the tiny model in containers, one after another. The first, on an empty
destination, beats the base model and is promoted; the second learns nothing, is scored against that champion in
its own run and refused with the paired difference and its interval, and leaves the destination byte-for-byte as it
was; the third learns more than the first and replaces it, while the first stays addressable by its run id.

The learning rates and the test losses they reach (tests/e2e/test_sweep_pruning.py, the same model, data and
300 steps): 3e-3 4.453 [4.428, 4.479]; 1e-3 4.594 [4.564, 4.623]; 1e-6 about 5.73; the base model 5.703."""
import json

import pytest

from tests.e2e.conftest import E2E_NAMESPACE
from tests.trainer.test_s3 import snapshot

pytestmark = pytest.mark.cluster
STEPS = 300


def condition(status: dict, kind: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == kind)


def printed_promotion(cluster, name: str) -> str:
    """The Promotion printer column, as `kubectl get ftj` shows it."""
    header, row = cluster.kubectl("get", "finetunejob", name, "-n", E2E_NAMESPACE).stdout.splitlines()[:2]
    at = header.index("PROMOTION")  # columns are padded to the header's: an empty one would shift a split()
    return row[at:].split()[0]


def test_the_gate_promotes_refuses_and_replaces_through_the_operator(cluster, s3, real_jobs, tiny_in_s3):
    destination = f"s3://{cluster.bucket}/{real_jobs.prefix}/models/bot/"
    dest_prefix = f"{real_jobs.prefix}/models/bot/"

    def run(name: str, learning_rate: float, steps: int = STEPS) -> dict:
        spec = real_jobs.spec(tiny_in_s3["model"], tiny_in_s3["data"],
                              hyperparameters={"maxSteps": steps, "learningRate": learning_rate},
                              evaluation={"everySteps": 100}, promotion={"destination": destination})
        real_jobs.apply(name, spec)
        done = real_jobs.wait_phase(name, ("Succeeded", "Failed"))
        assert done["phase"] == "Succeeded", (done, real_jobs.logs(name))
        return done

    def manifest() -> dict:
        return json.loads(s3.get_object(Bucket=cluster.bucket, Key=f"{dest_prefix}manifest.json")["Body"].read())

    # 1. An empty destination: beating the base model is enough.
    first = run("gate-first", 1e-3)
    assert first["promotion"]["verdict"] == "Promoted", first["promotion"]
    assert condition(first, "Promoted")["status"] == "True"
    assert printed_promotion(cluster, "gate-first") == "Promoted"
    champion = manifest()["champion"]
    assert champion["runId"] == first["runId"] and champion["how"] == "gate"
    assert champion["job"] == f"{E2E_NAMESPACE}/gate-first"
    before = snapshot(s3, cluster.bucket, dest_prefix)
    assert f"{dest_prefix}runs/{first['runId']}/model/adapter_model.safetensors" in before

    # 2. A run that learns nothing: scored against the champion in its own run, refused, the destination untouched.
    worse = run("gate-worse", 1e-6, steps=60)
    verdict = worse["promotion"]
    assert verdict["verdict"] == "Rejected" and verdict["championRunId"] == first["runId"], verdict
    refused = condition(worse, "Promoted")
    assert refused["status"] == "False" and refused["reason"] == "GateFailed", refused
    assert "champion" in refused["message"] and "95% interval" in refused["message"], refused["message"]
    assert condition(worse, "Ready")["status"] == "True"  # a refused challenger is a finished run, not a failure
    assert printed_promotion(cluster, "gate-worse") == "Rejected"
    assert snapshot(s3, cluster.bucket, dest_prefix) == before

    # 3. A run that learns more: it replaces the champion, and the first stays reachable by its run id.
    better = run("gate-better", 3e-3)
    assert better["promotion"]["verdict"] == "Promoted", better["promotion"]
    assert better["promotion"]["replacedRunId"] == first["runId"], better["promotion"]
    now = manifest()
    assert now["champion"]["runId"] == better["runId"]
    assert [h["runId"] for h in now["history"]][:1] == [first["runId"]]
    after = snapshot(s3, cluster.bucket, dest_prefix)
    assert {k: v for k, v in after.items() if k in before and not k.endswith("manifest.json")} == \
        {k: v for k, v in before.items() if not k.endswith("manifest.json")}
    assert f"{dest_prefix}runs/{better['runId']}/model/adapter_model.safetensors" in after
