"""`hack/cluster ports`: every port shifts with KUBETUNE_CLUSTER_PORT_OFFSET, so a second cluster (a helper's, the
second-cluster test's) runs beside the first without a clash; the registry's included. No cluster needed."""
import os
import subprocess

from tests.plugins.cluster import CLUSTER_SCRIPT


def ports(offset: int) -> dict[str, int]:
    env = dict(os.environ, KUBETUNE_CLUSTER_PORT_OFFSET=str(offset))
    out = subprocess.run([str(CLUSTER_SCRIPT), "ports"], env=env, capture_output=True, text=True, check=True)
    return {name: int(port) for name, port in (line.split() for line in out.stdout.splitlines())}


def test_every_port_shifts_with_the_offset():
    base, shifted = ports(0), ports(100)
    assert base["registry"] == 16565 and shifted["registry"] == 16665
    assert shifted == {name: port + 100 for name, port in base.items()}


def test_no_two_components_share_a_port_within_or_across_clusters():
    base, shifted = ports(0), ports(100)
    for one in (base, shifted):
        assert len(set(one.values())) == len(one), sorted(one.items(), key=lambda kv: kv[1])
    assert not set(base.values()) & set(shifted.values())
    assert all(1024 < port < 65536 for port in [*base.values(), *shifted.values()])
