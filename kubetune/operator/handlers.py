"""kopf handlers: the only module that imports kopf. Each one just names the FineTuneJob to reconcile; all the
logic is in `reconcile` (I/O) and the pure builders it calls."""
import logging

import kopf

from kubetune.api import GROUP, PLURAL, VERSION
from kubetune.operator.children import LABEL_FINETUNEJOB
from kubetune.operator.errors import PermanentFailure, RetryLater
from kubetune.operator.kube import Kube
from kubetune.operator.reconcile import COMPONENT, read_progress, reconcile
from kubetune.operator.settings import OperatorSettings

ACTIVE_PHASES = ("Running",)  # the only phase with progress to read; events drive the rest
RETRY_SECONDS = 5


def register(settings: OperatorSettings, kube: Kube, may_act=lambda: True) -> kopf.OperatorRegistry:
    """`may_act` says whether this replica still leads (by its own clock, without asking the API server), so
    a leader that was frozen past its renew deadline does nothing before its renewal thread stops it."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_) -> None:
        # kopf's own bookkeeping lives in annotations under our domain, never in .status (which is the API).
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
        settings.persistence.finalizer = f"{GROUP}/finalizer"
        settings.posting.level = logging.WARNING  # our own events tell the story; kopf adds only its warnings
        settings.posting.reporting_component = COMPONENT
        settings.peering.standalone = True  # one leader via the Lease (see leader.py)

    kopf.on.login(registry=registry)(kopf.login_via_client)

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, backoff=RETRY_SECONDS)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, backoff=RETRY_SECONDS)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, backoff=RETRY_SECONDS)
    def finetunejob_changed(namespace: str, name: str, **_) -> None:
        run(namespace, name)

    @kopf.on.event("batch", "v1", "jobs", labels={LABEL_FINETUNEJOB: kopf.PRESENT}, registry=registry)
    @kopf.on.event("v1", "pods", labels={LABEL_FINETUNEJOB: kopf.PRESENT}, registry=registry)
    def child_changed(namespace: str, labels: dict, **_) -> None:
        try:
            run(namespace, labels[LABEL_FINETUNEJOB])
        except kopf.TemporaryError:
            pass  # event handlers are not retried; the FineTuneJob's own handler or timer comes back to it

    def active(status: dict, **_) -> bool:
        return status.get("phase") in ACTIVE_PHASES

    @kopf.timer(GROUP, VERSION, PLURAL, interval=settings.progress_interval_seconds, when=active, registry=registry)
    def progress_tick(namespace: str, name: str, status: dict, **_) -> None:
        if may_act():
            run(namespace, name, sample=read_progress(kube, settings, namespace, name, status))

    def run(namespace: str, name: str, sample: dict | None = None) -> None:
        """Our error kinds as kopf's: the status already says what went wrong."""
        if not may_act():
            raise kopf.TemporaryError("not leading: leaving this to the leader", delay=RETRY_SECONDS)
        try:
            reconcile(kube, settings, namespace, name, sample=sample)
        except PermanentFailure as exc:
            raise kopf.PermanentError(str(exc)) from exc
        except RetryLater as exc:
            raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc

    return registry
