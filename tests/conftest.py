"""Shared fixtures: the local cluster plugin, and the FineTuneJob CRD installed into it once per run."""
from pathlib import Path

import pytest

from kubetune.api.crd import CRD_PATH

pytest_plugins = ["tests.plugins.cluster"]

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="session")
def finetunejob_crd(cluster):
    """The generated CRD applied to the real API server and Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / CRD_PATH))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/finetunejobs.kubetune.io")
    return cluster
