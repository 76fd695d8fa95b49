"""The base every API model derives from: camelCase on the wire, unknown fields refused.

Field docstrings become the schema's descriptions, so `kubectl explain` and the CLI read the same text;
cross-field rules declared as `__rules__` run after field validation.
"""
from pydantic import ConfigDict
from pydantic.alias_generators import to_camel

from kubetune.api.rules import RuleChecked


class APIModel(RuleChecked):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
    )

    def to_wire(self) -> dict:
        """The object as it is written in a manifest: camelCase, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
