"""Shared fixtures: the local cluster plugin, and the FineTuneJob CRD installed into it once per run."""
import time
from pathlib import Path

import pytest

from kubetune.api.crd import CRD_PATH

pytest_plugins = ["tests.plugins.cluster"]

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="session")
def finetunejob_crd(cluster):
    """The generated CRD applied to the real API server and Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / CRD_PATH))
    # `kubectl wait` fails outright while a new CRD has no conditions yet, so poll.
    deadline = time.monotonic() + 60
    jsonpath = '{.status.conditions[?(@.type=="Established")].status}'
    while cluster.kubectl("get", "crd/finetunejobs.kubetune.io", "-o", f"jsonpath={jsonpath}").stdout != "True":
        assert time.monotonic() < deadline, "the FineTuneJob CRD did not become Established within 60 s"
        time.sleep(0.5)
    return cluster
