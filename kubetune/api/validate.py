"""Validate FineTuneJob manifests offline and say, for each problem, which field, what value and what is allowed.

The CLI, the operator (for specs that slipped past an old CRD) and the trainer all report errors through this.
"""
import typing
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kubetune.api.job import API_VERSION, KIND, FineTuneJob
from kubetune.api.sweep import SWEEP_KIND, FineTuneSweep

MODELS: dict[str, type[BaseModel]] = {KIND: FineTuneJob, SWEEP_KIND: FineTuneSweep}

_MISSING = object()


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str
    value: Any = _MISSING

    def __str__(self) -> str:
        got = "" if self.value is _MISSING else f" (got {_show(self.value)})"
        return f"{self.path}: {self.message}{got}"


def _show(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return text if len(text) <= 80 else text[:77] + "..."


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _lookup(doc: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return _MISSING
        doc = doc[part]
    return doc


def _model_at(loc: tuple, root: type[BaseModel] = FineTuneJob) -> type[BaseModel] | None:
    """The pydantic model class that validates the object at `loc` of a FineTuneJob (or `root`), if any."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        if part not in fields:
            return None
        model = _unwrap(fields[part].annotation)
        if model is None:
            return None
    return model


def _unwrap(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _unwrap(arg)
        if found is not None:
            return found
    return None


def _errors(exc: ValidationError, doc: dict, root: type[BaseModel] = FineTuneJob) -> list[FieldError]:
    out = []
    for err in exc.errors():
        loc, kind = tuple(err["loc"]), err["type"]
        if kind == "cross_field":
            base = _path(loc)
            for field, message in err["ctx"]["broken"]:
                path = f"{base}.{field}" if base else field
                out.append(FieldError(path, message, _lookup(doc, path)))
        elif kind == "extra_forbidden":
            parent = _model_at(loc[:-1], root)
            allowed = sorted(f.alias or n for n, f in parent.model_fields.items()) if parent else []
            hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
            out.append(FieldError(_path(loc), f"unknown field{hint}"))
        elif kind == "missing":
            out.append(FieldError(_path(loc), "required field is missing"))
        else:
            message = err["msg"].removeprefix("Value error, ")
            out.append(FieldError(_path(loc), message, err.get("input", _MISSING)))
    return out


def validate_manifest(doc: Any, kind: str = KIND) -> tuple[Any, list[FieldError]]:
    """Validate one parsed manifest of `kind` (FineTuneJob or FineTuneSweep). Returns the object, or None and
    every error found."""
    if not isinstance(doc, dict):
        return None, [FieldError("(document)", "must be a mapping (a Kubernetes object)", doc)]
    errors = []
    if doc.get("apiVersion") != API_VERSION:
        errors.append(FieldError("apiVersion", f"must be {API_VERSION}", doc.get("apiVersion", _MISSING)))
    if doc.get("kind") != kind:
        errors.append(FieldError("kind", f"must be {kind}", doc.get("kind", _MISSING)))
    if errors:
        return None, errors
    model = MODELS[kind]
    try:
        return model.model_validate(doc), []
    except ValidationError as exc:
        return None, _errors(exc, doc, model)


def validate_any(doc: Any) -> tuple[Any, list[FieldError]]:
    """Validate a manifest of whichever kubetune kind it declares."""
    kind = doc.get("kind") if isinstance(doc, dict) and doc.get("kind") in MODELS else KIND
    return validate_manifest(doc, kind)


def load_documents(text: str) -> list[Any]:
    """Parse a (multi-document) YAML file; a syntax error becomes a ValueError naming the line."""
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ValueError(f"{where}invalid YAML: {getattr(exc, 'problem', exc)}") from exc


def is_kubetune(doc: Any) -> bool:
    """A FineTuneJob or a FineTuneSweep."""
    return isinstance(doc, dict) and doc.get("kind") in MODELS \
        and str(doc.get("apiVersion", "")).startswith("kubetune.io/")


def is_finetunejob(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("kind") == KIND and str(doc.get("apiVersion", "")).startswith("kubetune.io/")
