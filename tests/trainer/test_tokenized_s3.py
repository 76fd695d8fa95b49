"""Tokenized data from S3 (the local cluster's MinIO): the cache key comes from the objects' ETags, a build is
uploaded under the run's prefix with meta.json last, and a new pod of the run downloads it instead of the raw data
and the tokenizing; nothing already there is rewritten."""
import json
import secrets

import pytest

from kubetune.api.spec import Dataset, Storage
from kubetune.trainer import tokenized
from kubetune.trainer.storage import Store
from tests.trainer.conftest import chat_rows
from tests.trainer.test_s3 import snapshot

pytestmark = pytest.mark.cluster


def test_s3_build_is_keyed_by_etag_and_shared_through_the_run_prefix(tmp_path, tiny_model, cluster, s3,
                                                                       monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", cluster.s3_access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", cluster.s3_secret_key)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prefix = f"tokenized-{secrets.token_hex(4)}"
    data_key = f"{prefix}/data/train.jsonl"
    root = f"s3://{cluster.bucket}/{prefix}"
    share = f"{root}/out/run-1/tokenized"
    s3.put_object(Bucket=cluster.bucket, Key=data_key, Body="".join(json.dumps(r) + "\n" for r in chat_rows(50)))
    s3.put_object(Bucket=cluster.bucket, Key=f"{prefix}/out/run-1/tokenized/README", Body=b"not ours")
    ds = Dataset.model_validate({"train": f"{root}/data/train.jsonl"})
    events = []

    def prepare(pod: str):
        store = Store(Storage(endpoint=cluster.s3_endpoint, region=cluster.s3_region), tmp_path / pod)
        return tokenized.prepare(store, ds.train, "dataset.train", tok, ds, tmp_path / pod, share_uri=share,
                                 workers=1, on_event=lambda kind, **_: events.append(kind))

    try:
        first = prepare("pod1")
        shared = snapshot(s3, cluster.bucket, f"{prefix}/out/")
        key_prefix = f"{prefix}/out/run-1/tokenized/{first.root.name}/"
        assert {k.removeprefix(key_prefix) for k in shared if k.startswith(key_prefix)} == {*tokenized.FILES,
                                                                                            "meta.json"}
        assert max(shared.values(), key=lambda v: v[1]) == shared[key_prefix + "meta.json"]  # uploaded last

        second = prepare("pod2")  # a restarted pod on another node: empty cache
        assert events == ["build", "download"]
        assert [second.example(i) for i in range(len(second))] == [first.example(i) for i in range(len(first))]
        assert not (tmp_path / "pod2" / "s3" / cluster.bucket / data_key).exists(), "the raw data was downloaded"
        assert snapshot(s3, cluster.bucket, f"{prefix}/out/") == shared, "an object was rewritten"

        s3.put_object(Bucket=cluster.bucket, Key=data_key, Body="".join(json.dumps(r) + "\n" for r in chat_rows(50, 9)))
        third = prepare("pod3")  # new data, new ETag: a new build beside the old one
        assert events[-1] == "build" and third.root.name != first.root.name
    finally:
        keys = list(snapshot(s3, cluster.bucket, prefix))
        s3.delete_objects(Bucket=cluster.bucket, Delete={"Objects": [{"Key": k} for k in keys]})
