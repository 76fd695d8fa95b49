"""The requeue scheduler (workqueue.py), on an injected clock: no sleeps. Issue 20 (4): the first timer used to win
whatever its delay, a collapsed reconcile reset the backoff, and timers ran reconciles outside the bounded pool."""
import threading

from kubetune.operator.workqueue import WorkQueue, Workers

A, B = ("ns", "a"), ("ns", "b")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def queue() -> tuple[WorkQueue, Clock]:
    clock = Clock()
    return WorkQueue(clock=clock, base_delay=5, max_delay=300), clock


def test_the_earliest_requeue_wins_whichever_came_first():
    q, clock = queue()
    q.add(A, 300)  # a long backoff pending...
    q.add(A, 2)  # ...does not swallow a 2 s retry
    q.add(A, 60)  # and a later one does not push the 2 s back
    assert q.take() is None
    clock.now += 1.9
    assert q.take() is None
    clock.now += 0.1
    assert q.take() == (A, None)
    q.done(A)
    clock.now += 400
    assert q.take() is None, "the superseded deadlines do not fire on their own"


def test_an_object_is_queued_once_and_never_reconciled_twice_at_once():
    q, _ = queue()
    for _ in range(3):
        q.add(A)
    q.add(B)
    assert q.take() == (A, None)
    q.add(A)  # an event while A is being reconciled...
    assert q.take() == (B, None), "...does not start a second reconcile of A beside the first"
    assert q.take() is None
    q.done(A)  # ...but runs once more afterwards
    assert q.take() == (A, None)
    q.done(A), q.done(B)
    assert q.take() is None


def test_a_reconcile_that_starts_drops_the_pending_requeue():
    q, clock = queue()
    q.add(A, 30)
    q.add(A)  # an event: reconcile now
    assert q.take() == (A, None) and q.deadline(A) is None
    q.done(A)
    clock.now += 31
    assert q.take() is None


def test_backoff_grows_until_a_success_and_survives_events_in_between():
    q, clock = queue()
    delays = []
    for _ in range(4):
        delays.append(q.backoff(A))
        q.add(A)  # an event brings it back at once: the failure count stays
        assert q.take() == (A, None)
        q.done(A)
    assert delays == [5, 10, 20, 40]
    assert q.backoff(A, at_least=100) == 100
    for _ in range(5):
        q.backoff(A)
    assert q.backoff(A) == 300, "capped"
    q.forget(A)
    assert q.backoff(A) == 5


def test_samples_ride_with_the_next_reconcile_latest_first():
    q, _ = queue()
    q.add(A, sample={"step": 1})
    q.add(A, sample={"step": 2})
    assert q.take() == (A, {"step": 2})
    q.done(A)
    q.add(A)
    assert q.take() == (A, None)


def test_a_change_goes_before_a_backlog_of_progress_samples():
    """The quiet 1,000-job bench (docs/operator-scale.md): each progress tick queued ~1,000 samples, and a Pod or Job
    change waited behind all of them for a worker (p99 Pod Running -> status 20.4 s, Job finished -> 8.2 s)."""
    q, _ = queue()
    for i in range(100):
        q.add(("ns", f"training-{i}"), sample={"step": i}, background=True)
    q.add(A)  # a watch event
    assert q.take() == (A, None)


def test_an_event_lifts_a_waiting_sample_and_it_rides_along():
    q, _ = queue()
    for i in range(10):
        q.add(("ns", f"training-{i}"), sample={"step": i}, background=True)
    q.add(B, sample={"step": 7}, background=True)
    q.add(B)  # B's Job changed: B goes now, with its latest sample, and only once
    assert q.take() == (B, {"step": 7})
    q.done(B)
    taken = []
    while (item := q.take()) is not None:
        taken.append(item[0])
        q.done(item[0])
    assert taken == [("ns", f"training-{i}") for i in range(10)], "each waiting sample once, in order, B not again"


def test_samples_are_not_starved_by_a_stream_of_changes():
    q, _ = queue()
    q.add(A, sample={"step": 1}, background=True)
    for i in range(20):
        q.add(("ns", f"changed-{i}"))
    order = []
    while (item := q.take()) is not None:
        order.append(item[0])
        q.done(item[0])
    assert len(order) == 21 and order.index(A) < WorkQueue.SAMPLE_SHARE, "one take in SAMPLE_SHARE serves a sample"


def test_a_sample_for_an_object_being_reconciled_waits_for_it_and_then_for_its_turn():
    q, _ = queue()
    q.add(A)
    assert q.take() == (A, None)
    q.add(A, sample={"step": 3}, background=True)
    q.add(B)
    assert q.take() == (B, None)
    assert q.take() is None, "never two reconciles of A at once"
    q.done(A)
    assert q.take() == (A, {"step": 3})


