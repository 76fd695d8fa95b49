"""From per-example scores to reported numbers (intervals, paired comparisons, worst examples, gauges), and the
causal-LM side end to end: baseline vs fine-tuned test loss with CIs, exact match, errors.jsonl."""
import json

import numpy as np
import pytest

from kubetune.trainer import evaluation as ev
from kubetune.trainer.loop import train
from kubetune.trainer.metrics import Telemetry
from tests.trainer.conftest import chat_rows, write_jsonl
from tests.trainer.test_train import make_job, settings


def classified(y_true, y_pred, loss=None) -> ev.Scored:
    loss = None if loss is None else np.array(loss, float)
    return ev.Scored("classification", loss=loss, weight=None if loss is None else np.ones(len(loss)),
                     y_true=np.array(y_true), y_pred=np.array(y_pred), confidence=np.full(len(y_true), 0.5),
                     num_classes=3)


def test_metrics_by_hand_and_intervals_bracket_them():
    s = classified([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], loss=[0.1, 2.0, 0.2, 0.3, 0.1, 1.5])
    m = ev.metrics(s)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # precision: class0 1/2, class1 1/2, class2 2/2; recall: 1/2, 1/1, 2/3
    assert m["precision"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert m["recall"] == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    assert m["loss"] == pytest.approx(4.2 / 6)
    ci = ev.with_intervals(s)
    for k in m:
        assert ci[f"{k}Low"] <= ci[k] <= ci[f"{k}High"], k


def test_causal_lm_metrics_weight_by_tokens_and_exact_match_needs_every_token():
    s = ev.Scored("causal-lm", loss=np.array([2.0, 6.0]), weight=np.array([2, 4]), correct=np.array([2, 3]))
    m = ev.metrics(s)
    assert m["loss"] == pytest.approx(8 / 6) and m["perplexity"] == pytest.approx(np.exp(8 / 6))
    assert m["tokenAccuracy"] == pytest.approx(5 / 6) and m["exactMatch"] == 0.5


def test_paired_difference_is_exact_for_identical_models_and_detects_a_real_gain():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    noisy = np.where(rng.random(400) < 0.5, y, rng.integers(0, 3, 400))  # ~67% right
    good = np.where(rng.random(400) < 0.9, y, rng.integers(0, 3, 400))  # ~93% right
    same = ev.compare(classified(y, noisy), classified(y, noisy))
    assert same["accuracy"] == {"value": 0.0, "low": 0.0, "high": 0.0, "confidence": 0.95, "excludesZero": False}
    gain = ev.compare(classified(y, good), classified(y, noisy))["accuracy"]
    assert gain["excludesZero"] and 0.15 < gain["low"] < gain["value"] < gain["high"] < 0.4
    # Paired is tighter than the two separate intervals put together.
    a, b = ev.with_intervals(classified(y, good)), ev.with_intervals(classified(y, noisy))
    assert gain["high"] - gain["low"] < (a["accuracyHigh"] - a["accuracyLow"]) + (b["accuracyHigh"] - b["accuracyLow"])
    with pytest.raises(ValueError, match="cannot pair 400 scored examples with 3"):
        ev.compare(classified(y, good), classified([0, 1, 2], [0, 1, 2]))


def test_worst_examples_misclassified_by_loss_or_largest_error():
    s = classified([0, 1, 2, 0], [1, 1, 0, 2], loss=[0.5, 9.0, 3.0, 1.0])
    assert ev.worst(s) == [2, 3, 0]  # the correct one (loss 9) is not an error
    r = ev.Scored("regression", y_true=np.array([1.0, 2.0, 3.0]), y_pred=np.array([1.1, 0.0, 3.5]))
    assert ev.worst(r, k=2) == [1, 2]
    lm = ev.Scored("causal-lm", loss=np.array([4.0, 3.0]), weight=np.array([4, 1]), correct=np.array([0, 0]))
    assert ev.worst(lm) == [1, 0]  # per token


def test_report_and_gauges():
    y = np.array([0, 1, 2, 2, 1, 0] * 20)
    report = ev.report(classified(y, y), classified(y, np.zeros_like(y), loss=np.ones(len(y))),
                       ("always predicts 'a'", classified(y, np.zeros_like(y))), ("a", "b", "c"))
    assert report["perClass"]["b"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 40}
    assert report["confusionMatrix"]["matrix"] == [[40, 0, 0], [0, 40, 0], [0, 0, 40]]
    assert "loss" not in report["comparison"]["baseModel"]["difference"]  # the fine-tuned score has no loss here
    # The headline: the monitored metric where a baseline has it, else the task's usual one (f1 here).
    by_baseline = {line["against"]: line for line in ev.headline(report, "loss")}
    assert by_baseline["baseModel"]["metric"] == "f1" and by_baseline["majorityClass"]["metric"] == "f1"
    assert by_baseline["majorityClass"]["fineTuned"] == 1.0 and by_baseline["majorityClass"]["excludesZero"]
    assert by_baseline["majorityClass"]["baseline"] == pytest.approx(report["comparison"]["majorityClass"]["test"]["f1"])
    assert [line["metric"] for line in ev.headline(report, "accuracy")] == ["accuracy", "accuracy"]
    telemetry = Telemetry(None, on_log=lambda row: None)
    telemetry.test(report)
    value = telemetry.registry.get_sample_value
    assert value("kubetune_test_metric", {"model": "fine-tuned", "metric": "f1"}) == 1.0
    assert value("kubetune_test_metric", {"model": "majorityClass", "metric": "accuracy"}) == pytest.approx(1 / 3)
    assert value("kubetune_test_difference", {"against": "majorityClass", "metric": "accuracy", "bound": "value"}) \
        == pytest.approx(2 / 3)


def test_causal_lm_baseline_vs_fine_tuned_on_the_test_set(tmp_path, tiny_model):
    job = make_job(tmp_path, tiny_model, hyperparameters={"maxSteps": 16},
                   dataset={"test": write_jsonl(tmp_path / "data/test.jsonl", chat_rows(24, seed=3))})
    summary = train(job, "lm", settings(tmp_path))
    test, base = summary["test"], summary["comparison"]["baseModel"]
    assert test["lossLow"] <= test["loss"] <= test["lossHigh"] and "exactMatchHigh" in test
    assert base["test"]["loss"] > test["loss"]
    loss = base["difference"]["loss"]
    assert loss["excludesZero"] and loss["high"] < 0  # the fine-tuned model is better: its loss is lower
    assert "majorityClass" not in summary["comparison"] and "perClass" not in summary
    [headline] = summary["headline"]
    assert headline == {"against": "baseModel", "metric": "loss", "baseline": base["test"]["loss"],
                        "fineTuned": test["loss"], "difference": loss["value"], "low": loss["low"],
                        "high": loss["high"], "excludesZero": True}
    errors = [json.loads(x) for x in (tmp_path / "out/lm/errors.jsonl").read_text().splitlines()]
    assert len(errors) == 24 and [e["loss"] for e in errors] == sorted((e["loss"] for e in errors), reverse=True)
    assert errors[0]["source"].startswith(f"file://{tmp_path}/data/test.jsonl line ")
    line = int(errors[0]["source"].rsplit(" ", 1)[1])
    expected = chat_rows(24, seed=3)[line - 1]["messages"][1]["content"]
    assert errors[0]["reference"].startswith(expected) and errors[0]["targetTokens"] > 0
