"""The spec as every run-identity hash sees it (the operator's run and template hashes, the trainer's summary
specHash): the wire form, held steady across versions of this API.

A hash over the spec as written back with its defaults moves whenever a default does, and a moved hash makes an
upgraded operator restart every running FineTuneJob under a new run id (tests/operator/test_spec_hash.py pins
values). So a field added later is left out while it holds the default it came with, and a default that changed is
hashed, for a spec that leaves it unset, as the value it had when hashes were first recorded.
"""
from pydantic import BaseModel

ADDED_FIELDS: dict[tuple[str, ...], object] = {
    ("dataset", "paddingFree"): True,
    ("hyperparameters", "compile"): False,
    # Optional, no default (unset leaves them out already): a value that means what unset means hashes as unset.
    ("hyperparameters", "gradientCheckpointingEveryLayers"): 1,
    ("hyperparameters", "gradientCheckpointingOffload"): False,
    ("hyperparameters", "weightPrecision"): "fp32",
}
"""Fields added after hashes were first recorded, with the default they were added with (or, for an optional
field, the value that behaves as leaving it unset)."""

NOT_HASHED: tuple[tuple[str, ...], ...] = (("rerunToken",), ("promotion",))
"""Spec fields that ask the operator to act and describe no training: no identity hash takes them, whatever
their value (a rerun is the same run, and the trainer resumes it rather than refusing a different spec; the
promotion gate, its destination and an override decide where a finished run goes, not what it trains)."""

EARLIER_DEFAULTS: dict[tuple[str, ...], object] = {
    ("method", "lora", "dropout"): 0.05,
}
"""Defaults that changed since, with the value a spec that left the field unset was hashed with before (such a run
keeps its identity; a spec that sets the old value explicitly hashes the same)."""


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _set_explicitly(model: BaseModel, path: tuple[str, ...]) -> bool:
    """Whether the manifest (or the API server's defaulting when it stored it) set the field at `path`."""
    for key in path:
        name = _snake(key)
        if not isinstance(model, BaseModel) or name not in model.model_fields_set:
            return False
        model = getattr(model, name)
    return True


def hashed_wire(spec: BaseModel) -> dict:
    """The spec's wire form (camelCase, unset optional fields left out) as the identity hashes take it."""
    wire = spec.to_wire()
    for path, default in ADDED_FIELDS.items():
        parent = _parent(wire, path)
        if parent is not None and parent.get(path[-1], default) == default:
            parent.pop(path[-1], None)
    for path in NOT_HASHED:
        parent = _parent(wire, path)
        if parent is not None:
            parent.pop(path[-1], None)
    for path, earlier in EARLIER_DEFAULTS.items():
        parent = _parent(wire, path)
        if parent is not None and not _set_explicitly(spec, path):
            parent[path[-1]] = earlier
    return wire


def _parent(wire: dict, path: tuple[str, ...]) -> dict | None:
    for key in path[:-1]:
        wire = wire.get(key)
        if not isinstance(wire, dict):
            return None
    return wire
