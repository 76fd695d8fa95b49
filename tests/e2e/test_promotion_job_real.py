"""Issue 23 on the real path: an override committed to a finished run (a `kubectl patch` of
spec.promotion.override, as a GitOps sync applies it) is carried out by the deployed operator's promotion Job, a
container on the real node: the refused run becomes the destination's champion on the record, then a rollback
override on another FineTuneJob restores the earlier champion, and nothing else in S3 changes."""
import json

import pytest

from tests.e2e.conftest import E2E_NAMESPACE, wait_until

pytestmark = pytest.mark.cluster


def listing(real_jobs) -> dict[str, str]:
    """Every object under the test's prefix with its ETag."""
    out = {}
    pages = real_jobs.s3.get_paginator("list_objects_v2").paginate(Bucket=real_jobs.cluster.bucket,
                                                                   Prefix=f"{real_jobs.prefix}/")
    for page in pages:
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return out


def manifest(real_jobs) -> dict:
    body = real_jobs.s3.get_object(Bucket=real_jobs.cluster.bucket, Key=f"{real_jobs.prefix}/models/bot/manifest.json")
    return json.loads(body["Body"].read())


def promoted(status: dict) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == "Promoted"), {})


def override(real_jobs, name: str, action: str, run_id: str, by: str) -> None:
    patch = {"spec": {"promotion": {"override": {"action": action, "runId": run_id, "requestedBy": by,
                                                 "reason": f"e2e: {action} {run_id}"}}}}
    real_jobs.cluster.kubectl("patch", "finetunejob", name, "-n", E2E_NAMESPACE, "--type", "merge",
                              "-p", json.dumps(patch))


def promotion_pods(real_jobs, name: str) -> list[dict]:
    return [p for p in real_jobs.pods(name) if "-promote-" in p["metadata"]["name"]]


def test_an_override_commit_on_a_finished_run_is_carried_out_by_the_promotion_job(cluster, real_jobs, tiny_in_s3):
    destination = f"s3://{cluster.bucket}/{real_jobs.prefix}/models/bot/"
    short = {"hyperparameters": {"maxSteps": 10}, "evaluation": {"everySteps": 5, "baseline": True}}
    # The champion: a gate without criteria passes. The challenger: a ceiling no run reaches refuses it.
    real_jobs.apply("champ", real_jobs.spec(tiny_in_s3["model"], tiny_in_s3["data"], **short, promotion={
        "destination": destination, "beatBaseModel": False, "beatChampion": False}))
    champ = real_jobs.wait_phase("champ", ("Succeeded", "Failed"))
    assert champ["phase"] == "Succeeded" and champ["promotion"]["verdict"] == "Promoted", (
        champ, real_jobs.logs("champ"))
    real_jobs.apply("challenger", real_jobs.spec(tiny_in_s3["model"], tiny_in_s3["data"], **short, promotion={
        "destination": destination, "beatBaseModel": False, "beatChampion": False,
        "bounds": [{"metric": "loss", "max": 0.001}]}))
    refused = real_jobs.wait_phase("challenger", ("Succeeded", "Failed"))
    assert refused["phase"] == "Succeeded" and refused["promotion"]["verdict"] == "Rejected", refused
    champ_id, challenger_id = champ["runId"], refused["runId"]
    before = listing(real_jobs)
    manifest_key = f"{real_jobs.prefix}/models/bot/manifest.json"

    # The commit: an override on the finished, refused run. No new run; a promotion Job carries it out.
    override(real_jobs, "challenger", "promote", challenger_id, "ann@example.com")
    done = wait_until("the override's verdict", lambda: (
        (s := real_jobs.status("challenger")).get("promotion", {}).get("verdict") == "Overridden" and s), 300)
    assert (promoted(done)["status"], promoted(done)["reason"]) == ("True", "PromotedByOverride"), done
    assert done["runId"] == challenger_id and done["promotion"]["requestedBy"] == "ann@example.com"
    assert done["promotion"]["replacedRunId"] == champ_id
    champion = manifest(real_jobs)["champion"]
    assert (champion["runId"], champion["how"], champion["requestedBy"]) == (challenger_id, "override",
                                                                            "ann@example.com")
    [pod] = promotion_pods(real_jobs, "challenger")
    assert pod["spec"]["nodeName"] == cluster.real_node and pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["containers"][0]["command"] == ["python", "-m", "kubetune.trainer.promote"]
    after = listing(real_jobs)
    copied = {k for k in after if k.startswith(f"{real_jobs.prefix}/models/bot/runs/{challenger_id}/")}
    assert copied and not (copied & set(before))
    assert {k for k in set(before) | set(after) if before.get(k) != after.get(k)} == {manifest_key, *copied}

    # A rollback override on the other FineTuneJob restores the earlier champion: only the manifest changes.
    override(real_jobs, "champ", "rollback", champ_id, "bob@example.com")
    back = wait_until("the rollback's verdict", lambda: (
        (s := real_jobs.status("champ")).get("promotion", {}).get("verdict") == "RolledBack" and s), 300)
    assert (promoted(back)["status"], promoted(back)["reason"]) == ("True", "RolledBack"), back
    m = manifest(real_jobs)
    assert (m["champion"]["runId"], m["champion"]["how"], m["champion"]["requestedBy"]) == (
        champ_id, "rollback", "bob@example.com")
    assert m["history"][0]["runId"] == challenger_id
    rolled = listing(real_jobs)
    assert {k for k in set(after) | set(rolled) if after.get(k) != rolled.get(k)} == {manifest_key}
    # Each override made exactly one promotion Job, and the runs were not started again.
    for name in ("champ", "challenger"):
        assert len(promotion_pods(real_jobs, name)) == 1
        assert real_jobs.status(name)["runId"] in (champ_id, challenger_id)
