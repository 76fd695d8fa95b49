"""Leader election on a coordination.k8s.io Lease, with client-go's semantics (tools/leaderelection).

Every replica tries to take the Lease every retry period; only the holder handles FineTuneJobs. Expiry is judged
on this replica's own clock from when it last saw the Lease record change, never from the holder's timestamps
(clocks differ between nodes). The leader renews every retry period and, if it could not renew within the renew
deadline (shorter than the lease duration), stops acting at once, before anyone else may take over. A leader that
shuts down releases the Lease so a standby takes over without waiting for expiry. kopf's own peering was not used:
replicas of equal priority freeze each other there.

Fencing: a replica acts only while it holds a fresh lease (`holds_lease`: leading, not resigning, and a renewal
that STARTED less than the renew deadline ago, since the API server may have written renewTime at any moment
of that request). Every write of a reconcile goes through `Fence`, which refuses it otherwise. Each Lease
request is bounded by what is left of the renew deadline, so a hung request cannot stretch it. On shutdown
`resign` closes the fence first; the caller stops everything that reconciles and only then `release`s.
"""
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone

from kubetune.operator.kube import Kube

log = logging.getLogger("kubetune.leader")


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, duration_seconds: float, identity: str = "",
                 renew_deadline_seconds: float | None = None, retry_period_seconds: float | None = None):
        self.kube, self.namespace, self.name = kube, namespace, name
        self.duration = duration_seconds
        # client-go's defaults are 15 s / 10 s / 2 s; the same proportions for any duration.
        self.renew_deadline = renew_deadline_seconds or duration_seconds * 2 / 3
        self.retry_period = retry_period_seconds or duration_seconds / 7.5
        self.identity = identity or f"{socket.gethostname()}-{os.getpid()}"
        self.observed: dict | None = None  # the last Lease spec seen, and when (monotonic) it changed
        self.observed_at = 0.0
        self.renewed_at = 0.0  # monotonic time at which our last successful acquire or renew request started
        self.last_contact = 0.0  # monotonic time of the last Lease read that worked (readiness of a standby)
        self.leading = threading.Event()
        self.resigning = threading.Event()  # shutting down: act no more, but keep the Lease until release()
        self.stopped = threading.Event()
        self.renewer: threading.Thread | None = None

    def _budget(self) -> float:
        """Seconds a Lease request may take: what is left of the renew deadline while leading (a renewal that
        has not answered by then is lost anyway), the renew deadline while acquiring."""
        if not self.leading.is_set():
            return self.renew_deadline
        return max(0.05, self.renewed_at + self.renew_deadline - time.monotonic())

    def holds_lease(self) -> bool:
        """Whether this replica may act now: the fence every reconcile and every write checks."""
        return (self.leading.is_set() and not self.resigning.is_set()
                and time.monotonic() - self.renewed_at < self.renew_deadline)

    def resign(self) -> None:
        """Stop acting (the fence closes) while still holding the Lease, until release()."""
        self.resigning.set()

    def try_acquire_or_renew(self) -> bool:
        """One attempt to take or renew the Lease (client-go tryAcquireOrRenew)."""
        started = time.monotonic()
        lease = self.kube.read_lease(self.namespace, self.name, timeout=self._budget())
        now = time.monotonic()
        self.last_contact = now
        spec = (lease or {}).get("spec") or {}
        if spec != self.observed:
            self.observed, self.observed_at = spec, now
        holder = spec.get("holderIdentity")
        duration = spec.get("leaseDurationSeconds") or self.duration
        if holder and holder != self.identity and now < self.observed_at + duration:
            if self.leading.is_set():  # someone else holds it: we were deposed
                self.leading.clear()
            return False
        ours = holder == self.identity
        new = {"holderIdentity": self.identity, "leaseDurationSeconds": int(round(self.duration)),
               "acquireTime": spec.get("acquireTime") if ours else _stamp(), "renewTime": _stamp(),
               "leaseTransitions": (spec.get("leaseTransitions") or 0) + (0 if ours or lease is None else 1)}
        rv = lease["metadata"]["resourceVersion"] if lease else None
        if not self.kube.write_lease(self.namespace, self.name, new, rv, timeout=self._budget()):
            return False
        self.observed, self.observed_at, self.renewed_at = new, time.monotonic(), started
        return True

    def _attempt(self) -> bool:
        try:
            return self.try_acquire_or_renew()
        except Exception as exc:  # the API server may be briefly unreachable (requests time out): try again
            log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            return False

    def acquire(self) -> bool:
        """Blocks until this replica leads (True) or stop() is called (False)."""
        log.info("waiting for leadership of lease %s/%s as %s", self.namespace, self.name, self.identity)
        while not self.stopped.is_set():
            if self._attempt():
                self.leading.set()
                log.info("leading as %s", self.identity)
                return True
            self.stopped.wait(self.retry_period)
        return False

    def keep(self, on_lost) -> threading.Thread:
        """Renews every retry period; calls `on_lost` when no renewal succeeded within the renew deadline or
        another holder appears."""
        def loop():
            while not self.stopped.wait(self.retry_period):
                renewed = self._attempt()
                deposed = not self.leading.is_set()
                if deposed or (not renewed and time.monotonic() - self.renewed_at > self.renew_deadline):
                    if self.stopped.is_set():
                        return
                    log.error("lost leadership of lease %s/%s", self.namespace, self.name)
                    self.leading.clear()
                    on_lost()
                    return
        thread = self.renewer = threading.Thread(target=loop, name="lease-renewal", daemon=True)
        thread.start()
        return thread

    def healthy(self) -> bool:
        """Leading with a fresh renewal, or standing by and able to read the Lease."""
        now = time.monotonic()
        if self.leading.is_set():
            return now - self.renewed_at <= self.renew_deadline
        return now - self.last_contact <= max(self.duration, 3 * self.retry_period)

    def release(self) -> None:
        """Hands the Lease back on shutdown (client-go ReleaseOnCancel), so a standby need not wait for expiry."""
        self.stopped.set()
        if self.renewer is not None:  # a renewal in flight would change the Lease under the release (a 409)
            self.renewer.join(self.renew_deadline)
        if not self.leading.is_set():
            return
        self.leading.clear()
        try:
            lease = self.kube.read_lease(self.namespace, self.name, timeout=self.renew_deadline)
            spec = (lease or {}).get("spec") or {}
            if lease and spec.get("holderIdentity") == self.identity:
                released = self.kube.write_lease(self.namespace, self.name, {
                    "holderIdentity": None, "leaseDurationSeconds": 1, "acquireTime": _stamp(),
                    "renewTime": _stamp(), "leaseTransitions": spec.get("leaseTransitions") or 0},
                    lease["metadata"]["resourceVersion"], timeout=self.renew_deadline)
                log.log(logging.INFO if released else logging.WARNING, "%s lease %s/%s",
                        "released" if released else "could not release (changed meanwhile)", self.namespace,
                        self.name)
        except Exception as exc:  # expiry does the same job, only later
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc)


class NotLeading(Exception):
    """A write refused by the fence: this replica no longer holds a fresh Lease."""


class Fence:
    """kube.Connection's `request`, refusing every write unless `may_act()` (LeaderElector.holds_lease): a
    reconcile that began while leading cannot write once the Lease is lost, expired by our clock, or about to
    be handed over. Reads pass (they change nothing)."""

    def __init__(self, connection, may_act):
        self.connection, self.may_act = connection, may_act

    def request(self, method: str, url_path: str, *args, **kwargs) -> dict:
        if method != "GET" and not self.may_act():
            raise NotLeading(f"not leading: {method} {url_path} refused")
        return self.connection.request(method, url_path, *args, **kwargs)

    def __getattr__(self, name: str):  # the rest of kube.Connection (its pool...) as is
        return getattr(self.connection, name)
