"""Prometheus targets for the real node's pods: a stand-in for Prometheus' kubernetes_sd (and the chart's PodMonitor).

Debian's Prometheus 2.42 is built without Kubernetes service discovery, so `hack/cluster` runs this loop beside
it: every second it lists the Running pods on the real node through the API server and writes each container port
named `metrics` to a file_sd JSON file, labelled as the chart's PodMonitor labels them (namespace, pod,
finetunejob, run_id, app). Stdlib only.

    python3 hack/pod_targets.py STATE_DIR API_URL NODE_NAME OUT_FILE
"""
import json
import ssl
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

LABELS = {"kubetune.io/finetunejob": "finetunejob", "kubetune.io/run-id": "run_id", "app.kubernetes.io/name": "app"}


def targets(pods: list[dict]) -> list[dict]:
    groups = []
    for pod in pods:
        ip, meta = pod["status"].get("podIP"), pod["metadata"]
        if pod["status"].get("phase") != "Running" or not ip or meta.get("deletionTimestamp"):
            continue
        labels = {"namespace": meta["namespace"], "pod": meta["name"],
                  **{ours: meta.get("labels", {})[theirs] for theirs, ours in LABELS.items()
                     if theirs in meta.get("labels", {})}}
        for container in pod["spec"]["containers"]:
            for port in container.get("ports", []):
                if port.get("name") == "metrics":
                    groups.append({"targets": [f"{ip}:{port['containerPort']}"], "labels": labels})
    return sorted(groups, key=lambda g: g["targets"])


def main(state: str, api: str, node: str, out: str) -> None:
    pki = Path(state) / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(pki / "admin.crt", pki / "admin.key")
    url = f"{api}/api/v1/pods?" + urllib.parse.urlencode({"fieldSelector": f"spec.nodeName={node}"})
    path, written = Path(out), None
    while True:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
                groups = targets(json.load(resp)["items"])
            if groups != written:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(groups, indent=2))
                tmp.replace(path)  # atomic: Prometheus never reads half a file
                written = groups
        except OSError as exc:  # the API server restarting: keep the last targets, try again
            print(f"pod targets: {exc}", file=sys.stderr, flush=True)
        time.sleep(1)


if __name__ == "__main__":
    main(*sys.argv[1:])
