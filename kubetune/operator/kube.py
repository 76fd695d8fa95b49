"""The one module that talks to the Kubernetes API server. Objects go in and out as plain wire dicts (camelCase
JSON), the shape the pure builders and the status function use."""
import json
import socket
from datetime import datetime, timezone

import kubernetes
from kubernetes.client import ApiException

from kubetune.api import GROUP, PLURAL, VERSION
from kubetune.operator import kueue


def load_client(connections: int | None = None) -> kubernetes.client.ApiClient:
    """In-cluster credentials in a pod, else KUBECONFIG / ~/.kube/config. `connections`: the HTTP pool's size,
    at least the reconciles running at once (the default, 5 per CPU, makes busy workers open and drop
    connections: urllib3's "Connection pool is full" under load)."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    config = kubernetes.client.Configuration.get_default_copy()
    if connections:
        config.connection_pool_maxsize = max(config.connection_pool_maxsize, connections)
    return kubernetes.client.ApiClient(config)


# Every request has a deadline (client-go's default is none for watches but a timeout on each call): a hung
# connection must not hold a worker, or the Lease renewal, forever. (connect, read) seconds.
REQUEST_TIMEOUT = (5, 20)


class Kube:
    def __init__(self, client: kubernetes.client.ApiClient | None = None, timeout: tuple[float, float] = REQUEST_TIMEOUT):
        self.client = client or load_client()
        self.timeout = timeout
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.batch = kubernetes.client.BatchV1Api(self.client)
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.coordination = kubernetes.client.CoordinationV1Api(self.client)

    @staticmethod
    def _json(response) -> dict:
        return json.loads(response.data)

    def get_finetunejob(self, namespace: str, name: str) -> dict | None:
        try:
            return self._json(self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _preload_content=False, _request_timeout=self.timeout))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_status(self, namespace: str, name: str, status: dict) -> dict:
        """One merge patch of the status subresource (lists such as conditions are replaced whole); returns the
        object as written."""
        return self._json(self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _preload_content=False,
            _request_timeout=self.timeout))

    def _api(self, kind: str):
        """(create, read, delete, list) of a child kind."""
        b, c = self.batch, self.core
        return {"Job": (b.create_namespaced_job, b.read_namespaced_job, b.delete_namespaced_job,
                        b.list_namespaced_job),
                "ConfigMap": (c.create_namespaced_config_map, c.read_namespaced_config_map,
                              c.delete_namespaced_config_map, c.list_namespaced_config_map),
                "Service": (c.create_namespaced_service, c.read_namespaced_service, c.delete_namespaced_service,
                            c.list_namespaced_service),
                "Pod": (None, None, None, c.list_namespaced_pod)}[kind]

    def list_objects(self, kind: str, namespace: str, selector: str) -> list[dict]:
        """Server-side label selector: only the matching objects cross the wire."""
        return self._json(self._api(kind)[3](namespace, label_selector=selector, _preload_content=False,
                                             _request_timeout=self.timeout))["items"]

    def list_jobs(self, namespace: str, selector: str) -> list[dict]:
        return self.list_objects("Job", namespace, selector)

    def list_pods(self, namespace: str, selector: str) -> list[dict]:
        return self.list_objects("Pod", namespace, selector)

    def read(self, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return self._json(self._api(kind)[1](name, namespace, _preload_content=False,
                                                 _request_timeout=self.timeout))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, obj: dict) -> dict:
        """Creates a child; when one with its name exists already (a restarted operator, a concurrent reconcile,
        or someone else's object) that one is returned, and the caller decides by its controller whether it
        is ours. Other refusals raise ApiException."""
        namespace, kind = obj["metadata"]["namespace"], obj["kind"]
        try:
            return self._json(self._api(kind)[0](namespace, obj, _preload_content=False,
                                                 _request_timeout=self.timeout))
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = self.read(kind, namespace, obj["metadata"]["name"])
        if existing is None:  # deleted in between: let the next reconcile create it
            raise ApiException(status=409, reason=f"{kind} {obj['metadata']['name']} was being replaced")
        return existing

    def list_workloads(self, namespace: str, job_uid: str) -> list[dict]:
        """Kueue's Workloads of a Job; none where Kueue is not installed (404) or the operator may not read them
        (403): the status then says only that the run waits for its queue."""
        try:
            return self._json(self.custom.list_namespaced_custom_object(
                kueue.GROUP, kueue.VERSION, namespace, kueue.PLURAL, label_selector=f"{kueue.LABEL_JOB_UID}={job_uid}",
                _preload_content=False, _request_timeout=self.timeout))["items"]
        except ApiException as exc:
            if exc.status in (403, 404):
                return []
            raise

    def patch_workload(self, namespace: str, name: str, patch: dict) -> None:
        self.custom.patch_namespaced_custom_object(kueue.GROUP, kueue.VERSION, namespace, kueue.PLURAL, name, patch,
                                                   _request_timeout=self.timeout)

    def patch_job(self, namespace: str, name: str, patch: dict) -> None:
        self.batch.patch_namespaced_job(name, namespace, patch, _request_timeout=self.timeout)

    def delete(self, kind: str, namespace: str, name: str, propagation: str = "Background") -> None:
        """Background propagation: the garbage collector removes a Job's pods (SIGTERM, so they checkpoint)."""
        try:
            self._api(kind)[2](name, namespace, propagation_policy=propagation, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def delete_job(self, namespace: str, name: str) -> None:
        self.delete("Job", namespace, name)

    def post_event(self, obj: dict, type_: str, reason: str, message: str, component: str) -> None:
        meta = obj["metadata"]
        now = datetime.now(timezone.utc)
        event = kubernetes.client.CoreV1Event(
            metadata=kubernetes.client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=kubernetes.client.V1ObjectReference(
                api_version=obj["apiVersion"], kind=obj["kind"], name=meta["name"], namespace=meta["namespace"],
                uid=meta["uid"], resource_version=meta.get("resourceVersion")),
            type=type_, reason=reason, message=message[:1024], first_timestamp=now, last_timestamp=now, count=1,
            source=kubernetes.client.V1EventSource(component=component, host=socket.gethostname()),
            reporting_component=component, reporting_instance=socket.gethostname())
        self.core.create_namespaced_event(meta["namespace"], event, _request_timeout=self.timeout)

    # --- Leases (leader election) ---------------------------------------------------------------------
    def read_lease(self, namespace: str, name: str) -> dict | None:
        try:
            return self._json(self.coordination.read_namespaced_lease(
                name, namespace, _preload_content=False, _request_timeout=self.timeout))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def write_lease(self, namespace: str, name: str, spec: dict, resource_version: str | None) -> bool:
        """Creates or replaces the Lease; False when another replica changed it first (optimistic locking)."""
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        try:
            if resource_version is None:
                self.coordination.create_namespaced_lease(namespace, body, _request_timeout=self.timeout)
            else:
                body["metadata"]["resourceVersion"] = resource_version
                self.coordination.replace_namespaced_lease(name, namespace, body, _request_timeout=self.timeout)
            return True
        except ApiException as exc:
            if exc.status in (409, 422):
                return False
            raise
