"""report.html: one page per run for the person who decides what to do with it.

Everything the run already computed, drawn and tabled: the training and validation loss, the learning rate, the
test comparison against the base model (and the champion, with promotion) with the paired 95% intervals, the
promotion verdict, the worst test examples, a few held-out answers before and after training, the data's
fingerprints and the spec. The page is self-contained: the charts are inline SVG drawn by matplotlib (Agg), no
script, stylesheet, font or image is fetched, so it opens offline and from any bucket browser.

`render` is a pure function of what the run logged and wrote (summary, metrics rows, errors, samples); `render_safe`
is what the trainer calls: a report that fails to render is a warning in the log, never a failed or lost run.
"""
import io
import logging
import os
import tempfile

import yaml
from jinja2 import Environment

from kubetune.api import contract

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
WORST_SHOWN = 10  # of errors.jsonl's rows (the worst first)
COMPARED = {"baseModel": "base model", "champion": "champion", "majorityClass": "majority class",
            "trainMean": "train mean"}


# --- Charts: each a small function from numbers to one inline <svg> --------------------------------------------

def _pyplot():
    """matplotlib's pyplot on the Agg backend, its config and cache dirs in a temporary directory (the trainer's
    root filesystem is read-only; HOME may be too)."""
    os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="kubetune-mpl-"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _svg(fig) -> str:
    """The figure as an <svg> element: text as paths (no font to fetch), no XML prolog, no metadata block."""
    plt = _pyplot()
    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "path", "svg.hashsalt": "kubetune"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def series(records: list[dict], kind: str, key: str) -> tuple[list, list]:
    """(steps, values) of metrics rows of one kind that carry `key`."""
    rows = [r for r in records if r.get("kind") == kind and isinstance(r.get(key), (int, float))]
    return [r["step"] for r in rows], [r[key] for r in rows]


def loss_chart(records: list[dict]) -> str | None:
    train, val, base = series(records, "train", "loss"), series(records, "eval", "loss"), \
        series(records, "baseline", "loss")
    if not train[0] and not val[0]:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(*train, label="training loss", color="#4c72b0", linewidth=1)
    if val[0] or base[0]:
        ax.plot(base[0] + val[0], base[1] + val[1], "o-", label="validation loss", color="#dd8452", markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per target token")
    ax.grid(alpha=0.3)
    ax.legend()
    return _svg(fig)


def lr_chart(records: list[dict]) -> str | None:
    steps, lrs = series(records, "train", "lr")
    if not steps:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 2.2))
    ax.plot(steps, lrs, color="#55a868")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.grid(alpha=0.3)
    return _svg(fig)


