"""The API client's connection pool is sized for the reconciles that run at once."""
from kubetune.operator.kube import load_client

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: not-a-secret}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_pool_fits_the_workers(tmp_path, monkeypatch):
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    import kubernetes.config.kube_config

    # The client reads $KUBECONFIG once, at import: point its default at this file instead.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    pool = lambda client: client.rest_client.pool_manager.connection_pool_kw["maxsize"]  # noqa: E731
    assert pool(load_client(connections=42)) == 42
    assert pool(load_client(connections=1)) >= 1  # never below the client's own default
    assert pool(load_client(connections=1)) == pool(load_client())
