"""Runs the operator with every API request it makes counted, by client (kubernetes-client for the operator's
own calls, aiohttp for kopf's watches and patches), verb and resource, as a Prometheus counter on the operator's
metrics endpoint. Bench-only: `python hack/bench/count_requests.py` instead of `python -m kubetune.operator`."""
import runpy
import urllib.parse

import aiohttp
import kubernetes.client.rest
from prometheus_client import Counter

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


_rest = kubernetes.client.rest.RESTClientObject.request


def counted_rest(self, method, url, query_params=None, *args, **kwargs):
    REQUESTS.labels("kubernetes-client", *classify(method, url, query_params)).inc()
    return _rest(self, method, url, query_params, *args, **kwargs)


_aio = aiohttp.ClientSession._request


async def counted_aio(self, method, url, *args, **kwargs):
    REQUESTS.labels("aiohttp", *classify(method, url, kwargs.get("params"))).inc()
    return await _aio(self, method, url, *args, **kwargs)


kubernetes.client.rest.RESTClientObject.request = counted_rest
aiohttp.ClientSession._request = counted_aio

if __name__ == "__main__":
    runpy.run_module("kubetune.operator", run_name="__main__")
