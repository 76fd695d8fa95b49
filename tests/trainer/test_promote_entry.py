"""`python -m kubetune.trainer.promote`, the operator's promotion Job (issue 23), as its pod runs it: a process with
the FineTuneJob in KUBETUNE_SPEC and the S3 credentials in the environment, its outcome in the termination
message in the trainer's shape. Against the local cluster's real MinIO: the override is carried out on the record,
a repeat changes nothing, a rollback restores the earlier champion, and an override that cannot be carried out
fails with the field and value named, before anything is written."""
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.api import contract
from kubetune.api.spec import Storage
from kubetune.trainer import promotion
from kubetune.trainer.storage import Store
from tests.api.cases import make_job
from tests.trainer.test_s3 import snapshot

ROOT = Path(__file__).resolve().parents[2]
GATED = {"dataset": {"test": "s3://data/test.jsonl"}, "evaluation": {"baseline": True}}


def promote(tmp_path: Path, job: dict, **env) -> tuple[int, dict]:
    """The entry point in its own process, as in the pod: (exit code, termination message)."""
    term = tmp_path / "term"
    term.unlink(missing_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBETUNE_"))}
    done = subprocess.run([sys.executable, "-m", "kubetune.trainer.promote"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**clean, "PYTHONPATH": str(ROOT),
                                                       contract.SPEC_ENV: json.dumps(job),
                                                       "KUBETUNE_TRAINER_TERMINATION_LOG": str(term),
                                                       "KUBETUNE_TRAINER_CACHE_DIR": str(tmp_path / "cache"), **env})
    return done.returncode, json.loads(term.read_text())


def test_without_an_override_it_fails_naming_the_field(tmp_path):
    job = make_job({"spec": {**GATED, "promotion": {"destination": "s3://models/bot/"}}}, name="chat")
    code, message = promote(tmp_path, job)
    assert code == contract.EXIT_BAD_INPUT
    assert message["error"]["reason"] == "BadInput" and "spec.promotion.override" in message["error"]["message"]


@pytest.mark.cluster
def test_the_promotion_job_carries_out_overrides_on_minio(cluster, s3, tmp_path, monkeypatch):
    prefix = f"promote-job-{secrets.token_hex(4)}"
    root = f"s3://{cluster.bucket}/{prefix}"
    creds = {"AWS_ACCESS_KEY_ID": cluster.s3_access_key, "AWS_SECRET_ACCESS_KEY": cluster.s3_secret_key}
    for k, v in creds.items():  # for this process's own Store (the setup); the entry gets them explicitly
        monkeypatch.setenv(k, v)
    try:
        store = Store(Storage(endpoint=cluster.s3_endpoint, region=cluster.s3_region), tmp_path / "setup")
        for run in ("g1-aaaa0001", "g2-aaaa0001"):  # two finished runs' artifacts under output.uri
            store.put_text(json.dumps({"runId": run, "specHash": f"hash-{run}", "test": {"loss": 1.0}}),
                           f"{root}/out/{run}/{contract.SUMMARY_FILE}")
            store.put_text(f"weights of {run}", f"{root}/out/{run}/{contract.MODEL_DIR}/weights")
        dest = f"{root}/models/bot/"

        def job(action: str, run_id: str, by: str = "ann@example.com") -> dict:
            return make_job({"spec": {
                **GATED, "output": {"uri": f"{root}/out/"},
                "storage": {"endpoint": cluster.s3_endpoint, "region": cluster.s3_region},
                "promotion": {"destination": dest, "override": {
                    "action": action, "runId": run_id, "requestedBy": by, "reason": "read the answers"}}}},
                name="chat")

        code, first = promote(tmp_path, job("promote", "g1-aaaa0001"), **creds)
        assert code == 0 and first["promotion"]["verdict"] == "Overridden", first
        manifest = f"{prefix}/models/bot/manifest.json"
        before = snapshot(s3, cluster.bucket, f"{prefix}/")
        # A refused run promoted by override, on the record; the outcome names the override for the status.
        code, second = promote(tmp_path, job("promote", "g2-aaaa0001", "bob@example.com"), **creds)
        p = second["promotion"]
        assert code == 0 and p["verdict"] == "Overridden" and p["replacedRunId"] == "g1-aaaa0001", second
        assert p["override"] == {"action": "promote", "runId": "g2-aaaa0001", "requestedBy": "bob@example.com"}
        champion = json.loads(s3.get_object(Bucket=cluster.bucket, Key=manifest)["Body"].read())["champion"]
        assert (champion["runId"], champion["how"], champion["requestedBy"]) == ("g2-aaaa0001", "override",
                                                                                "bob@example.com")
        after = snapshot(s3, cluster.bucket, f"{prefix}/")
        changed = {k for k in after if before.get(k) != after[k]}
        assert changed == {manifest, *(k for k in after if "/models/bot/runs/g2-aaaa0001/" in k)}
        assert {k for k in before if k not in after} == set()
        # Idempotent: the same override again (a retried pod, a re-created Job) writes nothing.
        code, again = promote(tmp_path, job("promote", "g2-aaaa0001", "bob@example.com"), **creds)
        assert code == 0 and again["promotion"]["verdict"] == "Overridden", again
        assert snapshot(s3, cluster.bucket, f"{prefix}/") == after
        # A rollback restores the earlier champion: only the manifest changes.
        code, back = promote(tmp_path, job("rollback", "g1-aaaa0001"), **creds)
        assert code == 0 and back["promotion"]["verdict"] == "RolledBack", back
        assert back["promotion"]["championRunId"] == "g1-aaaa0001"
        rolled = snapshot(s3, cluster.bucket, f"{prefix}/")
        assert {k for k in rolled if rolled[k] != after.get(k)} == {manifest}
        # A run without artifacts: the field and the value named, a non-zero exit, nothing written.
        code, failed = promote(tmp_path, job("promote", "g9-missing1"), **creds)
        assert code == contract.EXIT_BAD_INPUT, failed
        assert "g9-missing1" in failed["error"]["message"] and "spec.promotion.override" in failed["error"]["message"]
        assert snapshot(s3, cluster.bucket, f"{prefix}/") == rolled
        assert promotion.read_manifest(store, dest)[0]["champion"]["runId"] == "g1-aaaa0001"
    finally:
        keys = list(snapshot(s3, cluster.bucket, f"{prefix}/"))
        if keys:
            s3.delete_objects(Bucket=cluster.bucket, Delete={"Objects": [{"Key": k} for k in keys]})
