"""Two gangs of one run must never hold live pods at once, and a run's attempt and failure counts never go down,
however late the operator sees the world (issue 20, items 2 and 3): two reconcile workers, every API request
delayed ~200 ms by a proxy on loopback, ten two-node gangs whose index pods are killed again and again."""
import asyncio
import random
import threading
import time
from collections import defaultdict

import pytest
import yaml

from kubetune.operator.labels import LABEL_RUN_ID
from tests.operator.conftest import manifest, wait_for
from tests.operator.test_operator_cluster import kwok

pytestmark = pytest.mark.cluster
GANGS, LATENCY_SECONDS, KILLING_SECONDS = 6, 0.2, 20
GANG = {"nodes": 2, "resources": {"gpusPerNode": 1}, "runPolicy": {"backoffLimit": 100},
        "hyperparameters": {"batchSize": 8, "microBatchSize": 4}}


class SlowProxy:
    """A TCP proxy (TLS passes through untouched) that holds each request chunk LATENCY_SECONDS before the API
    server gets it: a loaded control plane, as the operator sees one."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream, self.loop = upstream, asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _client(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        await asyncio.gather(self._pipe(reader, up_writer, LATENCY_SECONDS), self._pipe(up_reader, writer, 0),
                             return_exceptions=True)

    @staticmethod
    async def _pipe(reader, writer, delay: float) -> None:
        try:
            while data := await reader.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def stop(self) -> None:
        async def shutdown():
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def live_jobs_by_run(cluster, namespace) -> dict[str, set[str]]:
    """Per run id, the Jobs that have a pod not yet terminal (Pending or Running, deleted or not)."""
    jobs = {j["metadata"]["uid"]: j for j in cluster.kubectl_json("get", "jobs", "-n", namespace)["items"]}
    live: dict[str, set[str]] = defaultdict(set)
    for pod in cluster.kubectl_json("get", "pods", "-n", namespace)["items"]:
        job = jobs.get((pod["metadata"].get("labels") or {}).get("batch.kubernetes.io/controller-uid"))
        if job and pod["status"].get("phase") in ("Pending", "Running"):
            live[job["metadata"]["labels"][LABEL_RUN_ID]].add(job["metadata"]["name"])
    return live


def test_a_starved_operator_never_runs_two_gangs_of_one_run(cluster, namespace, operators, tmp_path):
    config = yaml.safe_load(cluster.operator_kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]["server"]
    host, port = server.removeprefix("https://").rsplit(":", 1)
    proxy = SlowProxy((host, int(port)))
    config["clusters"][0]["cluster"]["server"] = f"https://{host}:{proxy.port}"
    slow = tmp_path / "slow.kubeconfig"
    slow.write_text(yaml.safe_dump(config))
    operators.start(kubeconfig=slow, WORKERS="2", RETRY_DELAY_SECONDS="1")
    names = [f"gang-{i}" for i in range(GANGS)]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input="\n---\n".join(
        manifest(name, GANG, kwok(seconds=3600)) for name in names))
    wait_for("every gang running", lambda: all(
        s.get("status", {}).get("phase") == "Running"
        for s in cluster.kubectl_json("get", "ftj", "-n", namespace)["items"]) and len(names), timeout=180)

    seen: dict[str, None] = {}  # what went wrong, once each, in order
    highest: dict[str, tuple[int, int]] = {}  # run -> (attempt, failures) from the FineTuneJob status
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            for run, held in live_jobs_by_run(cluster, namespace).items():
                if len(held) > 1:
                    seen[f"run {run}: live pods in Jobs {sorted(held)}"] = None
            for obj in cluster.kubectl_json("get", "ftj", "-n", namespace)["items"]:
                st = obj.get("status") or {}
                counts, name = (st.get("attempts", 0), st.get("failures", 0)), obj["metadata"]["name"]
                before = highest.get(name, (0, 0))
                if counts[0] < before[0] or counts[1] < before[1]:
                    seen[f"{name}: attempts/failures went from {before} to {counts}"] = None
                highest[name] = max(before, counts)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        deadline, rng = time.monotonic() + KILLING_SECONDS, random.Random(7)
        while time.monotonic() < deadline:
            pods = [p for p in cluster.kubectl_json("get", "pods", "-n", namespace)["items"]
                    if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
            if pods:
                victim = rng.choice(pods)["metadata"]["name"]
                cluster.kubectl("delete", "pod", victim, "-n", namespace, "--wait=false", check=False)
            time.sleep(1)
        # and the runs settle on one live gang each
        states: dict = {}

        def settled() -> bool:
            states.update({o["metadata"]["name"]: ((o.get("status") or {}).get("phase"), next(
                (c["message"][:300] for c in (o.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"),
                None)) for o in cluster.kubectl_json("get", "ftj", "-n", namespace)["items"]})
            return all(phase == "Running" for phase, _ in states.values())

        try:
            wait_for("every gang running again", settled, timeout=180)
        except AssertionError:
            raise AssertionError(f"the gangs did not settle: {states}") from None
    finally:
        stop.set()
        watcher.join(10)
        proxy.stop()
    restarted = {name: counts for name, counts in highest.items() if counts[0] > 1}
    assert restarted, f"no gang was restarted: the test proved nothing ({highest})"
    assert not seen, "\n".join(list(seen)[:20])
