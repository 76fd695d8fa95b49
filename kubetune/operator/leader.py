"""Leader election on a coordination.k8s.io Lease, as Kubernetes' own controllers do it.

Every replica waits here until it holds the Lease; only then does it start handling FineTuneJobs. The holder
renews it in the background; a replica that cannot renew in time exits at once (its Deployment restarts it as a
follower), so two replicas never reconcile together. kopf's own peering was not used: replicas of equal
priority freeze each other there.
"""
import logging
import os
import socket
import threading
import time
from datetime import datetime, timedelta, timezone

from kubetune.operator.kube import Kube

log = logging.getLogger("kubetune.leader")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, duration_seconds: int, identity: str = ""):
        self.kube, self.namespace, self.name = kube, namespace, name
        self.duration = duration_seconds
        self.identity = identity or f"{socket.gethostname()}-{os.getpid()}"
        self.renewed_at = 0.0

    def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease."""
        lease = self.kube.read_lease(self.namespace, self.name)
        now = _now()
        spec = (lease or {}).get("spec", {})
        holder = spec.get("holderIdentity")
        renewed = _parse(spec.get("renewTime"))
        held_by_other = (holder and holder != self.identity and renewed
                         and now < renewed + timedelta(seconds=spec.get("leaseDurationSeconds", self.duration)))
        if held_by_other:
            return False
        transitions = spec.get("leaseTransitions", 0) + (holder != self.identity and lease is not None)
        new = {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration,
               "acquireTime": spec.get("acquireTime") if holder == self.identity else _stamp(now),
               "renewTime": _stamp(now), "leaseTransitions": transitions}
        rv = lease["metadata"]["resourceVersion"] if lease else None
        if self.kube.write_lease(self.namespace, self.name, new, rv):
            self.renewed_at = time.monotonic()
            return True
        return False

    def acquire(self) -> None:
        """Blocks until this replica leads."""
        log.info("waiting for leadership of lease %s/%s as %s", self.namespace, self.name, self.identity)
        while not self._attempt():
            time.sleep(max(1.0, self.duration / 5))
        log.info("leading as %s", self.identity)

    def _attempt(self) -> bool:
        try:
            return self.try_acquire()
        except Exception as exc:  # the API server may be briefly unreachable: keep trying
            log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            return False

    def keep(self, on_lost) -> threading.Thread:
        """Renews every third of the lease duration; calls `on_lost` when it could not renew in two thirds."""
        def loop():
            while True:
                time.sleep(self.duration / 3)
                if not self._attempt() and time.monotonic() - self.renewed_at > self.duration * 2 / 3:
                    log.error("lost leadership of lease %s/%s", self.namespace, self.name)
                    on_lost()
                    return
        thread = threading.Thread(target=loop, name="lease-renewal", daemon=True)
        thread.start()
        return thread
