"""The images built by hack/images (the same Dockerfiles as production), imported into a private containerd and
run the way the pods run them: the image's own USER and ENTRYPOINT, a read-only root, /tmp a tmpfs.
Slow only when the sources changed since the last build (a warm build takes seconds)."""
import json
import os
import re
import shutil
import subprocess
import time
import tomllib

import pytest

from kubetune.api import contract
from kubetune.operator import children, runs
from kubetune.operator.settings import OperatorSettings
from tests.images.containerd import Containerd
from tests.images.dockerfiles import ROOT
from tests.images.test_dockerfiles import expected_user, load_hack_images
from tests.trainer.conftest import chat_rows, finetunejob, tiny_model, write_jsonl  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow
REF = re.compile(r"^localhost/kubetune/(trainer|operator|pause):[0-9a-f]{12}$")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

TRAINER_PROBE = """
import importlib.util, json, os, shutil, torch, transformers, peft, kubetune.trainer.loop
m = torch.nn.Linear(8, 2)
loss = m(torch.randn(4, 8)).pow(2).mean()
loss.backward()
def writable(path):
    try:
        open(path, "w").close()
        return True
    except OSError:
        return False
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "cuda": torch.cuda.is_available(),
    "grad": float(m.weight.grad.abs().sum()), "root_writable": writable("/opt/probe"),
    "tmp_writable": writable("/tmp/probe"), "compilers": [c for c in ("gcc", "cc", "g++") if shutil.which(c)],
    "cuda_wheels": [p for p in ("nvidia", "triton") if importlib.util.find_spec(p)]}))
"""

OPERATOR_PROBE = """
import importlib.util, json, os, kopf, kubetune.operator.__main__, kubetune.operator.handlers
print(json.dumps({"uid": os.getuid(), "torch": bool(importlib.util.find_spec("torch"))}))
"""


@pytest.fixture(scope="module")
def containerd():
    if os.geteuid() != 0:
        pytest.skip("buildah (chroot isolation) and containerd need root")
    load_hack_images().ensure_tools("ctr")  # Debian's containerd, as hack/images import installs it
    c = Containerd()
    yield c
    c.stop()


