"""The FineTuneJob resource: apiVersion/kind/metadata around the spec and status models."""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kubetune.api.base import APIModel
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.status import FineTuneJobStatus

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]
CATEGORIES = ["kubetune"]

# Children are named <name>-<suffix>; Indexed Job pods add -<index>-<random>, and the whole must stay a
# 63-character DNS label.
MAX_NAME_LENGTH = 45
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class ObjectMeta(BaseModel):
    """The part of Kubernetes ObjectMeta kubetune reads; the API server owns the rest."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)
    namespace: str | None = None
    generation: int | None = None
    uid: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class FineTuneJob(APIModel):
    api_version: Literal["kubetune.io/v1alpha1"] = API_VERSION
    kind: Literal["FineTuneJob"] = KIND
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None

