"""S3 in → artifacts out, against the real MinIO of the local cluster: the endpoint comes from storage.endpoint,
the keys from the environment (as the operator passes a Secret). The shipped adapter, downloaded from S3, reloads
with PeftModel and scores what summary.json says; a repeated run and failed runs change nothing already there."""
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kubetune.api import contract
from kubetune.trainer.__main__ import main
from tests.trainer.conftest import chat_rows
from tests.trainer.test_train import make_job

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).parents[2]


def upload(s3, bucket: str, local: Path, prefix: str) -> None:
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for f in files:
        s3.upload_file(str(f), bucket, prefix if local.is_file() else f"{prefix}/{f.relative_to(local)}")


def snapshot(s3, bucket: str, prefix: str) -> dict[str, tuple]:
    """Every object under the prefix with what would change if it were rewritten."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = (o["ETag"], o["LastModified"], o["Size"])
    return out


@pytest.fixture(scope="module")
def bucket_data(cluster, s3, tiny_model, tmp_path_factory):
    """The tiny model and chat data uploaded under a fresh prefix; the job reads them from there."""
    prefix = f"trainer-e2e-{secrets.token_hex(4)}"
    local = tmp_path_factory.mktemp("s3-data")
    for name, rows in (("train", chat_rows(64, seed=1)), ("validation", chat_rows(16, seed=2))):
        (local / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        upload(s3, cluster.bucket, local / f"{name}.jsonl", f"{prefix}/data/{name}.jsonl")
    upload(s3, cluster.bucket, tiny_model, f"{prefix}/models/tiny")
    root = f"s3://{cluster.bucket}/{prefix}"
    yield root, prefix, local
    keys = list(snapshot(s3, cluster.bucket, prefix))
    for i in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=cluster.bucket, Delete={"Objects": [{"Key": k} for k in keys[i: i + 1000]]})


def s3_job(tmp_path, tiny_model, cluster, root: str, **patch):
    spec = {"baseModel": {"uri": f"{root}/models/tiny/"},
            "dataset": {"train": f"{root}/data/train.jsonl", "validation": f"{root}/data/validation.jsonl"},
            "output": {"uri": f"{root}/out/"}, "checkpoint": {"everySteps": 4, "keep": 1},
            "storage": {"endpoint": cluster.s3_endpoint, "region": cluster.s3_region}}
    from tests.api.cases import _merge
    _merge(spec, patch)
    return make_job(tmp_path, tiny_model, **spec)


def trainer_env(tmp_path: Path, cluster, job, run_id: str, secret: str | None = None) -> dict[str, str]:
    (tmp_path / "job.json").write_text(json.dumps(job.to_wire()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # the endpoint must come from the spec
    env.update({contract.SPEC_FILE_ENV: str(tmp_path / "job.json"), contract.RUN_ID_ENV: run_id,
                "AWS_ACCESS_KEY_ID": cluster.s3_access_key, "AWS_SECRET_ACCESS_KEY": secret or cluster.s3_secret_key,
                "KUBETUNE_TRAINER_CACHE_DIR": str(tmp_path / "cache"), "KUBETUNE_TRAINER_METRICS_PORT": "0",
                "KUBETUNE_TRAINER_TERMINATION_LOG": str(tmp_path / "term"), "KUBETUNE_TRAINER_THREADS": "1"})
    return env


def run_main(monkeypatch, env: dict[str, str]) -> int:
    """The entry point in-process (seconds faster than a subprocess)."""
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return main()


def test_s3_end_to_end_then_repeats_and_failures_change_nothing(
        monkeypatch, capfd, tmp_path, tiny_model, cluster, s3, bucket_data):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune.trainer import data as d
    from kubetune.trainer.loop import evaluate, load_data
    from kubetune.trainer.storage import Store

    root, prefix, local = bucket_data
    job = s3_job(tmp_path, tiny_model, cluster, root)
    env = trainer_env(tmp_path, cluster, job, "run-1")
    proc = subprocess.run([sys.executable, "-m", "kubetune.trainer"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cluster.s3_secret_key not in proc.stdout + proc.stderr + (tmp_path / "term").read_text()

    run_prefix = f"{prefix}/out/run-1/"
    objects = snapshot(s3, cluster.bucket, run_prefix)
    names = {k.removeprefix(run_prefix) for k in objects}
    assert {"model/adapter_config.json", "model/adapter_model.safetensors", "model/tokenizer.json",
            contract.METRICS_FILE, contract.SUMMARY_FILE, contract.SPEC_COPY_FILE, contract.MODEL_CARD_FILE} <= names
    assert {n.split("/")[1] for n in names if n.startswith("checkpoints/")} == {"step-00000008"}  # keep: 1
    summary = json.loads(s3.get_object(Bucket=cluster.bucket, Key=run_prefix + contract.SUMMARY_FILE)["Body"].read())
    assert summary["steps"] == 12 and summary["artifacts"]["modelUri"] == f"{root}/out/run-1/model"
    assert summary["eval"]["loss"] < summary["baseline"]["loss"]
    for key in objects:  # nothing uploaded carries the secret
        if key.endswith((".json", ".jsonl", ".md")):
            assert cluster.s3_secret_key not in s3.get_object(Bucket=cluster.bucket, Key=key)["Body"].read().decode()

    # The adapter as downloaded from S3 loads the standard way and scores exactly what the summary reports.
    adapter = tmp_path / "downloaded"
    for key in objects:
        if key.startswith(run_prefix + "model/"):
            (adapter / key.removeprefix(run_prefix + "model/")).parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(cluster.bucket, key, str(adapter / key.removeprefix(run_prefix + "model/")))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), adapter)
    tok = AutoTokenizer.from_pretrained(adapter)
    local_job = make_job(tmp_path / "local", tiny_model, dataset={
        "train": f"file://{local}/train.jsonl", "validation": f"file://{local}/validation.jsonl"})
    _, val, _ = load_data(local_job, Store(local_job.spec.storage, tmp_path / "cache"), tok, d.Stats())
    again = evaluate(model, val, 4, tok.pad_token_id, torch.device("cpu"), None)
    assert again["loss"] == pytest.approx(summary["eval"]["loss"], rel=1e-5)

    everything = snapshot(s3, cluster.bucket, f"{prefix}/")
    capfd.readouterr()

    # The same run again (a pod restarted after success): nothing is rewritten.
    assert run_main(monkeypatch, env) == contract.EXIT_OK
    assert snapshot(s3, cluster.bucket, f"{prefix}/") == everything

    # A different spec under the same run id is refused, and nothing is touched.
    other = s3_job(tmp_path, tiny_model, cluster, root, hyperparameters={"maxSteps": 5})
    assert run_main(monkeypatch, trainer_env(tmp_path, cluster, other, "run-1")) == contract.EXIT_BAD_INPUT
    assert "already holds a finished run of a different spec" in json.loads((tmp_path / "term").read_text())[
        "error"]["message"]
    assert snapshot(s3, cluster.bucket, f"{prefix}/") == everything

    # A new run that fails on its data writes nothing, here or anywhere else under the prefix.
    (tmp_path / "broken.jsonl").write_text('{"messages": [\n')
    upload(s3, cluster.bucket, tmp_path / "broken.jsonl", f"{prefix}/data/broken.jsonl")
    everything = snapshot(s3, cluster.bucket, f"{prefix}/")
    broken = s3_job(tmp_path, tiny_model, cluster, root, dataset={"train": f"{root}/data/broken.jsonl"})
    assert run_main(monkeypatch, trainer_env(tmp_path, cluster, broken, "run-2")) == contract.EXIT_BAD_INPUT
    assert "broken.jsonl line 1: not valid JSON" in json.loads((tmp_path / "term").read_text())["error"]["message"]
    assert snapshot(s3, cluster.bucket, f"{prefix}/") == everything
    out, err = capfd.readouterr()
    assert cluster.s3_secret_key not in out + err


@pytest.mark.parametrize("case", ["wrong secret key", "unknown access key", "missing model prefix",
                                  "missing bucket", "missing data object"])
def test_s3_bad_input_is_named_and_not_retried(monkeypatch, capfd, tmp_path, tiny_model, cluster, s3, bucket_data,
                                                case):
    root, prefix, _ = bucket_data
    patch, secret, expected = {}, None, None
    if case == "wrong secret key":
        secret = "wrong-" + secrets.token_hex(8)
        expected = f"output.uri: access to {root}/out/bad/summary.json denied (403) for access key id {cluster.s3_access_key}"
    elif case == "unknown access key":
        env_patch = {"AWS_ACCESS_KEY_ID": "nobody"}
        expected = "denied (403) for access key id nobody; check the credentials"
    elif case == "missing model prefix":
        patch, expected = {"baseModel": {"uri": f"{root}/models/none/"}}, f"baseModel.uri: nothing at {root}/models/none/"
    elif case == "missing bucket":
        patch = {"dataset": {"train": "s3://no-such-bucket-kubetune/train.jsonl"}}
        expected = "dataset.train: bucket no-such-bucket-kubetune of s3://no-such-bucket-kubetune/train.jsonl does not exist"
    else:
        patch, expected = {"dataset": {"train": f"{root}/data/none.jsonl"}}, f"dataset.train: nothing at {root}/data/none.jsonl"
    env = trainer_env(tmp_path, cluster, s3_job(tmp_path, tiny_model, cluster, root, **patch), "bad", secret)
    if case == "unknown access key":
        env.update(env_patch)
    before = snapshot(s3, cluster.bucket, f"{prefix}/")
    assert run_main(monkeypatch, env) == contract.EXIT_BAD_INPUT
    message = json.loads((tmp_path / "term").read_text())["error"]["message"]
    assert expected in message
    out, err = capfd.readouterr()
    assert env["AWS_SECRET_ACCESS_KEY"] not in out + err + message
    assert snapshot(s3, cluster.bucket, f"{prefix}/") == before
