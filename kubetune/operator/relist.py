"""The periodic relist: what a watch gap hid from the indexes (issue 20, item 6).

When a watch breaks and its resourceVersion is gone (410, a restarted API server), kopf lists again and yields
the listed objects, but never the deletions in between: a deleted Job stays "current" in the index (never
recreated, or a 2 s retry forever), a deleted FineTuneJob is reconciled into 404s. client-go's informers
report such objects as DeletedFinalStateUnknown; kopf does not. So every `relist_seconds` the operator LISTs
the FineTuneJobs and their labelled children (paged), and evicts from the index every object the LIST no
longer has, provided the index's copy is not newer than the LIST (an object created after the LIST's
snapshot is not a ghost). Then it queues the owners: their reconcile sees the world as it is.
"""
import logging
import threading
from collections.abc import Callable

from prometheus_client import Counter

from kubetune.operator.labels import LABEL_FINETUNEJOB
from kubetune.operator.kube import RESOURCES, Kube, path
from kubetune.operator.sources import newer

log = logging.getLogger("kubetune.relist")
GHOSTS = Counter("kubetune_operator_relist_ghosts_total",
                 "Objects the watch never reported deleted, evicted from the indexes by the periodic relist",
                 ["kind"])
PAGE = 500

# kind -> (index id, label selector of the watch that feeds it)
INDEXED = {"FineTuneJob": ("finetunejob_index", ""), "Job": ("job_index", LABEL_FINETUNEJOB),
           "ConfigMap": ("configmap_index", LABEL_FINETUNEJOB), "Service": ("service_index", LABEL_FINETUNEJOB),
           "Pod": ("pod_index", LABEL_FINETUNEJOB)}


def is_ghost(obj: dict, listed_uids: set[str], list_rv: str) -> bool:
    """In the index, absent from a LIST taken at `list_rv`, and not changed after it: deleted unseen."""
    meta = obj.get("metadata") or {}
    return meta.get("uid") not in listed_uids and not newer(meta.get("resourceVersion"), list_rv)


def owner(kind: str, obj: dict) -> tuple[str, str] | None:
    """The FineTuneJob an indexed object belongs to, as the work queue's key."""
    meta = obj.get("metadata") or {}
    name = meta.get("name") if kind == "FineTuneJob" else (meta.get("labels") or {}).get(LABEL_FINETUNEJOB)
    return (meta.get("namespace"), name) if name else None


class Relister:
    def __init__(self, kube: Kube, namespaces: list[str], period: float,
                 evict: Callable[[str, str, dict], list[dict]], enqueue: Callable[[str, str], None]):
        """`evict(kind, index_id, listed)` runs on kopf's event loop (the indexes' one writer): it drops the
        ghosts of that index given `listed` ({namespace or None: (list resourceVersion, uids)}) and returns
        them."""
        self.kube, self.namespaces, self.period = kube, namespaces, period
        self.evict, self.enqueue = evict, enqueue
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="relist", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _loop(self) -> None:
        while not self.stopped.wait(self.period):
            try:
                self.relist_once()
            except Exception as exc:  # an outage: the next period tries again
                log.warning("relist: %s", exc)

    def relist_once(self) -> int:
        """Evicts the ghosts of every index and queues their owners; the number evicted."""
        evicted = 0
        for kind, (index_id, selector) in INDEXED.items():
            listed = {namespace: self.list_uids(kind, namespace, selector)
                      for namespace in (self.namespaces or [None])}
            if self.stopped.is_set():
                return evicted
            ghosts = self.evict(kind, index_id, listed)
            if ghosts:
                GHOSTS.labels(kind).inc(len(ghosts))
                log.info("relist: %d %s(s) deleted while the watch was away: %s", len(ghosts), kind,
                         ", ".join(f"{g['metadata'].get('namespace')}/{g['metadata'].get('name')}"
                                   for g in ghosts[:10]))
            for key in {owner(kind, g) for g in ghosts} - {None}:
                self.enqueue(*key)
            evicted += len(ghosts)
        return evicted

    def list_uids(self, kind: str, namespace: str | None, selector: str) -> tuple[str, set[str]]:
        """(the LIST's resourceVersion, the uids it holds), in pages: never the whole list in memory at once."""
        prefix, plural = RESOURCES[kind]
        url = path(kind, namespace) if namespace else f"{prefix}/{plural}"
        uids: set[str] = set()
        token, version = None, ""
        while True:
            params = {"limit": PAGE, **({"labelSelector": selector} if selector else {}),
                      **({"continue": token} if token else {})}
            page = self.kube.get(url, params=params)
            uids.update(item["metadata"]["uid"] for item in page.get("items") or [])
            meta = page.get("metadata") or {}
            version = version or meta.get("resourceVersion", "")  # the first page's: the snapshot's
            token = meta.get("continue")
            if not token:
                return version, uids


def evict_ghosts(index, listed: dict, discard: Callable[[dict], None]) -> list[dict]:
    """The ghosts of one kopf index (a Mapping of key -> collection of bodies), each passed to `discard`.
    Called on kopf's event loop, so the index does not change underneath."""
    ghosts = []
    for key in list(index):
        for obj in list(index.get(key) or ()):
            namespace = (obj.get("metadata") or {}).get("namespace")
            scope = namespace if namespace in listed else None
            if scope not in listed:
                continue  # a namespace this relist did not cover
            list_rv, uids = listed[scope]
            if is_ghost(obj, uids, list_rv):
                ghosts.append(obj)
    for obj in ghosts:
        discard(obj)
    return ghosts

