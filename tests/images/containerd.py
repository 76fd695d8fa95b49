"""A private containerd (Debian's 1.6) for the image tests: its own root, state and socket under /tmp, never the
cluster's. restrict_oom_score_adj because these VMs lack CAP_SYS_RESOURCE (../shared/REAL-NODE.md)."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

CONFIG = """version = 2
root = "{dir}/root"
state = "{dir}/state"
[grpc]
  address = "{dir}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
"""


class Containerd:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kt-images-", dir="/tmp"))  # a socket path has 108 bytes at most
        self.address = str(self.dir / "containerd.sock")
        (self.dir / "config.toml").write_text(CONFIG.format(dir=self.dir))
        self.log = open(self.dir / "containerd.log", "wb")
        self.proc = subprocess.Popen(["containerd", "--config", str(self.dir / "config.toml")],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            assert self.proc.poll() is None, (self.dir / "containerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "containerd did not serve within 30 s"
            time.sleep(0.2)

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["ctr", "--address", self.address, "-n", "k8s.io", *args], capture_output=True,
                              text=True, check=check, timeout=timeout)

    def run(self, ref: str, *command: str, tmpfs: tuple[str, ...] = ("/tmp",), env: dict | None = None,
            binds: tuple[tuple[str, str, bool], ...] = (), timeout: float = 300) -> subprocess.CompletedProcess:
        """Runs a container as the image says (its USER, ENTRYPOINT) with a read-only root, like the pods;
        `command` replaces the entry point as a pod's command does; binds are (host path, path, read-only)."""
        name = f"t{os.getpid()}-{time.monotonic_ns()}"
        args = ["run", "--rm", "--read-only"]
        for path in tmpfs:
            args += ["--mount", f"type=tmpfs,src=tmpfs,dst={path},options=rw:nosuid:nodev:mode=1777"]
        for src, dst, read_only in binds:
            args += ["--mount", f"type=bind,src={src},dst={dst},options=rbind:{'ro' if read_only else 'rw'}"]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        return self.ctr(*args, ref, name, *command, check=False, timeout=timeout)

    def image_config(self, ref: str) -> dict:
        """The image's OCI config (User, Entrypoint, Labels...) as containerd stored it."""
        manifest_digest = next(l.split()[2] for l in self.ctr("images", "ls").stdout.splitlines()[1:]
                               if l.split()[0] == ref)
        manifest = json.loads(self.ctr("content", "get", manifest_digest).stdout)
        return json.loads(self.ctr("content", "get", manifest["config"]["digest"]).stdout)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)  # its shims are in its session too
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()
        subprocess.run(["umount", "-R", "-l", str(self.dir / "root")], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
