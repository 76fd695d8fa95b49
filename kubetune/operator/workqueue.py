"""The one queue every reconcile goes through: client-go's workqueue (delaying, rate-limited) in small.

- An object is queued at most once, and never reconciled by two workers at once: an event for an object
  being reconciled marks it to run once more afterwards (bursts of Pod and Job events collapse into one).
- Requeues are a delay queue with one deadline per object, the earliest asked for: a 2 s retry is not
  swallowed by a pending 300 s backoff. A reconcile that starts drops its object's deadline, since it decides
  the next requeue itself (level-based: it sees whatever the earlier one wanted to look at again).
- Failures back off exponentially per object until a reconcile succeeds (`forget`); an event that brings the
  object back in the meantime does not reset the count.
- Changes go before progress: keys queued `background` (the ticker's samples and resyncs, ~one per running job
  every interval) wait in a line of their own, served one take in SAMPLE_SHARE while changes wait, so a Pod or
  Job change does not queue behind a thousand samples; an event lifts a waiting sample into the changes' line.
  controller-runtime's priority queue does the same for resyncs and initial lists.
- Everything runs on `Workers`, a fixed number of threads: nothing reconciles outside the bound, and
  `Workers.stop` ends it all (a leader does that before it hands the Lease over).

The queue takes a clock, so its rules are tested without sleeping (tests/operator/test_workqueue.py).
"""
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

from prometheus_client import Histogram

log = logging.getLogger("kubetune.workqueue")


CHANGE, SAMPLE = "change", "sample"
WAIT_SECONDS = Histogram("kubetune_operator_workqueue_wait_seconds", "From due to taken by a worker (controller-"
                         "runtime's workqueue_queue_duration_seconds), by queue and line", ["queue", "line"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64))


