#!/usr/bin/env python3
"""Katib v0.19.0 beside a local cluster (hack/cluster), with FineTuneJob as the trial template (docs/katib.md).

  hack/katib.py build   # katib-controller, katib-db-manager, suggestion-goptuna from the published Go module
  hack/katib.py up      # PostgreSQL, db-manager, the goptuna suggestion, the controller and its webhooks
  hack/katib.py db      # PostgreSQL and db-manager only (no cluster needed): prints db-manager's address
  hack/katib.py demo    # an Experiment whose trials are FineTuneJobs (kwok trials; see "The objective" below)
  hack/katib.py down    # stops what `up` and `demo` started (before `hack/cluster down`)

Every part runs as a process on this host, like Kueue and Flux: no container registry serves Katib's images here.

- Controller: `cmd/katib-controller` of the module, its webhooks served on 127.0.0.1 with a certificate signed by
  the cluster's CA; the webhook configurations are the module's `manifests/v1beta1/components/webhook` with
  `url:` instead of a Service (Katib's cert-generator is off: it wants a Service and a Secret). Katib hard-codes
  its certificate directory (/tmp/cert) and dials the suggestion service and db-manager by Service DNS name
  (`<experiment>-<algorithm>.<namespace>:6789`, `katib-db-manager.kubeflow:<port>`), so the controller runs in
  its own mount namespace (`unshare -m`) where /tmp/cert and /etc/hosts are bind mounts of files under the state
  dir; `demo` adds its experiment's suggestion name to that hosts file.
- DB: Debian's PostgreSQL 15 (postgres user, trust auth on 127.0.0.1), the db-manager with DB_NAME=postgres.
- Suggestion: Katib creates a Deployment and a Service per Experiment from the image that the katib-config
  ConfigMap names for the algorithm; on kwok that pod only pretends to run, so the goptuna service
  (`cmd/suggestion/goptuna`: tpe, random, cmaes, sobol) runs here as one process on 0.0.0.0:6789 (its address
  is hard-coded) and answers for the Experiment. The Python suggestions (optuna, hyperopt, skopt) exist only as
  images.
- The objective: trials use the Push collector. Katib's pod webhook puts KATIB_TRIAL_NAME into the trainer
  container, the operator (KUBETUNE_OPERATOR_TRAINER_ENV) KATIB_DB_MANAGER_ADDRESS, and the trainer pushes its
  metrics to db-manager (kubetune/trainer/katib.py). kwok runs no trainer, so `demo` runs hack/katib_push.py,
  which pushes for each trial's trainer pod with the trainer's code (katib.Reporter) and a made-up loss. The
  operator and katib_push.py run from this checkout with $KUBETUNE_PYTHON (default: this interpreter), which
  needs kubetune's operator and katib extras.
- `db` starts PostgreSQL and db-manager alone (tests/trainer/test_katib.py); KATIB_DB_LISTEN=0.0.0.0 (`up`, `db`)
  lets pods on the real node reach db-manager at 10.88.0.1:<port>.

Ports: 16860-16864 (+ KUBETUNE_CLUSTER_PORT_OFFSET) and 6789 (goptuna, fixed): one Katib per machine.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("KUBETUNE_CLUSTER_DIR") or REPO / ".cluster").resolve()
CACHE = Path(os.environ.get("KUBETUNE_CACHE") or Path.home() / ".cache" / "kubetune")
KATIB = "github.com/kubeflow/katib"
VERSION = "v0.19.0"
BIN = CACHE / "bin" / f"katib-{VERSION}"
MAINS = {"katib-controller": "cmd/katib-controller/v1beta1", "katib-db-manager": "cmd/db-manager/v1beta1",
         "suggestion-goptuna": "cmd/suggestion/goptuna/v1beta1"}
_OFFSET = int(os.environ.get("KUBETUNE_CLUSTER_PORT_OFFSET", "0"))
PORTS = {name: port + _OFFSET for name, port in {
    "webhook": 16860, "metrics": 16861, "health": 16862, "db-manager": 16863, "postgres": 16864}.items()}
OWNER = {"webhook": "katib-controller", "metrics": "katib-controller", "health": "katib-controller",
         "db-manager": "katib-db-manager", "postgres": "katib-postgres"}
SUGGESTION_PORT = 6789  # consts.DefaultSuggestionPort, and the goptuna service's fixed listen address
NAMESPACE = "kubeflow"  # KATIB_CORE_NAMESPACE: the katib-config ConfigMap, db-manager's "Service" name
DEMO_NS = "katib-demo"
GOPTUNA_IMAGE = f"kubetune.local/katib/suggestion-goptuna:{VERSION}"  # never pulled: kwok runs no containers
PG_BIN = Path("/usr/lib/postgresql/15/bin")
HERE = STATE / "katib"
COMPONENTS = ["katib-postgres", "katib-db-manager", "suggestion-goptuna", "katib-controller", "kubetune-operator",
              "katib-push"]


def log(msg: str) -> None:
    print(f"[katib {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(*args, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    return subprocess.run([str(a) for a in args], **kw)


def env_sh() -> dict:
    """The cluster's `hack/cluster env` as a dict."""
    path = STATE / "env.sh"
    if not path.exists():
        raise SystemExit(f"no cluster in {STATE}; run hack/cluster up")
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("export ") and "=" in line and not line.startswith("export PATH="):
            key, value = line[len("export "):].split("=", 1)
            out[key] = value.strip("'")
    return out


