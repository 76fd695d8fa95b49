#!/usr/bin/env python3
"""Scale benchmark (issue 15): N FineTuneJobs applied at once to the local cluster, kwok pods that run for
--run-seconds, one operator (run through count_requests.py, which counts its API requests). Optionally SIGKILLs
the operator at a random moment mid-load and starts a fresh one (--kill).

Prints one table: creation -> Job and Job/Pod change -> FineTuneJob status latencies (p50/p99), operator peak
RSS, API requests per job (by verb), CPU per reconcile, duplicates and orphans. Latencies are taken from watch
events as this process receives them (one clock, milliseconds); the API server's own timestamps have one-second
resolution, so creation -> Job is also shown from them as a cross-check.

With --serve-metrics, every kwok pod's trainer endpoint answers: kwok gives pods addresses in 127.100.0.0/16,
all local on Linux, so one HTTP server on port 9400 stands in for a thousand trainers (a named stand-in: real
trainer pods need the real node, which runs a handful). Each "trainer" advances one step every --step-seconds
from its first scrape, and the table adds how often each running job's status took a new step and how far the
status lagged behind the step its trainer was serving.

Usage: hack/cluster up && .venv/bin/python hack/bench/scale.py N [--run-seconds 60] [--kill] [--serve-metrics]
       [--json FILE]
"""
import argparse
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from datetime import datetime
from pathlib import Path

import kubernetes

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from kubetune.testing import cluster_env  # noqa: E402
from kubetune.testing import job_manifest as make_job  # noqa: E402
from kubetune.api import contract  # noqa: E402

LABEL = "kubetune.io/finetunejob"
PODS_PER_NODE = 110


