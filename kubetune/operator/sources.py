"""Where a reconcile reads the world from.

ApiSource asks the API server every time (a GET and label-selected LISTs): simple, and what a one-off call needs.
The running operator reads kopf's in-memory indexes instead (handlers.IndexSource), fed by watches that the API
server filters by label, so a reconcile costs no read request at all. Both return plain wire dicts.
"""
from kubetune.operator.kube import Kube
from kubetune.operator.labels import LABEL_CONTROLLER_UID, LABEL_FINETUNEJOB
from kubetune.operator.plan import KINDS


class ApiSource:
    def __init__(self, kube: Kube):
        self.kube = kube

    def finetunejob(self, namespace: str, name: str) -> dict | None:
        return self.kube.get_finetunejob(namespace, name)

    def children(self, namespace: str, name: str) -> dict[str, list[dict]]:
        return {kind: self.kube.list_objects(kind, namespace, f"{LABEL_FINETUNEJOB}={name}") for kind in KINDS}

    def pods(self, namespace: str, job_uid: str) -> list[dict]:
        return self.kube.list_pods(namespace, f"{LABEL_CONTROLLER_UID}={job_uid}")


def newer(a: str | None, b: str | None) -> bool:
    """Whether resourceVersion `a` is later than `b`. They are opaque by contract but etcd revisions in
    practice; anything else counts as not newer, which only costs a fresh read."""
    try:
        return int(a or "") > int(b or "")
    except ValueError:
        return False
