"""The one module that talks to the Kubernetes API server: JSON over HTTPS (urllib3's pool), objects in and out
as plain wire dicts (camelCase JSON), the shape the pure builders and the status function use.

No Kubernetes client library: the operator needs a dozen REST calls on dicts, and the `kubernetes` package was 42
of the operator's 96 MB of imports (docs/operator-scale.md). Credentials come from kopf's login functions
(handlers.login), so the operator and kopf authenticate the same way.
"""
import json
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import urlencode

import urllib3

from kubetune.api import GROUP, PLURAL, VERSION
from kubetune.api.sweep import SWEEP_PLURAL
from kubetune.operator import kueue, labels, metrics
from kubetune.operator.errors import ApiError

# Every request has a deadline (client-go's default is none for watches but a timeout on each call): a hung
# connection must not hold a worker, or the Lease renewal, forever. (connect, read) seconds.
REQUEST_TIMEOUT = (5, 20)

# kind -> (API path prefix, plural)
RESOURCES = {
    "FineTuneJob": (f"/apis/{GROUP}/{VERSION}", PLURAL),
    "FineTuneSweep": (f"/apis/{GROUP}/{VERSION}", SWEEP_PLURAL),
    "Job": ("/apis/batch/v1", "jobs"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
    "Workload": (f"/apis/{kueue.GROUP}/{kueue.VERSION}", kueue.PLURAL),
}
MERGE_PATCH = "application/merge-patch+json"
TOKEN_REFRESH_SECONDS = 60.0
THROTTLE_RETRIES = 3
MAX_RETRY_AFTER_SECONDS = 10.0


def path(kind: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    prefix, plural = RESOURCES[kind]
    return "/".join([f"{prefix}/namespaces/{namespace}/{plural}", *filter(None, [name, subresource])])


class Connection:
    """A pool of HTTPS connections to the API server. `login` returns credentials (kopf.ConnectionInfo: server,
    as_ssl_context(), as_http_headers(), proxy_url); they are fetched again every `refresh_seconds` (client-go
    re-reads a service account token every minute: the kubelet rotates it) and once after a 401. A 429 (API
    Priority and Fairness) is an ApiError carrying the server's Retry-After: Kube waits it out and asks again.
    `connections`: at least the requests in flight at once (reconcile workers, the progress ticker, the
    Lease), or busy workers open and drop connections."""

    def __init__(self, login: Callable[[], Any], connections: int = 10,
                 timeout: tuple[float, float] = REQUEST_TIMEOUT, refresh_seconds: float = TOKEN_REFRESH_SECONDS):
        self._login, self._size, self._lock = login, connections, threading.Lock()
        self.timeout = urllib3.Timeout(connect=timeout[0], read=timeout[1])
        self.refresh_seconds = refresh_seconds
        self._session: tuple | None = None
        self._connect()

    def _connect(self) -> None:
        """(server, headers, pool) replaced in one assignment: a request never pairs a new pool with old headers.
        The pool is kept while the server and proxy are the same (a token refresh keeps its connections)."""
        info = self._login()
        headers = {"Accept": "application/json", "User-Agent": "kubetune-operator", **info.as_http_headers()}
        server, proxy = info.server.rstrip("/"), info.proxy_url
        old = self._session
        if old is not None and (old[0], old[3]) == (server, proxy):
            pool = old[2]
        elif proxy:
            pool = urllib3.ProxyManager(proxy, maxsize=self._size, ssl_context=info.as_ssl_context(), retries=False)
        else:
            pool = urllib3.PoolManager(maxsize=self._size, ssl_context=info.as_ssl_context(), retries=False)
        self._session = (server, headers, pool, proxy, time.monotonic())

    @property
    def pool(self) -> urllib3.PoolManager:
        return self._session[2]

    def _send(self, session: tuple, method: str, url_path: str, data: bytes | None, content_type: str,
              timeout: urllib3.Timeout):
        server, headers, pool = session[:3]
        return pool.request(method, server + url_path, body=data, headers={**headers, "Content-Type": content_type},
                            timeout=timeout)

    def _renew(self, session: tuple) -> None:
        with self._lock:
            if self._session is session:  # not already renewed by another thread
                self._connect()

    def request(self, method: str, url_path: str, body: Any = None, params: dict | None = None,
                content_type: str = "application/json", timeout: float | None = None) -> dict:
        """The decoded JSON answer; ApiError for any answer >= 400 (a 429 carries its Retry-After). Connection
        failures raise urllib3's errors. `timeout`: a total bound in seconds instead of the (connect, read)
        default (the Lease's renewals)."""
        url_path += f"?{urlencode(params)}" if params else ""
        data = None if body is None else json.dumps(body).encode()
        bound = self.timeout if timeout is None else urllib3.Timeout(total=timeout)
        if time.monotonic() - self._session[4] >= self.refresh_seconds:
            self._renew(self._session)
        session = self._session
        response = self._send(session, method, url_path, data, content_type, bound)
        if response.status == 401:  # a rotated token: log in again, once
            self._renew(session)
            response = self._send(self._session, method, url_path, data, content_type, bound)
        if response.status == 429:
            metrics.API_THROTTLED.inc()
        if response.status >= 400:
            raise ApiError(response.status, response.reason or "", response.data.decode(errors="replace"),
                           retry_after=retry_after(response))
        return json.loads(response.data) if response.data else {}


def retry_after(response) -> float | None:
    """The Retry-After of a 429 or 5xx answer, in seconds (capped: a worker waits it out), else None."""
    value = response.headers.get("Retry-After") if response.status == 429 or response.status >= 500 else None
    try:
        return min(float(value), MAX_RETRY_AFTER_SECONDS) if value is not None else None
    except ValueError:
        return None


class Kube:
    """`connection`: a Connection, or leader.Fence around one (every write is checked against the Lease, retries
    included)."""

    def __init__(self, connection: Connection, throttle_retries: int = THROTTLE_RETRIES):
        self.api, self.throttle_retries = connection, throttle_retries

    def _call(self, method: str, url_path: str, *args, **kwargs) -> dict:
        """One request, asked again after the server's Retry-After when it throttles (429), `throttle_retries`
        times, as client-go does. Not for the Lease: its renewals have a deadline of their own."""
        for attempt in range(self.throttle_retries + 1):
            try:
                return self.api.request(method, url_path, *args, **kwargs)
            except ApiError as exc:
                if exc.status != 429 or exc.retry_after is None or attempt == self.throttle_retries:
                    raise
                time.sleep(exc.retry_after)
        raise AssertionError("unreachable")

    def get(self, url_path: str, params: dict | None = None) -> dict:
        """A GET of any path (the relist's pages), throttling waited out like every other read."""
        return self._call("GET", url_path, params=params)

    def read(self, kind: str, namespace: str, name: str, timeout: float | None = None) -> dict | None:
        """The object, or None when there is none. With `timeout` (the Lease), one bounded try."""
        try:
            if timeout is not None:
                return self.api.request("GET", path(kind, namespace, name), timeout=timeout)
            return self._call("GET", path(kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def get_finetunejob(self, namespace: str, name: str) -> dict | None:
        return self.read("FineTuneJob", namespace, name)

    def patch_status(self, namespace: str, name: str, status: dict, resource_version: str | None = None,
                     kind: str = "FineTuneJob") -> dict:
        """One merge patch of the status subresource (lists such as conditions are replaced whole); returns the
        object as written. With `resource_version` the API server refuses it (409) once the object has changed."""
        body: dict = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return self._call("PATCH", path(kind, namespace, name, "status"), body,
                                content_type=MERGE_PATCH)

    def patch(self, kind: str, namespace: str, name: str, patch: dict) -> dict:
        """A merge patch of an object (a pruned trial FineTuneJob's spec.suspend and annotation)."""
        return self._call("PATCH", path(kind, namespace, name), patch, content_type=MERGE_PATCH)

    def list_objects(self, kind: str, namespace: str, selector: str) -> list[dict]:
        """Server-side label selector: only the matching objects cross the wire."""
        return self._call("GET", path(kind, namespace), params={"labelSelector": selector})["items"]

    def list_jobs(self, namespace: str, selector: str) -> list[dict]:
        return self.list_objects("Job", namespace, selector)

    def list_pods(self, namespace: str, selector: str) -> list[dict]:
        return self.list_objects("Pod", namespace, selector)

    def create(self, obj: dict) -> dict:
        """Creates a child; when one with its name exists already (a restarted operator, a concurrent reconcile,
        or someone else's object) that one is returned, and the caller decides by its controller whether it
        is ours. Other refusals raise ApiError."""
        namespace, kind = obj["metadata"]["namespace"], obj["kind"]
        try:
            return self._call("POST", path(kind, namespace), obj)
        except ApiError as exc:
            if exc.status != 409:
                raise
        existing = self.read(kind, namespace, obj["metadata"]["name"])
        if existing is None:  # deleted in between: let the next reconcile create it
            raise ApiError(409, f"{kind} {obj['metadata']['name']} was being replaced")
        return existing

    def list_workloads(self, namespace: str, job_uid: str) -> list[dict]:
        """Kueue's Workloads of a Job. ApiError 404 where Kueue is not installed (or serves another version), 403
        where the operator may not read them: the caller says so on the status."""
        return self.list_objects("Workload", namespace, f"{labels.LABEL_KUEUE_JOB_UID}={job_uid}")

    def patch_workload(self, namespace: str, name: str, patch: dict) -> None:
        self._call("PATCH", path("Workload", namespace, name), patch, content_type=MERGE_PATCH)

    def patch_job(self, namespace: str, name: str, patch: dict) -> None:
        self._call("PATCH", path("Job", namespace, name), patch, content_type=MERGE_PATCH)

    def delete(self, kind: str, namespace: str, name: str, propagation: str = "Background",
               uid: str | None = None) -> None:
        """Background propagation: the garbage collector removes a Job's pods (SIGTERM, so they checkpoint). With
        `uid`, only that object: a same-named one created since (409 on the precondition) is left alone."""
        options: dict = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            self._call("DELETE", path(kind, namespace, name), options)
        except ApiError as exc:
            if exc.status == 404 or (exc.status == 409 and uid):
                return  # gone already, or the name is another object's now
            raise

    def delete_job(self, namespace: str, name: str) -> None:
        self.delete("Job", namespace, name)

    def post_event(self, obj: dict, type_: str, reason: str, message: str, component: str) -> None:
        meta, host = obj["metadata"], socket.gethostname()
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._call("POST", path("Event", meta["namespace"]), {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"],
                               **({"resourceVersion": meta["resourceVersion"]} if meta.get("resourceVersion") else {})},
            "type": type_, "reason": reason, "message": message[:1024], "firstTimestamp": now, "lastTimestamp": now,
            "count": 1, "source": {"component": component, "host": host},
            "reportingComponent": component, "reportingInstance": host})

    # --- Leases (leader election) ---------------------------------------------------------------------
    def read_lease(self, namespace: str, name: str, timeout: float | None = None) -> dict | None:
        return self.read("Lease", namespace, name, timeout)

    def write_lease(self, namespace: str, name: str, spec: dict, resource_version: str | None,
                    timeout: float | None = None) -> bool:
        """Creates or replaces the Lease; False when another replica changed it first (optimistic locking)."""
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        try:
            if resource_version is None:
                self.api.request("POST", path("Lease", namespace), body, timeout=timeout)
            else:
                body["metadata"]["resourceVersion"] = resource_version
                self.api.request("PUT", path("Lease", namespace, name), body, timeout=timeout)
            return True
        except ApiError as exc:
            if exc.status in (409, 422):
                return False
            raise
