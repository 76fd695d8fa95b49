"""The offline validator: every invalid case names its field, valid cases and every example pass."""
from pathlib import Path

import pytest
import yaml

from kubetune.api import FineTuneJob
from kubetune.api.validate import load_documents, validate_manifest
from tests.api.cases import INVALID, VALID, make_job

# FineTuneJob examples (the FineTuneSweep ones: tests/api/test_sweep.py).
EXAMPLES = [p for p in sorted(Path(__file__).parents[2].joinpath("examples").glob("*.yaml"))
            if "\nkind: FineTuneSweep\n" not in p.read_text()]


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.name)
def test_invalid_case_names_its_field(case):
    job, errors = validate_manifest(make_job(case.patch))
    assert job is None
    paths = [e.path for e in errors]
    assert case.field in paths, f"{case.name}: expected an error on {case.field}, got {[str(e) for e in errors]}"


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.name)
def test_valid_case(case):
    job, errors = validate_manifest(make_job(case.patch))
    assert errors == [], [str(e) for e in errors]
    assert isinstance(job, FineTuneJob)


def test_examples_exist_for_each_kind_of_job():
    names = {p.stem for p in EXAMPLES}
    assert {"chat-lora", "qlora", "full-finetune", "sentiment-classifier", "multi-gpu", "multi-node"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid(path):
    docs = load_documents(path.read_text())
    assert docs, path
    for doc in docs:
        job, errors = validate_manifest(doc)
        assert errors == [], [str(e) for e in errors]
        # What the operator stores and hands to the trainer reads back as the same job.
        assert FineTuneJob.model_validate(job.to_wire()) == job


def test_error_shows_the_bad_value_and_what_is_allowed():
    _, errors = validate_manifest(make_job({"spec": {"method": {"type": "prefix-tuning"}}}))
    (error,) = errors
    assert str(error).startswith("spec.method.type: ")
    assert "'lora', 'qlora' or 'full'" in str(error)
    assert str(error).endswith("(got prefix-tuning)")


def test_unknown_field_lists_the_allowed_ones():
    _, errors = validate_manifest(make_job({"spec": {"storage": {"secretAccessKey": "x"}}}))
    (error,) = errors
    assert "unknown field" in error.message and "secretRef" in error.message


def test_all_errors_are_reported_not_just_the_first():
    doc = make_job({"spec": {"task": "translation", "nodes": 0, "dataset": {"format": "xml"}}})
    _, errors = validate_manifest(doc)
    assert {"spec.task", "spec.nodes", "spec.dataset.format"} <= {e.path for e in errors}


def test_every_rule_in_one_section_is_reported_together():
    doc = make_job({"spec": {"method": {"type": "full", "lora": {}, "freeze": {}}}})
    # freeze is allowed on full; make both method rules fail on qlora instead.
    doc["spec"]["method"] = {"type": "qlora", "freeze": {}}
    doc["spec"]["hyperparameters"]["epochs"] = 1
    _, errors = validate_manifest(doc)
    assert {"spec.method.freeze", "spec.hyperparameters.epochs"} <= {e.path for e in errors}


def test_wrong_kind_and_api_version():
    _, errors = validate_manifest({**make_job(), "apiVersion": "kubetune.io/v1", "kind": "Job"})
    assert [e.path for e in errors] == ["apiVersion", "kind"]


def test_defaults_are_applied():
    job, _ = validate_manifest(make_job())
    spec = job.spec
    assert (spec.task, spec.method.type, spec.nodes, spec.resources.gpus_per_node) == ("causal-lm", "lora", 1, 1)
    assert spec.hyperparameters.scheduler == "cosine" and spec.checkpoint.every_minutes == 15
    assert spec.dataset.columns.messages == "messages"


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(ValueError, match="line 2, column 5: invalid YAML: mapping values are not allowed"):
        load_documents("a: 1\nb: c: d\n")


def test_wire_form_is_camel_case_and_omits_unset():
    job, _ = validate_manifest(make_job())
    wire = job.to_wire()
    assert "baseModel" in wire["spec"] and "base_model" not in wire["spec"]
    assert "validationSplit" in wire["spec"]["dataset"]
    assert "lora" not in wire["spec"]["method"]
    yaml.safe_dump(wire)  # serialisable as it is
