"""Issue 20 (1), the clock side of fencing: a replica acts only while a renewal that STARTED less than the renew
deadline ago succeeded; a hung renewal cannot stretch that (each Lease request is bounded by what is left of it);
resigning closes the fence before the Lease is released. The API server's part is in test_leader_cluster.py;
here a stub stands in for kube.Kube's two Lease calls, because only a stub can hold a request for exactly as
long as a test needs on a fake clock."""
import pytest

from kubetune.operator import leader
from kubetune.operator.leader import Fence, LeaderElector, NotLeading


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class StubLeases:
    """read_lease/write_lease of kube.Kube on a dict; each call takes `latency` seconds of the fake clock and
    records the timeout it was given."""

    def __init__(self, clock: Clock):
        self.clock, self.lease, self.latency, self.timeouts = clock, None, 0.0, []

    def read_lease(self, namespace, name, timeout=None):
        self.timeouts.append(timeout)
        self.clock.now += self.latency
        return self.lease

    def write_lease(self, namespace, name, spec, rv, timeout=None):
        self.timeouts.append(timeout)
        self.clock.now += self.latency
        self.lease = {"metadata": {"resourceVersion": str(int(rv or 0) + 1)}, "spec": spec}
        return True


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(leader.time, "monotonic", clock)
    return clock


def elector(clock) -> tuple[LeaderElector, StubLeases]:
    leases = StubLeases(clock)
    e = LeaderElector(leases, "ns", "lease", 15, identity="me", renew_deadline_seconds=10, retry_period_seconds=2)
    assert e.try_acquire_or_renew()
    e.leading.set()
    return e, leases


def test_freshness_counts_from_when_the_renewal_started(clock):
    e, leases = elector(clock)
    leases.latency = 4  # a slow API server: the GET and the PUT take 4 s each
    started = clock.now
    assert e.try_acquire_or_renew()
    assert e.renewed_at == started, "renewTime may have been written at any moment of the request"
    clock.now = started + 9.9
    assert e.holds_lease()
    clock.now = started + 10
    assert not e.holds_lease()


def test_a_hung_renewal_cannot_stretch_the_deadline(clock):
    e, leases = elector(clock)
    clock.now += 7
    leases.latency = 2
    leases.timeouts.clear()
    e.try_acquire_or_renew()
    read, write = leases.timeouts
    assert read == pytest.approx(3) and write == pytest.approx(1), "each request gets what is left of 10 s"
    assert max(leases.timeouts) < e.renew_deadline


def test_the_fence_closes_on_resign_and_refuses_writes_not_reads(clock):
    e, _ = elector(clock)
    calls = []

    class Connection:
        def request(self, method, url_path, *args, **kwargs):
            calls.append(method)
            return {}

    fence = Fence(Connection(), e.holds_lease)
    fence.request("PATCH", "/x")
    e.resign()
    assert e.leading.is_set(), "still the holder until release()"
    fence.request("GET", "/x")
    with pytest.raises(NotLeading):
        fence.request("DELETE", "/x")
    assert calls == ["PATCH", "GET"]


def test_a_standby_never_holds_the_lease(clock):
    leases = StubLeases(clock)
    leases.lease = {"metadata": {"resourceVersion": "1"},
                    "spec": {"holderIdentity": "other", "leaseDurationSeconds": 15}}
    e = LeaderElector(leases, "ns", "lease", 15, identity="me")
    assert not e.try_acquire_or_renew()
    assert e.healthy() and not e.holds_lease(), "healthy (readiness) is not leave to act"
