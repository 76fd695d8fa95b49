"""Live progress for every running job on one clock: each interval, the trainers of all Running FineTuneJobs
are scraped in parallel (each read bounded by progress.scrape) and those with a new sample, or a resync due,
are queued for a reconcile (on the workers, with the sample). One loop instead of a kopf timer per object: kopf puts a finalizer on every object with a timer
(two more writes per job, and deletion hangs while the operator is down), and a thousand asyncio timers each
hopping into the thread pool do not keep their interval on two cores.
"""
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, ThreadPoolExecutor

log = logging.getLogger("kubetune.progress")


class Ticker:
    def __init__(self, interval: float, workers: int, tick: Callable[[str, str, dict], None]):
        self.interval, self.tick = interval, tick
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="progress")
        self.running: dict[tuple[str, str], dict] = {}  # (namespace, name) -> status, of Running jobs
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.last_round_seconds = 0.0
        self.thread: threading.Thread | None = None

    def observe(self, namespace: str, name: str, status: dict | None, gone: bool = False) -> None:
        """Called with every FineTuneJob event: tracks which ones are Running."""
        with self.lock:
            if not gone and (status or {}).get("phase") == "Running":
                self.running[(namespace, name)] = status
            else:
                self.running.pop((namespace, name), None)
        if self.thread is None:
            self.start()

    def stop(self, timeout: float) -> None:
        """No more rounds; a round in progress ends after its scrapes (each bounded by the scrape timeout)."""
        self.stopped.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self.lock:
            thread = self.thread
        if thread is not None:
            thread.join(timeout)

    def start(self) -> None:
        with self.lock:
            if self.thread is None and not self.stopped.is_set():
                self.thread = threading.Thread(target=self.loop, name="progress-ticker", daemon=True)
                self.thread.start()

    def _one(self, item) -> None:
        (namespace, name), status = item
        try:
            self.tick(namespace, name, status)
        except Exception as exc:  # one job's trouble must not stop the others' progress
            log.warning("progress of %s/%s: %s", namespace, name, exc)

    def loop(self) -> None:
        due = time.monotonic()
        while not self.stopped.wait(max(0.0, due - time.monotonic())):
            started = time.monotonic()
            with self.lock:
                items = list(self.running.items())
            try:
                list(self.pool.map(self._one, items))
            except (RuntimeError, CancelledError):  # stop() shut the pool down
                return
            self.last_round_seconds = time.monotonic() - started
            if self.last_round_seconds > self.interval:
                log.warning("reading progress of %d jobs took %.1f s, more than the %.1f s interval",
                            len(items), self.last_round_seconds, self.interval)
            due = max(started + self.interval, time.monotonic())
