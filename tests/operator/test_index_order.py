"""Issue 20 (2): kopf applies a DELETED event to its indexes at once, but an ADDED or MODIFIED only after our index
function ran; a sync index function runs on kopf's thread pool, behind whatever holds it. With a starved pool an
index showed attempt N's Job deleted before attempt N+1's Job created. Driven through kopf's own indexing engine
(`index_resource`, kopf pinned) with the operator's registry; the pool is starved by a real blocked thread."""
import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import kopf
from kopf._cogs.clients import watching
from kopf._cogs.structs import bodies, references
from kopf._core.engines import indexing

from kubetune.operator.labels import LABEL_FINETUNEJOB
from kubetune.operator.controller import Controller
from kubetune.operator.handlers import register
from kubetune.operator.settings import OperatorSettings

JOBS = references.Resource("batch", "v1", "jobs", kind="Job", namespaced=True)


def job(name: str, uid: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"namespace": "ns", "name": name, "uid": uid, "resourceVersion": "1",
                         "labels": {LABEL_FINETUNEJOB: "run"}}}


def test_a_starved_pool_never_shows_the_deletion_before_the_creation(monkeypatch):
    # register() wraps kopf's continuous_watch (handlers.drop_managed_fields_at_ingest): undone afterwards, so
    # test_ingest.py still inspects kopf's own function.
    monkeypatch.setattr(watching, "continuous_watch", watching.continuous_watch)
    settings = OperatorSettings(workers=1, leader_election=False)
    registry = register(settings, Controller(settings, kube=None))
    indexers = indexing.OperatorIndexers()
    indexers.ensure(registry._indexing.get_all_handlers())
    kopf_settings = kopf.OperatorSettings()
    kopf_settings.execution.executor = ThreadPoolExecutor(1)
    starved = threading.Event()
    kopf_settings.execution.executor.submit(starved.wait, 30)  # a reconcile holding the only thread

    async def event(kind: str | None, obj: dict) -> None:
        await indexing.index_resource(
            indexers=indexers, registry=registry, settings=kopf_settings, resource=JOBS,
            raw_event={"type": kind, "object": obj}, memory=indexing.IndexingMemory(),
            logger=logging.getLogger("test"), memo=kopf.Memo(), body=bodies.Body(obj))

    def indexed() -> set[str]:
        return {j["metadata"]["name"] for j in indexers.indices["job_index"].get(("ns", "run"), [])}

    async def scenario() -> set[str]:
        old, new = job("run-a1", "u1"), job("run-a2", "u2")
        indexers["job_index"].replace(indexers.make_key(bodies.Body(old)), {("ns", "run"): old})  # known before
        # The API server created attempt 2 before deleting attempt 1: the two events arrive in that order, each
        # on its object's own kopf worker.
        created = asyncio.create_task(event("ADDED", new))
        await asyncio.sleep(0)  # the ADDED is being indexed...
        await event("DELETED", old)  # ...when the DELETED comes
        seen = indexed()
        starved.set()
        await asyncio.wait_for(created, 30)
        return seen

    try:
        assert asyncio.run(scenario()) == {"run-a2"}, "the index lost attempt 1 before it showed attempt 2"
    finally:
        starved.set()
        kopf_settings.execution.executor.shutdown(wait=False)
