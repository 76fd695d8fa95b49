#!/usr/bin/env python3
"""Benchmark: N FineTuneJobs applied at once to the local cluster (kwok pods that run 1 s), one operator.

Prints the wall time until all succeeded, the time from creation to Running and to Succeeded as the status
records it (p50/p95), and the operator's reconcile count and mean duration from its own metrics.
Usage: hack/cluster up && .venv/bin/python hack/bench/operator_throughput.py [N]
"""
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from kubetune.testing import cluster_env  # noqa: E402
from kubetune.testing import job_manifest as make_job  # noqa: E402


def kubectl(e: dict, *args, input=None) -> str:
    return subprocess.run([e["KUBETUNE_KUBECTL"], f"--kubeconfig={e['KUBECONFIG']}", *args], input=input,
                          capture_output=True, text=True, check=True).stdout


def t(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main(n: int) -> None:
    e = cluster_env(ROOT / "hack" / "cluster")
    ns = f"bench-{os.getpid()}"
    kubectl(e, "apply", "-f", str(ROOT / "crds"))
    kubectl(e, "apply", "-k", str(ROOT / "config" / "rbac"))
    kubectl(e, "create", "namespace", ns)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    op_env = dict(os.environ, KUBECONFIG=e["KUBETUNE_OPERATOR_KUBECONFIG"], KUBETUNE_OPERATOR_NAMESPACES=ns,
                  KUBETUNE_OPERATOR_METRICS_PORT=str(port), KUBETUNE_OPERATOR_HEALTH_PORT="0",
                  KUBETUNE_OPERATOR_LEASE_NAME=f"bench-{os.getpid()}",
                  KUBETUNE_OPERATOR_POD_ANNOTATION_PREFIXES="kwok.kubetune.io/")
    operator = subprocess.Popen([sys.executable, "-m", "kubetune.operator"], cwd=ROOT, env=op_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        docs = []
        for i in range(n):
            doc = make_job(name=f"bench-{i}")
            doc["metadata"]["annotations"] = {"kwok.kubetune.io/run-seconds": "1"}
            docs.append(doc)
        started = time.monotonic()
        kubectl(e, "apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                    "items": docs}))
        while True:
            items = json.loads(kubectl(e, "get", "ftj", "-n", ns, "-o", "json"))["items"]
            if sum((i.get("status") or {}).get("phase") == "Succeeded" for i in items) == n:
                break
            if time.monotonic() - started > 600:
                raise SystemExit("timed out")
            time.sleep(0.5)
        wall = time.monotonic() - started
        to_running, to_done = [], []
        for item in items:
            created, st = t(item["metadata"]["creationTimestamp"]), item["status"]
            to_running.append((t(st["startTime"]) - created).total_seconds())
            to_done.append((t(st["completionTime"]) - created).total_seconds())
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        count = float(re.search(r"^kubetune_operator_reconcile_duration_seconds_count (\S+)", text, re.M).group(1))
        total = float(re.search(r"^kubetune_operator_reconcile_duration_seconds_sum (\S+)", text, re.M).group(1))
        print(f"{n} FineTuneJobs (kwok pods running 1 s), one operator, {os.cpu_count()} CPUs")
        print(f"  all Succeeded after {wall:.1f} s")
        print(f"  creation -> Job started: p50 {statistics.median(to_running):.1f} s, p95 {pct(to_running, .95):.1f} s")
        print(f"  creation -> Succeeded:   p50 {statistics.median(to_done):.1f} s, p95 {pct(to_done, .95):.1f} s")
        print(f"  reconciles: {count:.0f} ({count / n:.1f} per job), mean {1000 * total / count:.1f} ms")
    finally:
        operator.terminate()
        operator.wait(30)
        kubectl(e, "delete", "namespace", ns, "--wait=false")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
