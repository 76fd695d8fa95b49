"""handlers.drop_managed_fields_at_ingest: kopf's raw events lose metadata.managedFields before kopf queues them."""
import asyncio

from kopf._cogs.clients import watching

from kubetune.operator import handlers


def test_kopf_still_reads_its_raw_events_through_the_wrapped_function():
    """The wrap works only while infinite_watch looks continuous_watch up in its module at each call: a kopf
    release that renames or inlines it must fail here, not silently keep every managedFields in memory."""
    assert "continuous_watch" in watching.infinite_watch.__code__.co_names
    assert {"settings", "resource", "namespace", "operator_pause_waiter"} <= set(
        watching.continuous_watch.__code__.co_varnames)


def test_listed_and_watched_objects_arrive_without_managed_fields(monkeypatch):
    fields = [{"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {"f:status": {}}}]
    events = [{"type": None, "object": {"metadata": {"name": "a", "managedFields": fields}, "spec": {"x": 1}}},
              watching.Bookmark.LISTED,
              {"type": "MODIFIED", "object": {"metadata": {"name": "a", "managedFields": fields}}},
              {"type": "ERROR", "object": {"kind": "Status", "code": 500}}]

    async def upstream(**kwargs):
        assert kwargs == {"resource": "r"}
        for event in events:
            yield event

    monkeypatch.setattr(watching, "continuous_watch", upstream)
    handlers.drop_managed_fields_at_ingest()
    handlers.drop_managed_fields_at_ingest()  # a second registry (tests) wraps once

    async def collect():
        return [event async for event in watching.continuous_watch(resource="r")]

    seen = asyncio.run(collect())
    assert seen[1] is watching.Bookmark.LISTED and seen[3]["object"]["code"] == 500
    assert seen[0]["object"] == {"metadata": {"name": "a"}, "spec": {"x": 1}}
    assert seen[2]["object"]["metadata"] == {"name": "a"}
