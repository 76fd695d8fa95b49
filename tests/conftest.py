"""Shared fixtures: the local cluster plugin, and the FineTuneJob and FineTuneSweep CRDs installed into it once per
run."""
from pathlib import Path

import pytest

from kubetune.api.crd import CRD_PATH, SWEEP_CRD_PATH
from tests.plugins.cluster import wait_for

pytest_plugins = ["tests.plugins.cluster"]

ROOT = Path(__file__).parents[1]


def install_crd(cluster, path: str, name: str) -> None:
    """A generated CRD applied to the real API server and Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / path))
    # `kubectl wait` fails outright while a new CRD has no conditions yet, and so can this jsonpath filter
    # (non-zero exit): poll, counting a failed read as not yet.
    jsonpath = '{.status.conditions[?(@.type=="Established")].status}'
    wait_for(f"the CRD {name} to be Established", lambda: cluster.kubectl(
        "get", f"crd/{name}", "-o", f"jsonpath={jsonpath}", check=False).stdout == "True")


@pytest.fixture(scope="session")
def finetunejob_crd(cluster):
    """The generated FineTuneJob CRD applied to the real API server and Established."""
    install_crd(cluster, CRD_PATH, "finetunejobs.kubetune.io")
    return cluster


@pytest.fixture(scope="session")
def finetunesweep_crd(finetunejob_crd):
    """The generated FineTuneSweep CRD (with the FineTuneJob one) applied and Established."""
    install_crd(finetunejob_crd, SWEEP_CRD_PATH, "finetunesweeps.kubetune.io")
    return finetunejob_crd