def comparison_chart(comparison: dict) -> str | None:
    """One panel per metric: the fine-tuned model minus each baseline, its paired 95% interval as a bar; zero (no
    difference) as a line. An interval wholly on one side of it is a difference the test set shows."""
    against = [k for k in comparison if comparison[k].get("difference")]
    metrics = [m for m in next(iter(comparison.values()), {}).get("difference", {}) if against]
    metrics = [m for m in metrics if all(m in comparison[a]["difference"] for a in against)]
    if not metrics:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics) + 1, 0.5 * len(against) + 1.6),
                             squeeze=False, layout="constrained")
    for ax, metric in zip(axes[0], metrics):
        for y, a in enumerate(against):
            d = comparison[a]["difference"][metric]
            color = "#2a9d8f" if d.get("excludesZero") else "#8d99ae"
            ax.plot([d["low"], d["high"]], [y, y], color=color, linewidth=5, solid_capstyle="butt")
            ax.plot([d["value"]], [y], "o", color="black", markersize=4)
        ax.axvline(0, color="#c44e52", linewidth=1)
        ax.set_yticks(range(len(against)), [f"vs {COMPARED.get(a, a)}" for a in against] if ax is axes[0][0]
                      else [""] * len(against))
        ax.set_ylim(len(against) - 0.4, -0.6)  # the first baseline on top
        ax.set_title(metric, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("fine-tuned minus baseline on the test set (95% paired-bootstrap interval)", fontsize=10)
    return _svg(fig)


# --- Tables ----------------------------------------------------------------------------------------------------

def comparison_rows(summary: dict) -> list[dict]:
    """A row per (baseline, metric): both models' values and the difference with its interval."""
    rows = []
    for against, c in (summary.get("comparison") or {}).items():
        for metric, d in (c.get("difference") or {}).items():
            rows.append({"against": COMPARED.get(against, against), "metric": metric,
                         "fineTuned": (summary.get("test") or {}).get(metric),
                         "baseline": (c.get("test") or {}).get(metric), **d})
    return rows


def fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else ("yes" if value else "no")
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ name }} run {{ s.runId }}: kubetune report</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd; padding: .25em .6em; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre, td.text { white-space: pre-wrap; word-break: break-word; font: 12px/1.35 ui-monospace, monospace; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; }
.verdict { font-weight: bold; padding: .1em .5em; border-radius: 3px; }
.good { background: #d8f3dc; } .bad { background: #ffe5e5; } .other { background: #eee; }
figure { margin: .5em 0; } figure svg { max-width: 100%; height: auto; }
</style></head><body>
<h1>{{ name }} <small>run {{ s.runId }}</small></h1>
<table id="facts">
<tr><th>Task</th><td>{{ spec.task }} ({{ (spec.method or {}).type }} on {{ (spec.baseModel or {}).uri }})</td></tr>
<tr><th>Stopped</th><td>{{ s.stopReason }} after {{ s.steps }} of {{ s.totalSteps }} steps; shipped the weights of
step {{ s.shippedStep }}</td></tr>
<tr><th>Wall time</th><td>{{ s.wallSeconds }} s</td></tr>
<tr><th>Spec hash</th><td><code>{{ s.specHash }}</code></td></tr>
{% if s.best %}<tr><th>Best validation {{ s.best.name }}</th><td>{{ fmt(s.best.value) }} at step {{ s.best.step }}
</td></tr>{% endif %}
<tr><th>Artifacts</th><td><code>{{ (s.artifacts or {}).uri }}</code></td></tr>
</table>

{% if promotion %}<h2 id="promotion">Promotion</h2>
<p><span class="verdict {{ verdict_class }}">{{ promotion.verdict or "pending" }}</span>
{% if promotion.reason %}({{ promotion.reason }}){% endif %} to <code>{{ promotion.destination }}</code>
{% if promotion.championRunId %}; champion before this run: {{ promotion.championRunId }}{% endif %}
{% if promotion.modelUri %}; serving model: <code>{{ promotion.modelUri }}</code>{% endif %}</p>
{% if promotion.reasons %}<ul>{% for r in promotion.reasons %}<li>{{ r }}</li>{% endfor %}</ul>{% endif %}
{% if promotion.checks %}<table id="checks"><tr><th>Check</th><th>Passed</th><th>Value</th><th>Low</th><th>High</th>
<th>Threshold</th><th>Message</th></tr>
{% for c in promotion.checks %}<tr><td>{{ c.criterion }} ({{ c.metric }})</td><td>{{ fmt(c.passed) }}</td>
<td class="num">{{ fmt(c.value) }}</td><td class="num">{{ fmt(c.low) }}</td><td class="num">{{ fmt(c.high) }}</td>
<td class="num">{{ fmt(c.threshold) }}</td><td>{{ c.message }}</td></tr>{% endfor %}</table>{% endif %}
{% endif %}

<h2 id="training">Training</h2>
{% if charts.loss %}<figure id="loss-chart">{{ charts.loss | safe }}</figure>{% else %}<p>No loss was logged.</p>
{% endif %}
{% if charts.lr %}<figure id="lr-chart">{{ charts.lr | safe }}</figure>{% endif %}

<h2 id="test">Test set</h2>
{% if s.test %}<table id="test-metrics"><tr><th>Metric</th><th>Fine-tuned</th><th>95% interval</th></tr>
{% for m in test_metrics %}<tr><td>{{ m }}</td><td class="num">{{ fmt(s.test[m]) }}</td>
<td class="num">{{ fmt(s.test[m ~ "Low"]) }} .. {{ fmt(s.test[m ~ "High"]) }}</td></tr>{% endfor %}</table>
{% else %}<p>No test split (dataset.test): no held-out comparison.</p>{% endif %}
{% if charts.comparison %}<figure id="comparison-chart">{{ charts.comparison | safe }}</figure>{% endif %}
{% if comparison %}<table id="comparison"><tr><th>Against</th><th>Metric</th><th>Baseline</th><th>Fine-tuned</th>
<th>Difference</th><th>95% interval</th><th>Interval excludes 0</th></tr>
{% for r in comparison %}<tr><td>{{ r.against }}</td><td>{{ r.metric }}</td><td class="num">{{ fmt(r.baseline) }}</td>
<td class="num">{{ fmt(r.fineTuned) }}</td><td class="num">{{ fmt(r.value) }}</td>
<td class="num">{{ fmt(r.low) }} .. {{ fmt(r.high) }}</td><td>{{ fmt(r.excludesZero) }}</td></tr>{% endfor %}
</table>{% endif %}
{% if s.perClass %}<table id="per-class"><tr><th>Class</th>{% for k in per_class_keys %}<th>{{ k }}</th>{% endfor %}
</tr>{% for name, row in s.perClass.items() %}<tr><td>{{ name }}</td>{% for k in per_class_keys %}
<td class="num">{{ fmt(row[k]) }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}

<h2 id="errors">Worst test examples</h2>
{% if errors %}<p>The {{ errors | length }} worst of {{ n_errors }} kept in errors.jsonl (highest loss per target
token{% if spec.task != "causal-lm" %}, misclassified first{% endif %}).</p>
<table id="worst"><tr><th>Input</th><th>Reference</th><th>Prediction</th><th>Loss</th></tr>
{% for e in errors %}<tr><td class="text">{{ e.input or e.text }}</td><td class="text">{{ e.reference }}</td>
<td class="text">{{ e.prediction }}</td><td class="num">{{ fmt(e.loss) }}</td></tr>{% endfor %}</table>
{% else %}<p>No error analysis (no test split).</p>{% endif %}

{% if samples %}<h2 id="samples">Answers before and after training</h2>
<p>Greedy decoding, at most {{ sample_tokens }} new tokens, on held-out prompts.</p>
<table id="answers"><tr><th>Prompt</th><th>Reference</th><th>Before</th><th>After</th></tr>
{% for x in samples %}<tr><td class="text">{{ x.prompt }}</td><td class="text">{{ x.reference }}</td>
<td class="text">{{ x.before }}</td><td class="text">{{ x.after }}</td></tr>{% endfor %}</table>{% endif %}

<h2 id="data">Data</h2>
<table><tr><th>Training rows</th><td class="num">{{ data.trainRows }}</td></tr>
<tr><th>Validation examples</th><td class="num">{{ data.validationExamples }}</td></tr>
<tr><th>Test examples</th><td class="num">{{ data.testExamples }}</td></tr>
<tr><th>Truncated / dropped (too long, no target)</th><td class="num">{{ data.truncated }} / {{ data.droppedTooLong }}
/ {{ data.droppedNoTarget }}</td></tr>
{% for split, fp in fingerprints.items() %}<tr><th>{{ split }} fingerprint</th><td><code>{{ fp }}</code></td></tr>
{% endfor %}</table>

<h2 id="spec">Spec</h2>
<pre id="spec-yaml">{{ spec_yaml }}</pre>
<p><small>Written by kubetune; numbers from {{ summary_file }} and {{ metrics_file }} beside this page.</small></p>
</body></html>
"""


def samples_table(samples: dict) -> list[dict]:
    """{"before": [...], "after": [...]} (causal_lm.CausalLM.answers, same prompts) as rows with both answers."""
    before, after = samples.get("before") or [], samples.get("after") or []
    rows = {x["prompt"]: {**x, "before": x["answer"], "after": ""} for x in before}
    for x in after:
        rows.setdefault(x["prompt"], {**x, "before": ""})["after"] = x["answer"]
    return list(rows.values())


def render(job_wire: dict, summary: dict, records: list[dict], errors: list[dict] = (), samples: dict | None = None,
           promotion: dict | None = None, fingerprints: dict | None = None) -> str:
    """The page, from the run's spec (wire form), summary, metrics rows, error rows and samples."""
    from kubetune.trainer.causal_lm import SAMPLE_TOKENS

    promotion = promotion if promotion is not None else summary.get("promotion")
    verdict = (promotion or {}).get("verdict")
    test = summary.get("test") or {}
    per_class = next(iter((summary.get("perClass") or {}).values()), {})
    env = Environment(autoescape=True)
    env.globals["fmt"] = fmt
    return env.from_string(TEMPLATE).render(
        name=job_wire.get("metadata", {}).get("name", ""), s=summary, spec=job_wire.get("spec", {}),
        promotion=promotion, verdict_class="good" if verdict in ("Promoted", "Overridden", "RolledBack") else
        "bad" if verdict in ("Rejected", "Conflict") else "other",
        charts={"loss": loss_chart(records), "lr": lr_chart(records),
                "comparison": comparison_chart(summary.get("comparison") or {})},
        test_metrics=[m for m in test if not m.endswith(("Low", "High"))], comparison=comparison_rows(summary),
        per_class_keys=list(per_class), errors=list(errors)[:WORST_SHOWN], n_errors=len(errors),
        samples=samples_table(samples or {}), sample_tokens=SAMPLE_TOKENS, data=summary.get("data") or {},
        fingerprints=fingerprints or {}, spec_yaml=yaml.safe_dump(job_wire, sort_keys=False),
        summary_file=contract.SUMMARY_FILE, metrics_file=contract.METRICS_FILE)


def render_safe(*args, **kwargs) -> str | None:
    """`render`, or None with a warning in the log: the report never fails a run."""
    try:
        return render(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 (any failure here must leave the run as it is)
        log.warning("report.html was not written: %s: %s", type(exc).__name__, exc, exc_info=True)
        return None
