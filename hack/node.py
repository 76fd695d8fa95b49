"""The local cluster's real node: a kubelet, containerd and runc running real containers beside the kwok nodes.

`hack/cluster` imports this module and passes itself as `c` (state dir, ports, process and certificate helpers),
so the control plane and the node share one set of conventions. Facts it builds on: ../shared/REAL-NODE.md.

Networking stays on this machine. Pods sit on the bridge `kubetune0` (10.88.0.0/16, the host is 10.88.0.1). The
API server and MinIO listen on loopback only, so two socat forwarders expose them on the bridge address; the
`kubernetes` Service's endpoint is that address, and kube-proxy serves Services. A guard chain rejects pod traffic
to anything that is neither the bridge nor the host, and any packet to an unused Service IP, so nothing ever
leaves the machine. Images live in a containerd root under the cache (imported images survive `down`); pods,
volumes and network state live in the cluster's state dir and are removed by `down`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

NODE_NAME = "kubetune-node"
BRIDGE, BRIDGE_CIDR, HOST_IP = "kubetune0", "10.88.0.0/16", "10.88.0.1"
NODE_LABEL, NODE_TAINT = "kubetune.io/real-node", "kubetune.io/real-node"
GUARD_CHAIN = "KUBETUNE-GUARD"
# Host sysctls the kubelet and kube-proxy want; saved at `up` and put back at `down` (the machine is shared).
SYSCTLS = {"vm.overcommit_memory": "1", "kernel.panic": "10", "kernel.panic_on_oops": "1",
           "net.bridge.bridge-nf-call-iptables": "1", "net.ipv4.ip_forward": "1"}


def enabled() -> bool:
    """One real node per machine: it owns a bridge, iptables chains and cgroups, so only the default-port cluster
    (offset 0) runs it, and KUBETUNE_REAL_NODE=0 turns it off."""
    return os.environ.get("KUBETUNE_REAL_NODE", "1") != "0" and int(
        os.environ.get("KUBETUNE_CLUSTER_PORT_OFFSET", "0")) == 0


def _sh(*args, check=True) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=check, capture_output=True, text=True)


def containerd_address(c) -> Path:
    return c.STATE / "run" / "containerd.sock"


def ctr(c, *args, check=True) -> subprocess.CompletedProcess:
    return _sh("ctr", "--address", containerd_address(c), "-n", "k8s.io", *args, check=check)


# ----------------------------------------------------------------------------- host network

def _iptables(*args, check=True) -> subprocess.CompletedProcess:
    return _sh("iptables", "-w", "5", *args, check=check)


def setup_network(c) -> None:
    if _sh("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        _sh("ip", "link", "add", BRIDGE, "type", "bridge")
    _sh("ip", "addr", "replace", f"{HOST_IP}/16", "dev", BRIDGE)
    _sh("ip", "link", "set", BRIDGE, "up")
    saved = c.STATE / "node" / "sysctl.json"
    if not saved.exists():
        saved.write_text(json.dumps({k: _sh("sysctl", "-n", k).stdout.strip() for k in SYSCTLS}))
    for key, value in SYSCTLS.items():
        _sh("sysctl", "-q", "-w", f"{key}={value}")
    # Pods may talk to each other and to the host; anything else (other machines, a Service IP kube-proxy has no
    # rule for) is refused here instead of leaving through the default route.
    _iptables("-N", GUARD_CHAIN, check=False)
    _iptables("-F", GUARD_CHAIN)
    _iptables("-A", GUARD_CHAIN, "-d", c.SERVICE_CIDR, "-j", "REJECT")
    _iptables("-A", GUARD_CHAIN, "-s", BRIDGE_CIDR, "!", "-d", BRIDGE_CIDR, "-j", "REJECT")
    for chain in ("FORWARD", "OUTPUT"):
        if _iptables("-C", chain, "-j", GUARD_CHAIN, check=False).returncode != 0:
            _iptables("-I", chain, "1", "-j", GUARD_CHAIN)
    if _iptables("-C", "FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT", check=False).returncode != 0:
        _iptables("-A", "FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT")


def remove_kube_chains() -> None:
    """The kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY...) and any kube-proxy left: the jumps to them
    first, then the chains."""
    for table in ("filter", "nat", "mangle"):
        rules = _iptables("-t", table, "-S", check=False).stdout.splitlines()
        for rule in rules:
            words = rule.split()
            if words[0] == "-A" and not words[1].startswith("KUBE-") and "-j" in words and \
                    words[words.index("-j") + 1].startswith("KUBE-"):
                _iptables("-t", table, "-D", *words[1:], check=False)
        chains = [r.split()[1] for r in rules if r.startswith("-N KUBE-")]
        for chain in chains:
            _iptables("-t", table, "-F", chain, check=False)
        for chain in chains:
            _iptables("-t", table, "-X", chain, check=False)


def teardown_network(c) -> None:
    for chain in ("FORWARD", "OUTPUT"):
        while _iptables("-D", chain, "-j", GUARD_CHAIN, check=False).returncode == 0:
            pass
    _iptables("-D", "FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT", check=False)
    _iptables("-F", GUARD_CHAIN, check=False)
    _iptables("-X", GUARD_CHAIN, check=False)
    _sh("ip", "link", "del", BRIDGE, check=False)
    saved = c.STATE / "node" / "sysctl.json"
    if saved.exists():
        for key, value in json.loads(saved.read_text()).items():
            _sh("sysctl", "-q", "-w", f"{key}={value}", check=False)


def cni_config(c) -> Path:
    d = c.STATE / "node" / "cni"
    d.mkdir(parents=True, exist_ok=True)
    (d / "10-kubetune.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "kubetune",
        "plugins": [
            # No masquerade: pods never reach past the host, so their source address never needs rewriting.
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": BRIDGE_CIDR, "gateway": HOST_IP}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(c.STATE / "node" / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ]}, indent=2))
    return d


# ----------------------------------------------------------------------------- containerd

def containerd_root(c) -> Path:
    """Images survive `down` (kept under the cache, like the binaries); a second cluster dir gets its own."""
    return c.CACHE / "containerd"


def start_containerd(c, pause_image: str) -> None:
    d = c.STATE / "node" / "containerd"
    d.mkdir(parents=True, exist_ok=True)
    cni_dir = cni_config(c)
    config = f"""version = 2
