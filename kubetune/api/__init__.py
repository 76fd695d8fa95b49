"""The FineTuneJob API: one pydantic model that the CRD, the CLI, the operator and the trainer all share.

Imports neither torch nor kopf, so every process can load it.
"""
from kubetune.api.job import API_VERSION, GROUP, KIND, PLURAL, VERSION, FineTuneJob
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.status import Condition, ConditionType, FineTuneJobStatus, Reason

__all__ = [
    "API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION",
    "Condition", "ConditionType", "FineTuneJob", "FineTuneJobSpec", "FineTuneJobStatus", "Reason",
]
