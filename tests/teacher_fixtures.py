"""A real vLLM OpenAI-compatible server on 127.0.0.1 with a tiny model, and a fault-injecting proxy in front of it.

The proxy is the one stand-in: it causes faults a healthy server cannot (429 with Retry-After, 500, a stalled
response, a connection cut mid-request, a 200 whose body is an error object or not an object, a stream cut after
its first chunk), forwards everything else to the real server (streams chunk by chunk), and counts requests by
the client's `X-Adaptcot-Request-Key` header, which is how tests prove that nothing stored is requested again.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

FAULTS = ("429", "500", "stall", "cut")
# Replies a provider sends with status 200 that are not answers; `midcut` forwards the real stream's first chunk
# (the server has started generating: the provider would bill it) and then drops the connection.
BAD_200 = ("error200", "notobject", "midcut")
SLOW_STREAM_GAP_S = 0.4  # `slowstream`: the real stream forwarded with this pause before each chunk


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_vllm_server(model_dir: Path, name: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", "1024", "--enforce-eager", "--max-num-seqs", "64"]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="0-1")
    proc = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited: {log_path.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
            return proc, url
        except OSError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError("vLLM server did not start in 300 s")


class FaultProxy:
    """Forwards /v1/* to `upstream`; the first attempt of a request key gets the fault its key hashes to
    (if `fault_rate` picks it); later attempts pass. Runs its own event loop in a thread."""

    def __init__(self, upstream: str, fault_rate: float = 0.0, stall_s: float = 30.0,
                 faults: tuple[str, ...] = FAULTS, always: set[str] = frozenset()):
        self.upstream, self.fault_rate, self.stall_s = upstream.rstrip("/"), fault_rate, stall_s
        self.fault_kinds, self.always = faults, always  # `always`: keys faulted on every attempt
        self.requests: collections.Counter = collections.Counter()  # key -> requests received
        self.answered: list[str] = []  # keys answered with 200, in order
        self.faults: collections.Counter = collections.Counter()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        self._ready.wait(10)

    def fault_for(self, key: str) -> str | None:
        digest = int(hashlib.sha256(key.encode()).hexdigest(), 16)
        if (digest % 1000) / 1000 >= self.fault_rate:
            return None
        return self.fault_kinds[(digest // 1000) % len(self.fault_kinds)]

    def _serve(self) -> None:
        from aiohttp import ClientSession, web

        async def handle(request: web.Request) -> web.StreamResponse:
            key = request.headers.get("X-Adaptcot-Request-Key", "")
            self.requests[key] += 1
            fault = self.fault_for(key) if self.requests[key] == 1 or key in self.always else None
            if fault:
                self.faults[fault] += 1
            if fault == "429":
                return web.Response(status=429, text="rate limited", headers={"Retry-After": "0"})
            if fault == "500":
                return web.Response(status=500, text="internal error")
            if fault == "stall":  # hold the request past the client's timeout, then give up on it
                await asyncio.sleep(self.stall_s)
                return web.Response(status=504, text="upstream timeout")
            if fault == "cut":
                request.transport.close()  # the connection drops with no response
                return web.Response(status=500)
            if fault == "error200":
                return web.json_response({"error": {"message": "overloaded", "type": "server_error"}})
            if fault == "notobject":
                return web.json_response(["not", "an", "object"])
            body = await request.read()
            async with self.session.post(self.upstream + request.path[len("/v1"):], data=body,
                                         headers={"Content-Type": "application/json"}) as upstream:
                out = web.StreamResponse(status=upstream.status, headers={
                    "Content-Type": upstream.headers.get("Content-Type", "application/json")})
                await out.prepare(request)
                held = b""  # one chunk behind: the answer is counted before the client can see its end
                async for chunk in upstream.content.iter_any():
                    if fault == "slowstream":
                        await asyncio.sleep(SLOW_STREAM_GAP_S)
                    if held:
                        await out.write(held)
                        if fault == "midcut":
                            request.transport.close()
                            return out
                    held = chunk
                if fault == "midcut":  # the whole reply came in one chunk: forward part of it, then cut
                    await out.write(held[:max(1, len(held) // 2)])
                    request.transport.close()
                    return out
                if upstream.status == 200:
                    self.answered.append(key)
                await out.write(held)
                await out.write_eof()
                return out

        async def main():
            from aiohttp import TCPConnector

            self.session = ClientSession(connector=TCPConnector(force_close=True))  # no stale keep-alives
            app = web.Application()
            app.router.add_route("POST", "/v1/{tail:.*}", handle)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await asyncio.Event().wait()

        self._loop.run_until_complete(main())
