"""spec.rerunToken on the real control plane (issue 25): a run that failed after its retries is run again by a
change of the token alone, as a new attempt of the same run (same run id, so the trainer resumes from the
checkpoint the run left in S3); the same token again, or an operator restart, reruns nothing. kwok plays the
trainer (its exit code comes from the FineTuneJob's kwok.kubetune.io/ annotations, which reach the next Job's pods)."""
import json
import time

import pytest

from tests.operator.conftest import manifest, wait_for
from tests.operator.test_gang_cluster import run_id_of
from tests.operator.test_operator_cluster import events, ftj, jobs, kwok, status

pytestmark = pytest.mark.cluster
SETTLE_SECONDS = 5  # how long "nothing happens" is watched for (a rerun's Job appears within ~1 s of the edit)


def apply(cluster, namespace, spec: dict, notes: dict) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("again", spec, notes))


def job_names(cluster, namespace) -> list[str]:
    return sorted(j["metadata"]["name"] for j in jobs(cluster, namespace) if not j["metadata"].get("deletionTimestamp"))


def failed_again(cluster, namespace, token: str | None):
    def probe():
        st = status(cluster, namespace, "again")
        done = st.get("phase") == "Failed" and st.get("rerunToken") == token
        current = st.get("observedGeneration") == ftj(cluster, namespace, "again")["metadata"]["generation"]
        return done and current and st
    return probe


def test_a_failed_run_reruns_from_its_checkpoint_by_the_token_alone(cluster, namespace, operators, s3):
    operator = operators.start()
    prefix = f"rerun/{namespace}"
    spec = {"runPolicy": {"backoffLimit": 1}, "output": {"uri": f"s3://{cluster.bucket}/{prefix}/"}}
    apply(cluster, namespace, spec, kwok(exit_code=1))
    first = wait_for("the run to fail after its retries", failed_again(cluster, namespace, None), timeout=90)
    assert first["attempts"] == 2 and job_names(cluster, namespace) == ["again-g1"]
    run_id = first["runId"]
    # What the trainer left before it failed (kwok runs none): a complete checkpoint of the run.
    for key in ("checkpoints/step-00000040/COMPLETE", "checkpoints/step-00000040/state.pt"):
        s3.put_object(Bucket=cluster.bucket, Key=f"{prefix}/{run_id}/{key}", Body=key.encode())
    listed = lambda: {o["Key"]: o["ETag"] for o in  # noqa: E731
                      s3.list_objects_v2(Bucket=cluster.bucket, Prefix=f"{prefix}/").get("Contents", [])}
    checkpoints = listed()

    # Only the token changes: attempt 2 of the same run, on a new Job that resumes under the same prefix.
    apply(cluster, namespace, {**spec, "rerunToken": "r1"}, kwok(seconds=4, exit_code=1))
    rerun = wait_for("the rerun's Job", lambda: [j for j in jobs(cluster, namespace)
                                                 if j["metadata"]["name"] == "again-g1-a2"], timeout=30)[0]
    assert run_id_of(rerun) == run_id
    running = wait_for("the rerun to run", lambda: (lambda s: s.get("phase") == "Running" and s.get(
        "jobName") == "again-g1-a2" and s)(status(cluster, namespace, "again")), timeout=30)
    assert (running["runId"], running["rerunToken"], running.get("runs", [])) == (run_id, "r1", [])
    assert running["artifacts"]["checkpointUri"] == f"s3://{cluster.bucket}/{prefix}/{run_id}/checkpoints/"
    second = wait_for("the rerun to fail too", failed_again(cluster, namespace, "r1"), timeout=90)
    assert (second["runId"], second["jobName"], second["attempts"]) == (run_id, "again-g1-a2", 2)
    assert job_names(cluster, namespace) == ["again-g1-a2"]  # the ended attempt's Job went
    assert "Rerun" in events(cluster, namespace, "again")

    # The same token again (with an in-place edit, so the operator surely looks): nothing.
    apply(cluster, namespace, {**spec, "rerunToken": "r1", "runPolicy": {"backoffLimit": 1,
                                                                         "activeDeadlineSeconds": 3600}},
          kwok(seconds=4, exit_code=1))
    wait_for("the edit observed", failed_again(cluster, namespace, "r1"), timeout=30)
    time.sleep(SETTLE_SECONDS)
    assert job_names(cluster, namespace) == ["again-g1-a2"]

    # An operator restart (killed: no goodbye) with an edit pending for the next one: no rerun either.
    operator.stop(sig=9)
    cluster.kubectl("annotate", "ftj", "again", "-n", namespace, "example.com/touched=1")
    cluster.kubectl("patch", "ftj", "again", "-n", namespace, "--type=merge", "-p",
                    json.dumps({"spec": {"runPolicy": {"activeDeadlineSeconds": 7200}}}))
    operators.start()
    wait_for("the next operator to observe the edit", failed_again(cluster, namespace, "r1"), timeout=60)
    time.sleep(SETTLE_SECONDS)
    assert job_names(cluster, namespace) == ["again-g1-a2"]
    assert status(cluster, namespace, "again")["jobName"] == "again-g1-a2"

    # The cause fixed (here: kwok's exit code), another token: attempt 3 succeeds; a token on a success is declined.
    apply(cluster, namespace, {**spec, "rerunToken": "r2"}, kwok(seconds=1))
    cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/again", "-n", namespace, "--timeout=60s")
    done = status(cluster, namespace, "again")
    assert (done["runId"], done["jobName"], done["rerunToken"]) == (run_id, "again-g1-a3", "r2")
    apply(cluster, namespace, {**spec, "rerunToken": "r3"}, kwok(seconds=1))
    wait_for("the decline", lambda: "RerunIgnored" in events(cluster, namespace, "again"), timeout=30)
    time.sleep(SETTLE_SECONDS)
    assert job_names(cluster, namespace) == ["again-g1-a3"]
    assert status(cluster, namespace, "again")["phase"] == "Succeeded"
    assert listed() == checkpoints  # nothing the run left in S3 was overwritten or deleted by its reruns
