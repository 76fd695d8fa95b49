"""kopf handlers: the only module that imports kopf. Each one just names the FineTuneJob to reconcile; all the
logic is in `reconcile` (I/O) and the pure builders it calls.

Scale: the API server filters every child watch by our label (settings.watching.label_selectors), kopf keeps the
FineTuneJobs and their children in in-memory indexes, and a reconcile reads those (IndexSource), so it costs no
read request; it writes only what changed.
"""
import asyncio
import dataclasses
import functools
import importlib.metadata
import logging
import os

import kopf

from kubetune.api import GROUP, PLURAL, VERSION
from kubetune.api.sweep import SWEEP_PLURAL
from kubetune.operator.labels import LABEL_FINETUNEJOB, LABEL_SWEEP
from kubetune.operator.credentials import login_with_exec_plugin
from kubetune.operator.controller import Controller
from kubetune.operator.reconcile import COMPONENT, own_write
from kubetune.operator.relist import Relister, evict_ghosts
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.labels import LABEL_CONTROLLER_UID

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
    info = info or login_with_exec_plugin() or kopf.login_with_kubeconfig(settings=settings)
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


def register(settings: OperatorSettings, controller: Controller, identity: str = "operator"
             ) -> kopf.OperatorRegistry:
    """kopf's side: watches feed the indexes and name the FineTuneJob to reconcile; `controller` does the rest.

    Every function here is async and returns at once (the index functions only copy dicts): kopf runs sync ones
    on its thread pool, where an ADDED waited behind busy threads while a DELETED was applied at once, so an
    index could show a deletion before the matching creation (issue 20, item 2)."""
    drop_managed_fields_at_ingest()
    registry = kopf.OperatorRegistry()

    @kopf.index(GROUP, VERSION, PLURAL, id="finetunejob_index", registry=registry)
    async def finetunejob_index(namespace: str, name: str, body, **_):
        return {(namespace, name): _plain(body)}

    async def child_index(namespace: str, labels: dict, body, **_):
        return {(namespace, labels[LABEL_FINETUNEJOB]): _plain(body)}

    for kind, resource in CHILD_RESOURCES.items():
        kopf.index(*resource, id=f"{kind.lower()}_index", labels={LABEL_FINETUNEJOB: kopf.PRESENT},
                   registry=registry)(child_index)

    @kopf.index("v1", "pods", labels={LABEL_CONTROLLER_UID: kopf.PRESENT, LABEL_FINETUNEJOB: kopf.PRESENT},
                id="pod_index", registry=registry)
    async def pod_index(namespace: str, labels: dict, body, **_):
        return {(namespace, labels[LABEL_CONTROLLER_UID]): _plain(body)}

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **indexes) -> None:
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
        live = {k: v for k, v in indexes.items() if k.endswith("_index")}
        relister = Relister(controller.kube, operator_settings.namespaces, operator_settings.relist_seconds,
                            evictor(asyncio.get_running_loop(), live), controller.enqueue)
        controller.start(live, relister)

    operator_settings = settings
    kopf.on.login(registry=registry, id="login")(functools.partial(login, user_agent=user_agent(identity)))

    # No stateful kopf handlers (on.create/update/resume, timers): they keep their state in annotations and a
    # finalizer on every object, several writes per job. Level-based, every event just queues a reconcile, and
    # a retry is a later reconcile (the controller's work queue).
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def finetunejob_event(type: str, namespace: str, name: str, body, **_) -> None:
        controller.observe(namespace, name, body.get("status"), gone=type == "DELETED")
        sweep = (body["metadata"].get("labels") or {}).get(LABEL_SWEEP)
        if sweep:  # a trial: its sweep follows its phase and eval loss
            controller.enqueue_sweep(namespace, sweep)
        if type == "MODIFIED" and own_write(namespace, name, body["metadata"].get("resourceVersion")):
            return  # our own status write coming back: nothing new
        controller.enqueue(namespace, name)

    # Sweeps: every event queues the sweep (its own status writes included: a reconcile that finds nothing new
    # writes nothing). Its trials' events queue it too (above).
    @kopf.on.event(GROUP, VERSION, SWEEP_PLURAL, registry=registry)
    async def finetunesweep_event(namespace: str, name: str, **_) -> None:
        controller.enqueue_sweep(namespace, name)

    @kopf.on.event("batch", "v1", "jobs", labels={LABEL_FINETUNEJOB: kopf.PRESENT}, registry=registry)
    @kopf.on.event("v1", "pods", labels={LABEL_FINETUNEJOB: kopf.PRESENT}, registry=registry)
    @kopf.on.event("v1", "configmaps", labels={LABEL_FINETUNEJOB: kopf.PRESENT}, registry=registry)
    @kopf.on.event("v1", "services", labels={LABEL_FINETUNEJOB: kopf.PRESENT}, registry=registry)
    async def child_event(namespace: str, labels: dict, **_) -> None:
        controller.enqueue(namespace, labels[LABEL_FINETUNEJOB])

    return registry


def evictor(loop: asyncio.AbstractEventLoop, indexes: dict):
    """Relister's `evict`: drops ghosts from kopf's index on kopf's loop, the indexes' only writer, as a DELETED
    event would (kopf's internal Index._discard by its (namespace, name, uid) key; test_ingest.py pins it)."""
    def discard_from(index):
        def discard(obj: dict) -> None:
            meta = obj["metadata"]
            index._discard((meta.get("namespace"), meta.get("name"), meta.get("uid")))
        return discard

    def evict(kind: str, index_id: str, listed: dict) -> list[dict]:
        index = indexes[index_id]
        future = asyncio.run_coroutine_threadsafe(_call(evict_ghosts, index, listed, discard_from(index)), loop)
        return future.result(timeout=60)

    return evict


async def _call(fn, *args):
    return fn(*args)
