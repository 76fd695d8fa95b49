"""`kubetune-operator` / `python -m kubetune.operator`: run the operator (settings from KUBETUNE_OPERATOR_*).

Order matters: health endpoints first (a standby must answer its probes), then the Lease, then kopf. On the
way out the other way round, and the Lease last: the fence closes, the ticker, relist and workers stop (a
running reconcile ends, nothing new starts), and only then is the Lease handed to a standby.
"""
import functools
import logging
import os
import signal
import socket

import kopf
import prometheus_client

from kubetune.operator.controller import Controller
from kubetune.operator.handlers import login, register, user_agent
from kubetune.operator.health import Health
from kubetune.operator.kube import Connection, Kube
from kubetune.operator.leader import Fence, LeaderElector
from kubetune.operator.settings import OperatorSettings

log = logging.getLogger("kubetune.operator")


def _leave(*_) -> None:
    raise SystemExit(0)  # inside kopf.run's try, the finally below still resigns and releases


def main() -> None:
    settings = OperatorSettings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # not a line per handled event; errors stay
    identity = settings.identity or f"{socket.gethostname()}-{os.getpid()}"
    # Workers, the progress ticker's threads, the relist and the Lease renewal share the pool.
    connection = Connection(functools.partial(login, user_agent=user_agent(identity)),
                            connections=2 * settings.workers + 3)
    elector = (LeaderElector(Kube(connection), settings.lease_namespace, settings.lease_name,
                             settings.lease_duration_seconds, identity) if settings.leader_election else None)
    health = Health(elector)
    if settings.health_port:
        health.serve(settings.health_port)
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port)
    if elector is not None:
        # The operator is PID 1 in its container, and PID 1 gets no default action for SIGTERM: without a handler
        # a standby ignored the kubelet's SIGTERM, kept trying for the Lease through its grace period and could
        # lead while its pod was being deleted (an old pod in a rollout did). Until kopf installs its own
        # handlers, SIGTERM or SIGINT ends the election, and once leading, the process.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: elector.stopped.set())
        if not elector.acquire() or elector.stopped.is_set():
            elector.release()
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _leave)
        # A deposed leader exits at once (it cannot renew within the renew deadline, shorter than the lease;
        # its fence closed by its own clock before that): the Deployment restarts it as a standby.
        elector.keep(on_lost=lambda: os._exit(1))
    may_act = elector.holds_lease if elector is not None else (lambda: True)
    controller = Controller(settings, Kube(Fence(connection, may_act)), may_act)
    try:
        kopf.run(registry=register(settings, controller, identity), standalone=True,
                 clusterwide=not settings.namespaces, namespaces=settings.namespaces, ready_flag=health.kopf_ready)
    finally:
        health.kopf_stopped.set()
        if elector is not None:
            elector.resign()  # no write from here on...
        controller.stop(settings.shutdown_seconds)  # ...and nothing left that would try
        if elector is not None:
            elector.release()  # a standby takes over now rather than after the lease expires


if __name__ == "__main__":
    main()
