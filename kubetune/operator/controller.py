"""What reconciles, and in which order it stops: the work queue and its workers, the progress ticker and the
periodic relist. handlers.py (kopf) only feeds it keys; nothing here imports kopf.

Every reconcile runs on `Workers` (settings.workers threads), never on kopf's executor: kopf's event handlers
and index functions are async and return at once, so kopf applies each watch event to its indexes in order
however busy the reconciles are (issue 20, item 2).
"""
import logging
import time

from prometheus_client import Gauge

from kubetune.operator.errors import PermanentFailure, RetryLater
from kubetune.operator.kube import Kube
from kubetune.operator.leader import NotLeading
from kubetune.operator.reconcile import read_progress, reconcile, resync_due
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.ticker import Ticker
from kubetune.operator.workqueue import WorkQueue, Workers

QUEUE = Gauge("kubetune_operator_workqueue_objects", "FineTuneJobs in the work queue: due (waiting for a worker), "
              "delayed (a requeue pending), running, failing (backing off until a reconcile succeeds)", ["state"])
RETRY_SECONDS = 5
SWEEP_WORKERS = 2
MAX_RETRY_SECONDS = 300
log = logging.getLogger("kubetune.operator")


class IndexSource:
    """sources.ApiSource's interface over kopf's indexes. The objects are the indexes' own: reconcile and the
    pure functions only read them."""

    CHILD_KINDS = ("Job", "ConfigMap", "Service")

    def __init__(self, indexes: dict):
        self.indexes = indexes

    def _values(self, index: str, key) -> list[dict]:
        store = self.indexes[index].get(key) if index in self.indexes else None
        return list(store) if store is not None else []

    def finetunejob(self, namespace: str, name: str) -> dict | None:
        found = self._values("finetunejob_index", (namespace, name))
        return found[0] if found else None

    def children(self, namespace: str, name: str) -> dict[str, list[dict]]:
        return {kind: self._values(f"{kind.lower()}_index", (namespace, name)) for kind in self.CHILD_KINDS}

    def pods(self, namespace: str, job_uid: str) -> list[dict]:
        return self._values("pod_index", (namespace, job_uid))


class Controller:
    def __init__(self, settings: OperatorSettings, kube: Kube, may_act=lambda: True):
        """`kube` writes through the leader's Fence; `may_act` is LeaderElector.holds_lease (checked again
        before each reconcile, so a replica that lost its Lease starts none)."""
        self.settings, self.kube, self.may_act = settings, kube, may_act
        self.indexes: dict = {}  # kopf's live indexes, from start()
        self.queue = WorkQueue(base_delay=RETRY_SECONDS, max_delay=MAX_RETRY_SECONDS)
        self.workers = Workers(self.queue, settings.workers, self.reconcile_one)
        self.ticker = Ticker(settings.progress_interval_seconds, settings.workers, self.progress_tick)
        # Sweeps have a queue and workers of their own: a sweep waits behind no FineTuneJob, and a key is a sweep.
        self.sweeps = WorkQueue(base_delay=RETRY_SECONDS, max_delay=MAX_RETRY_SECONDS, name="finetunesweeps")
        self.sweep_workers = Workers(self.sweeps, SWEEP_WORKERS, self.reconcile_sweep_one)
        self.relister = None
        self.started = False
        for state in ("due", "delayed", "running", "failing"):
            QUEUE.labels(state).set_function(lambda state=state: self.queue.pending()[state])

    def start(self, indexes: dict, relister=None) -> None:
        self.indexes.update(indexes)
        self.relister = relister
        if not self.started:
            self.started = True
            self.workers.start()
            self.sweep_workers.start()
            if relister is not None:
                relister.start()

    def enqueue(self, namespace: str, name: str) -> None:
        self.queue.add((namespace, name))

    def enqueue_sweep(self, namespace: str, name: str) -> None:
        self.sweeps.add((namespace, name))

    def observe(self, namespace: str, name: str, status: dict | None, gone: bool = False) -> None:
        self.ticker.observe(namespace, name, status, gone=gone)

    def progress_tick(self, namespace: str, name: str, status: dict) -> None:
        source = IndexSource(self.indexes)
        if source.finetunejob(namespace, name) is None:
            self.ticker.observe(namespace, name, None, gone=True)  # gone (or evicted as a ghost by the relist)
            return
        sample = read_progress(source, self.settings, namespace, name, status)
        if sample is not None or resync_due(namespace, name, self.settings.resync_seconds):
            self.queue.add((namespace, name), sample=sample, background=True)

    def reconcile_one(self, key: tuple[str, str], sample: dict | None) -> None:
        """One reconcile on a worker, with our error kinds (the status already says what went wrong)."""
        namespace, name = key
        self._settle(self.queue, "", key, lambda: reconcile(
            self.kube, self.settings, namespace, name, sample=sample, source=IndexSource(self.indexes)))

    def reconcile_sweep_one(self, key: tuple[str, str], _sample: dict | None) -> None:
        """One sweep reconcile, with the same error kinds as reconcile_one."""
        # Imported with the first sweep: Optuna (and numpy, SQLAlchemy) cost an operator without sweeps 17 MB of
        # memory and half a second of start-up (docs/operator-scale.md counts both).
        from kubetune.operator.sweep import reconcile_sweep

        namespace, name = key
        self._settle(self.sweeps, "sweep ", key, lambda: reconcile_sweep(
            self.kube, namespace, name, self.settings.retry_delay_seconds))

    def _settle(self, queue: WorkQueue, what: str, key: tuple[str, str], call) -> None:
        """Runs one reconcile `call` and decides from its outcome when `key` is looked at again in `queue`."""
        if not self.may_act():
            return  # a deposed or resigning leader does nothing
        namespace, name = key
        try:
            call()
            queue.forget(key)
        except NotLeading:
            return
        except PermanentFailure as exc:
            queue.forget(key)
            log.info("%s%s/%s: %s (not retried until it changes)", what, namespace, name, exc)
        except RetryLater as exc:
            if exc.__cause__ is not None:  # an outage or overload: back off, at least by the delay asked for
                queue.backoff(key, at_least=exc.delay)
            else:  # a planned look (Kueue's admission, a Job still going): no failure
                queue.forget(key)
                queue.add(key, exc.delay)
        except Exception:  # a bug or an outage: back off exponentially, as kopf would
            delay = queue.backoff(key)
            log.exception("reconciling %s%s/%s failed (%d in a row; again in %.0f s)", what, namespace, name,
                          queue.failures(key), delay)

    def stop(self, timeout: float) -> bool:
        """Before the Lease is handed over: no more ticks, relists or reconciles; waits for running ones."""
        started = time.monotonic()
        if self.relister is not None:
            self.relister.stop()
        self.ticker.stop(timeout)
        stopped = self.sweep_workers.stop(max(0.0, timeout - (time.monotonic() - started)))
        stopped = self.workers.stop(max(0.0, timeout - (time.monotonic() - started))) and stopped
        if not stopped:
            log.warning("reconciles still running after %.0f s of shutdown", timeout)
        return stopped
