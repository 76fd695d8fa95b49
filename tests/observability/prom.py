"""Prometheus' HTTP API, as Grafana's Prometheus data source calls it."""
import json
import math
import urllib.parse
import urllib.request


def api(base: str, path: str, **params) -> dict:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (the local Prometheus)
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def instant(base: str, expr: str, at: float) -> list[dict]:
    return api(base, "query", query=expr, time=f"{at:.3f}")["result"]


def range_(base: str, expr: str, start: float, end: float, step: float = 2) -> list[dict]:
    return api(base, "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=str(step))["result"]


def finite_values(result: list[dict]) -> list[float]:
    """Every sample of an instant or range result that is a number (not NaN/Inf)."""
    out = []
    for r in result:
        samples = r["values"] if "values" in r else [r["value"]]
        out += [float(v) for _, v in samples if math.isfinite(float(v))]
    return out