class WorkQueue:
    SAMPLE_SHARE = 5  # while changes wait, every fifth take serves a waiting sample

    def __init__(self, clock: Callable[[], float] = time.monotonic, base_delay: float = 5.0,
                 max_delay: float = 300.0, name: str = "finetunejobs"):
        self.clock, self.base_delay, self.max_delay = clock, base_delay, max_delay
        self._wait = {line: WAIT_SECONDS.labels(name, line) for line in (CHANGE, SAMPLE)}
        self._due_since: dict = {}  # due key -> since when it waits (a lifted sample: since it was lifted)
        self._cond = threading.Condition()
        self._lines = {CHANGE: deque(), SAMPLE: deque()}  # due keys in order; entries not in _queued are stale
        self._queued: dict = {}  # due key -> its line (CHANGE or SAMPLE); may wait for its running reconcile
        self._takes = 0
        self._processing: set = set()
        self._deadlines: dict = {}  # key -> earliest requeue time
        self._heap: list = []  # (time, seq, key); entries no longer in _deadlines are stale
        self._seq = itertools.count()
        self._samples: dict = {}  # key -> the latest progress sample, handed to its next reconcile
        self._failures: dict = {}
        self.closed = False

    # --- adding ---------------------------------------------------------------------------------------------
    def add(self, key: Hashable, delay: float = 0.0, sample: dict | None = None, background: bool = False) -> None:
        """Reconcile `key` now (delay 0) or after `delay` seconds, whichever comes first with what is pending;
        `background` work (progress, resyncs) yields to changes."""
        with self._cond:
            if self.closed:
                return
            if sample is not None:
                self._samples[key] = sample
            if delay <= 0:
                self._make_due(key, SAMPLE if background else CHANGE)
                return
            at = self.clock() + delay
            if self._deadlines.get(key, float("inf")) <= at:
                return  # an earlier requeue is pending: it does this one's work too
            self._deadlines[key] = at
            heapq.heappush(self._heap, (at, next(self._seq), key))
            self._cond.notify()

    def backoff(self, key: Hashable, at_least: float = 0.0) -> float:
        """Requeues a failed reconcile after base * 2^(failures-1) seconds (capped); returns the delay."""
        with self._cond:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            delay = max(at_least, min(self.base_delay * 2 ** (failures - 1), self.max_delay))
        self.add(key, delay)
        return delay

    def forget(self, key: Hashable) -> None:
        """A reconcile of `key` succeeded: its next failure starts the backoff afresh."""
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: Hashable) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    # --- taking ---------------------------------------------------------------------------------------------
    def take(self) -> tuple[Hashable, dict | None] | None:
        """The next due key and its progress sample, marked as being reconciled; None when none is due."""
        with self._cond:
            return self._take()

    def get(self) -> tuple[Hashable, dict | None] | None:
        """Blocks until a key is due (on the real clock); None once the queue is shut down."""
        with self._cond:
            while not self.closed:
                item = self._take()
                if item is not None:
                    return item
                self._cond.wait(self._until_next())
            return None

    def done(self, key: Hashable) -> None:
        """The reconcile of `key` ended; an event that came meanwhile queues it again."""
        with self._cond:
            self._processing.discard(key)
            if key in self._queued and not self.closed:
                self._lines[self._queued[key]].append(key)
                self._cond.notify()

    def shut_down(self) -> None:
        """Drops everything pending; get() returns None to every worker, add() does nothing from now on."""
        with self._cond:
            self.closed = True
            self._lines[CHANGE].clear(), self._lines[SAMPLE].clear(), self._queued.clear(), self._due_since.clear()
            self._heap.clear(), self._deadlines.clear()
            self._samples.clear(), self._failures.clear()
            self._cond.notify_all()

    def pending(self) -> dict:
        with self._cond:
            return {"due": len(self._queued), "delayed": len(self._deadlines), "running": len(self._processing),
                    "failing": len(self._failures)}

    def deadline(self, key: Hashable) -> float | None:
        with self._cond:
            return self._deadlines.get(key)

    # --- internals (under the lock) -------------------------------------------------------------------------
    def _make_due(self, key, line: str) -> None:
        if self._queued.get(key) in (CHANGE, line):
            return  # already due, in this line or a faster one
        if key in self._queued:  # a waiting sample lifted by an event: the change waits from now
            self._due_since[key] = self.clock()
        self._due_since.setdefault(key, self.clock())
        self._queued[key] = line  # new, or a waiting sample lifted to a change (its old entry turns stale)
        if key not in self._processing:
            self._lines[line].append(key)
            self._cond.notify()

    def _promote(self) -> None:
        now = self.clock()
        while self._heap and self._heap[0][0] <= now:
            at, _, key = heapq.heappop(self._heap)
            if self._deadlines.get(key) == at:
                del self._deadlines[key]
                self._make_due(key, CHANGE)

    def _front(self, line: str):
        """The first key of `line` that may be taken now, dropping stale entries before it."""
        entries = self._lines[line]
        while entries and (self._queued.get(entries[0]) != line or entries[0] in self._processing):
            entries.popleft()
        return entries[0] if entries else None

    def _take(self):
        self._promote()
        change, sample = self._front(CHANGE), self._front(SAMPLE)
        if change is None and sample is None:
            return None
        self._takes += 1
        line = SAMPLE if change is None or (sample is not None and self._takes % self.SAMPLE_SHARE == 0) else CHANGE
        key = self._lines[line].popleft()
        del self._queued[key]
        self._wait[line].observe(self.clock() - self._due_since.pop(key, self.clock()))
        self._processing.add(key)
        self._deadlines.pop(key, None)  # this reconcile decides the next requeue
        return key, self._samples.pop(key, None)

    def _until_next(self) -> float | None:
        while self._heap and self._deadlines.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # stale
        return max(0.0, self._heap[0][0] - self.clock()) if self._heap else None


class Workers:
    """`count` threads taking keys from `queue` and calling `work(key, sample)`; the bound on reconciles."""

    def __init__(self, queue: WorkQueue, count: int, work: Callable[[Hashable, dict | None], None]):
        self.queue, self.work = queue, work
        self.threads = [threading.Thread(target=self._loop, name=f"reconcile-{i}", daemon=True)
                        for i in range(count)]

    def start(self) -> "Workers":
        for thread in self.threads:
            thread.start()
        return self

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            key, sample = item
            try:
                self.work(key, sample)
            except Exception:  # work() handles its own errors; this only keeps the thread alive
                log.exception("reconcile of %s", key)
            finally:
                self.queue.done(key)

    def stop(self, timeout: float) -> bool:
        """Shuts the queue down and waits up to `timeout` seconds for running reconciles to end (their requests
        are bounded by kube.py's timeouts); False if one still runs."""
        self.queue.shut_down()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self.threads)
