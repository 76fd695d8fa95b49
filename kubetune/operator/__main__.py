"""`kubetune-operator` / `python -m kubetune.operator`: run the operator (settings from KUBETUNE_OPERATOR_*).

Order matters: health endpoints first (a standby must answer its probes), then the Lease, then kopf.
"""
import functools
import logging
import os
import socket

import kopf
import prometheus_client

from kubetune.operator.handlers import login, register, user_agent
from kubetune.operator.health import Health
from kubetune.operator.kube import Connection, Kube
from kubetune.operator.leader import LeaderElector
from kubetune.operator.settings import OperatorSettings

log = logging.getLogger("kubetune.operator")


def main() -> None:
    settings = OperatorSettings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # not a line per handled event; errors stay
    # Workers, the progress ticker's threads and the Lease renewal share the pool.
    identity = settings.identity or f"{socket.gethostname()}-{os.getpid()}"
    kube = Kube(Connection(functools.partial(login, user_agent=user_agent(identity)),
                           connections=2 * settings.workers + 2))
    elector = (LeaderElector(kube, settings.lease_namespace, settings.lease_name, settings.lease_duration_seconds,
                             identity) if settings.leader_election else None)
    health = Health(elector)
    if settings.health_port:
        health.serve(settings.health_port)
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port)
    if elector is not None:
        if not elector.acquire():
            return
        # A deposed leader exits at once (it cannot renew within the renew deadline, shorter than the lease):
        # no handler of it may act next to the new leader. The Deployment restarts it as a standby.
        elector.keep(on_lost=lambda: os._exit(1))
    try:
        may_act = elector.healthy if elector is not None else (lambda: True)
        kopf.run(registry=register(settings, kube, may_act, identity), standalone=True, clusterwide=not settings.namespaces,
                 namespaces=settings.namespaces, ready_flag=health.kopf_ready)
    finally:
        health.kopf_stopped.set()
        if elector is not None:
            elector.release()  # a standby takes over now rather than after the lease expires


if __name__ == "__main__":
    main()
