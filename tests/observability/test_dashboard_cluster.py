"""Every dashboard query against real series: the local cluster's Prometheus scrapes the real operator (jobs
queued and admitted, running on a fake GPU node, OOM-killed) and a real trainer run of the tiny model, whose
metrics endpoint is served on the kwok trainer pod's IP and port 9400, as in a pod. A query that errors or returns
no finite value fails the test. With KUBETUNE_DASHBOARD_PNG=path, the per-job panels are rendered there."""
import json
import os
import time

import pytest
from prometheus_client import start_http_server

import kubetune.trainer.metrics as trainer_metrics
from kubetune.trainer.loop import train
from tests.observability import prom
from tests.observability.argocd import health
from tests.observability.panels import substitute, targets
from tests.operator.conftest import manifest, wait_for
from tests.trainer.conftest import chat_rows, finetunejob, settings, write_jsonl

pytestmark = pytest.mark.cluster
SCRAPE_SETTLE_SECONDS = 6  # three scrapes at the local Prometheus' 2 s interval


def spec(tmp_path, model) -> dict:
    """A tiny-model LoRA run long enough for Prometheus to see its curves (about a minute on one thread)."""
    return {
        "baseModel": {"uri": f"file://{model}"},
        "dataset": {"train": write_jsonl(tmp_path / "data/train.jsonl", chat_rows(256, seed=1)),
                    "validation": write_jsonl(tmp_path / "data/val.jsonl", chat_rows(16, seed=2)),
                    "test": write_jsonl(tmp_path / "data/test.jsonl", chat_rows(32, seed=3)),
                    "maxSeqLength": 64},
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "hyperparameters": {"maxSteps": 1200, "batchSize": 8, "microBatchSize": 4, "learningRate": 2e-3,
                            "warmupRatio": 0.1},
        "evaluation": {"everySteps": 100, "baseline": True},
        "checkpoint": {"everySteps": 300},
        "output": {"uri": f"file://{tmp_path}/out/"},
        "resources": {"gpusPerNode": 1},
    }


def kwok(seconds: float, exit_code: int = 0, reason: str | None = None) -> dict:
    notes = {"kwok.kubetune.io/run-seconds": str(seconds), "kwok.kubetune.io/exit-code": str(exit_code)}
    return notes | ({"kwok.kubetune.io/reason": reason} if reason else {})


def status(cluster, namespace, name) -> dict:
    return cluster.kubectl_json("get", "ftj", name, "-n", namespace).get("status") or {}


def sweep(name: str) -> str:
    """A kwok sweep of two trials whose pods end with a summary carrying a test loss and its interval."""
    from kubetune.testing import sweep_manifest

    summary = {"stopReason": "MaxStepsReached", "steps": 10, "totalSteps": 10, "eval": {"loss": 1.5},
               "test": {"loss": 1.2, "lossLow": 1.1, "lossHigh": 1.3}}
    return json.dumps(sweep_manifest({"spec": {
        "maxTrials": 2, "objective": {"dataset": "test"},
        "template": {"metadata": {"annotations": kwok(2) | {"kwok.kubetune.io/termination-message": json.dumps(
            summary)}}, "spec": {"dataset": {"test": "s3://data/test.jsonl"}, "resources": {"gpusPerNode": 1}}}}},
        name=name))


