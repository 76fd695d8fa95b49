"""Cross-field rules, written once as data.

Each rule carries the CEL expression the API server evaluates (it lands in the CRD as
`x-kubernetes-validations`) and the same check in Python (run by the model, hence by the CLI, the operator
and the trainer). The parity test evaluates both on one table of manifests, so the two cannot drift apart.
"""
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError


@dataclass(frozen=True)
class Rule:
    cel: str
    """CEL evaluated with `self` bound to the object the rule is attached to (defaults already applied)."""
    message: str
    """What is wrong and what is allowed; the API server prints it after the field path."""
    field: str
    """camelCase path, relative to that object, of the field the user should change."""
    check: Callable[[Any], bool]
    """The same rule on the pydantic object: True when the object is valid."""

    def to_crd(self) -> dict:
        return {"rule": self.cel, "message": self.message, "fieldPath": "." + self.field}


class RuleChecked(BaseModel):
    """Mix-in: runs the class's `__rules__` after field validation and reports every broken one."""

    __rules__: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self, info: ValidationInfo):
        if info.context and info.context.get("skip_rules"):
            return self  # the rule parity test compares CEL and Python on objects that break rules
        broken = [r for r in type(self).__rules__ if not r.check(self)]
        if broken:
            raise PydanticCustomError(
                "cross_field",
                "{summary}",
                {
                    "summary": "; ".join(f"{r.field}: {r.message}" for r in broken),
                    "broken": [(r.field, r.message) for r in broken],
                },
            )
        return self
