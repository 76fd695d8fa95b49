"""report.html: written beside every run's artifacts, self-contained, with the charts and the run's numbers; a
report that cannot be drawn never fails the run."""
import json
import re
from html.parser import HTMLParser

from kubetune.trainer import report
from kubetune.trainer.loop import train
from tests.trainer.conftest import chat_rows, settings, write_jsonl
from tests.trainer.test_classification import make_job as classifier_job
from tests.trainer.test_classification import tiny_bert  # noqa: F401 (the fixture)
from tests.trainer.test_train import make_job


class Page(HTMLParser):
    """Ids, tags and every attribute that would make a browser fetch something."""

    def __init__(self):
        super().__init__()
        self.ids, self.tags, self.fetching = set(), [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name == "id":
                self.ids.add(value)
            if name in ("src", "href", "xlink:href", "srcset", "data", "action", "poster") and value \
                    and not value.startswith("#"):
                self.fetching.append((tag, name, value))


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    return page


def test_a_run_writes_a_self_contained_report_with_its_charts_and_numbers(tmp_path, tiny_model):
    job = make_job(tmp_path, tiny_model, dataset={"test": write_jsonl(tmp_path / "data/test.jsonl",
                                                                      chat_rows(16, seed=3))})
    summary = train(job, "run-1", settings(tmp_path))
    path = tmp_path / "out/run-1/report.html"
    assert summary["artifacts"]["reportUri"] == f"file://{path}"
    html = path.read_text()
    page = parse(html)
    assert {"loss-chart", "lr-chart", "comparison-chart", "comparison", "test-metrics", "worst", "answers",
            "spec-yaml"} <= page.ids
    assert page.tags.count("svg") == 3  # loss, learning rate, the comparison with the base model
    # Nothing to fetch: no scripts, stylesheets, images or fonts from anywhere, no URL in CSS.
    assert page.fetching == [] and "script" not in page.tags and "link" not in page.tags
    assert not re.search(r"url\((?!#)|@import", html)  # clip paths refer to the page's own ids
    # The numbers are the run's: summary.json's test metrics and the base-model difference with its interval.
    for value in (summary["test"]["loss"], summary["test"]["lossLow"],
                  summary["comparison"]["baseModel"]["difference"]["loss"]["value"],
                  summary["comparison"]["baseModel"]["difference"]["loss"]["low"]):
        assert report.fmt(value) in html
    assert summary["specHash"] in html and summary["runId"] in html
    # The worst examples are errors.jsonl's first rows; the answers come before and after training.
    worst = json.loads((tmp_path / "out/run-1/errors.jsonl").read_text().splitlines()[0])
    assert report.fmt(worst["loss"]) in html
    assert html.count("please say") >= 3
    # The loss chart draws every logged step: its line has as many vertices as train rows.
    rows = [json.loads(x) for x in (tmp_path / "out/run-1/metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if r["kind"] == "train"]) == 12


def test_a_report_that_cannot_be_drawn_leaves_the_run_whole(tmp_path, tiny_model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(report, "loss_chart", broken)
    job = make_job(tmp_path, tiny_model, hyperparameters={"maxSteps": 2}, evaluation={"baseline": False})
    summary = train(job, "run-1", settings(tmp_path))
    assert summary["stopReason"] == "MaxStepsReached" and "reportUri" not in summary["artifacts"]
    assert (tmp_path / "out/run-1/summary.json").exists() and not (tmp_path / "out/run-1/report.html").exists()


def test_render_on_numbers_alone_escapes_text_and_shows_the_verdict():
    summary = {"runId": "g1-abc", "specHash": "f00", "stopReason": "MaxStepsReached", "steps": 2, "totalSteps": 2,
               "shippedStep": 2, "test": {"loss": 1.25, "lossLow": 1.0, "lossHigh": 1.5},
               "comparison": {"champion": {"test": {"loss": 1.5}, "difference": {
                   "loss": {"value": -0.25, "low": -0.4, "high": -0.1, "excludesZero": True}}}},
               "data": {"trainRows": 4}}
    records = [{"kind": "train", "step": s, "loss": 2.0 / s, "lr": 1e-3} for s in (1, 2)]
    promotion = {"verdict": "Rejected", "reason": "GateFailed", "destination": "s3://m/bot/",
                 "reasons": ["loss <b>not</b> better"], "checks": [{"criterion": "beatChampion", "metric": "loss",
                                                                    "passed": False, "value": -0.25}]}
    html = report.render({"metadata": {"name": "bot"}, "spec": {"task": "causal-lm", "method": {"type": "lora"},
                                                                "baseModel": {"uri": "s3://b/"}}},
                         summary, records, [{"input": "<script>x</script>", "reference": "a", "prediction": "b",
                                             "loss": 3.0}], promotion=promotion)
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;not&lt;/b&gt;" in html
    assert 'class="verdict bad">Rejected' in html and "vs champion" in html
    assert parse(html).tags.count("svg") == 3 and "-0.25" in html


def test_a_classifier_report_has_its_per_class_table_and_the_majority_class():
    diff = {"value": 0.3, "low": 0.2, "high": 0.4, "excludesZero": True}
    summary = {"runId": "g1-abc", "specHash": "f00", "stopReason": "EpochsCompleted", "steps": 4, "totalSteps": 4,
               "shippedStep": 4, "test": {"accuracy": 0.8, "accuracyLow": 0.7, "accuracyHigh": 0.9, "f1": 0.75},
               "comparison": {"majorityClass": {"test": {"accuracy": 0.5}, "difference": {"accuracy": diff}}},
               "perClass": {"neg": {"precision": 0.8, "recall": 0.9, "f1": 0.85, "support": 10},
                            "pos": {"precision": 0.7, "recall": 0.6, "f1": 0.65, "support": 6}}}
    errors = [{"source": "test.jsonl:3", "text": "great, not", "reference": "pos", "prediction": "neg",
               "confidence": 0.9, "loss": 2.3}]
    html = report.render({"metadata": {"name": "clf"}, "spec": {"task": "sequence-classification",
                                                                "method": {"type": "lora"}}},
                         summary, [{"kind": "train", "step": 1, "loss": 0.7, "lr": 1e-4}], errors)
    page = parse(html)
    assert {"per-class", "comparison-chart", "worst"} <= page.ids and "answers" not in page.ids
    assert "vs majority class" in html and "great, not" in html and "0.65" in html


def test_a_classifier_run_writes_its_report(tmp_path, tiny_bert):  # noqa: F811
    summary = train(classifier_job(tmp_path, tiny_bert, hyperparameters={"maxSteps": 4}), "run-1", settings(tmp_path))
    html = (tmp_path / "out/run-1/report.html").read_text()
    assert {"per-class", "comparison-chart", "worst", "loss-chart"} <= parse(html).ids
    assert "vs majority class" in html and report.fmt(summary["test"]["accuracy"]) in html
