"""/healthz and /readyz on the health port, served from the first moment of the process: a standby replica
waiting for the Lease must answer its probes, or the kubelet restarts it forever (issue 15, fault 5).

- /healthz (liveness): the process's loops are alive: the Lease loop keeps running, and once leading, kopf
  has not stopped.
- /readyz (readiness): leading with a fresh renewal and kopf watching, or standing by and able to read the
  Lease (so a replica cut off from the API server is taken out of rotation, not restarted).
"""
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("kubetune.health")


class Health:
    def __init__(self, elector=None):
        self.elector = elector  # None without leader election: the only replica always leads
        self.kopf_ready = threading.Event()  # kopf.run sets it once its watches are up
        self.kopf_stopped = threading.Event()

    def live(self) -> bool:
        if self.kopf_stopped.is_set():
            return False
        return self.elector is None or self.elector.leading.is_set() or not self.elector.stopped.is_set()

    def ready(self) -> bool:
        if not self.live():
            return False
        if self.elector is None:
            return self.kopf_ready.is_set()
        if self.elector.leading.is_set():
            return self.kopf_ready.is_set() and self.elector.healthy()
        return self.elector.healthy()

    def serve(self, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                check = {"/healthz": health.live, "/readyz": health.ready}.get(self.path.split("?")[0])
                if check is None:
                    self.send_error(404)
                    return
                ok = check()
                body = b"ok\n" if ok else b"not ok\n"
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # probes every few seconds are not news
                pass

        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
        log.info("health endpoints on :%d (/healthz, /readyz)", port)
        return server
