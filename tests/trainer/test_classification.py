"""Sequence classification and regression: label mapping, gradual unfreezing, and tiny BERT / Llama classifiers
trained end to end on file:// data, scored against the base model and the majority class on a test set."""
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from kubetune.api import FineTuneJob
from kubetune.api.spec import Freeze
from kubetune.trainer import classify
from kubetune.trainer import data as d
from kubetune.trainer.errors import BadInput
from kubetune.trainer.loop import train
from kubetune.trainer.unfreeze import GradualUnfreezing
from tests.api.cases import _merge
from tests.plugins.cluster import wait_for
from tests.trainer.conftest import write_jsonl
from tests.trainer.conftest import finetunejob, settings

WORDS = {"negative": "bad awful sad terrible poor".split(), "neutral": "table chair door window road".split(),
         "positive": "good great happy lovely nice".split()}
FILLER = "the a it was is so very really today".split()


def sentiment_rows(n: int, seed: int) -> list[dict]:
    """Texts whose class shows in one of their words; skewed (50/30/20) so the majority class is a real baseline."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choices(list(WORDS), weights=[5, 3, 2])[0]
        words = rng.sample(FILLER, 2) + [rng.choice(WORDS[label])]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A random 2-layer BERT encoder (no head) with a word-level tokenizer: the head is new, as with a real base."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + sorted({w for ws in WORDS.values() for w in ws} | set(FILLER)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(out)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)).save_pretrained(out)
    return out


def make_job(tmp_path: Path, model: Path, train_rows=None, test_rows=None, **spec_patch) -> FineTuneJob:
    data = tmp_path / "data"
    spec = {
        "task": "sequence-classification",
        "baseModel": {"uri": f"file://{model}"},
        "dataset": {"train": write_jsonl(data / "train.jsonl", train_rows or sentiment_rows(192, seed=1)),
                    "validation": write_jsonl(data / "val.jsonl", sentiment_rows(48, seed=2)),
                    "test": write_jsonl(data / "test.jsonl", test_rows or sentiment_rows(120, seed=3)),
                    "maxSeqLength": 16},
        "method": {"type": "full"},
        "hyperparameters": {"maxSteps": 60, "batchSize": 16, "microBatchSize": 8, "learningRate": 5e-3,
                            "warmupRatio": 0.0},
        "evaluation": {"everySteps": 10, "baseline": True},
        "output": {"uri": f"file://{tmp_path}/out/"},
        "resources": {"gpusPerNode": 0},
    }
    _merge(spec, spec_patch)
    return finetunejob("tiny-cls", spec)


def records(values: list, source: str = "train.jsonl") -> list[d.Record]:
    return [d.Record(f"{source} line {i + 1}", {"text": "x", "label": v}) for i, v in enumerate(values)]


def job_with(**classification) -> FineTuneJob:
    patch = {"classification": classification} if classification else {}
    return FineTuneJob.model_validate({
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "x"},
        "spec": {"task": "sequence-classification", "baseModel": {"uri": "file:///m"},
                 "dataset": {"train": "file:///t.jsonl"}, "hyperparameters": {"maxSteps": 1, "batchSize": 4},
                 "output": {"uri": "file:///o/"}, **patch}})


# --- Label mapping ---------------------------------------------------------------------------------------------

def test_class_names_from_the_data_are_sorted_and_saved_in_the_config():
    labels = classify.label_space(job_with(), records(["pos", "neg", "neu", "neg"]))
    assert labels.names == ("neg", "neu", "pos")
    assert [labels.target(v, "s") for v in ("neg", "neu", "pos")] == [0, 1, 2]
    kw = labels.model_kwargs()
    assert kw["id2label"] == {0: "neg", 1: "neu", 2: "pos"} and kw["label2id"]["pos"] == 2 and kw["num_labels"] == 3


def test_integer_ids_json_or_csv_keep_their_values():
    assert classify.label_space(job_with(), records([2, 0, 1])).names == ("0", "1", "2")
    labels = classify.label_space(job_with(), records(["0", "3", "1"]))  # CSV: digits as strings
    assert labels.names == ("0", "1", "2", "3") and labels.target("3", "s") == 3 and labels.target(2, "s") == 2
    assert classify.label_space(job_with(numLabels=5), records([0, 1])).num_labels == 5


def test_declared_labels_accept_names_and_ids():
    labels = classify.label_space(job_with(labels=["negative", "neutral", "positive"]), records(["x"]))
    assert labels.target("positive", "s") == 2 and labels.target(1, "s") == 1 and labels.target("0", "s") == 0


@pytest.mark.parametrize("spec, values, message", [
    ({"labels": ["a", "b"], "numLabels": 3}, ["a"], "classification.numLabels 3 does not match the 2"),
    ({"numLabels": 2}, ["a", "b", "c"], "numLabels 2 does not match the 3 labels in dataset.train column 'label'"),
    ({"numLabels": 2}, [0, 5], "label id 5 in column 'label' is out of range for classification.numLabels 2"),
    ({}, ["only", "only"], "holds a single class 'only'"),
    ({}, ["a", 1.5], "train.jsonl line 2: label 1.5 in column 'label' must be a class name or id"),
    ({"classWeights": [1.0, 2.0]}, ["a", "b", "c"], "classification.classWeights has 2 values for 3 labels"),
    ({"classWeights": [0.0, 0.0]}, ["a", "b"], "one positive"),
])
def test_bad_label_specs_name_the_field_and_value(spec, values, message):
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        classify.label_space(job_with(**spec), records(values))


def test_unknown_label_and_non_numeric_target_name_file_and_line():
    labels = classify.label_space(job_with(), records(["a", "b"]))
    with pytest.raises(BadInput, match=r"test\.jsonl line 7: unknown label 'c' in column 'label'; the labels are a, b "
                       r"\(class names or ids 0\.\.numLabels-1\); they were read from dataset\.train: list every"):
        labels.target("c", "test.jsonl line 7")
    with pytest.raises(BadInput, match=r"line 7: unknown label 2"):
        labels.target(2, "test.jsonl line 7")
    regression = classify.label_space(job_with(numLabels=1), records(["x"]))
    assert regression.regression and regression.target("2.5", "s") == 2.5 and regression.model_kwargs() == {
        "num_labels": 1, "problem_type": "regression"}
    for bad in ("high", "nan", None, True):
        with pytest.raises(BadInput, match=r"data\.csv line 12: label .* is not a number \(classification\.numLabels 1"):
            regression.target(bad, "data.csv line 12")


def test_class_weights_weight_the_loss_and_its_normaliser():
    labels = classify.Labels(("a", "b"), "label")
    task = classify.Classification(labels, [1.0, 3.0])
    batch = task.collate([{"input_ids": [1, 2], "label": 0}, {"input_ids": [1], "label": 1}], 0)
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert task.targets(batch) == 4.0

    class Fixed(torch.nn.Module):  # logits independent of the input: the loss is computable by hand
        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"logits": torch.tensor([[0.0, 0.0], [0.0, 0.0]])})()

    per_example = task.losses(Fixed(), batch, torch.device("cpu"), None)
    assert per_example.tolist() == pytest.approx([np.log(2), 3 * np.log(2)])


# --- Gradual unfreezing ----------------------------------------------------------------------------------------

def trainable_layers(model) -> set[str]:
    """Which groups train: 'emb', block indices, 'head' (everything after the blocks)."""
    out = set()
    for name, p in model.named_parameters():
        if p.requires_grad:
            if ".embeddings." in name:
                out.add("emb")
            elif ".layer." in name:
                out.add(int(name.split(".layer.")[1].split(".")[0]))
            else:
                out.add("head")
    return out


def test_gradual_unfreezing_thaws_one_block_from_the_top_every_n_steps(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    unfreeze = GradualUnfreezing(model, Freeze(unfreeze_every_steps=5), steps_per_epoch=100)
    seen = {}
    for step in range(0, 30):
        changed = unfreeze.apply(step)
        seen[step] = trainable_layers(model)
        assert (changed is not None) == (step in (0, 5, 10, 15, 20)), step
    assert seen[0] == seen[4] == {"head"}  # pooler and classifier
    assert seen[5] == seen[9] == {"head", 2}  # the top block first
    assert seen[10] == {"head", 2, 1}
    assert seen[15] == {"head", 2, 1, 0}
    assert seen[20] == seen[29] == {"head", 2, 1, 0, "emb"}  # the embedding layer last


def test_gradual_unfreezing_by_epochs_from_a_starting_depth_keeps_frozen_embeddings(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    freeze = Freeze(trainable_top_layers=1, unfreeze_every_epochs=2, embeddings=True)
    unfreeze = GradualUnfreezing(model, freeze, steps_per_epoch=3)
    layers = {}
    for step in range(20):
        unfreeze.apply(step)
        layers[step] = trainable_layers(model)
    assert layers[0] == layers[5] == {"head", 2}
    assert layers[6] == layers[11] == {"head", 2, 1}  # epochs 2-3
    assert layers[12] == {"head", 2, 1, 0}
    # Epoch 6: the embedding layer thaws, all but the word embeddings (freeze.embeddings).
    assert layers[18] == {"head", 2, 1, 0, "emb"}
    assert not model.bert.embeddings.word_embeddings.weight.requires_grad
    assert model.bert.embeddings.position_embeddings.weight.requires_grad


# --- End to end ------------------------------------------------------------------------------------------------

def test_bert_classifier_with_gradual_unfreezing_beats_both_baselines(tmp_path, tiny_bert):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    job = make_job(tmp_path, tiny_bert, method={"freeze": {"trainableTopLayers": 1, "unfreezeEverySteps": 10}},
                   earlyStopping={"metric": "f1", "patience": 5})
    summary = train(job, "cls", settings(tmp_path))
    run = tmp_path / "out/cls"
    test = summary["test"]
    assert test["f1Low"] <= test["f1"] <= test["f1High"] and test["accuracy"] > 0.7
    majority = summary["comparison"]["majorityClass"]
    assert majority["description"] == "always predicts 'negative', the most frequent training label"
    share = np.mean([r["label"] == "negative" for r in sentiment_rows(120, seed=3)])
    assert majority["test"]["f1"] == pytest.approx(2 * share / (1 + share) / 3)  # F1 of one class, 0 for two
    for against in ("majorityClass", "baseModel"):
        diff = summary["comparison"][against]["difference"]["f1"]
        assert diff["excludesZero"] and diff["low"] > 0, (against, diff)
        assert diff["value"] == pytest.approx(test["f1"] - summary["comparison"][against]["test"]["f1"])
    assert set(summary["perClass"]) == {"negative", "neutral", "positive"}
    matrix = summary["confusionMatrix"]
    assert matrix["labels"] == ["negative", "neutral", "positive"] and sum(map(sum, matrix["matrix"])) == 120
    assert summary["baseline"]["f1"] < summary["eval"]["f1"]  # the base model on validation
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["trainable_units"]) for r in rows if r["kind"] == "unfreeze"][:4] == [
        (0, 1), (10, 2), (20, 3), (30, 4)]  # top block, two more, then the embeddings
    assert {r["model"] for r in rows if r["kind"] == "test"} == {"fine-tuned", "baseModel", "majorityClass"}

    # The shipped model carries its label names and scores what the summary says.
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    tok = AutoTokenizer.from_pretrained(run / "model")
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    texts = [r["text"] for r in sentiment_rows(120, seed=3)]
    with torch.no_grad():
        logits = model(**tok(texts, return_tensors="pt", padding=True)).logits
    predicted = [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
    truth = [r["label"] for r in sentiment_rows(120, seed=3)]
    assert np.mean([p == t for p, t in zip(predicted, truth)]) == pytest.approx(test["accuracy"])
    errors = [json.loads(x) for x in (run / "errors.jsonl").read_text().splitlines()] \
        if (run / "errors.jsonl").exists() else []
    assert len(errors) == sum(p != t for p, t in zip(predicted, truth))


def test_errors_jsonl_lists_misclassified_examples_worst_first(tmp_path, tiny_bert):
    # Too little training to be perfect: some test examples are misclassified.
    job = make_job(tmp_path, tiny_bert, hyperparameters={"maxSteps": 3, "learningRate": 1e-3},
                   evaluation={"baseline": False})
    summary = train(job, "few", settings(tmp_path))
    errors = [json.loads(x) for x in (tmp_path / "out/few/errors.jsonl").read_text().splitlines()]
    assert errors and summary["artifacts"]["errorsUri"].endswith("/few/errors.jsonl")
    assert all(e["prediction"] != e["reference"] for e in errors)
    assert [e["loss"] for e in errors] == sorted((e["loss"] for e in errors), reverse=True)
    first = errors[0]
    line = int(first["source"].rsplit(" ", 1)[1])
    original = sentiment_rows(120, seed=3)[line - 1]
    assert first["source"].startswith(f"file://{tmp_path}/data/test.jsonl line ")
    assert (first["text"], first["reference"]) == (original["text"], original["label"])
    assert "baseModel" not in summary["comparison"] and "majorityClass" in summary["comparison"]


def test_lora_llama_classifier_trains_and_saves_its_head(tmp_path, tiny_model):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    job = make_job(tmp_path, tiny_model, method={"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
                   hyperparameters={"maxSteps": 40, "learningRate": 1e-2}, evaluation={"everySteps": 20},
                   dataset={"maxSeqLength": 32}, output={"mergeAdapter": True})
    summary = train(job, "lora", settings(tmp_path))
    assert summary["comparison"]["majorityClass"]["difference"]["f1"]["excludesZero"]
    assert summary["test"]["f1"] > summary["comparison"]["baseModel"]["test"]["f1"]
    model_dir = tmp_path / "out/lora/model"
    adapter = json.loads((model_dir / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]
    config = AutoConfig.from_pretrained(model_dir)
    assert config.id2label[2] == "positive"
    assert any("score" in k for k in load_file(model_dir / "adapter_model.safetensors"))
    # Loaded the documented way, the adapter and its trained head reproduce the reported test accuracy.
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, config=config)
    reloaded = PeftModel.from_pretrained(base, model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = sentiment_rows(120, seed=3)
    with torch.no_grad():
        logits = reloaded(**tok([r["text"] for r in rows], return_tensors="pt", padding=True)).logits
    predicted = [config.id2label[i] for i in logits.argmax(-1).tolist()]
    assert np.mean([p == r["label"] for p, r in zip(predicted, rows)]) == pytest.approx(summary["test"]["accuracy"])
    # Merged: a plain classifier with the trained head and the label names, predicting the same.
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out/lora/merged").eval()
    assert merged.config.id2label == config.id2label
    with torch.no_grad():
        again = merged(**tok([r["text"] for r in rows], return_tensors="pt", padding=True)).logits
    assert again.argmax(-1).tolist() == logits.argmax(-1).tolist()


def test_regression_reports_mse_mae_r2_against_the_training_mean(tmp_path, tiny_bert):
    rng = random.Random(0)

    def rows(n):  # the target is the number of positive words, with noise
        out = []
        for _ in range(n):
            k = rng.randint(0, 3)
            words = rng.sample(FILLER, 4) + rng.sample(WORDS["positive"], k)
            rng.shuffle(words)
            out.append({"text": " ".join(words), "label": k + rng.gauss(0, 0.1)})
        return out

    job = make_job(tmp_path, tiny_bert, train_rows=rows(192), test_rows=rows(80),
                   dataset={"validation": write_jsonl(tmp_path / "data/val-r.jsonl", rows(48))},
                   classification={"numLabels": 1}, earlyStopping={"metric": "r2"},
                   hyperparameters={"maxSteps": 60})
    summary = train(job, "reg", settings(tmp_path))
    test = summary["test"]
    assert set(test) >= {"mse", "mseLow", "mseHigh", "mae", "r2", "r2Low", "r2High", "loss"}
    assert test["r2"] > 0.5
    mean = summary["comparison"]["trainMean"]
    assert mean["description"].startswith("always predicts") and abs(mean["test"]["r2"]) < 0.1
    assert mean["difference"]["mse"]["high"] < 0 and mean["difference"]["mse"]["excludesZero"]
    assert "perClass" not in summary


def test_unknown_label_in_the_test_set_is_bad_input_naming_the_line(tmp_path, tiny_bert):
    test_rows = sentiment_rows(5, seed=3) + [{"text": "good", "label": "ecstatic"}]
    job = make_job(tmp_path, tiny_bert, test_rows=test_rows)
    with pytest.raises(BadInput, match=r"data/test\.jsonl line 6: unknown label 'ecstatic' in column 'label'"):
        train(job, "bad", settings(tmp_path))


def test_interrupted_classifier_with_gradual_unfreezing_resumes_exactly(tmp_path, tiny_bert):
    """Checkpoints carry the weights of blocks that are still frozen and the baseline's test scores: a run
    stopped after a checkpoint resumes into the same losses and the same comparison as an uninterrupted one."""
    job = make_job(tmp_path, tiny_bert, method={"freeze": {"trainableTopLayers": 1, "unfreezeEverySteps": 6}},
                   hyperparameters={"maxSteps": 24}, checkpoint={"everySteps": 8}, evaluation={"everySteps": 12})

    def losses(run: str) -> dict:
        rows = [json.loads(x) for x in (tmp_path / "out" / run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}

    reference = train(job, "reference", settings(tmp_path))

    class Killed(Exception):
        pass

    def die_at_step_13(row):
        if row["kind"] == "train" and row["step"] == 13:
            raise Killed

    with pytest.raises(Killed):
        train(job, "killed", settings(tmp_path), on_log=die_at_step_13)
    marker = tmp_path / "out/killed/checkpoints/step-00000008/COMPLETE"
    wait_for("the step-8 checkpoint (uploaded in the background)", marker.exists, timeout=30, interval=0.05)
    rows = []
    resumed = train(job, "killed", settings(tmp_path), on_log=rows.append)
    # A restart from scratch logs the same deterministic losses: only the second process's own rows tell a resume.
    assert [r["step"] for r in rows if r["kind"] == "resume"] == [8], rows
    assert min(r["step"] for r in rows if r["kind"] == "train") == 9
    assert losses("killed") == pytest.approx(losses("reference"), rel=1e-5)
    assert resumed["test"] == pytest.approx(reference["test"], rel=1e-5)
    assert resumed["comparison"]["baseModel"]["test"] == pytest.approx(reference["comparison"]["baseModel"]["test"])
