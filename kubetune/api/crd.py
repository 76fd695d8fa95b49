"""Generate the CustomResourceDefinition from the pydantic model.

pydantic writes JSON Schema 2020-12; the API server wants a structural OpenAPI v3 schema. The conversion inlines
`$ref`s, drops the `null` branch of optional fields, rewrites numeric exclusive bounds, and adds what only
Kubernetes knows: CEL rules from each model's `__rules__`, `default: {}` on nested objects so defaulting
cascades, printer columns and the status subresource.
"""
import copy
from dataclasses import dataclass

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import to_jsonable_python

from kubetune.api import job as j
from kubetune.api import sweep as sw
from kubetune.api.job import FineTuneJob
from kubetune.api.sweep import FineTuneSweep

CRD_PATH = "crds/kubetune.io_finetunejobs.yaml"
SWEEP_CRD_PATH = "crds/kubetune.io_finetunesweeps.yaml"

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Progress", "type": "integer", "format": "int32", "jsonPath": ".status.progress.percent",
     "description": "Percent of the optimizer steps done"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step", "priority": 1},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "priority": 1,
     "description": "Restarts of the current run (a multi-node run restarts as a gang)"},
    {"name": "Eval-Loss", "type": "number", "jsonPath": ".status.metrics.evalLoss"},
    {"name": "Best", "type": "number", "jsonPath": ".status.metrics.best.value",
     "description": "Best value of the monitored validation metric"},
    {"name": "ETA-Seconds", "type": "integer", "jsonPath": ".status.progress.etaSeconds", "priority": 1},
    {"name": "Promotion", "type": "string", "jsonPath": ".status.promotion.verdict",
     "description": "Promotion verdict of the current run (spec.promotion)"},
    {"name": "Method", "type": "string", "jsonPath": ".spec.method.type", "priority": 1},
    {"name": "Model", "type": "string", "jsonPath": ".spec.baseModel.uri", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

SWEEP_PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Done", "type": "integer", "jsonPath": ".status.counts.done",
     "description": "Finished trials: succeeded, failed and pruned"},
    {"name": "Running", "type": "integer", "jsonPath": ".status.counts.running",
     "description": "Trials not finished (at most spec.parallelism)"},
    {"name": "Pruned", "type": "integer", "jsonPath": ".status.counts.pruned"},
    {"name": "Total", "type": "integer", "jsonPath": ".status.counts.total", "description": "The trial budget"},
    {"name": "Best", "type": "number", "jsonPath": ".status.best.objective", "description": "Best objective"},
    {"name": "Best-Trial", "type": "string", "jsonPath": ".status.best.name", "priority": 1},
    {"name": "Algorithm", "type": "string", "jsonPath": ".spec.algorithm", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class _CRDSchema(GenerateJsonSchema):
    """pydantic's generator plus the two things it cannot know: CEL rules and object defaults."""

    def model_schema(self, schema):
        out = super().model_schema(schema)
        rules = getattr(schema["cls"], "__rules__", ())
        if rules:
            target = self.definitions.get(_ref_name(out), out) if "$ref" in out else out
            target["x-kubernetes-validations"] = [r.to_crd() for r in rules]
        return out

    def sort(self, value, parent_key=None):
        return value  # _structural orders keys for readers

    def default_schema(self, schema):
        if "default_factory" not in schema:
            return super().default_schema(schema)
        value = schema["default_factory"]()
        out = dict(self.generate_inner(schema["schema"]))
        # An empty object lets the API server fill in the nested defaults, as pydantic does.
        out["default"] = {} if isinstance(value, BaseModel) else to_jsonable_python(value)
        return out


def _ref_name(node: dict) -> str:
    return node["$ref"].split("/")[-1]


def _structural(node: dict, defs: dict) -> dict:
    """One schema node (and its children) as a structural schema."""
    node = dict(node)
    if "$ref" in node:
        merged = copy.deepcopy(defs[_ref_name(node)])
        merged.update({k: v for k, v in node.items() if k != "$ref"})
        node = merged
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) == 1 and not node.get("x-kubernetes-int-or-string"):
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            node = {**_structural(branches[0], defs), **rest}
        else:
            node["anyOf"] = [_structural(b, defs) for b in branches]
    node.pop("title", None)
    if node.get("default", 0) is None:
        node.pop("default")  # "no value" is not a default the API server accepts
    if "description" in node:
        node["description"] = " ".join(node["description"].split())
    if node.get("additionalProperties") in (True, False):
        node.pop("additionalProperties")
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node[bound], bool):
            node[plain] = node[bound]
            node[bound] = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("x-kubernetes-int-or-string"):
        # Structural schemas allow exactly this anyOf for int-or-string, with no nested validation.
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in node:
        node["properties"] = {name: _structural(sub, defs) for name, sub in node["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = _structural(node[key], defs)
    return {k: node[k] for k in sorted(node, key=lambda k: _KEY_ORDER.get(k, len(_KEY_ORDER)))}


# Field order in the YAML, for people reading the CRD: what it is first, then its constraints, then children.
_KEY_ORDER = {k: i for i, k in enumerate(
    ["type", "description", "default", "enum", "format", "pattern", "minimum", "exclusiveMinimum", "maximum",
     "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems", "anyOf", "x-kubernetes-int-or-string",
     "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "required",
     "properties", "additionalProperties", "items", "x-kubernetes-validations"])}


@dataclass(frozen=True)
class Kind:
    """What a CRD needs beyond its model."""
    model: type[BaseModel]
    kind: str
    plural: str
    singular: str
    short_names: list[str]
    description: str
    max_name_length: int
    columns: list[dict]


FINETUNEJOB = Kind(FineTuneJob, j.KIND, j.PLURAL, j.SINGULAR, j.SHORT_NAMES,
                   "FineTuneJob fine-tunes a base model on a dataset and writes the result to S3.",
                   j.MAX_NAME_LENGTH, PRINTER_COLUMNS)
FINETUNESWEEP = Kind(FineTuneSweep, sw.SWEEP_KIND, sw.SWEEP_PLURAL, sw.SWEEP_SINGULAR, sw.SWEEP_SHORT_NAMES,
                     "FineTuneSweep searches a FineTuneJob's hyperparameters: its trials are FineTuneJobs.",
                     sw.SWEEP_MAX_NAME_LENGTH, SWEEP_PRINTER_COLUMNS)
KINDS = {k.kind: k for k in (FINETUNEJOB, FINETUNESWEEP)}
PATHS = {j.KIND: CRD_PATH, sw.SWEEP_KIND: SWEEP_CRD_PATH}


def openapi_schema(kind: Kind = FINETUNEJOB) -> dict:
    raw = kind.model.model_json_schema(by_alias=True, mode="validation", schema_generator=_CRDSchema)
    defs = raw.pop("$defs", {})
    props = _structural(raw, defs)["properties"]
    return {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "kubetune.io/v1alpha1"},
            "kind": {"type": "string", "description": kind.kind},
            "metadata": {
                "type": "object",
                # The only metadata constraints a CRD may declare; names end up in Job and pod names.
                "properties": {"name": {"type": "string", "maxLength": kind.max_name_length,
                                        "pattern": j.NAME_PATTERN}},
            },
            "spec": props["spec"],
            # A new object has no status until the operator's first write, and kstatus (Flux `wait: true`) reads
            # an object without any status as Current. The API server applies this default whenever it reads
            # the object, so until then observedGeneration 0 < generation: InProgress (and Argo CD: Progressing).
            "status": {**props["status"], "default": {"observedGeneration": 0}},
        },
    }


def crd(kind: Kind | str = FINETUNEJOB) -> dict:
    kind = KINDS[kind] if isinstance(kind, str) else kind
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{j.GROUP}"},
        "spec": {
            "group": j.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": kind.short_names,
                "categories": j.CATEGORIES,
            },
            "versions": [
                {
                    "name": j.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema(kind)},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": kind.columns,
                }
            ],
        },
    }


def crd_yaml(kind: Kind | str = FINETUNEJOB) -> str:
    header = "# Generated from kubetune/api by `make generate`; do not edit.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=120, allow_unicode=True)
