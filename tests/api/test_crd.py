"""The CRD in crds/ is generated from the model, is structural, and its CEL rules agree with the Python rules."""
from pathlib import Path

import celpy
import pytest
import yaml

from kubetune.api import FineTuneJob
from kubetune.api.crd import CRD_PATH, PRINTER_COLUMNS, crd, crd_yaml
from kubetune.api.rules import RuleChecked
from tests.api.cases import INVALID, VALID, make_job

ROOT = Path(__file__).parents[2]
# FineTuneJob examples (the FineTuneSweep ones: tests/api/test_sweep.py).
EXAMPLES = [p for p in sorted(ROOT.joinpath("examples").glob("*.yaml"))
            if "\nkind: FineTuneSweep\n" not in p.read_text()]


def test_committed_crd_matches_the_model():
    assert ROOT.joinpath(CRD_PATH).read_text() == crd_yaml(), "crds/ is stale: run `make generate`"


def _walk(schema: dict, path: str = ""):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _walk(schema[key], f"{path}[]")


def schema() -> dict:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_schema_is_structural():
    for path, node in _walk(schema()):
        assert "$ref" not in node and "title" not in node, path
        assert "default" not in node or node["default"] is not None, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: anyOf is only allowed for int-or-string"
        else:
            assert "type" in node, f"{path}: every node needs a type"
        if node.get("type") == "object" and "properties" in node:
            assert "additionalProperties" not in node, path
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound, True) is True, f"{path}: OpenAPI v3 exclusive bounds are booleans"


def test_every_spec_field_has_a_description():
    spec = schema()["properties"]["spec"]
    missing = [p for p, n in _walk(spec, "spec") if p != "spec" and "[]" not in p and not n.get("description")]
    # Toleration fields mirror core/v1 and are self-explanatory; everything else must explain itself.
    assert [p for p in missing if ".tolerations" not in p] == []


def test_printer_columns_point_at_real_fields():
    paths = {p for p, _ in _walk(schema())}
    for column in PRINTER_COLUMNS:
        if column["jsonPath"].startswith(".metadata"):
            continue
        assert column["jsonPath"] in paths, column


def _server_defaults(node: dict, value):
    """Structural-schema defaulting as the API server does it: fill absent properties, then recurse."""
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [_server_defaults(node["items"], v) for v in value]
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for name, sub in node.get("properties", {}).items():
        if name not in out and "default" in sub:
            out[name] = sub["default"]
        if name in out:
            out[name] = _server_defaults(sub, out[name])
    return out


@pytest.mark.parametrize("doc", [make_job()] + [yaml.safe_load(p.read_text()) for p in EXAMPLES],
                         ids=["minimal"] + [p.stem for p in EXAMPLES])
def test_defaults_in_the_crd_match_the_model(doc):
    """What the API server fills in must be what pydantic fills in, or CEL and Python would see different specs."""
    spec_schema = schema()["properties"]["spec"]
    assert _server_defaults(spec_schema, doc["spec"]) == FineTuneJob.model_validate(doc).to_wire()["spec"]


# --- CEL parity -------------------------------------------------------------------------------------------

_env = celpy.Environment()


def _cel(expr: str, obj: dict) -> bool:
    return bool(_env.program(_env.compile(expr)).evaluate({"self": celpy.json_to_cel(obj)}))


def _rule_holders(model):
    """Every sub-model (including the root) that declares rules."""
    if isinstance(model, RuleChecked):
        if type(model).__rules__:
            yield model
        for name in type(model).model_fields:
            value = getattr(model, name)
            for item in value if isinstance(value, list) else [value]:
                yield from _rule_holders(item)


PARITY_DOCS = (
    [(c.name, make_job(c.patch)) for c in INVALID + VALID]
    + [(p.name, yaml.safe_load(p.read_text())) for p in EXAMPLES]
)


def test_cel_and_python_agree_on_every_rule():
    outcomes: dict[str, set[bool]] = {}
    for name, doc in PARITY_DOCS:
        try:
            job = FineTuneJob.model_validate(doc, context={"skip_rules": True})
        except Exception:
            continue  # field-level errors: no rule gets to run on either side
        for holder in _rule_holders(job):
            wire = holder.to_wire()
            for rule in type(holder).__rules__:
                python, cel = rule.check(holder), _cel(rule.cel, wire)
                assert python == cel, f"{name}: rule {rule.cel!r}: python {python}, CEL {cel}"
                outcomes.setdefault(rule.cel, set()).add(python)
    all_rules = {r.cel for cls in _rule_classes() for r in cls.__rules__}
    untested = {r for r in all_rules if outcomes.get(r) != {True, False}}
    assert not untested, f"rules never seen both holding and broken: {untested}"


def _rule_classes():
    seen, todo = set(), [FineTuneJob]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for field in cls.model_fields.values():
            for sub in _submodels(field.annotation):
                todo.append(sub)
    return [c for c in seen if c.__rules__]


def _submodels(annotation):
    import typing
    if isinstance(annotation, type) and issubclass(annotation, RuleChecked):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _submodels(a)]


@pytest.mark.parametrize("rule", [r for c in _rule_classes() for r in c.__rules__], ids=lambda r: r.field)
def test_rule_field_path_exists(rule):
    """fieldPath must name a real field, or the API server rejects the CRD."""
    holders = {"Method": ".spec.method", "Hyperparameters": ".spec.hyperparameters", "FineTuneJobSpec": ".spec",
               "PromotionBound": ".spec.promotion.bounds[]"}
    owner = next(c for c in _rule_classes() if rule in c.__rules__)
    full = holders[owner.__name__] + "." + rule.field
    assert full in {p for p, _ in _walk(schema())}
