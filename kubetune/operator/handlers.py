"""kopf handlers: the only module that imports kopf. Each one just names the FineTuneJob to reconcile; all the
logic is in `reconcile` (I/O) and the pure builders it calls.

Scale: the API server filters every child watch by our label (settings.watching.label_selectors), kopf keeps the
FineTuneJobs and their children in in-memory indexes, and a reconcile reads those (IndexSource), so it costs no
read request; it writes only what changed.
"""
import dataclasses
import functools
import importlib.metadata
import logging
import os
import threading

import kopf

from kubetune.api import GROUP, PLURAL, VERSION
from kubetune.operator.children import LABEL_FINETUNEJOB
from kubetune.operator.errors import PermanentFailure, RetryLater
from kubetune.operator.ticker import Ticker
from kubetune.operator.kube import Kube
from kubetune.operator.reconcile import COMPONENT, own_write, read_progress, reconcile, resync_due
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.sources import LABEL_CONTROLLER_UID

RETRY_SECONDS = 5
log = logging.getLogger("kubetune.operator")
CHILD_RESOURCES = {"Job": ("batch", "v1", "jobs"), "ConfigMap": ("v1", "configmaps"), "Service": ("v1", "services")}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Credentials(kopf.ConnectionInfo):
    """kopf's connection info plus a User-Agent: both clients (kopf's aiohttp session and kube.Connection) send
    the headers of as_http_headers(), so every request names this replica (the API server's audit log tells
    the replicas apart by it, as client-go's `rest.AddUserAgent` does for controller-manager)."""
    user_agent: str | None = None

    def as_http_headers(self) -> dict[str, str]:
        return {**super().as_http_headers(), **({"User-Agent": self.user_agent} if self.user_agent else {})}


def user_agent(identity: str) -> str:
    return f"kubetune-operator/{identity} kopf/{importlib.metadata.version('kopf')}"


def login(user_agent: str | None = None, **_) -> kopf.ConnectionInfo:
    """Credentials for kopf and for kube.Connection alike: the pod's service account (the API server at
    $KUBERNETES_SERVICE_HOST:PORT, as client-go's in-cluster config, where kopf's own guess is the DNS name
    kubernetes.default.svc), else $KUBECONFIG or ~/.kube/config (certificates, tokens; not exec plugins).
    kopf's own login functions, so that no Kubernetes client library is imported (kopf's default login
    imports the `kubernetes` package when it is installed)."""
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings)
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if info is not None and host:
        host = f"[{host}]" if ":" in host else host
        info = dataclasses.replace(info, server=f"https://{host}:{os.environ.get('KUBERNETES_SERVICE_PORT', '443')}")
    info = info or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no Kubernetes credentials: no service account token in this pod, and neither "
                              "$KUBECONFIG nor ~/.kube/config")
    fields = {f.name: getattr(info, f.name) for f in dataclasses.fields(kopf.ConnectionInfo)}
    return Credentials(**fields, user_agent=user_agent)


def drop_managed_fields_at_ingest() -> None:
    """Every object kopf lists or watches arrives without metadata.managedFields: half of each one's bytes, which
    nothing here reads, and at a restart kopf holds every listed object until all are indexed (4,000 at 1,000
    jobs). Go operators do this with controller-runtime's TransformStripManagedFields; kopf has no such hook, so
    this wraps its one source of raw events, `watching.continuous_watch` (kopf is pinned; test_ingest.py fails
    if a kopf release moves it)."""
    from kopf._cogs.clients import watching

    original = watching.continuous_watch
    if getattr(original, "drops_managed_fields", False):
        return

    async def continuous_watch(**kwargs):
        async for event in original(**kwargs):
            if isinstance(event, dict):  # not a kopf Bookmark
                ((event.get("object") or {}).get("metadata") or {}).pop("managedFields", None)
            yield event

    continuous_watch.drops_managed_fields = True
    watching.continuous_watch = continuous_watch


def _plain(body) -> dict:
    """The raw object as a dict the index keeps (managedFields were dropped at ingest)."""
    return dict(body)


class IndexSource:
    """sources.ApiSource's interface over kopf's indexes (handler kwargs). The objects are the indexes' own:
    reconcile and the pure functions only read them."""

    def __init__(self, indexes: dict):
        self.indexes = indexes

    def _values(self, index: str, key) -> list[dict]:
        store = self.indexes[index].get(key)
        return list(store) if store is not None else []

    def finetunejob(self, namespace: str, name: str) -> dict | None:
        found = self._values("finetunejob_index", (namespace, name))
        return found[0] if found else None

    def children(self, namespace: str, name: str) -> dict[str, list[dict]]:
        return {kind: self._values(f"{kind.lower()}_index", (namespace, name)) for kind in CHILD_RESOURCES}

    def pods(self, namespace: str, job_uid: str) -> list[dict]:
        return self._values("pod_index", (namespace, job_uid))


