"""kopf handlers: the only module that imports kopf. Each one just names the FineTuneJob to reconcile; all the
logic is in `reconcile` (I/O) and the pure builders it calls.

Scale: the API server filters every child watch by our label (settings.watching.label_selectors), kopf keeps the
FineTuneJobs and their children in in-memory indexes, and a reconcile reads those (IndexSource), so it costs no
read request; it writes only what changed.
"""
import copy
import logging

import kopf

from kubetune.api import GROUP, PLURAL, VERSION
from kubetune.operator.children import LABEL_FINETUNEJOB
from kubetune.operator.errors import PermanentFailure, RetryLater
from kubetune.operator.kube import Kube
from kubetune.operator.reconcile import COMPONENT, read_progress, reconcile
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.sources import LABEL_CONTROLLER_UID

ACTIVE_PHASES = ("Running",)  # the only phase with progress to read; events drive the rest
RETRY_SECONDS = 5
CHILD_RESOURCES = {"Job": ("batch", "v1", "jobs"), "ConfigMap": ("v1", "configmaps"), "Service": ("v1", "services")}


def _plain(body) -> dict:
    """The raw object without managedFields (a third of a Job's bytes, never read): indexes hold thousands."""
    raw = dict(body)
    raw["metadata"] = {k: v for k, v in raw["metadata"].items() if k != "managedFields"}
    return raw


class IndexSource:
    """sources.ApiSource's interface over kopf's indexes (handler kwargs); copies, as reconcile may edit them."""

    def __init__(self, indexes: dict):
        self.indexes = indexes

    def _values(self, index: str, key) -> list[dict]:
        store = self.indexes[index].get(key)
        return [copy.deepcopy(v) for v in store] if store is not None else []

    def finetunejob(self, namespace: str, name: str) -> dict | None:
        found = self._values("finetunejob_index", (namespace, name))
        return found[0] if found else None

    def children(self, namespace: str, name: str) -> dict[str, list[dict]]:
        return {kind: self._values(f"{kind.lower()}_index", (namespace, name)) for kind in CHILD_RESOURCES}

    def pods(self, namespace: str, job_uid: str) -> list[dict]:
        return self._values("pod_index", (namespace, job_uid))


def register(settings: OperatorSettings, kube: Kube, may_act=lambda: True) -> kopf.OperatorRegistry:
    """`may_act` says whether this replica still leads (by its own clock, without asking the API server), so
    a leader that was frozen past its renew deadline does nothing before its renewal thread stops it."""
    registry = kopf.OperatorRegistry()
    settings_workers = settings.workers

    @kopf.index(GROUP, VERSION, PLURAL, id="finetunejob_index", registry=registry)
    def finetunejob_index(namespace: str, name: str, body, **_):
        return {(namespace, name): _plain(body)}

    def child_index(namespace: str, labels: dict, body, **_):
        return {(namespace, labels[LABEL_FINETUNEJOB]): _plain(body)}

    for kind, resource in CHILD_RESOURCES.items():
        kopf.index(*resource, id=f"{kind.lower()}_index", labels={LABEL_FINETUNEJOB: kopf.PRESENT},
                   registry=registry)(child_index)

    @kopf.index("v1", "pods", labels={LABEL_CONTROLLER_UID: kopf.PRESENT, LABEL_FINETUNEJOB: kopf.PRESENT},
                id="pod_index", registry=registry)
    def pod_index(namespace: str, labels: dict, body, **_):
        return {(namespace, labels[LABEL_CONTROLLER_UID]): _plain(body)}

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_) -> None:
        # kopf's own bookkeeping lives in annotations under our domain, never in .status (which is the API).
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
        settings.persistence.finalizer = f"{GROUP}/finalizer"
        settings.posting.level = logging.WARNING  # our own events tell the story; kopf adds only its warnings
        settings.posting.reporting_component = COMPONENT
        settings.peering.standalone = True  # one leader via the Lease (see leader.py)
        # Server-side filtering: only our children cross the wire and reach the indexes, not every Pod.
        for resource in [*CHILD_RESOURCES.values(), ("v1", "pods")]:
            settings.watching.label_selectors[resource[0], resource[-1]] = LABEL_FINETUNEJOB
        settings.execution.max_workers = settings_workers

    kopf.on.login(registry=registry)(kopf.login_via_client)

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, backoff=RETRY_SECONDS)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, backoff=RETRY_SECONDS)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, backoff=RETRY_SECONDS)
    def finetunejob_changed(namespace: str, name: str, **indexes) -> None:
        run(namespace, name, indexes)

    @kopf.on.event("batch", "v1", "jobs", labels={LABEL_FINETUNEJOB: kopf.PRESENT}, registry=registry)
    @kopf.on.event("v1", "pods", labels={LABEL_FINETUNEJOB: kopf.PRESENT}, registry=registry)
    def child_changed(namespace: str, labels: dict, **indexes) -> None:
        try:
            run(namespace, labels[LABEL_FINETUNEJOB], indexes)
        except kopf.TemporaryError:
            pass  # event handlers are not retried; the FineTuneJob's own handler or timer comes back to it

    def active(status: dict, **_) -> bool:
        return status.get("phase") in ACTIVE_PHASES

    @kopf.timer(GROUP, VERSION, PLURAL, interval=settings.progress_interval_seconds, when=active, registry=registry)
    def progress_tick(namespace: str, name: str, status: dict, **indexes) -> None:
        if may_act():
            source = IndexSource(indexes)
            run(namespace, name, indexes, sample=read_progress(source, settings, namespace, name, status))

    def run(namespace: str, name: str, indexes: dict, sample: dict | None = None) -> None:
        """Our error kinds as kopf's: the status already says what went wrong."""
        if not may_act():
            raise kopf.TemporaryError("not leading: leaving this to the leader", delay=RETRY_SECONDS)
        try:
            reconcile(kube, settings, namespace, name, sample=sample, source=IndexSource(indexes))
        except PermanentFailure as exc:
            raise kopf.PermanentError(str(exc)) from exc
        except RetryLater as exc:
            raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc

    return registry