def kubectl(*args, **kw) -> subprocess.CompletedProcess:
    env = env_sh()
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return run(env["KUBETUNE_KUBECTL"], f"--kubeconfig={env['KUBECONFIG']}", *args, **kw)


def apply(objects: list[dict] | str) -> None:
    doc = objects if isinstance(objects, str) else json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=kubetune-katib", "-f", "-", input=doc)


# ----------------------------------------------------------------------------- build

def go_env() -> dict:
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=readonly -buildvcs=false")
    if shutil.which("go") is None and Path("/usr/local/go/bin/go").exists():
        env["PATH"] = "/usr/local/go/bin:" + env["PATH"]
    return env


def module_dir() -> Path:
    out = run("go", "mod", "download", "-json", f"{KATIB}@{VERSION}", env=go_env(), capture_output=True,
              text=True, cwd=tempfile.gettempdir()).stdout
    return Path(json.loads(out)["Dir"])


def cmd_build(names=tuple(MAINS)) -> int:
    """Each main in a copy of the published module (its own go.sum: the build list exactly as released)."""
    missing = [name for name in names if not (BIN / name).exists()]
    if not missing:
        return 0
    BIN.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BIN.parent) as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(module_dir(), src)
        for path in [src, *src.rglob("*")]:  # the module cache is read-only
            path.chmod(path.stat().st_mode | 0o200)
        for name in missing:
            started = time.monotonic()
            log(f"building {name} {VERSION}")
            run("nice", "-n", "10", "go", "build", "-p", "2", "-trimpath", "-ldflags=-s -w", "-o",
                Path(tmp) / name, f"./{MAINS[name]}", cwd=src, env=go_env())
            (Path(tmp) / name).rename(BIN / name)
            log(f"built {name} in {time.monotonic() - started:.0f}s")
    return 0


# ----------------------------------------------------------------------------- processes

def pidfile(name: str) -> Path:
    return STATE / "run" / f"{name}.pid"


def start(name: str, argv: list, env: dict | None = None, user: str | None = None) -> None:
    (STATE / "run").mkdir(parents=True, exist_ok=True)
    (STATE / "logs").mkdir(parents=True, exist_ok=True)
    with open(STATE / "logs" / f"{name}.log", "wb") as out:
        proc = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, user=user,
                                env=dict(os.environ, **(env or {})), cwd=HERE)
    pidfile(name).write_text(str(proc.pid))


def alive(name: str) -> int | None:
    try:
        pid = int(pidfile(name).read_text())
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError):
        return None
    return pid if stat[0] != "Z" else None


def wait_for(what: str, predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what} (logs in {STATE / 'logs'})")
        time.sleep(0.5)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    import socket
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


# ----------------------------------------------------------------------------- up

def serving_cert() -> Path:
    """tls.crt/tls.key for 127.0.0.1, signed by the cluster's CA (the API server trusts it as caBundle)."""
    certs = HERE / "cert"
    certs.mkdir(parents=True, exist_ok=True)
    pki = STATE / "pki"
    ext = certs / "ext.cnf"
    ext.write_text("[v3]\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
                   "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", certs / "tls.key",
        capture_output=True)
    run("openssl", "req", "-new", "-key", certs / "tls.key", "-subj", "/CN=katib-controller", "-out",
        certs / "tls.csr", capture_output=True)
    run("openssl", "x509", "-req", "-in", certs / "tls.csr", "-CA", pki / "ca.crt", "-CAkey", pki / "ca.key",
        "-CAcreateserial", "-days", "365", "-out", certs / "tls.crt", "-extfile", ext, "-extensions", "v3",
        capture_output=True)
    return certs


