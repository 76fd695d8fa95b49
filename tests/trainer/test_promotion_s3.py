"""Promotion's guards against the real MinIO of the local cluster: conditional manifest writes (If-None-Match: *
for the first, If-Match on the ETag after), two racing promotions of which exactly one wins, and server-side copies
that never overwrite an object already at the destination."""
import json
import secrets
import threading

import pytest

from kubetune.api.spec import Storage
from kubetune.trainer import promotion
from kubetune.trainer.storage import Store
from tests.trainer.test_s3 import bucket_data  # noqa: F401 (the fixture)

pytestmark = pytest.mark.cluster


@pytest.fixture
def store(cluster, monkeypatch, tmp_path) -> Store:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", cluster.s3_access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", cluster.s3_secret_key)
    return Store(Storage(endpoint=cluster.s3_endpoint, region=cluster.s3_region), tmp_path / "cache")


@pytest.fixture
def root(cluster, s3):
    prefix = f"promotion-{secrets.token_hex(4)}"
    yield f"s3://{cluster.bucket}/{prefix}"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cluster.bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            s3.delete_object(Bucket=cluster.bucket, Key=o["Key"])


def test_manifest_writes_are_conditional(store, root):
    uri = f"{root}/models/bot/manifest.json"
    assert store.get_versioned(uri) == (None, None)
    assert store.put_text_if('{"v": 1}', uri, None)
    assert not store.put_text_if('{"v": 2}', uri, None)  # If-None-Match: * on an existing object
    text, etag = store.get_versioned(uri)
    assert json.loads(text) == {"v": 1}
    assert store.put_text_if('{"v": 3}', uri, etag)
    assert not store.put_text_if('{"v": 4}', uri, etag)  # a stale ETag
    assert json.loads(store.get_versioned(uri)[0]) == {"v": 3}


def test_racing_promotions_cannot_both_win(store, root, s3, cluster):
    dest = f"{root}/models/bot/"
    for run in ("run-1", "run-2"):
        store.put_text(run, f"{root}/out/{run}/model/weights")
    store.put_text("old", f"{root}/out/run-0/model/weights")
    assert promotion.publish(store, dest, f"{root}/out/run-0/", {"runId": "run-0", "uri": promotion.run_prefix(
        dest, "run-0")}, None, None)
    for round_ in range(3):  # several rounds: the window between the two writes varies
        manifest, version = promotion.read_manifest(store, dest)  # each round's history differs, so does its ETag
        results, barrier = {}, threading.Barrier(2)

        def promote(run: str) -> None:
            barrier.wait()
            results[run] = promotion.publish(store, dest, f"{root}/out/{run}/", {
                "runId": run, "uri": promotion.run_prefix(dest, run)}, manifest, version)

        threads = [threading.Thread(target=promote, args=(r,)) for r in ("run-1", "run-2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results.values()) == [False, True]
        winner = next(r for r, won in results.items() if won)
        current, _ = promotion.read_manifest(store, dest)
        assert current["champion"]["runId"] == winner and len(current["history"]) == round_ + 1
    # Server-side copies: the champion's files are at runs/<id>/; an existing object is never overwritten.
    key = f"{root.split('/', 3)[3]}/models/bot/runs/run-0/model/weights"
    assert s3.get_object(Bucket=cluster.bucket, Key=key)["Body"].read() == b"old"
    store.put_text("changed", f"{root}/out/run-0/model/weights")
    store.copy_prefix(f"{root}/out/run-0/", promotion.run_prefix(dest, "run-0"))
    assert s3.get_object(Bucket=cluster.bucket, Key=key)["Body"].read() == b"old"


def test_trainer_promotes_then_refuses_on_minio(cluster, s3, tiny_model, tmp_path, monkeypatch, bucket_data):
    """The trainer's entry point with s3:// everywhere: the first run is promoted (server-side copies, manifest
    last); a run that barely trains is scored against the champion fetched from MinIO and refused, and the
    destination is byte-for-byte unchanged."""
    from tests.trainer.conftest import chat_rows
    from tests.trainer.test_s3 import run_main, s3_job, snapshot, trainer_env, upload

    root, prefix, local = bucket_data
    (local / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_rows(48, seed=3)))
    upload(s3, cluster.bucket, local / "test.jsonl", f"{prefix}/data/test.jsonl")
    gate = {"dataset": {"test": f"{root}/data/test.jsonl"},
            "promotion": {"destination": f"{root}/models/bot/"}}

    def run(run_id: str, steps: int, lr: float) -> dict:
        job = s3_job(tmp_path, tiny_model, cluster, root, hyperparameters={"maxSteps": steps, "learningRate": lr},
                     **gate)
        assert run_main(monkeypatch, trainer_env(tmp_path, cluster, job, run_id)) == 0
        return json.loads((tmp_path / "term").read_text())["promotion"]

    first = run("run-a", 6, 3e-3)
    assert first["verdict"] == "Promoted", first
    dest = f"{prefix}/models/bot/"
    before = snapshot(s3, cluster.bucket, dest)
    assert f"{dest}manifest.json" in before and f"{dest}runs/run-a/model/adapter_model.safetensors" in before
    assert not any("/checkpoints/" in k or "/tokenized/" in k for k in before)
    second = run("run-b", 1, 1e-5)
    assert second["verdict"] == "Rejected" and second["championRunId"] == "run-a", second
    assert snapshot(s3, cluster.bucket, dest) == before
    # report.html: copied with the champion's files; the refused run's, on MinIO, rewritten with its verdict.
    assert f"{dest}runs/run-a/report.html" in before
    key = next(k for k in snapshot(s3, cluster.bucket, f"{prefix}/") if k.endswith("/run-b/report.html"))
    page = s3.get_object(Bucket=cluster.bucket, Key=key)["Body"].read().decode()
    assert 'class="verdict bad">Rejected' in page and "vs champion" in page
