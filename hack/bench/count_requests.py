"""Runs the operator with every API request it makes counted, by client (kube for the operator's own calls,
aiohttp for kopf's watches and patches), verb and resource, as a Prometheus counter on the operator's
metrics endpoint. Bench-only: `python hack/bench/count_requests.py` instead of `python -m kubetune.operator`.

KUBETUNE_BENCH_TRACEMALLOC=FILE traces allocations (one frame, so it stays affordable under load) and, whenever the
traced total reaches a new high (+5 %), rewrites FILE.<pid> with the top allocation sites at that moment."""
import os
import runpy
import sys
import threading
import time
import tracemalloc
import urllib.parse

import aiohttp
from prometheus_client import Counter

from kubetune.operator import kube

# The operator's image has no `kubernetes` package; this venv has it (the tests use it), and kopf imports it
# whenever it can (the operator is imported below, by runpy). Make it missing, so that the bench measures the
# process the image runs.
sys.modules["kubernetes"] = None

REQUESTS = Counter("kubetune_bench_api_requests_total", "API requests made by the operator process",
                   ["client", "verb", "resource"])


def classify(method: str, url: str, params=None) -> tuple[str, str]:
    parsed = urllib.parse.urlsplit(str(url))
    query = dict(urllib.parse.parse_qsl(parsed.query))
    query.update({str(k): str(v) for k, v in (dict(params) if params else {}).items()})
    parts = [p for p in parsed.path.split("/") if p]
    base = parts[3 if parts[:1] == ["apis"] else 2:]
    namespaced = "namespaces" in parts and parts.index("namespaces") + 2 < len(parts)
    parts = parts[parts.index("namespaces") + 2:] if namespaced else base
    resource = "/".join([parts[0]] + parts[2:3]) if parts else "?"
    verb = method.lower()
    if verb == "get":
        verb = "watch" if query.get("watch") in ("true", "1", "True") else ("get" if len(parts) > 1 else "list")
    return verb, resource


_request = kube.Connection.request


def counted_request(self, method, url_path, body=None, params=None, *args, **kwargs):
    REQUESTS.labels("kube", *classify(method, url_path, params)).inc()
    return _request(self, method, url_path, body, params, *args, **kwargs)


_aio = aiohttp.ClientSession._request


async def counted_aio(self, method, url, *args, **kwargs):
    REQUESTS.labels("aiohttp", *classify(method, url, kwargs.get("params"))).inc()
    return await _aio(self, method, url, *args, **kwargs)


kube.Connection.request = counted_request
aiohttp.ClientSession._request = counted_aio


def trace_peaks(path: str) -> None:
    """Snapshots only at new highs: a restart's peak is a few seconds long, and a snapshot costs seconds too."""
    tracemalloc.start(1)
    dumped = 0
    while True:
        time.sleep(1)
        current, _ = tracemalloc.get_traced_memory()
        if current < dumped * 1.05:
            continue
        dumped = current
        top = tracemalloc.take_snapshot().statistics("lineno")[:25]
        lines = [f"traced {current / 2**20:.1f} MB at {time.strftime('%H:%M:%S')}"]
        lines += [f"{s.size / 2**20:8.1f} MB {s.count:9d} {s.traceback}" for s in top]
        with open(f"{path}.{os.getpid()}", "w") as out:
            out.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    if os.environ.get("KUBETUNE_BENCH_TRACEMALLOC"):
        threading.Thread(target=trace_peaks, args=(os.environ["KUBETUNE_BENCH_TRACEMALLOC"],), daemon=True).start()
    runpy.run_module("kubetune.operator", run_name="__main__")