def start_postgres() -> None:
    data = HERE / "pg"
    if not data.exists():
        data.mkdir(parents=True)
        shutil.chown(data, "postgres", "postgres")
        run(PG_BIN / "initdb", "-D", data, "-U", "katib", "--auth=trust", "-E", "UTF8", capture_output=True,
            user="postgres")
    sock = HERE / "pg-socket"
    sock.mkdir(exist_ok=True)
    shutil.chown(sock, "postgres", "postgres")
    start("katib-postgres", [PG_BIN / "postgres", "-D", data, "-p", PORTS["postgres"], "-k", sock,
                             "-c", "listen_addresses=127.0.0.1"], user="postgres")
    wait_for("postgres", lambda: port_open(PORTS["postgres"]))
    exists = run(PG_BIN / "psql", "-h", "127.0.0.1", "-p", PORTS["postgres"], "-U", "katib", "-d", "postgres",
                 "-tAc", "SELECT 1 FROM pg_database WHERE datname='katib'", capture_output=True, text=True).stdout
    if not exists.strip():
        run(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", PORTS["postgres"], "-U", "katib", "katib")


def katib_config(runtime_only: bool = False) -> dict:
    # Restricted PodSecurity admits the suggestion's pod (kubetune's namespaces enforce it; on kwok it never runs).
    restricted = {"runAsNonRoot": True, "runAsUser": 65532, "allowPrivilegeEscalation": False,
                  "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    goptuna = [{"algorithmName": name, "image": GOPTUNA_IMAGE, "securityContext": restricted}
               for name in ("tpe", "random", "cmaes", "sobol")]
    config = {"apiVersion": "config.kubeflow.org/v1beta1", "kind": "KatibConfig",
              "runtime": {"suggestions": goptuna,
                          "metricsCollectors": [{"kind": "StdOut", "image": "unused/file-metrics-collector"}]}}
    if not runtime_only:
        config["init"] = {
            "certGenerator": {"enable": False},
            "controller": {"webhookPort": PORTS["webhook"], "metricsAddr": f"127.0.0.1:{PORTS['metrics']}",
                           "healthzAddr": f"127.0.0.1:{PORTS['health']}",
                           "trialResources": ["Job.v1.batch", "FineTuneJob.v1alpha1.kubetune.io"]}}
    return config


def webhooks(mod: Path) -> str:
    """The module's webhook configurations with `url:` on loopback and the cluster's CA."""
    ca = base64.b64encode((STATE / "pki" / "ca.crt").read_bytes()).decode()
    docs = kubectl("create", "--dry-run=client", "-o", "json", "-f",
                   mod / "manifests/v1beta1/components/webhook/webhooks.yaml").stdout
    decoder, items, at = json.JSONDecoder(), [], 0
    while docs[at:].strip():  # one JSON document per YAML document
        item, end = decoder.raw_decode(docs[at:].lstrip())
        at += len(docs[at:]) - len(docs[at:].lstrip()) + end
        items.append(item)
    for item in items:
        for hook in item["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{PORTS['webhook']}{path}", "caBundle": ca}
            hook["failurePolicy"] = "Fail"
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def hosts_file() -> Path:
    return HERE / "hosts"


def add_host(name: str) -> None:
    """Appends in place: the controller's /etc/hosts is a bind mount of this inode (Go re-reads it on change)."""
    if name not in hosts_file().read_text().split():
        with open(hosts_file(), "a") as f:
            f.write(f"127.0.0.1 {name}\n")


def start_db(listen: str = "127.0.0.1") -> None:
    if not alive("katib-postgres"):
        log("PostgreSQL")
        start_postgres()
    db_env = {"DB_NAME": "postgres", "DB_USER": "katib", "DB_PASSWORD": "", "KATIB_POSTGRESQL_DB_HOST": "127.0.0.1",
              "KATIB_POSTGRESQL_DB_PORT": str(PORTS["postgres"]), "KATIB_POSTGRESQL_DB_DATABASE": "katib"}
    if not alive("katib-db-manager"):
        log("db-manager")
        start("katib-db-manager", [BIN / "katib-db-manager", f"-listen-address={listen}:{PORTS['db-manager']}"],
              env=db_env)
        wait_for("db-manager", lambda: port_open(PORTS["db-manager"]))


def cmd_db() -> int:
    """PostgreSQL and db-manager alone (no cluster needed), e.g. for tests/trainer/test_katib.py; prints the
    address. KATIB_DB_LISTEN=0.0.0.0 makes it reachable from the real node's pods (10.88.0.1:<port>)."""
    if not (PG_BIN / "postgres").exists():
        raise SystemExit(f"hack/katib.py db needs PostgreSQL 15 ({PG_BIN}/postgres: Debian's postgresql-15)")
    if not (BIN / "katib-db-manager").exists() and not shutil.which("go", path=go_env()["PATH"]):
        raise SystemExit(f"hack/katib.py db needs Go to build katib-db-manager (about 15 s), or the binary in {BIN}")
    cmd_build(["katib-db-manager"])
    HERE.mkdir(parents=True, exist_ok=True)
    start_db(os.environ.get("KATIB_DB_LISTEN", "127.0.0.1"))
    print(f"127.0.0.1:{PORTS['db-manager']}")
    return 0


def cmd_up() -> int:
    cmd_build()
    env = env_sh()
    mod = module_dir()
    HERE.mkdir(parents=True, exist_ok=True)
    busy = [f"{n}:{p}" for n, p in PORTS.items() if port_open(p) and not alive(OWNER[n])]
    if port_open(SUGGESTION_PORT) and not alive("suggestion-goptuna"):
        busy.append(f"suggestion:{SUGGESTION_PORT}")
    if busy:
        raise SystemExit(f"ports in use: {', '.join(busy)}")
    log("CRDs (experiments, suggestions, trials.kubeflow.org), namespace, katib-config")
    for crd in sorted((mod / "manifests/v1beta1/components/crd").glob("*.yaml")):
        if crd.name != "kustomization.yaml":
            kubectl("apply", "--server-side", "--force-conflicts", "-f", crd)
    kubectl("apply", "--server-side", "-f", REPO / "crds")  # FineTuneJob and FineTuneSweep
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
           {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "katib-config", "namespace": NAMESPACE},
            "data": {"katib-config.yaml": json.dumps(katib_config(runtime_only=True), indent=2)}}])
    (HERE / "katib-config.yaml").write_text(json.dumps(katib_config(), indent=2))
    start_db(os.environ.get("KATIB_DB_LISTEN", "127.0.0.1"))
    if not alive("suggestion-goptuna"):
        log("goptuna suggestion service")
        start("suggestion-goptuna", [BIN / "suggestion-goptuna"])
        wait_for("goptuna", lambda: port_open(SUGGESTION_PORT))
    if not alive("katib-controller"):
        log("katib-controller (own mount namespace: /etc/hosts, /tmp/cert)")
        certs = serving_cert()
        if not hosts_file().exists():
            hosts_file().write_text("127.0.0.1 localhost\n")
        add_host(f"katib-db-manager.{NAMESPACE}")
        Path("/tmp/cert").mkdir(exist_ok=True)  # the mount point (empty on the host)
        script = ('mount --bind "$1" /etc/hosts && mount --bind "$2" /tmp/cert && shift 2 && exec "$@"')
        start("katib-controller", ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                                   hosts_file(), certs, BIN / "katib-controller",
                                   f"--katib-config={HERE / 'katib-config.yaml'}"],
              env={"KUBECONFIG": env["KUBECONFIG"], "KATIB_CORE_NAMESPACE": NAMESPACE,
                   "KATIB_DB_MANAGER_SERVICE_PORT": str(PORTS["db-manager"])})
        wait_for("katib-controller webhooks", lambda: port_open(PORTS["webhook"]), timeout=90)
    apply(webhooks(mod))
    log(f"Katib {VERSION} up; logs in {STATE / 'logs'}/katib-*.log")
    return 0


