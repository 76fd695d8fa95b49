"""Kueue in the local cluster: its CRDs, its controller (webhooks served on loopback with a certificate from the
cluster's CA) and the queues kubetune's tests and demo submit to.

`hack/cluster` imports this module and passes itself as `c` (state dir, ports, process and certificate helpers).
The controller is built from `hack/kueue` (Kueue's own main, linking only the batch/Job integration); its CRDs and
webhook configurations come from the same module version in Go's module cache, rewritten to reach the controller
at https://127.0.0.1:<port> (the API server runs on this host, so webhooks need no Service).

Kueue manages Jobs only in namespaces labelled `kueue.kubetune.io/managed=true` (its managedJobsNamespaceSelector,
and its Job webhooks' namespaceSelector): the tests that simulate Kueue elsewhere keep working, and a Job in an
unlabelled namespace never waits on the webhook.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

MANAGED_LABEL = "kueue.kubetune.io/managed"
NAMESPACE = "kueue-system"
CLUSTER_QUEUE, LOCAL_QUEUE = "kubetune", "kubetune"
GPU_FLAVOR, REAL_NODE_FLAVOR = "kwok-gpu", "real-node"
JOB_NAMESPACES = ("kubetune-demo", "kubetune-e2e")  # hack/deploy's
# The ClusterQueue's quota: 2 of the 3 kwok GPU nodes (so a third 8-GPU job waits on Kueue, not on the
# scheduler), and about the real node's share of this 2-core machine.
GPU_QUOTA = {"cpu": "384", "memory": "4Ti", "nvidia.com/gpu": "16"}
REAL_NODE_QUOTA = {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "0"}
# Webhooks of the kinds Kueue serves here (its other integrations are not linked).
WEBHOOK_GROUPS = {"kueue.x-k8s.io", "batch"}
CONVERTED_CRDS = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")


def enabled() -> bool:
    return os.environ.get("KUBETUNE_KUEUE", "1") != "0"


def version(c) -> str:
    """The Kueue release hack/kueue/go.mod requires: the one source of the version."""
    return re.search(r"sigs\.k8s\.io/kueue (v\S+)", (c.HACK / "kueue" / "go.mod").read_text()).group(1)


def module_dir(c) -> Path:
    """Kueue's module in Go's module cache (downloaded by the build; again here if the cache was cleaned)."""
    out = subprocess.run(["go", "mod", "download", "-json", f"sigs.k8s.io/kueue@{version(c)}"], cwd=c.HACK / "kueue",
                         env=c._go_env(), check=True, capture_output=True, text=True).stdout
    return Path(json.loads(out)["Dir"])


def build(c, go_build: list) -> Path:
    return c._cached_build("kueue", f"{version(c)}-{c._module_key('kueue')}", lambda tmp: c.run(
        *go_build, f"-ldflags=-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion={version(c)}",
        "-o", tmp / "kueue", ".", cwd=c.HACK / "kueue", env=c._go_env()))


def _url(c, path: str) -> str:
    return f"https://127.0.0.1:{c.PORTS['kueue-webhook']}{path}"


def _to_json(kubectl, path: Path) -> list[dict]:
    """YAML manifests as objects (hack/cluster is stdlib only; kubectl parses YAML without the server)."""
    out, docs, at = kubectl("create", "--dry-run=client", "-o", "json", "-f", path).stdout, [], 0
    decoder = json.JSONDecoder()
    while out[at:].strip():  # one JSON document per YAML document, back to back
        doc, end = decoder.raw_decode(out, at + len(out[at:]) - len(out[at:].lstrip()))
        docs += doc["items"] if doc.get("kind") == "List" else [doc]
        at = end
    return docs


def crds(c, kubectl, config: Path, ca: str) -> list[dict]:
    objects = _to_json(kubectl, config / "components" / "crd" / "bases")  # one kubectl for the whole folder
    for crd in objects:
        if crd["spec"]["names"]["plural"] in CONVERTED_CRDS:  # what the kustomize patches do, by URL
            crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                "clientConfig": {"url": _url(c, "/convert"), "caBundle": ca}, "conversionReviewVersions": ["v1"]}}
    return objects


def webhook_configurations(c, kubectl, config: Path, ca: str) -> list[dict]:
    configs = _to_json(kubectl, config / "components" / "webhook" / "manifests.yaml")
    for wc in configs:
        wc["metadata"]["name"] = "kueue-" + wc["metadata"]["name"]
        wc["webhooks"] = [w for w in wc["webhooks"]
                          if all(g in WEBHOOK_GROUPS for r in w["rules"] for g in r["apiGroups"])]
        for w in wc["webhooks"]:
            w["clientConfig"] = {"url": _url(c, w["clientConfig"]["service"]["path"]), "caBundle": ca}
            if "batch" in w["rules"][0]["apiGroups"]:
                w["namespaceSelector"] = {"matchLabels": {MANAGED_LABEL: "true"}}
    return configs


def configuration(c) -> dict:
    d = c.STATE / "kueue"
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration", "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{c.PORTS['kueue-health']}"},
        "metrics": {"bindAddress": f"127.0.0.1:{c.PORTS['kueue-metrics']}"},
        "webhook": {"host": "127.0.0.1", "port": c.PORTS["kueue-webhook"], "certDir": str(d / "certs")},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},  # the cluster's CA signs its certificate (below)
        "managedJobsNamespaceSelector": {"matchLabels": {MANAGED_LABEL: "true"}},
        "integrations": {"frameworks": ["batch/job"]},
        # The trainer's cache volume: not a quota the queues manage.
        "resources": {"excludeResourcePrefixes": ["ephemeral-storage"]},
        # The on-demand visibility API needs an APIService and the aggregation layer: not served here.
        "featureGates": {"VisibilityOnDemand": False},
        "clientConnection": {"qps": 50, "burst": 100},
    }


def queues() -> list[dict]:
    gpu_taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    real_taint = {"key": "kubetune.io/real-node", "value": "true", "effect": "NoSchedule"}
    flavors = [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": GPU_FLAVOR},
         "spec": {"nodeLabels": {"type": "kwok", "nvidia.com/gpu.present": "true"}, "nodeTaints": [gpu_taint]}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": REAL_NODE_FLAVOR},
         "spec": {"nodeLabels": {"kubetune.io/real-node": "true"}, "nodeTaints": [real_taint]}},
    ]
    quota = lambda name, amounts: {"name": name, "resources": [  # noqa: E731
        {"name": r, "nominalQuota": q} for r, q in amounts.items()]}
    cluster_queue = {
        "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": CLUSTER_QUEUE},
        "spec": {"namespaceSelector": {}, "queueingStrategy": "BestEffortFIFO",
                 "resourceGroups": [{"coveredResources": list(GPU_QUOTA),
                                     "flavors": [quota(GPU_FLAVOR, GPU_QUOTA),
                                                 quota(REAL_NODE_FLAVOR, REAL_NODE_QUOTA)]}],
                 "preemption": {"withinClusterQueue": "LowerPriority"}}}
    return [*flavors, cluster_queue, *[local_queue(ns) for ns in JOB_NAMESPACES]]


def local_queue(namespace: str, name: str = LOCAL_QUEUE) -> dict:
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"clusterQueue": CLUSTER_QUEUE}}


def up(c, bins: dict, kubectl) -> None:
    started, d = time.monotonic(), c.STATE / "kueue"
    (d / "certs").mkdir(parents=True, exist_ok=True)
    # The webhook server's certificate (also its metrics server's), signed by the cluster's CA.
    c._cert("kueue-webhook", "/CN=kueue-webhook", "ca", "[v3]\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for ext in ("crt", "key"):
        (d / "certs" / f"tls.{ext}").write_bytes((c.STATE / "pki" / f"kueue-webhook.{ext}").read_bytes())
    c._cert("kueue", "/O=system:masters/CN=kueue", "ca", c.CLIENT_EXT)  # a local cluster: no RBAC to maintain
    (d / "config.yaml").write_text(json.dumps(configuration(c), indent=2))  # JSON is YAML

    config, ca = module_dir(c) / "config", c._b64(c.STATE / "pki" / "ca.crt")
    kubectl("create", "namespace", NAMESPACE)
    objects = crds(c, kubectl, config, ca)
    kubectl("apply", "--server-side", "--field-manager=kubetune-cluster", "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    kubectl("wait", "--for=condition=Established", "--timeout=60s",
            *[f"crd/{o['metadata']['name']}" for o in objects])
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                 "items": webhook_configurations(c, kubectl, config, ca)}))
    c.log(f"kueue: CRDs and webhooks in {time.monotonic() - started:.1f}s")
    c.start("kueue", [bins["kueue"], f"--config={d / 'config.yaml'}"],
            env={"KUBECONFIG": str(c.cert_kubeconfig("kueue")), "KUEUE_METRICS_CERT_DIR": str(d / "certs")})
    c.wait_for("kueue", lambda: c.healthy("kueue"), timeout=120)
    # Created and labelled, not applied: hack/deploy applies these namespaces with its own labels, and an apply
    # over ours would remove the label it does not name.
    for ns in JOB_NAMESPACES:
        kubectl("create", "namespace", ns, check=False)
        kubectl("label", "namespace", ns, f"{MANAGED_LABEL}=true", "--overwrite")
    # Through Kueue's own webhooks, so these also prove the API server reaches them.
    c.wait_for("Kueue's webhooks", lambda: kubectl(
        "apply", "-f", "-", check=False, input=json.dumps({"apiVersion": "v1", "kind": "List", "items": queues()})
    ).returncode == 0, timeout=60)
    c.log(f"kueue {version(c)} and its queues ready in {time.monotonic() - started:.1f}s")
