"""Fixtures the observability tests share with the operator and trainer tests: the real operator process against
the local cluster, and the tiny local model the trainer tests train."""
from tests.operator.conftest import operator, operators  # noqa: F401 (pytest fixtures)
from tests.trainer.conftest import tiny_model  # noqa: F401 (pytest fixture)
