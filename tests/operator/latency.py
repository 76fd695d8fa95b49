"""A latency injector on loopback: a TCP proxy to the API server that holds every chunk a client sends for `delay`
seconds (in order) and passes the answers straight back. Each request then takes `delay` longer, as on a loaded
or distant API server, while a watch stream, once asked for, flows at full speed. TLS passes through untouched
(it listens on 127.0.0.1, which the API server's certificate names)."""
import asyncio
import json
import threading
import time
from pathlib import Path


class LatencyProxy:
    def __init__(self, upstream_host: str, upstream_port: int, delay: float):
        self.upstream, self.delay = (upstream_host, upstream_port), delay
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)

    def start(self) -> "LatencyProxy":
        self.thread.start()
        assert self._ready.wait(10), "the latency proxy did not start"
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()
        server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        held: asyncio.Queue = asyncio.Queue()

        async def read_client():
            while chunk := await reader.read(65536):
                await held.put((time.monotonic() + self.delay, chunk))
            await held.put((0.0, b""))

        async def send_upstream():
            while True:
                due, chunk = await held.get()
                if not chunk:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                up_writer.write(chunk)
                await up_writer.drain()
            up_writer.close()

        async def answer():
            while chunk := await up_reader.read(65536):
                writer.write(chunk)
                await writer.drain()
            writer.close()

        tasks = [asyncio.ensure_future(t()) for t in (read_client, send_upstream, answer)]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            task.cancel()

    def kubeconfig(self, source: Path, into: Path) -> Path:
        """A copy of kubeconfig `source` that reaches the API server through this proxy."""
        config = json.loads(source.read_text())
        for entry in config["clusters"]:
            entry["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        into.write_text(json.dumps(config))
        into.chmod(0o600)
        return into