def kubectl(e: dict, *args, input=None, check=True) -> str:
    return subprocess.run([e["KUBETUNE_KUBECTL"], f"--kubeconfig={e['KUBECONFIG']}", *args], input=input,
                          capture_output=True, text=True, check=check).stdout


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, math.ceil(q * len(values)) - 1)] if values else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finished(obj: dict) -> bool:
    """The Job's first terminal condition (SuccessCriteriaMet and FailureTarget precede Complete and Failed)."""
    return any(c.get("type") in ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget") and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


class Recorder:
    """First-seen local times of the moments that matter, from three watches on the bench namespace."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str):
        self.api, self.namespace = api, namespace
        self.t: dict[str, dict[str, float]] = defaultdict(dict)  # moment -> FineTuneJob name -> time
        self.job_uids: dict[str, set[str]] = defaultdict(set)
        self.phase: dict[str, str] = {}
        self.created: dict[str, tuple[str, str]] = {}  # name -> (ftj creationTimestamp, job creationTimestamp)
        self.pod_ip: dict[str, str] = {}  # FineTuneJob name -> its running pod's IP
        self.steps: dict[str, list[tuple[float, int]]] = defaultdict(list)  # name -> (time, step) as status changed
        self.stop = threading.Event()

    def first(self, moment: str, name: str) -> None:
        self.t[moment].setdefault(name, time.monotonic())

    def start(self) -> None:
        custom = kubernetes.client.CustomObjectsApi(self.api)
        batch, core = kubernetes.client.BatchV1Api(self.api), kubernetes.client.CoreV1Api(self.api)
        streams = [
            (custom.list_namespaced_custom_object, ("kubetune.io", "v1alpha1", self.namespace, "finetunejobs"),
             self.on_ftj),
            (batch.list_namespaced_job, (self.namespace,), self.on_job),
            (core.list_namespaced_pod, (self.namespace,), self.on_pod),
        ]
        for fn, args, handler in streams:
            threading.Thread(target=self.watch, args=(fn, args, handler), daemon=True).start()

    def watch(self, fn, args, handler) -> None:
        while not self.stop.is_set():
            try:
                for event in kubernetes.watch.Watch().stream(fn, *args, timeout_seconds=60, _request_timeout=90):
                    obj = event["object"]
                    handler(obj if isinstance(obj, dict) else self.api.sanitize_for_serialization(obj))
            except Exception as exc:  # a dropped watch: resume (first-seen times are kept)
                print(f"  (watch restarted: {exc})", file=sys.stderr)

    def on_ftj(self, obj: dict) -> None:
        name, phase = obj["metadata"]["name"], (obj.get("status") or {}).get("phase")
        self.first("ftj_added", name)
        self.created.setdefault(name, (obj["metadata"]["creationTimestamp"], ""))
        if phase:
            self.phase[name] = phase
        if phase == "Running":
            self.first("ftj_running", name)
        if phase in ("Succeeded", "Failed"):
            self.first("ftj_terminal", name)
        step = ((obj.get("status") or {}).get("progress") or {}).get("step")
        if phase == "Running" and step is not None and (not self.steps[name] or self.steps[name][-1][1] != step):
            self.steps[name].append((time.monotonic(), step))

    def on_job(self, obj: dict) -> None:
        name = (obj["metadata"].get("labels") or {}).get(LABEL)
        if not name:
            return
        self.first("job_added", name)
        self.job_uids[name].add(obj["metadata"]["uid"])
        ftj_created = self.created.get(name, ("", ""))[0]
        self.created[name] = (ftj_created, self.created.get(name, ("", ""))[1] or obj["metadata"]["creationTimestamp"])
        if finished(obj):
            self.first("job_finished", name)

    def on_pod(self, obj: dict) -> None:
        name = (obj["metadata"].get("labels") or {}).get(LABEL)
        if name and (obj.get("status") or {}).get("phase") == "Running":
            self.first("pod_running", name)
            if obj["status"].get("podIP"):
                self.pod_ip[name] = obj["status"]["podIP"]

    def latencies(self, start: str, end: str) -> list[float]:
        return [self.t[end][n] - self.t[start][n] for n in self.t[end] if n in self.t[start]]


class Trainers:
    """Stand-in trainer endpoints for every kwok pod (see the module docstring): the contract's gauges, with the
    step derived from the time since that pod address was first scraped."""

    def __init__(self, step_seconds: float, total_steps: int):
        self.step_seconds, self.total_steps = step_seconds, total_steps
        self.first_scrape: dict[str, float] = {}  # pod IP -> monotonic time
        self.scrapes = 0
        self.lock = threading.Lock()
        trainers = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                ip = self.connection.getsockname()[0]
                with trainers.lock:
                    first = trainers.first_scrape.setdefault(ip, time.monotonic())
                    trainers.scrapes += 1
                step = min(int((time.monotonic() - first) / trainers.step_seconds), trainers.total_steps)
                body = "\n".join(f"{name} {value}" for name, value in (
                    (contract.METRIC_STEP, step), (contract.METRIC_TOTAL_STEPS, trainers.total_steps),
                    (contract.METRIC_EPOCH, 0), (contract.METRIC_TRAIN_LOSS, 3.0 - step / 1000),
                    (contract.METRIC_LEARNING_RATE, 1e-4), (contract.METRIC_TOKENS_PER_SECOND, 1000),
                    (contract.METRIC_ETA_SECONDS, (trainers.total_steps - step) * trainers.step_seconds))) + "\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("0.0.0.0", contract.METRICS_PORT), Handler)
        self.server.daemon_threads = True  # on this server only, not on the stdlib class
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def served_since(self, ip: str, step: int) -> float | None:
        """When this pod's endpoint started serving `step`."""
        first = self.first_scrape.get(ip)
        return None if first is None else first + step * self.step_seconds


class Operator:
    """One operator process at a time; keeps the last numbers each process reported before it went away."""

    def __init__(self, e: dict, namespace: str, progress_seconds: float = 10.0, lease_seconds: float = 6):
        self.e, self.namespace, self.progress_seconds = e, namespace, progress_seconds
        self.lease_seconds = lease_seconds
        self.restarts: list[str] = []  # why each exited process was replaced
        self.lease = f"bench-{os.getpid()}"
        self.proc: subprocess.Popen | None = None
        self.last: dict[int, dict] = {}  # pid -> {"requests": {...}, "reconciles", "cpu", "rss_peak"}
        threading.Thread(target=self.poll, daemon=True).start()

    def start(self) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        env = dict(os.environ, KUBECONFIG=self.e["KUBETUNE_OPERATOR_KUBECONFIG"], KUBETUNE_OPERATOR_NAMESPACES=self.namespace,
                   KUBETUNE_OPERATOR_METRICS_PORT=str(self.metrics_port),
                   KUBETUNE_OPERATOR_HEALTH_PORT=str(self.health_port), KUBETUNE_OPERATOR_LEASE_NAME=self.lease,
                   KUBETUNE_OPERATOR_LEASE_DURATION_SECONDS=str(self.lease_seconds),
                   KUBETUNE_OPERATOR_PROGRESS_INTERVAL_SECONDS=str(self.progress_seconds),
                   KUBETUNE_OPERATOR_IDENTITY=f"bench-{time.monotonic_ns()}",
                   KUBETUNE_OPERATOR_POD_ANNOTATION_PREFIXES="kwok.kubetune.io/")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "hack" / "bench" / "count_requests.py")], cwd=ROOT,
                                     env=env, stdout=subprocess.DEVNULL, stderr=open(f"/tmp/{self.lease}.log", "a"))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit("the operator did not become ready")

    def sample(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
            stat = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            return
        requests = {(m[0], m[1], m[2]): float(m[3]) for m in re.findall(
            r'^kubetune_bench_api_requests_total\{client="([^"]*)",resource="([^"]*)",verb="([^"]*)"\} (\S+)',
            text, re.M)}
        count = re.search(r"^kubetune_operator_reconcile_duration_seconds_count (\S+)", text, re.M)
        buckets = {f'{m[1]} {m[0]}': float(m[2]) for m in re.findall(  # "line le" -> cumulative count
            r'^kubetune_operator_workqueue_wait_seconds_bucket'
            r'\{le="([^"]*)",line="([^"]*)",queue="finetunejobs"\} (\S+)',
            text, re.M)}
        self.last[proc.pid] = {
            "requests": requests, "reconciles": float(count.group(1)) if count else 0.0, "wait_buckets": buckets,
            "cpu": (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"),
            "rss_peak": int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024,
            "rss": int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024}

    def poll(self) -> None:
        while True:
            self.sample()
            time.sleep(1)

    def restart_if_exited(self) -> None:
        """What the Deployment does: a process that exited (a lost Lease under load) is replaced, and counted."""
        if self.proc is not None and self.proc.poll() is not None:
            log = Path(f"/tmp/{self.lease}.log").read_text(errors="replace").strip().splitlines()
            self.restarts.append(f"exit {self.proc.returncode}: {log[-1] if log else ''}"[:300])
            print(f"  operator exited ({self.restarts[-1]}); starting a new one", file=sys.stderr)
            self.start()

    def kill(self) -> None:
        self.sample()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        self.sample()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def bench_nodes(e: dict, n: int) -> list[str]:
    """Fake CPU nodes for the trainer pods (kwok runs them), enough for all N at once."""
    names = [f"kubetune-bench-{i}" for i in range(math.ceil(n / PODS_PER_NODE))]
    capacity = {"cpu": "1000", "memory": "4Ti", "pods": str(PODS_PER_NODE), "ephemeral-storage": "100Ti"}
    nodes = [{"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok",
                                 "kubetune.io/bench": "true"},
        "annotations": {"kwok.x-k8s.io/node": "fake"}},
        "spec": {"taints": [{"key": "kubetune.io/bench", "value": "true", "effect": "NoSchedule"}]},
        "status": {"capacity": capacity, "allocatable": capacity}} for name in names]
    kubectl(e, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
    return names


def manifests(n: int, run_seconds: float) -> list[dict]:
    docs = []
    for i in range(n):
        doc = make_job({"spec": {
            "resources": {"gpusPerNode": 0, "cpu": "10m", "memory": "16Mi", "sharedMemory": "16Mi",
                          "ephemeralStorage": "1Gi"},
            "scheduling": {"nodeSelector": {"kubetune.io/bench": "true"},
                           "tolerations": [{"key": "kubetune.io/bench", "operator": "Exists"}]}}}, name=f"bench-{i}")
        doc["metadata"]["annotations"] = {"kwok.kubetune.io/run-seconds": str(run_seconds)}
        docs.append(doc)
    return docs


def orphans(e: dict, namespace: str) -> int:
    """Children whose controller is not a FineTuneJob that exists."""
    uids = {i["metadata"]["uid"] for i in json.loads(kubectl(e, "get", "ftj", "-n", namespace, "-o", "json"))["items"]}
    children = json.loads(kubectl(e, "get", "jobs,configmaps", "-n", namespace, "-l", LABEL, "-o", "json"))["items"]
    return sum(not any(o.get("controller") and o.get("uid") in uids for o in c["metadata"].get("ownerReferences") or [])
               for c in children)


def seconds_between(a: str, b: str) -> float:
    return (datetime.fromisoformat(b.replace("Z", "+00:00")) - datetime.fromisoformat(a.replace("Z", "+00:00"))
            ).total_seconds()


def progress_numbers(recorder: Recorder, trainers: "Trainers | None", log: Path) -> dict:
    """How often each running job's status took a new step, and how long after its trainer began serving it."""
    if trainers is None:
        return {}
    gaps, lags = [], []
    for name, changes in recorder.steps.items():
        gaps += [b[0] - a[0] for a, b in zip(changes, changes[1:])]
        ip = recorder.pod_ip.get(name)
        lags += [t - since for t, step in changes if ip and (since := trainers.served_since(ip, step)) is not None]
    slow_rounds = log.read_text(errors="replace").count("more than the") if log.exists() else 0
    return {"progress_update_gaps": gaps, "progress_lag": lags, "scrapes": trainers.scrapes,
            "slow_progress_rounds": slow_rounds}


def run(n: int, run_seconds: float, kill: bool, timeout: float, serve_metrics: bool = False,
        progress_seconds: float = 10.0, step_seconds: float = 1.0, kill_at: float | None = None,
        lease_seconds: float = 6) -> dict:
    e = cluster_env(ROOT / "hack" / "cluster")
    trainers = Trainers(step_seconds, int(run_seconds / step_seconds)) if serve_metrics else None
    namespace = f"bench-{os.getpid()}"
    kubectl(e, "apply", "-f", str(ROOT / "crds"))
    kubectl(e, "apply", "-k", str(ROOT / "config" / "rbac"))
    kubectl(e, "apply", "-f", str(ROOT / "tests" / "operator" / "rbac-extra.yaml"))
    kubectl(e, "create", "namespace", namespace)
    nodes = bench_nodes(e, n)
    api = kubernetes.config.new_client_from_config(config_file=e["KUBECONFIG"])
    recorder = Recorder(api, namespace)
    recorder.start()
    operator = Operator(e, namespace, progress_seconds, lease_seconds)
    operator.start()
    killed_at = None
    try:
        started = time.monotonic()
        kill_after = kill_at
        if kill and kill_after is None:
            kill_after = random.uniform(2, max(3.0, min(30.0, run_seconds)))
        applier = threading.Thread(target=kubectl, args=(e, "apply", "-n", namespace, "-f", "-"), kwargs={
            "input": json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests(n, run_seconds)})})
        applier.start()
        while sum(p in ("Succeeded", "Failed") for p in recorder.phase.values()) < n:
            if kill_after is not None and killed_at is None and time.monotonic() - started > kill_after:
                operator.kill()
                killed_at = time.monotonic() - started
                operator.start()  # a fresh process, as the Deployment would start it
            operator.restart_if_exited()
            if time.monotonic() - started > timeout:
                print(f"  timed out: {len(recorder.t['ftj_terminal'])}/{n} terminal", file=sys.stderr)
                break
            time.sleep(0.5)
        applier.join()
        wall = time.monotonic() - started
        operator.sample()
        orphan_count = orphans(e, namespace)
    finally:
        operator.stop()
        recorder.stop.set()
        kubectl(e, "delete", "namespace", namespace, "--wait=false", check=False)
        kubectl(e, "delete", "node", *nodes, "--wait=false", check=False)

    requests: dict = defaultdict(float)
    for sample in operator.last.values():
        for (client, resource, verb), count in sample["requests"].items():
            requests[(verb, resource)] += count
    reconciles = sum(s["reconciles"] for s in operator.last.values())
    wait_buckets: dict = defaultdict(float)
    for sample in operator.last.values():
        for key, count in sample.get("wait_buckets", {}).items():
            wait_buckets[key] += count
    cpu = sum(s["cpu"] for s in operator.last.values())
    apiserver_create = [seconds_between(f, j) for f, j in recorder.created.values() if f and j]
    return {
        "n": n, "run_seconds": run_seconds, "wall_seconds": wall, "killed_at_seconds": killed_at,
        "terminal": sum(p in ("Succeeded", "Failed") for p in recorder.phase.values()),
        "succeeded": sum(p == "Succeeded" for p in recorder.phase.values()),
        "create_to_job": recorder.latencies("ftj_added", "job_added"),
        "create_to_job_apiserver": apiserver_create,
        "pod_running_to_status": recorder.latencies("pod_running", "ftj_running"),
        # (seconds after the apply began that the pod turned Running, its latency to the status): where the tail is
        "pod_running_timeline": sorted((recorder.t["pod_running"][k] - started, recorder.t["ftj_running"][k]
                                        - recorder.t["pod_running"][k]) for k in recorder.t["ftj_running"]
                                       if k in recorder.t["pod_running"]),
        "job_finished_to_status": recorder.latencies("job_finished", "ftj_terminal"),
        "rss_peak_mb": max((s["rss_peak"] for s in operator.last.values()), default=0.0),
        "requests": {f"{verb} {resource}": count for (verb, resource), count in sorted(requests.items())},
        "reconciles": reconciles, "cpu_seconds": cpu, "queue_wait_buckets": dict(wait_buckets),
        "duplicates": sum(len(uids) > 1 for uids in recorder.job_uids.values()), "orphans": orphan_count,
        "progress_seconds": progress_seconds, "lease_seconds": lease_seconds, "restarts": operator.restarts,
        "load_average": os.getloadavg(),
        **progress_numbers(recorder, trainers, Path(f"/tmp/{operator.lease}.log")),
    }


