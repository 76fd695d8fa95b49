"""A stand-in rendering of the dashboard's per-job row with matplotlib (no Grafana here): each panel drawn from the
query results of its PromQL against a real Prometheus, as tests/observability/test_dashboard_cluster.py collects
them (`{"<panel>/<refId>": {"expr", "instant", "result"}}`).

    KUBETUNE_DASHBOARD_PNG=docs/images/dashboard-job.png pytest tests/observability/test_dashboard_cluster.py
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hack.observability.dashboard import one_job  # noqa: E402

# The time-series panels of the per-job row, in dashboard order, and the legend of each query where it has two.
LEGENDS = {"Loss over time": ("loss", "eval loss"), "Throughput": ("tokens/s", "samples/s"),
           "Checkpoint seconds": ("blocked", "upload")}
SERIES = ["Loss over time", "Learning rate", "Gradient norm", "Throughput", "MFU", "Checkpoint seconds",
          "Device memory", "ETA"]


def _series(results: dict, key: str) -> list[tuple[dict, list[float], list[float]]]:
    out = []
    for r in results.get(key, {}).get("result", []):
        if "values" not in r:  # an instant query's result
            continue
        ts = [float(t) for t, _ in r["values"]]
        out.append((r["metric"], ts, [float(v) for _, v in r["values"]]))
    return out


def _by_time(results: dict, key: str) -> dict[float, float]:
    return {t: v for _, ts, vs in _series(results, key) for t, v in zip(ts, vs)}


def render(results: dict, path: str) -> None:
    titles = [p.build().title for p in one_job()]
    fig, axes = plt.subplots(4, 3, figsize=(18, 17))
    axes = axes.ravel()
    # Loss and eval loss vs step: the trend panel joins the three queries on their timestamps.
    step = _by_time(results, "Loss and eval loss vs step/A")
    ax = axes[0]
    for ref, label in (("B", "loss"), ("C", "eval loss")):
        points = sorted((step[t], v) for t, v in _by_time(results, f"Loss and eval loss vs step/{ref}").items()
                        if t in step)
        ax.plot([p[0] for p in points], [p[1] for p in points], label=label, marker="." if ref == "C" else None)
    ax.set(title="Loss and eval loss vs step", xlabel="step")
    ax.legend()
    start = min((ts[0] for key in results for _, ts, _ in _series(results, key) if ts), default=0)
    for ax, title in zip(axes[1:], SERIES):
        for ref in "AB":
            legend = LEGENDS.get(title, (title, title))["AB".index(ref)]
            target = ax.twinx() if (title, ref) == ("Throughput", "B") else ax  # samples/s on its own axis
            for _, ts, vs in _series(results, f"{title}/{ref}"):
                target.plot([t - start for t in ts], vs, label=legend, color="tab:orange" if target is not ax else None)
            if target is not ax:
                target.set_ylabel(legend)
        ax.set(title=title, xlabel="seconds since start")
        if ax.lines:
            ax.legend(loc="best", fontsize=8)
    # Test metrics vs baseline: one group of bars per metric (instant query), each labelled with its value.
    ax = axes[len(SERIES) + 1]
    bars = sorted((r["metric"]["metric"], r["metric"]["model"], float(r["value"][1]))
                  for r in results.get("Test metrics vs baseline/A", {}).get("result", []))
    y = range(len(bars))
    ax.barh(list(y), [v for *_, v in bars], color=["tab:green" if m == "fine-tuned" else "tab:gray" for _, m, _ in bars])
    ax.set_yticks(list(y), [f"{metric} {model}" for metric, model, _ in bars])
    ax.set_xscale("symlog", linthresh=1)  # perplexity in the hundreds beside accuracies below one
    for i, (*_, v) in enumerate(bars):
        ax.text(v, i, f" {v:.3g}", va="center", fontsize=8)
    ax.set(title="Test metrics vs baseline")
    # Difference to baseline with its 95% interval: a table, as the dashboard's table panel shows it.
    ax = axes[len(SERIES) + 2]
    diff: dict[tuple[str, str], dict[str, float]] = {}
    for r in results.get("Difference to baseline (95% interval)/A", {}).get("result", []):
        m = r["metric"]
        diff.setdefault((m["metric"], m["against"]), {})[m["bound"]] = float(r["value"][1])
    rows = [[metric, against, *(f"{d.get(b, float('nan')):.4g}" for b in ("value", "low", "high")),
             "yes" if d.get("low", 0) > 0 or d.get("high", 0) < 0 else "no"] for (metric, against), d in sorted(diff.items())]
    ax.axis("off")
    if rows:
        cells = ax.table(cellText=rows, colLabels=["metric", "against", "difference", "low", "high", "excludes 0"],
                         loc="center")
        cells.auto_set_font_size(False)
        cells.set_fontsize(10)
        cells.scale(1.1, 1.8)
    ax.set(title="Difference to baseline (95% interval)")
    # Progress and ETA, the row's stat panels: their last values.
    ax = axes[-1]
    ax.axis("off")
    for i, (title, unit) in enumerate((("Progress", "%"), ("ETA", " s"))):
        values = [vs[-1] for _, _, vs in _series(results, f"{title}/A")]
        if values:
            shown = f"{values[-1] * 100:.0f}%" if unit == "%" else f"{values[-1]:.0f} s"
            ax.text(0.5, 0.7 - 0.4 * i, f"{title}\n{shown}", ha="center", va="center", fontsize=20)
    assert "Loss and eval loss vs step" in titles  # the panels drawn are the generated dashboard's
    fig.suptitle("kubetune dashboard, per-job row: stand-in rendering (matplotlib, not Grafana) of the panels' "
                 "PromQL\nagainst the local Prometheus after a real tiny-model run", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    render(json.loads(open(sys.argv[1]).read()), sys.argv[2])
