"""An operator run outside the cluster with a kubeconfig whose user is an exec plugin (EKS, GKE, kubelogin):
the plugin's ExecCredential is what both kopf and kube.Connection authenticate with, against the real API
server. The plugin here is a script handing out the operator ServiceAccount's token, as `aws eks get-token`
hands out an STS token."""
import json
import sys
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from kubetune.operator import credentials
from kubetune.operator.handlers import login
from kubetune.operator.kube import Connection, Kube

pytestmark = pytest.mark.cluster


def test_a_kubeconfig_exec_plugin_logs_the_operator_in(cluster, namespace, operators, tmp_path, monkeypatch):
    config = yaml.safe_load(cluster.operator_kubeconfig.read_text())
    token = config["users"][0]["user"]["token"]
    runs = tmp_path / "runs"
    expiry = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    plugin = tmp_path / "get-token"
    plugin.write_text(f"#!{sys.executable}\nimport json, os\n"
                      f"open({str(runs)!r}, 'a').write(json.loads(os.environ['KUBERNETES_EXEC_INFO'])['kind'] + '\\n')\n"
                      f"print(json.dumps({{'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',"
                      f" 'status': {{'token': {token!r}, 'expirationTimestamp': {expiry!r}}}}}))\n")
    plugin.chmod(0o755)
    config["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin),
                                           "interactiveMode": "Never"}}
    exec_kubeconfig = tmp_path / "exec.kubeconfig"
    exec_kubeconfig.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(exec_kubeconfig))
    credentials._cache.clear()

    kube = Kube(Connection(login))
    assert kube.list_objects("ConfigMap", namespace, "kubetune.io/finetunejob") == []
    login()  # kopf logs in too: the cached credential, not a second run of the plugin
    assert runs.read_text().split() == ["ExecCredential"]
    info = login()
    assert info.token == token and info.expiration is not None


def test_a_failing_exec_plugin_names_itself(tmp_path, monkeypatch):
    plugin = tmp_path / "broken"
    plugin.write_text("#!/bin/sh\necho 'no SSO session' >&2\nexit 3\n")
    plugin.chmod(0o755)
    config = {"current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
              "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}],
              "users": [{"name": "u", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                                                        "command": str(plugin)}}}]}
    (tmp_path / "kubeconfig").write_text(json.dumps(config))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    credentials._cache.clear()
    with pytest.raises(Exception, match="broken exited 3: no SSO session"):
        credentials.login_with_exec_plugin()
