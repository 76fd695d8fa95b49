"""Issue 20 (6): the periodic relist's rule for ghosts, on kopf's own index structure. A ghost is in the index,
absent from the LIST, and not newer than the LIST's resourceVersion (an object created after the LIST's snapshot
is not one). The API server's side is in test_watch_gap_cluster.py."""
import asyncio
import threading

from kopf._core.engines import indexing

from kubetune.operator.labels import LABEL_FINETUNEJOB
from kubetune.operator.handlers import evictor
from kubetune.operator.relist import evict_ghosts, is_ghost, owner


def obj(name: str, uid: str, rv: str, namespace: str = "ns", run: str = "run") -> dict:
    return {"metadata": {"namespace": namespace, "name": name, "uid": uid, "resourceVersion": rv,
                         "labels": {LABEL_FINETUNEJOB: run}}}


def test_a_ghost_is_absent_from_the_list_and_not_newer_than_it():
    assert is_ghost(obj("a", "u1", "90"), {"u2"}, "100")
    assert is_ghost(obj("a", "u1", "100"), set(), "100")
    assert not is_ghost(obj("a", "u1", "90"), {"u1"}, "100"), "listed"
    assert not is_ghost(obj("b", "u3", "101"), set(), "100"), "created after the LIST's snapshot"


def index_of(*objs: dict) -> indexing.OperatorIndexer:
    indexer = indexing.OperatorIndexer()
    for o in objs:
        m = o["metadata"]
        indexer.replace((m["namespace"], m["name"], m["uid"]), {(m["namespace"], m["labels"][LABEL_FINETUNEJOB]): o})
    return indexer


def test_ghosts_leave_the_kopf_index_as_a_deleted_event_would_take_them():
    gone, kept, young, elsewhere = (obj("a1", "u1", "50"), obj("a2", "u2", "60"), obj("a3", "u3", "120"),
                                    obj("b1", "u4", "10", namespace="other", run="b"))
    indexer = index_of(gone, kept, young, elsewhere)
    listed = {"ns": ("100", {"u2"})}  # a relist of namespace ns only
    discarded = []

    def discard(o):
        m = o["metadata"]
        discarded.append(m["name"])
        indexer.index._discard((m["namespace"], m["name"], m["uid"]))

    assert [g["metadata"]["name"] for g in evict_ghosts(indexer.index, listed, discard)] == ["a1"]
    assert discarded == ["a1"]
    assert sorted(o["metadata"]["name"] for o in indexer.index[("ns", "run")]) == ["a2", "a3"]
    assert [o["metadata"]["name"] for o in indexer.index[("other", "b")]] == ["b1"], "not listed: not judged"
    assert owner("Job", gone) == ("ns", "run") and owner("FineTuneJob", gone) == ("ns", "a1")


def test_the_evictor_runs_on_kopfs_loop_and_empties_the_key():
    indexer = index_of(obj("a1", "u1", "50"))
    result = {}

    async def main():
        evict = evictor(asyncio.get_running_loop(), {"job_index": indexer.index})
        thread = threading.Thread(target=lambda: result.update(
            ghosts=evict("Job", "job_index", {None: ("100", set())})))
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert [g["metadata"]["name"] for g in result["ghosts"]] == ["a1"]
    assert ("ns", "run") not in indexer.index


def test_kopf_still_keys_its_indexes_as_the_evictor_does():
    """The evictor uses kopf's internal Index._discard with make_key's (namespace, name, uid): a kopf release that
    changes either must fail here, not leave ghosts in place."""
    from kopf._cogs.structs import bodies

    o = obj("a1", "u1", "5")
    assert indexing.OperatorIndexers().make_key(bodies.Body(o)) == ("ns", "a1", "u1")
    assert callable(indexing.Index._discard)