def register(settings: OperatorSettings, kube: Kube, may_act=lambda: True, identity: str = "operator"
             ) -> kopf.OperatorRegistry:
    """`may_act` says whether this replica still leads (by its own clock, without asking the API server), so
    a leader that was frozen past its renew deadline does nothing before its renewal thread stops it."""
    drop_managed_fields_at_ingest()
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
        # kopf's own bookkeeping (none with event handlers only) would live under our domain, never in .status.
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

    kopf.on.login(registry=registry, id="login")(functools.partial(login, user_agent=user_agent(identity)))

    # No stateful kopf handlers (on.create/update/resume, timers): they keep their state in annotations and a
    # finalizer on every object, several writes per job. Level-based, every event just triggers a reconcile, and
    # a retry is a later reconcile (requeue).
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def finetunejob_event(type: str, namespace: str, name: str, body, **indexes) -> None:
        deleted = type == "DELETED"
        ticker.observe(namespace, name, body.get("status"), gone=deleted)
        if type == "MODIFIED" and own_write(namespace, name, body["metadata"].get("resourceVersion")):
            return  # our own status write coming back: nothing new
        attempt(namespace, name, indexes)

    @kopf.on.event("batch", "v1", "jobs", labels={LABEL_FINETUNEJOB: kopf.PRESENT}, registry=registry)
    @kopf.on.event("v1", "pods", labels={LABEL_FINETUNEJOB: kopf.PRESENT}, registry=registry)
    @kopf.on.event("v1", "configmaps", labels={LABEL_FINETUNEJOB: kopf.PRESENT}, registry=registry)
    @kopf.on.event("v1", "services", labels={LABEL_FINETUNEJOB: kopf.PRESENT}, registry=registry)
    def child_event(namespace: str, labels: dict, **indexes) -> None:
        attempt(namespace, labels[LABEL_FINETUNEJOB], indexes)

    seen_indexes: dict = {}

    def progress_tick(namespace: str, name: str, status: dict) -> None:
        source = IndexSource(seen_indexes)
        sample = read_progress(source, settings, namespace, name, status)
        if sample is not None or resync_due(namespace, name, settings.resync_seconds):
            attempt(namespace, name, seen_indexes, sample=sample)

    ticker = Ticker(settings.progress_interval_seconds, settings.workers, progress_tick)
    requeued: dict[tuple[str, str], threading.Timer] = {}
    failures: dict[tuple[str, str], int] = {}
    requeue_lock = threading.Lock()

    def requeue(namespace: str, name: str, indexes: dict, delay: float) -> None:
        """At most one pending retry per object; a reconcile that happens meanwhile does its work anyway."""
        key = (namespace, name)
        with requeue_lock:
            if key in requeued:
                return
            timer = threading.Timer(delay, fire, args=(key, indexes))
            timer.daemon = True
            requeued[key] = timer
        timer.start()

    def fire(key: tuple[str, str], indexes: dict) -> None:
        with requeue_lock:
            requeued.pop(key, None)
        attempt(*key, indexes)

    def attempt(namespace: str, name: str, indexes: dict, sample: dict | None = None) -> None:
        """One reconcile, with our error kinds: the status already says what went wrong."""
        seen_indexes.update((k, v) for k, v in indexes.items() if k.endswith("_index"))  # for the ticker
        if not may_act():
            return  # a deposed leader does nothing; it is about to exit
        key = (namespace, name)
        try:
            reconcile(kube, settings, namespace, name, sample=sample, source=IndexSource(indexes))
            failures.pop(key, None)
        except PermanentFailure as exc:
            log.info("%s/%s: %s (not retried until it changes)", namespace, name, exc)
        except RetryLater as exc:
            requeue(namespace, name, indexes, exc.delay)
        except Exception:  # a bug or an outage: back off exponentially, as kopf would
            failures[key] = failures.get(key, 0) + 1
            log.exception("reconciling %s/%s failed (%d in a row)", namespace, name, failures[key])
            requeue(namespace, name, indexes, min(RETRY_SECONDS * 2 ** (failures[key] - 1), 300))

    return registry
