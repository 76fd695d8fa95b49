"""Constrained scalar types shared by the spec: URIs, Kubernetes quantities, names.

Each regex lives here once. The JSON schema (hence the CRD) carries it as `pattern` for the API server, and the
Python validator checks the same regex but says in words what is allowed, instead of echoing the regex.
"""
import re
from typing import Annotated

from pydantic import AfterValidator, Field

_S3 = r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?"
_FILE = r"file:///.+"
_HF = r"hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
_EXAMPLES = {
    "s3": "s3://bucket/prefix/ (bucket: 3-63 lowercase letters, digits, '.' or '-')",
    "file": "file:///absolute/path",
    "hf": "hf://org/name",
}


def _uri(*schemes: str):
    parts = {"s3": _S3, "file": _FILE, "hf": _HF}
    regex = "^(" + "|".join(parts[s] for s in schemes) + ")$"
    allowed = ", ".join(_EXAMPLES[s] for s in schemes)

    def check(value: str) -> str:
        if not re.fullmatch(regex, value):
            raise ValueError(f"must be a URI of the form {allowed}")
        return value

    return Annotated[str, AfterValidator(check), Field(json_schema_extra={"pattern": regex})]


ModelURI = _uri("s3", "file", "hf")
DataURI = _uri("s3", "file")
OutputURI = _uri("s3", "file")


PROMOTION_URI = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/(.*/)?|file:///(.+/)?)$"


def _check_prefix(value: str) -> str:
    if not re.fullmatch(PROMOTION_URI, value):
        raise ValueError("must be a prefix ending in '/': s3://bucket/models/<name>/ or file:///absolute/path/")
    return value


PromotionURI = Annotated[str, AfterValidator(_check_prefix), Field(json_schema_extra={"pattern": PROMOTION_URI})]
"""A stable destination: a prefix (ending in '/') the champion's files and manifest live under."""

# Kubernetes resource.Quantity, as controller-gen writes it for int-or-string quantity fields.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def _check_quantity(value: int | str) -> int | str:
    if isinstance(value, str) and not re.fullmatch(QUANTITY_PATTERN, value):
        raise ValueError("must be a Kubernetes quantity such as 8, 500m, 64Gi or 1.5T")
    return value


Quantity = Annotated[
    int | str,
    AfterValidator(_check_quantity),
    Field(json_schema_extra={"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}),
]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _check_dns_label(value: str) -> str:
    if not re.fullmatch(DNS_LABEL, value) or len(value) > 63:
        raise ValueError("must be a DNS label: lowercase letters, digits and '-', at most 63 characters")
    return value


DNSLabel = Annotated[
    str, AfterValidator(_check_dns_label), Field(max_length=63, json_schema_extra={"pattern": DNS_LABEL})
]

LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def _pattern_type(regex: str, max_length: int, what: str):
    """A string the API server would refuse further down (in a Job's label or pod spec), refused at apply."""
    def check(value: str) -> str:
        if not re.fullmatch(regex, value) or len(value) > max_length:
            raise ValueError(f"must be {what}, at most {max_length} characters")
        return value
    return Annotated[str, AfterValidator(check), Field(max_length=max_length, json_schema_extra={"pattern": regex})]


LabelValue = _pattern_type(LABEL_VALUE, 63, "a label value: letters, digits, '-', '_' and '.', starting and "
                                            "ending with a letter or digit")
DNSSubdomain = _pattern_type(DNS_SUBDOMAIN, 253, "a DNS subdomain: lowercase letters, digits, '-' and '.'")

RUN_ID = r"^[A-Za-z0-9]([-A-Za-z0-9._]*[A-Za-z0-9])?$"
RunID = _pattern_type(RUN_ID, 253, "a run id (the operator's g<generation>-<hash>, the CLI's local-<time>): letters, "
                                   "digits, '-', '_' and '.', starting and ending with a letter or digit")
