"""FineTuneSweep's API: the generated CRD (committed, structural, printer columns), its CEL rules against the Python
ones, and the offline validator on the table of tests/api/sweep_cases.py."""
from pathlib import Path

import pytest
import yaml

from kubetune.api.crd import SWEEP_CRD_PATH, SWEEP_PRINTER_COLUMNS, crd, crd_yaml
from kubetune.api.sweep import FineTuneSweep, Parameter, apply_params
from kubetune.api.validate import validate_any, validate_manifest
from tests.api.sweep_cases import SWEEP_INVALID, SWEEP_INVALID_PATHS, SWEEP_VALID, make_sweep
from tests.api.test_crd import _cel, _rule_holders, _server_defaults, _walk

ROOT = Path(__file__).parents[2]
SWEEP_EXAMPLES = [p for p in sorted(ROOT.joinpath("examples").glob("*.yaml"))
                  if "\nkind: FineTuneSweep\n" in p.read_text()]


def schema() -> dict:
    return crd("FineTuneSweep")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_matches_the_model():
    assert ROOT.joinpath(SWEEP_CRD_PATH).read_text() == crd_yaml("FineTuneSweep"), "crds/ is stale: make generate"


def test_chart_copy_is_byte_identical():
    assert ROOT.joinpath("charts/kubetune/files", SWEEP_CRD_PATH).read_bytes() == ROOT.joinpath(
        SWEEP_CRD_PATH).read_bytes()


def test_schema_is_structural():
    for path, node in _walk(schema()):
        assert "$ref" not in node and "title" not in node, path
        assert "default" not in node or node["default"] is not None, path
        # anyOf only for int-or-string (the template's quantities); untyped nodes only where any JSON value is
        # kept as given (a parameter's values, a trial's params).
        assert "anyOf" not in node or node.get("x-kubernetes-int-or-string"), path
        assert "type" in node or "anyOf" in node or node.get("x-kubernetes-preserve-unknown-fields") is True, path
        if node.get("type") == "object" and "properties" in node:
            assert "additionalProperties" not in node, path


def test_printer_columns_point_at_real_fields():
    paths = {p for p, _ in _walk(schema())}
    for column in SWEEP_PRINTER_COLUMNS:
        assert column["jsonPath"].startswith(".metadata") or column["jsonPath"] in paths, column
    names = [c["name"] for c in SWEEP_PRINTER_COLUMNS if not c.get("priority")]
    assert names == ["Phase", "Done", "Running", "Pruned", "Total", "Best", "Age"]


def test_names_leave_room_for_the_trial_suffix():
    assert schema()["properties"]["metadata"]["properties"]["name"]["maxLength"] == 40
    assert len("s" * 40 + "-t999") <= 45


@pytest.mark.parametrize("case", SWEEP_INVALID + SWEEP_INVALID_PATHS, ids=lambda c: c.name)
def test_invalid_case_names_its_field(case):
    sweep, errors = validate_manifest(make_sweep(case.patch), "FineTuneSweep")
    assert sweep is None
    assert case.field in [e.path for e in errors], f"{case.name}: got {[str(e) for e in errors]}"


def test_a_bad_path_says_which_parameter_and_why():
    _, errors = validate_any(make_sweep({"spec": {"searchSpace": [
        {"path": "hyperparameters.learningRate", "values": [1e-4, 2.0]}]}}))
    (error,) = errors
    assert "searchSpace hyperparameters.learningRate: 2.0 does not fit the spec" in str(error)
    assert "less than or equal to 1" in str(error)


@pytest.mark.parametrize("case", SWEEP_VALID, ids=lambda c: c.name)
def test_valid_case(case):
    sweep, errors = validate_any(make_sweep(case.patch))
    assert errors == [], [str(e) for e in errors]
    assert isinstance(sweep, FineTuneSweep)


def test_budget_is_the_grid_or_max_trials():
    assert FineTuneSweep.model_validate(make_sweep()).spec.trial_budget() == 4
    assert FineTuneSweep.model_validate(make_sweep({"spec": {"maxTrials": 3}})).spec.trial_budget() == 3
    assert FineTuneSweep.model_validate(make_sweep({"spec": {"maxTrials": 9}})).spec.trial_budget() == 4


def test_apply_params_sets_nested_fields_on_a_copy():
    spec = {"hyperparameters": {"maxSteps": 10}}
    out = apply_params(spec, {"hyperparameters.learningRate": 1e-4, "method.lora.r": 8})
    assert out == {"hyperparameters": {"maxSteps": 10, "learningRate": 1e-4}, "method": {"lora": {"r": 8}}}
    assert spec == {"hyperparameters": {"maxSteps": 10}}
    with pytest.raises(KeyError):
        apply_params({"hyperparameters": {"maxSteps": 10}}, {"hyperparameters.maxSteps.x": 1})


@pytest.mark.parametrize("doc", [make_sweep(c.patch) for c in SWEEP_VALID] + [make_sweep()]
                         + [yaml.safe_load(p.read_text()) for p in SWEEP_EXAMPLES],
                         ids=[c.name for c in SWEEP_VALID] + ["minimal"] + [p.stem for p in SWEEP_EXAMPLES])
def test_defaults_in_the_crd_match_the_model(doc):
    spec_schema = schema()["properties"]["spec"]
    assert _server_defaults(spec_schema, doc["spec"]) == FineTuneSweep.model_validate(doc).to_wire()["spec"]


def _sweep_rule_classes():
    return {type(h) for c in SWEEP_VALID for h in _rule_holders(FineTuneSweep.model_validate(make_sweep(c.patch)))
            if type(h).__module__ == "kubetune.api.sweep"} | {Parameter}


def test_cel_and_python_agree_on_every_sweep_rule():
    outcomes: dict[str, set[bool]] = {}
    for case in SWEEP_INVALID + SWEEP_VALID:
        try:
            sweep = FineTuneSweep.model_validate(make_sweep(case.patch), context={"skip_rules": True})
        except Exception:
            continue  # field-level errors: no rule gets to run on either side
        for holder in _rule_holders(sweep):
            if type(holder).__module__ != "kubetune.api.sweep":
                continue  # the template's FineTuneJob rules have their own parity test
            wire = holder.to_wire()
            for rule in type(holder).__rules__:
                python, cel = rule.check(holder), _cel(rule.cel, wire)
                assert python == cel, f"{case.name}: rule {rule.cel!r}: python {python}, CEL {cel}"
                outcomes.setdefault(rule.cel, set()).add(python)
    rules = {r.cel for cls in _sweep_rule_classes() for r in cls.__rules__}
    assert rules and not {r for r in rules if outcomes.get(r) != {True, False}}, outcomes


def test_every_spec_field_has_a_description():
    spec = schema()["properties"]["spec"]
    missing = [p for p, n in _walk(spec, "spec") if p != "spec" and "[]" not in p and not n.get("description")]
    assert [p for p in missing if ".tolerations" not in p] == []


def test_there_is_a_sweep_example_and_it_is_valid():
    assert SWEEP_EXAMPLES
    for path in SWEEP_EXAMPLES:
        sweep, errors = validate_any(yaml.safe_load(path.read_text()))
        assert errors == [], [str(e) for e in errors]
        assert FineTuneSweep.model_validate(sweep.to_wire()) == sweep
