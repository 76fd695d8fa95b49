"""The one module that talks to the Kubernetes API server. Objects go in and out as plain wire dicts (camelCase
JSON), the shape the pure builders and the status function use."""
import json
import socket
from datetime import datetime, timezone

import kubernetes
from kubernetes.client import ApiException

from kubetune.api import GROUP, PLURAL, VERSION


def load_client() -> kubernetes.client.ApiClient:
    """In-cluster credentials in a pod, else KUBECONFIG / ~/.kube/config."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


class Kube:
    def __init__(self, client: kubernetes.client.ApiClient | None = None):
        self.client = client or load_client()
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
                GROUP, VERSION, namespace, PLURAL, name, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_status(self, namespace: str, name: str, status: dict) -> None:
        """One merge patch of the status subresource (lists such as conditions are replaced whole)."""
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status})

    def list_jobs(self, namespace: str, selector: str) -> list[dict]:
        return self._json(self.batch.list_namespaced_job(namespace, label_selector=selector,
                                                         _preload_content=False))["items"]

    def list_pods(self, namespace: str, selector: str) -> list[dict]:
        return self._json(self.core.list_namespaced_pod(namespace, label_selector=selector,
                                                        _preload_content=False))["items"]

    def create(self, obj: dict) -> dict:
        """Creates a child; when it exists already (deterministic names: a restarted operator, a concurrent
        reconcile) the existing one is returned, so no child is ever made twice."""
        namespace, kind = obj["metadata"]["namespace"], obj["kind"]
        create, read = {
            "Job": (self.batch.create_namespaced_job, self.batch.read_namespaced_job),
            "ConfigMap": (self.core.create_namespaced_config_map, self.core.read_namespaced_config_map),
            "Service": (self.core.create_namespaced_service, self.core.read_namespaced_service),
        }[kind]
        try:
            return self._json(create(namespace, obj, _preload_content=False))
        except ApiException as exc:
            if exc.status != 409:
                raise
        return self._json(read(obj["metadata"]["name"], namespace, _preload_content=False))

    def patch_job(self, namespace: str, name: str, patch: dict) -> None:
        self.batch.patch_namespaced_job(name, namespace, patch)

    def delete_job(self, namespace: str, name: str) -> None:
        """Background propagation: the garbage collector removes its pods (SIGTERM, so they checkpoint) and the
        ConfigMap and Service it owns."""
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise

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
        self.core.create_namespaced_event(meta["namespace"], event)

    # --- Leases (leader election) ---------------------------------------------------------------------
    def read_lease(self, namespace: str, name: str) -> dict | None:
        try:
            return self._json(self.coordination.read_namespaced_lease(name, namespace, _preload_content=False))
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
                self.coordination.create_namespaced_lease(namespace, body)
            else:
                body["metadata"]["resourceVersion"] = resource_version
                self.coordination.replace_namespaced_lease(name, namespace, body)
            return True
        except ApiException as exc:
            if exc.status in (409, 422):
                return False
            raise
