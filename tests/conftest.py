"""Shared fixtures: the local cluster plugin, and the FineTuneJob CRD installed into it once per run."""
from pathlib import Path

import pytest

from kubetune.api.crd import CRD_PATH
from tests.plugins.cluster import wait_for

pytest_plugins = ["tests.plugins.cluster"]

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="session")
def finetunejob_crd(cluster):
    """The generated CRD applied to the real API server and Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / CRD_PATH))
    # `kubectl wait` fails outright while a new CRD has no conditions yet, and so can this jsonpath filter
    # (non-zero exit): poll, counting a failed read as not yet.
    jsonpath = '{.status.conditions[?(@.type=="Established")].status}'
    wait_for("the FineTuneJob CRD to be Established", lambda: cluster.kubectl(
        "get", "crd/finetunejobs.kubetune.io", "-o", f"jsonpath={jsonpath}", check=False).stdout == "True")
    return cluster
