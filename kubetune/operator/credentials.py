"""Credentials from a kubeconfig whose user runs an exec plugin (client.authentication.k8s.io ExecCredential: EKS'
`aws eks get-token`, GKE's `gke-gcloud-auth-plugin`, kubelogin), for an operator run outside the cluster. kopf's
own kubeconfig login skips such users; in a pod the service account is used and none of this runs.

The plugin is run as client-go runs it: the command with its args and env, KUBERNETES_EXEC_INFO describing the
request, no stdin; its answer is cached until shortly before the expiry it states.
"""
import base64
import datetime
import json
import os
import subprocess
import threading
from pathlib import Path

import kopf
import yaml

EXEC_TIMEOUT_SECONDS = 30
_cache: dict[str, tuple[kopf.ConnectionInfo, datetime.datetime | None]] = {}
_lock = threading.Lock()


def _kubeconfig() -> dict | None:
    paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p] or [str(Path.home() / ".kube/config")]
    path = next((Path(p) for p in paths if Path(p).is_file()), None)
    return yaml.safe_load(path.read_text()) if path else None


def _named(items: list | None, name: str | None) -> dict:
    return next((i.get(k, {}) for i in items or [] if i.get("name") == name for k in ("cluster", "user", "context")
                 if k in i), {})


def _fresh(expiry: datetime.datetime | None) -> bool:
    """Whether cached credentials are still good: a minute of margin, as client-go keeps."""
    return expiry is None or datetime.datetime.now(datetime.timezone.utc) < expiry - datetime.timedelta(seconds=60)


def run_plugin(spec: dict, cluster: dict) -> dict:
    """The ExecCredential status the plugin prints (token, or client certificate and key; expirationTimestamp)."""
    info = {"apiVersion": spec.get("apiVersion", "client.authentication.k8s.io/v1"), "kind": "ExecCredential",
            "spec": {"interactive": False}}
    if spec.get("provideClusterInfo"):
        info["spec"]["cluster"] = {"server": cluster.get("server"),
                                   "certificate-authority-data": cluster.get("certificate-authority-data")}
    env = {**os.environ, **{e["name"]: e["value"] for e in spec.get("env") or []},
           "KUBERNETES_EXEC_INFO": json.dumps(info)}
    done = subprocess.run([spec["command"], *(spec.get("args") or [])], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=EXEC_TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise kopf.LoginError(f"the kubeconfig's exec plugin {spec['command']} exited {done.returncode}: "
                              f"{done.stderr.strip()[:500]}")
    try:
        return json.loads(done.stdout)["status"]
    except (ValueError, KeyError, TypeError) as exc:
        raise kopf.LoginError(f"the kubeconfig's exec plugin {spec['command']} printed no ExecCredential "
                              f"status") from exc


def login_with_exec_plugin() -> kopf.ConnectionInfo | None:
    """ConnectionInfo for the current context when its user has an `exec` section, else None."""
    config = _kubeconfig()
    if not config:
        return None
    context = _named(config.get("contexts"), config.get("current-context"))
    user, cluster = _named(config.get("users"), context.get("user")), _named(config.get("clusters"),
                                                                            context.get("cluster"))
    spec = user.get("exec")
    if not spec:
        return None
    key = json.dumps([cluster, spec], sort_keys=True)
    with _lock:
        cached = _cache.get(key)
        if cached and _fresh(cached[1]):
            return cached[0]
        status = run_plugin(spec, cluster)
        expiry = status.get("expirationTimestamp")
        expiry = datetime.datetime.fromisoformat(expiry.replace("Z", "+00:00")) if expiry else None
        ca = cluster.get("certificate-authority-data")
        info = kopf.ConnectionInfo(
            server=cluster["server"], ca_data=base64.b64decode(ca) if ca else None,
            ca_path=cluster.get("certificate-authority"), insecure=cluster.get("insecure-skip-tls-verify"),
            scheme="Bearer" if status.get("token") else None, token=status.get("token"),
            certificate_data=(status.get("clientCertificateData") or "").encode() or None,
            private_key_data=(status.get("clientKeyData") or "").encode() or None,
            default_namespace=context.get("namespace"), proxy_url=cluster.get("proxy-url"), expiration=expiry)
        _cache[key] = (info, expiry)
        return info
