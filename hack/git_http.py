#!/usr/bin/env python3
"""A Git server on loopback for Flux's source-controller: Debian's `git http-backend` (Git's own smart-HTTP
server, a CGI program) behind a stdlib HTTP server.

    hack/git_http.py ROOT PORT

Serves every bare repository under ROOT at http://127.0.0.1:PORT/<name>.git, clone and fetch (upload-pack) and
push (receive-pack: no authentication, as nothing off this machine can reach it). Why not `git daemon`: a Flux
GitRepository accepts only http(s) and ssh URLs. Stdlib only, like hack/cluster.
"""
from __future__ import annotations

import http.server
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path


class Handler(http.server.BaseHTTPRequestHandler):
    root: Path

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok\n")
            return
        self._backend()

    def do_POST(self) -> None:
        self._backend()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # git's client on bodies over 1 MiB
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _backend(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": self.command, "PATH_INFO": urllib.parse.unquote(url.path),
            "QUERY_STRING": url.query, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "REMOTE_ADDR": self.client_address[0], "REMOTE_USER": "kubetune",  # lets receive-pack accept pushes
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }
        body = self._body() if self.command == "POST" else b""
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        env["CONTENT_LENGTH"] = str(len(body))
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        head, _, payload = out.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        if out.returncode != 0 and not head:
            status, payload = 500, out.stderr
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        if out.stderr:
            self.log_message("git http-backend: %s", out.stderr.decode(errors="replace").strip())


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    Handler.root = Path(argv[0]).resolve()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(argv[1])), Handler)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