def test_every_panel_query_returns_real_series(cluster, namespace, operator, tiny_model, tmp_path, monkeypatch,
                                               finetunesweep_crd):
    base = cluster.prometheus_url
    operator_target = f"127.0.0.1:{operator.metrics_port}"
    cluster.add_scrape_target(operator_target, component="kubetune-operator")
    started = time.time()
    training = spec(tmp_path, tiny_model)
    try:
        # Scraped before any job exists, as a long-running operator is: increase() over a histogram needs a sample
        # from before its first observation (time to Running comes a second after the apply).
        wait_for("the operator scraped", lambda: prom.instant(
            base, f'up{{instance="{operator_target}"}} == 1', time.time()), timeout=60, interval=1)
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("chat", training, kwok(900)))
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
            "oom", {"runPolicy": {"backoffLimit": 0}}, kwok(1, 137, "OOMKilled")))
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
            "queued", {"scheduling": {"queueName": "team-a"}, "resources": {"gpusPerNode": 1}}, kwok(3)))
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=sweep("lr"))
        wait_for("chat Running", lambda: status(cluster, namespace, "chat").get("phase") == "Running", timeout=60)
        wait_for("queued Queued", lambda: status(cluster, namespace, "queued").get("phase") == "Queued", timeout=60)
        time.sleep(2)
        # Admission as Kueue does it: unsuspend the run's Job (the operator never does).
        cluster.kubectl("patch", "job", "queued-g1", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
        pod = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "batch.kubernetes.io/job-name=chat-g1")
        pod = next(p for p in pod["items"] if p["status"].get("phase") == "Running")
        pod_ip, pod_name = pod["status"]["podIP"], pod["metadata"]["name"]
        trainer_target = f"{pod_ip}:9400"
        # The labels the chart's PodMonitor gives trainer series.
        cluster.add_scrape_target(trainer_target, namespace=namespace, pod=pod_name, finetunejob="chat")

        servers = []

        def serve_on_pod_ip(port, registry):  # the trainer's own endpoint, bound where a pod's would be
            servers.append(start_http_server(port, addr=pod_ip, registry=registry))
        monkeypatch.setattr(trainer_metrics, "start_http_server", serve_on_pod_ip)
        run_id = status(cluster, namespace, "chat")["runId"]
        summary = train(finetunejob("chat", training), run_id, settings(tmp_path, metrics_port=9400, threads=1,
                                                                         log_every_steps=5), on_log=lambda row: None)
        assert summary["steps"] == 1200 and servers
        # The operator read the real trainer's progress into the status.
        wait_for("the trainer's last step in the status", lambda: status(cluster, namespace, "chat")
                 .get("progress", {}).get("step") == 1200, timeout=30)
        # Argo CD's view of the same object, through the health check (tests/observability/argocd.py).
        live = cluster.kubectl_json("get", "ftj", "chat", "-n", namespace)
        assert health(live) == {"status": "Progressing", "message": "Running: training (step 1200/1200, eval loss "
                                f"{live['status']['metrics']['evalLoss']:.3f})"}
        wait_for("the final test metrics scraped", lambda: prom.instant(
            base, f'kubetune_test_metric{{namespace="{namespace}", finetunejob="chat"}}', time.time()), timeout=30)
        wait_for("queued Succeeded", lambda: status(cluster, namespace, "queued").get("phase") == "Succeeded")
        wait_for("oom Failed", lambda: status(cluster, namespace, "oom").get("phase") == "Failed")
        wait_for("sweep lr Succeeded", lambda: (cluster.kubectl_json("get", "fts", "lr", "-n", namespace)
                                                .get("status") or {}).get("phase") == "Succeeded", timeout=60)
        time.sleep(SCRAPE_SETTLE_SECONDS)
        ended = time.time()

        results, empty = {}, []
        for t in targets():
            expr = substitute(t.expr, namespace=namespace, finetunejob="chat",
                              range_=f"{int(ended - started) + 30}s", rate_interval="20s")
            result = (prom.instant(base, expr, ended) if t.instant
                      else prom.range_(base, expr, started, ended))
            results[f"{t.panel}/{t.ref}"] = {"expr": expr, "instant": t.instant, "result": result}
            if not prom.finite_values(result):
                empty.append(f"{t.panel} [{t.ref}]: {expr}")
        assert not empty, "queries with no finite value:\n" + "\n".join(empty)

        # The numbers are the run's: the last loss scraped is the summary's last training loss, and so on.
        last = {k: float(v["result"][0]["values"][-1][1]) for k, v in results.items()
                if not v["instant"] and len(v["result"]) == 1}
        assert last["Loss and eval loss vs step/A"] == 1200
        assert last["Progress/A"] == 1.0
        fine_tuned = {r["metric"]["metric"]: float(r["value"][1])
                      for r in results["Test metrics vs baseline/A"]["result"] if r["metric"]["model"] == "fine-tuned"}
        assert fine_tuned["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-4)
        by_trial = {r["metric"]["trial"]: (r["metric"]["vs_best"], float(r["value"][1]))
                    for r in results["Objective by trial/A"]["result"]}
        assert by_trial == {"lr-t0": ("best", 1.2), "lr-t1": ("indistinguishable", 1.2)}
        failed = results["Failures by reason/A"]["result"]
        assert [(r["metric"]["reason"], float(r["value"][1])) for r in failed] == [("OOMKilled", 1.0)]
        out = os.environ.get("KUBETUNE_DASHBOARD_PNG")
        if out:
            from hack.observability.render_png import render
            (tmp_path / "series.json").write_text(json.dumps(results))
            render(results, out)
    finally:
        for server, _ in locals().get("servers", []):
            server.shutdown()
        cluster.remove_scrape_target(operator_target)
        if "trainer_target" in locals():
            cluster.remove_scrape_target(trainer_target)