root = "{containerd_root(c)}"
state = "{d / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{containerd_address(c)}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  stream_server_address = "127.0.0.1"
  # These VMs lack CAP_SYS_RESOURCE: runc cannot lower oom_score_adj, so negative scores are clamped to 0.
  restrict_oom_score_adj = true
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_dir}"
  # Per-registry hosts.toml files: the cluster's own registry speaks plain HTTP on loopback (hack/registry.py).
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{c.registry.containerd_hosts(c, d / 'certs.d')}"
"""
    (d / "config.toml").write_text(config)
    c.start("containerd", ["containerd", "--config", d / "config.toml", "--log-level", "warn"])
    c.wait_for("containerd", lambda: ctr(c, "version", check=False).returncode == 0, timeout=60)
    remove_containers(c)


def remove_containers(c) -> None:
    """Containers left by an earlier cluster (their tasks died with it); images stay."""
    listed = ctr(c, "containers", "ls", "-q", check=False).stdout.split()
    for cid in listed:
        ctr(c, "tasks", "kill", "-s", "SIGKILL", cid, check=False)
        ctr(c, "tasks", "delete", "-f", cid, check=False)
        ctr(c, "containers", "delete", cid, check=False)


# ----------------------------------------------------------------------------- kubelet and kube-proxy

def _client_cert(c, name: str, subject: str) -> Path:
    c._cert(name, subject, "ca", c.CLIENT_EXT)
    return c.cert_kubeconfig(name)


def start_kubelet(c, bins: dict) -> None:
    d = c.STATE / "node" / "kubelet"
    d.mkdir(parents=True, exist_ok=True)
    kubeconfig = _client_cert(c, "kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}")
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": HOST_IP, "port": c.PORTS["kubelet"], "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": c.PORTS["kubelet-healthz"],
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(c.STATE / "pki" / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        # containerd 1.6 cannot tell the kubelet its cgroup driver; cgroup v1 with cgroupfs, under our own root
        # so `down` can find and stop every container process.
        "cgroupDriver": "cgroupfs", "cgroupRoot": "/kubetune",
        "containerRuntimeEndpoint": f"unix://{containerd_address(c)}",
        "failSwapOn": False, "protectKernelDefaults": False,
        # Imported images cannot be pulled again: never garbage-collect them.
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        # The eviction manager reads volume usage from stats refreshed this often (default 1m): a cache volume over
        # its sizeLimit is evicted within seconds (tests/e2e/test_real_faults.py), not a minute.
        "volumeStatsAggPeriod": "5s",
        "podLogsDir": str(d / "pod-logs"), "resolvConf": "/etc/resolv.conf",
        "registerWithTaints": [{"key": NODE_TAINT, "value": "true", "effect": "NoSchedule"}],
        "serializeImagePulls": False, "maxPods": 50,
    }
    (d / "config.json").write_text(json.dumps(config, indent=2))
    for controller in Path("/sys/fs/cgroup").iterdir():  # the kubelet wants cgroupRoot in every hierarchy
        if controller.is_dir() and not controller.is_symlink():
            (controller / "kubetune").mkdir(exist_ok=True)
    c.start("kubelet", [bins["kubelet"], f"--config={d / 'config.json'}", f"--kubeconfig={kubeconfig}",
                        f"--root-dir={d / 'root'}", f"--cert-dir={d / 'pki'}", f"--hostname-override={NODE_NAME}",
                        f"--node-ip={HOST_IP}", f"--node-labels={NODE_LABEL}=true", "--v=1"])


def start_kube_proxy(c, bins: dict) -> None:
    d = c.STATE / "node" / "kube-proxy"
    d.mkdir(parents=True, exist_ok=True)
    kubeconfig = _client_cert(c, "kube-proxy", "/CN=system:kube-proxy")
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "mode": "iptables", "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME, "clusterCIDR": BRIDGE_CIDR, "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{c.PORTS['kube-proxy']}",
        "metricsBindAddress": f"127.0.0.1:{c.PORTS['kube-proxy-metrics']}",
        "nodePortAddresses": [f"{HOST_IP}/32"],
        # Leave the host's conntrack table size alone (a shared machine).
        "conntrack": {"maxPerCore": 0, "min": 0},
        "iptables": {"localhostNodePorts": False},
    }
    (d / "config.json").write_text(json.dumps(config, indent=2))
    c.start("kube-proxy", [bins["kube-proxy"], f"--config={d / 'config.json'}"])


def start_forwarders(c) -> None:
    """The API server and MinIO listen on loopback; pods reach them on the bridge address."""
    for name, port in (("forward-apiserver", c.PORTS["apiserver"]), ("forward-minio", c.PORTS["minio"])):
        # -L: a lock file in the state dir, which also marks the process as this cluster's (c.pid_of).
        c.start(name, ["socat", "-L", c.STATE / "run" / f"{name}.lock", f"TCP-LISTEN:{port},bind={HOST_IP},fork,reuseaddr",
                       f"TCP:127.0.0.1:{port}"])


def s3_endpoint(c) -> str:
    return f"http://{HOST_IP}:{c.PORTS['minio']}"


# ----------------------------------------------------------------------------- up / down

def up(c, bins: dict, kubectl, build_image, import_image) -> None:
    """`build_image(name)` / `import_image(name)` (hack/images) give the sandbox image's reference and load it."""
    (c.STATE / "node").mkdir(parents=True, exist_ok=True)
    setup_network(c)
    start_forwarders(c)
    start_containerd(c, build_image("pause"))
    import_image("pause")
    # The API server's kubelet-client identity must be allowed to read logs and exec (kubectl logs/exec).
    kubectl("create", "clusterrolebinding", "kubetune-apiserver-kubelet", "--clusterrole=system:kubelet-api-admin",
            "--user=kube-apiserver-kubelet-client")
    start_kube_proxy(c, bins)
    start_kubelet(c, bins)
    c.wait_for("the real node to be Ready", lambda: kubectl(
        "get", "node", NODE_NAME, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        check=False).stdout == "True", timeout=90)
    c.wait_for("kube-proxy", lambda: c._get(f"http://127.0.0.1:{c.PORTS['kube-proxy']}/healthz"), timeout=60)