def test_shut_down_drops_everything_and_refuses_more():
    q, clock = queue()
    q.add(A), q.add(B, 5)
    q.shut_down()
    clock.now += 10
    q.add(A)
    assert q.take() is None and q.get() is None
    assert q.pending() == {"due": 0, "delayed": 0, "running": 0, "failing": 0}


def test_workers_bound_the_reconciles_and_stop_ends_them():
    q = WorkQueue()
    running, peak, lock = set(), [0], threading.Lock()
    release, seen = threading.Event(), threading.Semaphore(0)

    def work(key, sample):
        with lock:
            assert key not in running
            running.add(key)
            peak[0] = max(peak[0], len(running))
        seen.release()
        release.wait(10)
        with lock:
            running.discard(key)

    workers = Workers(q, 2, work).start()
    for i in range(6):
        q.add(("ns", str(i)))
    assert seen.acquire(timeout=10) and seen.acquire(timeout=10)
    assert q.pending() == {"due": 4, "delayed": 0, "running": 2, "failing": 0}, "the rest wait for a free worker"
    release.set()
    assert workers.stop(timeout=10)
    assert peak[0] == 2


def test_the_controller_backs_off_failures_and_plainly_requeues_planned_looks(monkeypatch):
    from kubetune.operator import controller
    from kubetune.operator.errors import ApiError, RetryLater
    from kubetune.operator.leader import NotLeading
    from kubetune.operator.settings import OperatorSettings

    def outage():
        try:
            raise ApiError(503, "Service Unavailable")
        except ApiError as exc:
            raise RetryLater("patch Job: unavailable") from exc

    def kueue_holds():
        raise RetryLater("Kueue holds the run", delay=2)

    def boom():
        raise RuntimeError("a bug")

    def fenced():
        raise NotLeading("not leading")

    steps = iter([boom, boom, outage, kueue_holds, fenced, lambda: None])
    monkeypatch.setattr(controller, "reconcile", lambda *a, **kw: next(steps)())
    clock = Clock()
    c = controller.Controller(OperatorSettings(leader_election=False, workers=1), kube=None)
    c.queue = WorkQueue(clock=clock, base_delay=5, max_delay=300)
    key = ("ns", "a")
    due_in = []
    for _ in range(5):
        c.reconcile_one(key, None)
        due_in.append((c.queue.failures(key), c.queue.deadline(key) and c.queue.deadline(key) - clock.now))
        assert c.queue.take() is None
        clock.now += 1000
        if due_in[-1][1] is not None:
            assert c.queue.take() == (key, None)
            c.queue.done(key)
    assert due_in == [(1, 5), (2, 10), (3, 20), (0, 2), (0, None)], "an outage backs off; Kueue's look does not"


def test_the_controller_queues_progress_behind_changes(monkeypatch):
    from kubetune.operator import controller
    from kubetune.operator.settings import OperatorSettings

    monkeypatch.setattr(controller, "read_progress", lambda source, settings, ns, name, status: {"step": 5})
    c = controller.Controller(OperatorSettings(leader_election=False, workers=1), kube=None)
    c.indexes["finetunejob_index"] = {A: [{"metadata": {"name": "a"}}], B: [{"metadata": {"name": "b"}}]}
    c.progress_tick(*A, {"phase": "Running"})
    c.enqueue(*B)
    assert [c.queue.take()[0], c.queue.take()[0]] == [B, A]


def test_the_wait_from_due_to_a_worker_is_measured_per_line():
    """controller-runtime's workqueue_queue_duration_seconds: how long a due key waited for a worker, here by line,
    so a latency tail can be read as queueing (or not) while it happens. A lifted sample counts as a change from
    when the event lifted it; a key that waited for its own running reconcile counts that wait too."""
    from prometheus_client import REGISTRY
    clock = Clock()
    q = WorkQueue(clock=clock, base_delay=5, max_delay=300, name="wait-test")

    def observed(line: str) -> tuple[float, float]:
        labels = {"queue": "wait-test", "line": line}
        return (REGISTRY.get_sample_value("kubetune_operator_workqueue_wait_seconds_count", labels) or 0.0,
                REGISTRY.get_sample_value("kubetune_operator_workqueue_wait_seconds_sum", labels) or 0.0)
    q.add(A)
    clock.now += 2
    assert q.take() == (A, None) and observed("change") == (1, 2.0)
    q.add(A)  # while it runs
    clock.now += 3
    q.done(A)
    assert q.take() == (A, None) and observed("change") == (2, 5.0)
    q.done(A)
    q.add(B, sample={"step": 1}, background=True)
    clock.now += 1
    q.add(B)  # lifted to a change: the change has waited since then
    clock.now += 1
    assert q.take() == (B, {"step": 1}) and observed("change") == (3, 6.0)
    q.done(B)
    q.add(B, sample={"step": 2}, background=True)
    clock.now += 4
    assert q.take() == (B, {"step": 2}) and observed("sample") == (1, 4.0)