# ----------------------------------------------------------------------------- demo

TRIAL_TEMPLATE = """\
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata:
  annotations:
    kwok.kubetune.io/run-seconds: "8"
spec:
  baseModel:
    uri: s3://models/tiny/
  dataset:
    train: s3://datasets/chat/train.jsonl
    validation: s3://datasets/chat/val.jsonl
  method:
    type: lora
    lora:
      r: ${trialParameters.loraRank}
  hyperparameters:
    maxSteps: 10
    batchSize: 8
    microBatchSize: 4
    learningRate: ${trialParameters.learningRate}
  output:
    uri: s3://artifacts/katib/${trialParameters.trialName}/
"""


def experiment(name: str, namespace: str) -> dict:
    return {
        "apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "objective": {"type": "minimize", "objectiveMetricName": "loss"},
            "algorithm": {"algorithmName": "tpe"},
            "maxTrialCount": 6, "parallelTrialCount": 2, "maxFailedTrialCount": 2,
            "metricsCollectorSpec": {"collector": {"kind": "Push"}},
            "parameters": [
                {"name": "lr", "parameterType": "double", "feasibleSpace": {"min": "0.00001", "max": "0.01"}},
                {"name": "rank", "parameterType": "discrete", "feasibleSpace": {"list": ["8", "16", "32"]}}],
            "trialTemplate": {
                "primaryContainerName": "trainer",
                "primaryPodLabels": {"app.kubernetes.io/name": "kubetune-trainer"},
                "successCondition": 'status.conditions.#(type=="Succeeded")#|#(status=="True")#',
                "failureCondition": 'status.conditions.#(type=="Failed")#|#(status=="True")#',
                "retain": True,
                "trialParameters": [
                    {"name": "learningRate", "reference": "lr"},
                    {"name": "loraRank", "reference": "rank"},
                    {"name": "trialName", "reference": "${trialSpec.Name}"}],
                "configMap": {"configMapName": f"{name}-trial-template", "configMapNamespace": namespace,
                              "templatePath": "finetunejob.yaml"}}}}