def hack_images(*args: str, timeout: float = 1800) -> str:
    done = subprocess.run([str(ROOT / "hack" / "images"), *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    ref = done.stdout.strip().splitlines()[-1]
    assert REF.match(ref), done.stdout
    return ref


def imported(name: str, containerd: Containerd) -> str:
    hack_images("build", name)
    ref = hack_images("import", name, "--address", containerd.address)
    assert ref in containerd.ctr("images", "ls", "-q").stdout.split()
    return ref


def probe(containerd: Containerd, ref: str, script: str) -> dict:
    done = containerd.run(ref, "python3", "-c", script)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_config(containerd: Containerd, ref: str, name: str) -> None:
    config = containerd.image_config(ref)["config"]
    assert config["User"] == f"{expected_user(name)}:{expected_user(name)}"
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.revision"] == ref.rsplit(":", 1)[1]


def test_trainer_image_trains_on_the_cpu_as_uid_1000_with_a_read_only_root(containerd):
    ref = imported("trainer", containerd)
    check_config(containerd, ref, "trainer")
    seen = probe(containerd, ref, TRAINER_PROBE)
    assert seen["uid"] == seen["gid"] == expected_user("trainer")
    assert seen["cuda"] is False and seen["grad"] > 0, "PyPI torch runs on the CPU with the CUDA stubs"
    assert seen["root_writable"] is False and seen["tmp_writable"] is True
    assert seen["compilers"] == [] and seen["cuda_wheels"] == []
    # The entry point itself: no FineTuneJob mounted is the contract's bad input (64), not a crash.
    done = containerd.run(ref)
    assert done.returncode == 64, done.stdout + done.stderr
    assert '"reason": "BadInput"' in done.stdout + done.stderr


def test_trainer_image_runs_a_tiny_lora_job_as_the_operator_starts_it(containerd, tiny_model, tmp_path):
    """The operator's own pod spec (command, env, volumes) applied to the image: the spec file mounted read-only,
    emptyDirs as tmpfs, a read-only root, UID 1000; model, data and output as file:// mounts."""
    ref = imported("trainer", containerd)
    write_jsonl(tmp_path / "data" / "train.jsonl", chat_rows(48, seed=1))
    write_jsonl(tmp_path / "data" / "validation.jsonl", chat_rows(16, seed=2))
    (tmp_path / "out").mkdir()
    (tmp_path / "out").chmod(0o777)  # the trainer writes as UID 1000
    job = finetunejob("tiny", {
        "baseModel": {"uri": "file:///model"},
        "dataset": {"train": "file:///data/train.jsonl", "validation": "file:///data/validation.jsonl",
                    "maxSeqLength": 64},
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "hyperparameters": {"maxSteps": 6, "batchSize": 8, "microBatchSize": 4, "learningRate": 3e-3},
        "evaluation": {"everySteps": 3, "baseline": True},
        "output": {"uri": "file:///out/"},
        "resources": {"gpusPerNode": 0},
    })
    job.metadata.uid = "0c0ffee0-0000-4000-8000-000000000001"
    run = runs.current_run(job)
    pod = children.pod_spec(job, run, OperatorSettings())
    container, volumes = pod["containers"][0], {v["name"]: v for v in pod["volumes"]}
    (tmp_path / "spec").mkdir()
    (tmp_path / "spec" / contract.SPEC_FILE_NAME).write_text(children.spec_document(job))
    termination = tmp_path / "termination-log"
    termination.touch()
    termination.chmod(0o666)  # the kubelet makes this file writable for the container
    binds = []
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            binds.append((str(tmp_path / "spec"), mount["mountPath"], True))
        elif "emptyDir" in volume:  # the kubelet's emptyDir: a fresh directory with mode 0777
            (tmp_path / "empty" / mount["name"]).mkdir(parents=True)
            (tmp_path / "empty" / mount["name"]).chmod(0o777)
            binds.append((str(tmp_path / "empty" / mount["name"]), mount["mountPath"], False))
    # pytest's directories and safetensors' files are for their owner only: the trainer reads as UID 1000
    shutil.copytree(tiny_model, tmp_path / "model")
    for path in [tmp_path / "model", *(tmp_path / "model").iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    binds += [(str(tmp_path / "model"), "/model", True), (str(tmp_path / "data"), "/data", True),
              (str(tmp_path / "out"), "/out", False), (str(termination), contract.TERMINATION_LOG, False)]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert container["securityContext"]["readOnlyRootFilesystem"] and env["HOME"] == "/tmp"

    done = containerd.run(ref, *container["command"], tmpfs=(), binds=tuple(binds), env=env, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    summary = json.loads((tmp_path / "out" / run.run_id / "summary.json").read_text())
    assert summary["stopReason"] == "MaxStepsReached" and summary["steps"] == 6
    assert summary["eval"]["loss"] < summary["baseline"]["loss"], "it learned"
    assert (tmp_path / "out" / run.run_id / "model" / "adapter_model.safetensors").stat().st_uid == 1000
    assert json.loads(termination.read_text())["runId"] == run.run_id, "the operator's termination message"


def test_operator_image_has_no_torch_and_runs_as_65532(containerd):
    ref = imported("operator", containerd)
    check_config(containerd, ref, "operator")
    seen = probe(containerd, ref, OPERATOR_PROBE)
    assert seen == {"uid": expected_user("operator"), "torch": False}
    again = subprocess.run([str(ROOT / "hack" / "images"), "import", "operator", "--address", containerd.address],
                           capture_output=True, text=True, timeout=600)
    if again.stdout.strip() == ref:  # unless the sources changed in between
        assert "already in containerd" in again.stderr
    done = containerd.run(ref, "kubetune", "--help")
    assert done.returncode == 0 and "validate" in done.stdout, done.stdout + done.stderr


def test_pause_image_blocks_until_sigterm(containerd):
    ref = imported("pause", containerd)
    name = f"pause-{os.getpid()}"
    proc = subprocess.Popen(["ctr", "--address", containerd.address, "-n", "k8s.io", "run", "--rm", "--read-only",
                             ref, name], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while "RUNNING" not in containerd.ctr("tasks", "ls").stdout:
            assert time.monotonic() < deadline and proc.poll() is None, "the pause container did not start"
            time.sleep(0.2)
        time.sleep(1)
        assert proc.poll() is None, "it blocks"
        containerd.ctr("tasks", "kill", "-s", "SIGTERM", name)
        assert proc.wait(timeout=10) == 0, "SIGTERM ends it at once, with status 0"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_warm_build_takes_seconds():
    hack_images("build", "operator")
    start = time.monotonic()
    first = hack_images("build", "operator")
    assert time.monotonic() - start < 10
    assert first == hack_images("ref", "operator")
