"""The two kinds of failure the operator must tell apart: retrying helps, or it cannot.

Each carries the exit code from the operator/trainer contract; `__main__` turns them into the process exit
status and the termination message.
"""
from kubetune.api import contract


class TrainerError(Exception):
    exit_code = contract.EXIT_RETRY
    reason = "Error"


class BadInput(TrainerError):
    """The spec, the data or the model is wrong: the same run would fail the same way."""

    exit_code = contract.EXIT_BAD_INPUT
    reason = "BadInput"


class OutOfMemory(TrainerError):
    exit_code = contract.EXIT_OUT_OF_MEMORY
    reason = "OOMKilled"


class Preempted(TrainerError):
    """SIGTERM arrived; a checkpoint was written and the next pod resumes from it."""

    exit_code = contract.EXIT_RETRY
    reason = "Preempted"
