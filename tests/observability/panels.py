"""The dashboard's PromQL, as Grafana would send it: panels and targets from the generated JSON, with the template
variables substituted."""
import json
import re
from dataclasses import dataclass
from pathlib import Path

DASHBOARD = Path(__file__).parents[2] / "charts" / "kubetune" / "files" / "dashboards" / "kubetune.json"


@dataclass(frozen=True)
class Target:
    panel: str
    ref: str
    expr: str
    instant: bool


def targets(dashboard: dict | None = None) -> list[Target]:
    board = dashboard or json.loads(DASHBOARD.read_text())
    return [Target(p["title"], t["refId"], t["expr"], bool(t.get("instant")))
            for p in board["panels"] for t in p.get("targets", [])]


def substitute(expr: str, namespace: str = ".*", finetunejob: str = ".*", range_: str = "1h",
               rate_interval: str = "1m") -> str:
    """Grafana's interpolation of the variables the dashboard uses (a multi-value regex for namespace/job)."""
    values = {"namespace": namespace, "finetunejob": finetunejob, "__range": range_,
              "__rate_interval": rate_interval}
    out = re.sub(r"\$(\w+)", lambda m: values[m.group(1)], expr)
    assert "$" not in out, out
    return out