def bucket_quantile(r: dict, line: str, q: float) -> str:
    """The histogram bucket that holds quantile q of the operator's work-queue waits on `line` ("<= 0.5 s")."""
    cumulative = sorted((float(k.split()[1]), c) for k, c in r["queue_wait_buckets"].items() if k.split()[0] == line)
    total = cumulative[-1][1] if cumulative else 0
    bound = next((le for le, c in cumulative if total and c >= q * total), None)
    return f"<= {bound:g} s" if bound is not None else "-"


def table(r: dict) -> str:
    n = r["n"]
    non_watch = {k: v for k, v in r["requests"].items() if not k.startswith("watch ")}
    per_verb: dict[str, float] = defaultdict(float)
    for key, count in non_watch.items():
        per_verb[key.split()[0]] += count
    kill = f", operator SIGKILLed at {r['killed_at_seconds']:.1f} s and restarted" if r["killed_at_seconds"] else ""
    lines = [
        f"{n} FineTuneJobs, kwok pods running {r['run_seconds']:g} s, one operator{kill} ({os.cpu_count()} CPUs)",
        f"| measure | p50 | p99 | max |", "|---|---|---|---|"]
    for label, key in (("creation -> Job (watch)", "create_to_job"),
                       ("creation -> Job (API server timestamps, 1 s resolution)", "create_to_job_apiserver"),
                       ("Pod Running -> status Running", "pod_running_to_status"),
                       ("Job finished -> status terminal", "job_finished_to_status"),
                       (f"progress: between status steps (interval {r['progress_seconds']:g} s)", "progress_update_gaps"),
                       ("progress: trainer serves a step -> status shows it", "progress_lag")):
        if key not in r:
            continue
        v = r[key]
        lines.append(f"| {label} | {pct(v, .5):.2f} s | {pct(v, .99):.2f} s | {max(v, default=float('nan')):.2f} s |")
    lines += [
        f"| all terminal after | {r['wall_seconds']:.1f} s ({r['terminal']}/{n}, {r['succeeded']} Succeeded) | | |",
        f"| operator peak RSS | {r['rss_peak_mb']:.0f} MB | | |",
        f"| API requests per job (not counting watches) | {sum(non_watch.values()) / n:.2f} "
        f"({', '.join(f'{k} {v / n:.2f}' for k, v in sorted(per_verb.items()))}) | | |",
        f"| reconciles per job | {r['reconciles'] / n:.2f} | | |",
        f"| operator CPU per reconcile | {1000 * r['cpu_seconds'] / max(r['reconciles'], 1):.1f} ms "
        f"({r['cpu_seconds']:.1f} s in all) | | |",
        *[f"| work queue wait, {line} line (bucket bounds) | {bucket_quantile(r, line, .5)} | "
          f"{bucket_quantile(r, line, .99)} | |" for line in ("change", "sample") if r.get("queue_wait_buckets")],
        f"| duplicate Jobs / orphaned children | {r['duplicates']} / {r['orphans']} | | |",
        f"| operator restarts after an exit (Lease {r['lease_seconds']:g} s) | {len(r['restarts'])} | | |",
        f"| load average at the end (1, 5, 15 min) | {', '.join(f'{x:.1f}' for x in r['load_average'])} | | |",
        *([f"| progress scrapes / rounds over the interval | {r['scrapes']} / {r['slow_progress_rounds']} | | |"]
          if "scrapes" in r else []),
        "", "requests by verb and resource (whole run, all operator processes): "
        + ", ".join(f"{k}: {v:.0f}" for k, v in r["requests"].items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=100)
    parser.add_argument("--run-seconds", type=float, default=60)
    parser.add_argument("--kill", action="store_true", help="SIGKILL the operator mid-load and restart it")
    parser.add_argument("--kill-at", type=float, help="SIGKILL it this many seconds after the apply starts "
                        "(comparable runs; the restart's peak memory depends on the moment)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--lease-seconds", type=float, default=6, help="the operator's Lease duration (the "
                        "chart's is 15; 6 makes a killed leader's successor take over sooner)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--serve-metrics", action="store_true",
                        help="answer every kwok pod's trainer metrics port (progress scraping under load)")
    parser.add_argument("--progress-seconds", type=float, default=10.0, help="the operator's progress interval")
    parser.add_argument("--step-seconds", type=float, default=1.0, help="a stand-in trainer's time per step")
    args = parser.parse_args()
    result = run(args.n, args.run_seconds, args.kill, args.timeout, args.serve_metrics, args.progress_seconds,
                 args.step_seconds, args.kill_at, args.lease_seconds)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