def cmd_demo() -> int:
    env = env_sh()
    if not alive("katib-controller"):
        cmd_up()
    name, ns = "ftj-lr", DEMO_NS
    add_host(f"{name}-tpe.{ns}")
    apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": ns, "labels": {"katib.kubeflow.org/metrics-collector-injection": "enabled"}}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": f"{name}-trial-template", "namespace": ns,
                      "labels": {"katib.kubeflow.org/component": "trial-templates"}},
         "data": {"finetunejob.yaml": TRIAL_TEMPLATE}}])
    python = os.environ.get("KUBETUNE_PYTHON") or sys.executable  # kubetune's deps, with the katib extra
    if not alive("kubetune-operator"):
        log("kubetune operator (this checkout, as a process), watching " + ns)
        # Every trainer pod gets db-manager's address, as a trainer of a Katib trial needs it (on the real node
        # it would be 10.88.0.1:<port>, with `KATIB_DB_LISTEN=0.0.0.0 hack/katib.py up`).
        trainer_env = [{"name": "KATIB_DB_MANAGER_ADDRESS", "value": f"127.0.0.1:{PORTS['db-manager']}"}]
        settings = {"NAMESPACES": ns, "POD_ANNOTATION_PREFIXES": "kwok.kubetune.io/",
                    "TRAINER_IMAGE": "kubetune/trainer:katib-demo", "METRICS_PORT": str(PORTS["metrics"] + 100),
                    "HEALTH_PORT": str(PORTS["health"] + 100), "LEADER_ELECTION": "false",
                    "TRAINER_ENV": json.dumps(trainer_env)}
        start("kubetune-operator", [python, "-m", "kubetune.operator"],
              env={"KUBECONFIG": env["KUBECONFIG"], "PYTHONPATH": str(REPO),
                   **{f"KUBETUNE_OPERATOR_{k}": v for k, v in settings.items()}})
    if not alive("katib-push"):
        log("katib_push.py (the trainer's Push, kubetune.trainer.katib, for kwok's trainer pods)")
        pythonpath = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
        start("katib-push", [python, REPO / "hack" / "katib_push.py", ns],
              env={"KUBECONFIG": env["KUBECONFIG"], "KUBETUNE_KUBECTL": env["KUBETUNE_KUBECTL"],
                   "PYTHONPATH": pythonpath})
        # Starting takes a second or two: a kwok trial that ran meanwhile would find nobody to push its loss.
        wait_for("katib_push.py", lambda: "watching" in (STATE / "logs" / "katib-push.log").read_text())
    kubectl("delete", "experiment", name, "-n", ns, "--ignore-not-found", "--wait=true")
    apply([experiment(name, ns)])
    log(f"Experiment {ns}/{name} created; waiting for it to succeed")
    result = kubectl("wait", "--for=condition=Succeeded", f"experiment/{name}", "-n", ns, "--timeout=600s",
                     check=False)
    print(kubectl("get", "experiment,trials,finetunejobs", "-n", ns, check=False).stdout)
    status = json.loads(kubectl("get", "experiment", name, "-n", ns, "-o", "json").stdout).get("status", {})
    print(json.dumps(status.get("currentOptimalTrial"), indent=2))
    return result.returncode


def cmd_down() -> int:
    for name in reversed(COMPONENTS):
        pid = alive(name)
        if pid:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 20
            while alive(name) and time.monotonic() < deadline:
                time.sleep(0.2)
            if alive(name):
                os.killpg(pid, signal.SIGKILL)
        pidfile(name).unlink(missing_ok=True)
    if HERE.exists():
        shutil.rmtree(HERE)
    try:
        Path("/tmp/cert").rmdir()  # the controller's mount point, if empty
    except OSError:
        pass
    return 0


def main(argv: list[str]) -> int:
    commands = {"build": cmd_build, "up": cmd_up, "db": cmd_db, "demo": cmd_demo, "down": cmd_down}
    if len(argv) != 1 or argv[0] not in commands:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    return commands[argv[0]]()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
