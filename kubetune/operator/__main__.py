"""`kubetune-operator` / `python -m kubetune.operator`: run the operator (settings from KUBETUNE_OPERATOR_*)."""
import logging
import os

import kopf
import prometheus_client

from kubetune.operator.handlers import register
from kubetune.operator.kube import Kube
from kubetune.operator.leader import LeaderElector
from kubetune.operator.settings import OperatorSettings


def main() -> None:
    settings = OperatorSettings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # not a line per handled event; errors stay
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port)
    kube = Kube()
    if settings.leader_election:
        elector = LeaderElector(kube, settings.lease_namespace, settings.lease_name,
                                settings.lease_duration_seconds, settings.identity)
        elector.acquire()
        # Exiting at once on a lost lease is what stops a deposed leader from acting next to the new one.
        elector.keep(on_lost=lambda: os._exit(1))
    kopf.run(registry=register(settings, kube), standalone=True, clusterwide=not settings.namespaces,
             namespaces=settings.namespaces,
             liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None)


if __name__ == "__main__":
    main()