def _cgroup_pids(root: str = "kubetune") -> list[int]:
    pids: set[int] = set()
    for procs in Path("/sys/fs/cgroup/pids", root).rglob("cgroup.procs") if Path(
            "/sys/fs/cgroup/pids", root).exists() else []:
        try:
            pids.update(int(p) for p in procs.read_text().split())
        except OSError:
            pass
    return sorted(pids)


def _remove_cgroups(root: str = "kubetune") -> None:
    for controller in Path("/sys/fs/cgroup").iterdir():
        base = controller / root
        if not base.is_dir():
            continue
        for d in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:
                pass
        try:
            base.rmdir()
        except OSError:
            pass


def _unmount_under(path: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if m.startswith(str(path) + "/")), key=len, reverse=True):
        _sh("umount", "-l", m, check=False)


def down(c) -> None:
    """Stop the node's processes and every container process it started, then clean what is outside the state
    dir (bridge, iptables, sysctls, cgroups); the caller removes the state dir."""
    for name in ("kubelet", "kube-proxy"):
        pid = c.pid_of(name)
        if pid:
            c._signal(pid, signal.SIGTERM)
    if c.pid_of("containerd") and containerd_address(c).exists():
        remove_containers(c)
    for pid in _cgroup_pids():  # whatever the task kill missed
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # Shims outlive containerd: find them by our socket in their command line.
    sock = str(containerd_address(c)).encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"containerd-shim" in (proc / "cmdline").read_bytes() and sock in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    for name in c.NODE_COMPONENTS:
        pid = c.pid_of(name)
        if pid:
            c._signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while any(c.pid_of(n) for n in c.NODE_COMPONENTS) and time.monotonic() < deadline:
        time.sleep(0.1)
    for name in c.NODE_COMPONENTS:
        pid = c.pid_of(name)
        if pid:
            c._signal(pid, signal.SIGKILL)
    for binary in sorted((c.CACHE / "bin").glob("kube-proxy-*"))[-1:]:
        _sh(binary, "--cleanup", check=False)  # removes kube-proxy's KUBE-* iptables chains
    remove_kube_chains()
    _unmount_under(c.STATE / "node")
    _remove_cgroups()
    teardown_network(c)
