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
    manifest, version = promotion.read_manifest(store, dest)
    for _ in range(3):  # several rounds: the window between the two writes varies
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
        current, version = promotion.read_manifest(store, dest)
        assert current["champion"]["runId"] == winner and current["history"][0]["runId"] == "run-0"
    # Server-side copies: the champion's files are at runs/<id>/; an existing object is never overwritten.
    key = f"{root.split('/', 3)[3]}/models/bot/runs/run-0/model/weights"
    assert s3.get_object(Bucket=cluster.bucket, Key=key)["Body"].read() == b"old"
    store.put_text("changed", f"{root}/out/run-0/model/weights")
    store.copy_prefix(f"{root}/out/run-0/", promotion.run_prefix(dest, "run-0"))
    assert s3.get_object(Bucket=cluster.bucket, Key=key)["Body"].read() == b"old"
