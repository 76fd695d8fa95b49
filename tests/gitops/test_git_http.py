"""hack/git_http.py, the cluster's Git server, on its own (no cluster): Git's smart HTTP protocol both ways, a push
of a body over git's 1 MiB post buffer (sent chunked) included."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SERVER = Path(__file__).parents[2] / "hack" / "git_http.py"


def git(*args, cwd):
    out = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args], cwd=cwd,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_clone_push_and_fetch_over_smart_http(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    git("init", "-q", "--bare", "-b", "main", "repo.git", cwd=root)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(SERVER), str(root), str(port)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200
                break
            except OSError:
                assert time.monotonic() < deadline, "the Git server did not answer"
                time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/repo.git"
        git("clone", "-q", url, "one", cwd=tmp_path)
        (tmp_path / "one" / "job.yaml").write_text("kind: FineTuneJob\n")
        (tmp_path / "one" / "big.bin").write_bytes(os.urandom(2 << 20))  # incompressible: a chunked POST
        git("add", ".", cwd=tmp_path / "one")
        git("commit", "-q", "-m", "first", cwd=tmp_path / "one")
        git("push", "-q", "origin", "HEAD:main", cwd=tmp_path / "one")
        sha = git("rev-parse", "HEAD", cwd=tmp_path / "one")
        git("clone", "-q", "-b", "main", url, "two", cwd=tmp_path)
        assert git("rev-parse", "HEAD", cwd=tmp_path / "two") == sha
        assert (tmp_path / "two" / "job.yaml").read_text() == "kind: FineTuneJob\n"
        assert git("ls-remote", url, "refs/heads/main", cwd=tmp_path).split()[0] == sha
    finally:
        server.terminate()
        server.wait(10)
