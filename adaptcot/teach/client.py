"""A small async client for OpenAI-compatible chat endpoints, made to be paid per call: limits, retries, reasoning.

`ChatClient(endpoint).run(requests, on_result)` sends every request with at most `max_in_flight` in flight and at
most `qps` started per second, retries 429, 5xx, timeouts and dropped connections with exponential backoff and
jitter (honouring `Retry-After`), and calls `on_result(request, result)` the moment each response arrives, so the
caller can persist it before anything else happens. Requests are pulled lazily from an iterator: millions of
questions never sit in memory as tasks.

What a paid call needs (adaptcot's rules):
- **A reply is an answer only if it has a message.** A 200 without `choices` (providers send `{"error": ...}` with
  200), a body that is not a JSON object, or a stream cut before its end is an error, retried like a 5xx and
  recorded if the retries run out; it is never stored as an empty answer.
- **Streamed, with an idle timeout.** Replies stream (`stream: true`, usage in the last chunk), and a request is
  abandoned only when no byte has come for `idle_timeout_s`: a slow 30k-token CoT is not cut at a wall-clock limit
  and bought again. An attempt that timed out or lost its connection after the request was sent may have been
  billed: it is counted (`possibly_billed`), and such a request is tried again at most `max_timeout_retries` times.
- **One request cannot end the run.** A reply that breaks the parser is that request's error; an `on_result` that
  raises (disk full) stops new requests, lets the ones in flight finish (each still handed to `on_result`), and
  then raises `StoreError` with every failure, so the caller can save what it could not store.

Why not `ray.data.llm`'s HTTP processor: it hands results back a block at a time (a kill loses every paid response
of the block in flight), has no notion of which status codes to retry, and does not read reasoning fields.

The API key is read from the environment variable the config names; it is never stored, logged or put in errors.
Reasoning is read from `message.reasoning_content` (DeepSeek API), `message.reasoning` (vLLM's reasoning parsers,
gpt-oss's reasoning channel), or from the content: `<think>...</think>`, or gpt-oss's harmony channels as a server
with no reasoning parser returns them (`adaptcot/common/reasoning.py`).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from pydantic import Field

from adaptcot.common.reasoning import split_reply
from adaptcot.common.settings import Strict

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}


class RetryConfig(Strict):
    max_retries: int = Field(default=8, ge=0)
    base_delay_s: float = Field(default=1.0, ge=0)
    max_delay_s: float = Field(default=60.0, gt=0)
    idle_timeout_s: float = Field(default=120.0, gt=0)  # no byte for this long: the attempt is abandoned
    # One attempt, start to end. Streaming needs none (None); without streaming it is the only timeout, and the
    # reply comes whole at the end, so it must cover the longest CoT.
    timeout_s: float | None = Field(default=None, gt=0)
    # Attempts after one that timed out or was cut once sent (the provider may have billed it): at most this many.
    max_timeout_retries: int = Field(default=1, ge=0)


class EndpointConfig(Strict):
    base_url: str  # e.g. https://api.deepseek.com/v1 or http://127.0.0.1:8000/v1
    model: str
    api_key_env: str | None = None  # the NAME of the environment variable holding the key, never the key
    max_in_flight: int = Field(default=16, ge=1)
    qps: float | None = Field(default=None, gt=0)  # requests started per second, at most
    retry: RetryConfig = RetryConfig()
    stream: bool = True  # SSE with usage in the last chunk (OpenAI, DeepSeek, vLLM, SGLang all send it)
    extra_body: dict[str, Any] = {}  # e.g. {"reasoning_effort": "high"} for gpt-oss

    def api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ValueError(f"teacher.endpoint.api_key_env: the environment variable {self.api_key_env} is not set")
        return key


@dataclass(frozen=True)
class ChatResult:
    reasoning: str | None = None
    answer_text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None  # set when every retry failed or the request was refused
    attempts: int = 1
    possibly_billed: int = 0  # attempts that timed out or were cut after being sent: the provider may bill them


class ReplyError(ValueError):
    """A 200 reply that is not an answer: no message, not a JSON object, an error object, a stream cut short."""


class StoreError(RuntimeError):
    """`on_result` raised for some requests; the run stopped taking new ones after draining those in flight."""

    def __init__(self, failures: list[tuple[Any, "ChatResult", BaseException]], message: str | None = None):
        self.failures = failures
        first = failures[0][2]
        super().__init__(message or f"{len(failures)} answer(s) could not be stored ({type(first).__name__}: "
                                    f"{first}); no new request was sent after the first failure")


def split_reasoning(message: dict) -> tuple[str | None, str]:
    """(reasoning, answer text) of a chat message: reasoning fields, `<think>` tags or harmony channels."""
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning:
        return reasoning, content
    reply = split_reply(content)  # <think> tags, or raw harmony from a server with no reasoning parser
    if reply.format == "plain":
        return None, content
    return reply.reasoning, reply.answer.lstrip()  # cut off while still reasoning: answer ""


class _RateLimiter:
    """At most `qps` request starts per second, spread evenly."""

    def __init__(self, qps: float | None):
        self.interval = 1.0 / qps if qps else 0.0
        self.next_start = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            delay = self.next_start - now
            self.next_start = max(now, self.next_start) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


class ChatClient:
    def __init__(self, endpoint: EndpointConfig):
        self.endpoint = endpoint
        self.url = endpoint.base_url.rstrip("/") + "/chat/completions"
        key = endpoint.api_key()
        self._headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        self.retries = 0  # retried attempts, over the client's life (for reports and tests)

    async def run(self, requests: Iterable[tuple[Any, dict]],
                  on_result: Callable[[Any, ChatResult], Awaitable[None] | None],
                  gate: Callable[[Any, dict], bool] | None = None) -> None:
        """Send (tag, body) requests; `on_result(tag, result)` as each finishes (in completion order). Raises
        `StoreError` after draining when `on_result` failed for any (module docstring). `gate(tag, body)` is asked
        before each request is sent: once it says no (a spending cap), nothing more is sent and the run ends when
        the requests in flight have been handed to `on_result`."""
        import aiohttp

        limiter = _RateLimiter(self.endpoint.qps)
        iterator = iter(requests)
        failures: list[tuple[Any, ChatResult, BaseException]] = []
        closed: list[Any] = []  # the request the gate refused: nothing more is sent
        retry = self.endpoint.retry
        connector = aiohttp.TCPConnector(limit=self.endpoint.max_in_flight, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=retry.timeout_s, sock_connect=min(60.0, retry.idle_timeout_s),
                                        sock_read=retry.idle_timeout_s if self.endpoint.stream else None)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            async def worker():
                for tag, body in iterator:  # workers share one iterator: each request is taken exactly once
                    if failures or closed:
                        return  # storing fails, or the gate closed: send nothing more, let the others drain
                    if gate is not None and not gate(tag, body):
                        closed.append(tag)
                        return
                    try:
                        result = await self._send(session, limiter, body, tag)
                    except Exception as exc:  # a reply the client cannot handle is that request's error
                        result = ChatResult(error=f"client error: {type(exc).__name__}: {exc}"[:300])
                    try:
                        done = on_result(tag, result)
                        if asyncio.iscoroutine(done):
                            await done
                    except Exception as exc:
                        failures.append((tag, result, exc))
            await asyncio.gather(*(worker() for _ in range(self.endpoint.max_in_flight)))
        if failures:
            raise StoreError(failures)

    async def _send(self, session, limiter: _RateLimiter, body: dict, tag: Any) -> ChatResult:
        import aiohttp

        retry, stream = self.endpoint.retry, self.endpoint.stream
        payload = {"model": self.endpoint.model, **body, **self.endpoint.extra_body}
        if stream:
            payload.update(stream=True, stream_options={"include_usage": True})
        headers = dict(self._headers, **{"X-Adaptcot-Request-Key": str(tag)})
        problem, billed, attempt = "", 0, 0
        for attempt in range(retry.max_retries + 1):
            if attempt:
                self.retries += 1
            await limiter.wait()
            retry_after, sent = None, False
            try:
                async with session.post(self.url, json=payload, headers=headers) as response:
                    sent = True
                    if response.status == 200:
                        if stream:
                            return _with(await _read_stream(response), attempt + 1, billed)
                        return _with(parse_reply(await response.json(content_type=None)), attempt + 1, billed)
                    text = (await response.text())[:300]
                    problem = f"HTTP {response.status}: {text}"
                    if response.status not in RETRY_STATUS:
                        return ChatResult(error=problem, attempts=attempt + 1, possibly_billed=billed)
                    retry_after = _seconds(response.headers.get("Retry-After"))
            except ReplyError as exc:
                problem = f"HTTP 200 without an answer: {exc}"[:300]
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"[:300]
                if sent or isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerDisconnectedError)):
                    billed += 1  # the provider may have generated (and billed) what we never received
                    if billed > retry.max_timeout_retries:
                        break
            if attempt < retry.max_retries:
                backoff = min(retry.max_delay_s, retry.base_delay_s * 2 ** attempt) * random.uniform(0.5, 1.5)
                await asyncio.sleep(max(backoff, retry_after or 0.0))
        return ChatResult(error=f"gave up after {attempt + 1} attempts ({billed} possibly billed); last: {problem}",
                          attempts=attempt + 1, possibly_billed=billed)


def _with(result: ChatResult, attempts: int, billed: int) -> ChatResult:
    return ChatResult(**{**result.__dict__, "attempts": attempts, "possibly_billed": billed})


def parse_reply(data: Any) -> ChatResult:
    """A whole (non-streamed) reply, or a batch output line's body; ReplyError unless it carries a message."""
    if not isinstance(data, dict):
        raise ReplyError(f"the body is a JSON {type(data).__name__}, not an object")
    choices = data.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict) \
            or not isinstance(choices[0].get("message"), dict):
        raise ReplyError(f"no message in the reply: {json.dumps(data)[:200]}")
    choice = choices[0]
    reasoning, answer = split_reasoning(choice["message"])
    usage = data.get("usage") or {}
    return ChatResult(reasoning=reasoning, answer_text=answer, finish_reason=choice.get("finish_reason"),
                      prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"))


async def _read_stream(response) -> ChatResult:
    """A streamed reply (server-sent events): the deltas joined; ReplyError if it carries an error, ends before a
    finish reason, or never says [DONE]."""
    content, reasoning, finish, usage, done = [], [], None, {}, False
    async for raw in response.content:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        try:
            event = json.loads(data)
        except ValueError:
            raise ReplyError(f"a stream event is not JSON: {data[:200]}") from None
        if not isinstance(event, dict) or event.get("error"):
            raise ReplyError(f"the stream carried an error: {data[:200]}")
        usage = event.get("usage") or usage
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            content.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or delta.get("reasoning") or "")
            finish = choice.get("finish_reason") or finish
    if not done or finish is None:
        raise ReplyError("the stream ended before the reply did" + ("" if done else " (no [DONE])"))
    message = {"content": "".join(content), "reasoning_content": "".join(reasoning) or None}
    said, answer = split_reasoning(message)
    return ChatResult(reasoning=said, answer_text=answer, finish_reason=finish,
                      prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"))


def _seconds(value: str | None) -> float | None:
    try:
        return min(float(value), 300.0) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def complete_all(endpoint: EndpointConfig, prompts: list[str], max_tokens: int = 1024,
                 temperature: float = 0.0) -> list[str | None]:
    """One user-turn completion per prompt, in order (None where the request failed); blocks until all are done."""
    replies: list[str | None] = [None] * len(prompts)

    def on_result(index: int, result: ChatResult) -> None:
        replies[index] = None if result.error else result.answer_text

    requests = ((i, {"messages": [{"role": "user", "content": p}], "max_tokens": max_tokens,
                     "temperature": temperature}) for i, p in enumerate(prompts))
    asyncio.run(ChatClient(endpoint).run(requests, on_result))
    return replies
