"""OpenAI's Batch API on 127.0.0.1 over a real vLLM server: the documented `/v1/files` and `/v1/batches` endpoints.

    POST /v1/files (multipart, purpose=batch)   GET /v1/files/{id}   GET /v1/files/{id}/content
    POST /v1/batches  GET /v1/batches/{id}  GET /v1/batches (limit, after; newest first)  POST /v1/batches/{id}/cancel

Each input line is checked with vLLM's own batch-runner schema (`vllm run-batch` reads and writes this format) and
sent to the real server's `/v1/chat/completions`; replies become output lines `{id, custom_id, response:
{status_code, request_id, body}, error}` (status 200) or error-file lines (anything else). A batch goes validating ->
in_progress -> finalizing -> completed with its `request_counts`. Faults the tests need: `hold` (batches stay
in_progress until `release()`), `fail_next` (validation fails), `expire_after` (a batch expires after that many
lines, partial output kept), `bad_lines` (custom_id -> "error" line or "nochoices" 200 body), `kill_on_create` (a pid
SIGKILLed once a batch exists, before the reply), `drop_create_reply` (a batch is created, the connection dropped).

Not emulated: the 24 h window (expiry only by `expire_after`), file expiry and deletion, rate and token limits,
per-model batch queues, the `usage` field, and authentication (any key is accepted).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import threading
import time
import uuid

from teacher_fixtures import free_port


def _now() -> int:
    return int(time.time())


class BatchServer:
    def __init__(self, upstream: str, hold: bool = False):
        self.upstream = upstream.rstrip("/")
        self.files: dict[str, dict] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}  # creation order
        self.forwarded: collections.Counter = collections.Counter()  # custom_id -> requests sent to vLLM
        self.polls: collections.Counter = collections.Counter()  # batch id -> GET /v1/batches/{id}
        self.released = threading.Event()
        if not hold:
            self.released.set()
        self.fail_next, self.expire_after, self.bad_lines = 0, None, {}
        self.kill_on_create: int | None = None
        self.drop_create_reply = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._ready = threading.Event()
        threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True).start()
        if not self._ready.wait(120):
            raise RuntimeError("the batch server did not start")

    def release(self) -> None:
        self.released.set()

    def status(self, batch_id: str) -> str:
        return self.batches[batch_id]["status"]

    # --- files ----------------------------------------------------------------------------------------------------
    def _add_file(self, data: bytes, filename: str, purpose: str) -> dict:
        file = {"id": f"file-{uuid.uuid4().hex[:24]}", "object": "file", "bytes": len(data), "created_at": _now(),
                "filename": filename, "purpose": purpose, "status": "processed"}
        self.files[file["id"]], self.contents[file["id"]] = file, data
        return file

    async def _upload(self, request):
        from aiohttp import web

        form = await request.post()
        if form.get("purpose") != "batch" or not hasattr(form.get("file"), "file"):
            return _error(web, 400, "a multipart upload with purpose=batch and a file is expected")
        return web.json_response(self._add_file(form["file"].file.read(), form["file"].filename, "batch"))

    async def _file(self, request):
        from aiohttp import web

        file = self.files.get(request.match_info["id"])
        return web.json_response(file) if file else _error(web, 404, "no such file")

    async def _content(self, request):
        from aiohttp import web

        data = self.contents.get(request.match_info["id"])
        return web.Response(body=data, content_type="application/octet-stream") if data is not None \
            else _error(web, 404, "no such file")

    # --- batches --------------------------------------------------------------------------------------------------
    async def _create(self, request):
        from aiohttp import web

        args = await request.json()
        if args.get("input_file_id") not in self.files or args.get("endpoint") != "/v1/chat/completions" \
                or args.get("completion_window") != "24h":
            return _error(web, 400, f"bad batch request: {args}")
        batch = {"id": f"batch_{uuid.uuid4().hex[:24]}", "object": "batch", "endpoint": args["endpoint"],
                 "errors": None, "input_file_id": args["input_file_id"], "completion_window": "24h",
                 "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": _now(),
                 "in_progress_at": None, "expires_at": _now() + 86400, "finalizing_at": None, "completed_at": None,
                 "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": args.get("metadata")}
        self.batches[batch["id"]] = batch
        self._tasks.add(asyncio.create_task(self._run(batch)))
        if self.kill_on_create is not None:
            os.kill(self.kill_on_create, signal.SIGKILL)  # the client dies before it hears the batch id
            self.kill_on_create = None
        if self.drop_create_reply:
            self.drop_create_reply -= 1
            request.transport.close()
        return web.json_response(batch)

    async def _get(self, request):
        from aiohttp import web

        batch = self.batches.get(request.match_info["id"])
        self.polls[request.match_info["id"]] += 1
        return web.json_response(batch) if batch else _error(web, 404, "no such batch")

    async def _list(self, request):
        from aiohttp import web

        newest_first = list(reversed(self.batches.values()))
        after, limit = request.query.get("after"), int(request.query.get("limit", 20))
        if after:
            ids = [b["id"] for b in newest_first]
            newest_first = newest_first[ids.index(after) + 1:] if after in ids else []
        page = newest_first[:limit]
        return web.json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None,
                                  "has_more": len(newest_first) > limit})

    async def _cancel(self, request):
        from aiohttp import web

        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(web, 404, "no such batch")
        if batch["status"] in ("validating", "in_progress"):
            batch.update(status="cancelling", cancelling_at=_now())
        return web.json_response(batch)

    async def _run(self, batch: dict) -> None:
        """What the provider does with a batch: validate, run every line on the real engine, write the files."""
        from vllm.entrypoints.launchers.run_batch import BatchRequestInput

        await asyncio.sleep(0.05)
        lines = self.contents[batch["input_file_id"]].decode().splitlines()
        problems, requests = [], []
        for number, line in enumerate(lines, 1):
            try:
                requests.append(BatchRequestInput.model_validate_json(line))  # vLLM's runner's own schema
            except ValueError as exc:
                problems.append({"code": "invalid_json_line", "line": number, "message": str(exc)[:200]})
        ids = [r.custom_id for r in requests]
        if len(set(ids)) != len(ids):
            problems.append({"code": "duplicate_custom_id", "line": None, "message": "custom_id must be unique"})
        if self.fail_next:
            self.fail_next -= 1
            problems.append({"code": "token_limit_exceeded", "line": None, "message": "enqueued token limit"})
        if problems:
            batch.update(status="failed", failed_at=_now(), errors={"object": "list", "data": problems})
            return
        batch.update(status="in_progress", in_progress_at=_now())
        batch["request_counts"]["total"] = len(lines)
        while not self.released.is_set():
            await asyncio.sleep(0.05)
        if self.expire_after is not None:
            lines = lines[:self.expire_after]
        outputs, errors, slots = [], [], asyncio.Semaphore(8)

        async def one(line: str) -> None:  # the engine batches what is in flight; output order is not input order
            async with slots:
                if batch["status"] == "cancelling":
                    return
                out, ok = await self._answer(json.loads(line))
            (outputs if ok else errors).append(json.dumps(out) + "\n")
            batch["request_counts"]["completed" if ok else "failed"] += 1

        await asyncio.gather(*(one(line) for line in lines))
        batch.update(status="finalizing", finalizing_at=_now())
        if outputs:
            batch["output_file_id"] = self._add_file("".join(outputs).encode(), "output.jsonl", "batch_output")["id"]
        if errors:
            batch["error_file_id"] = self._add_file("".join(errors).encode(), "errors.jsonl", "batch_output")["id"]
        end = "cancelled" if batch["cancelling_at"] else "expired" if self.expire_after is not None else "completed"
        batch.update(status=end, **{f"{end}_at": _now()})

    async def _answer(self, line: dict) -> tuple[dict, bool]:
        key, fault = line["custom_id"], self.bad_lines.get(line["custom_id"])
        out = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": key, "response": None, "error": None}
        if fault == "error":
            return dict(out, error={"code": "server_error", "message": "the request could not be run"}), False
        self.forwarded[key] += 1
        async with self._session.post(self.upstream + line["url"][len("/v1"):], json=line["body"]) as reply:
            body, status = await reply.json(content_type=None), reply.status
        if fault == "nochoices":
            body = {"id": body.get("id"), "object": "chat.completion", "choices": [], "usage": body.get("usage")}
        out["response"] = {"status_code": status, "request_id": f"req_{uuid.uuid4().hex[:24]}", "body": body}
        return out, status == 200

    async def _main(self) -> None:
        from aiohttp import ClientSession, web
        from vllm.entrypoints.launchers.run_batch import BatchRequestInput  # noqa: F401 (imported once, here)

        self._session, self._tasks = ClientSession(), set()
        app = web.Application(client_max_size=256 * 2**20)
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{id}", self._file)
        app.router.add_get("/v1/files/{id}/content", self._content)
        app.router.add_post("/v1/batches", self._create)
        app.router.add_get("/v1/batches", self._list)
        app.router.add_get("/v1/batches/{id}", self._get)
        app.router.add_post("/v1/batches/{id}/cancel", self._cancel)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._ready.set()
        await asyncio.Event().wait()


def _error(web, status: int, message: str):
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=status)
