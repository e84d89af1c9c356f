"""A small async client for OpenAI-compatible chat endpoints, made to be paid per call: limits, retries, reasoning.

`ChatClient(endpoint).run(requests, on_result)` sends every request with at most `max_in_flight` in flight and at
most `qps` started per second, retries 429, 5xx, timeouts and dropped connections with exponential backoff and
jitter (honouring `Retry-After`), and calls `on_result(request, result)` the moment each response arrives, so the
caller can persist it before anything else happens. Requests are pulled lazily from an iterator: millions of
questions never sit in memory as tasks.

Why not `ray.data.llm`'s HTTP processor: it hands results back a block at a time (a kill loses every paid response
of the block in flight), has no notion of which status codes to retry, and does not read reasoning fields.

The API key is read from the environment variable the config names; it is never stored, logged or put in errors.
Reasoning is read from `message.reasoning_content` (DeepSeek API), `message.reasoning` (vLLM's reasoning parsers,
gpt-oss's reasoning channel), or from the content: `<think>...</think>`, or gpt-oss's harmony channels as a server
with no reasoning parser returns them (`adaptcot/common/reasoning.py`).
"""

from __future__ import annotations

import asyncio
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
    timeout_s: float = Field(default=900.0, gt=0)  # one request, start to end: long CoTs take minutes


class EndpointConfig(Strict):
    base_url: str  # e.g. https://api.deepseek.com/v1 or http://127.0.0.1:8000/v1
    model: str
    api_key_env: str | None = None  # the NAME of the environment variable holding the key, never the key
    max_in_flight: int = Field(default=16, ge=1)
    qps: float | None = Field(default=None, gt=0)  # requests started per second, at most
    retry: RetryConfig = RetryConfig()
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
                  on_result: Callable[[Any, ChatResult], Awaitable[None] | None]) -> None:
        """Send (tag, body) requests; `on_result(tag, result)` as each finishes (in completion order)."""
        import aiohttp

        limiter = _RateLimiter(self.endpoint.qps)
        iterator = iter(requests)
        connector = aiohttp.TCPConnector(limit=self.endpoint.max_in_flight, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=self.endpoint.retry.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            async def worker():
                for tag, body in iterator:  # workers share one iterator: each request is taken exactly once
                    result = await self._send(session, limiter, body, tag)
                    done = on_result(tag, result)
                    if asyncio.iscoroutine(done):
                        await done
            await asyncio.gather(*(worker() for _ in range(self.endpoint.max_in_flight)))

    async def _send(self, session, limiter: _RateLimiter, body: dict, tag: Any) -> ChatResult:
        import aiohttp

        retry = self.endpoint.retry
        payload = {"model": self.endpoint.model, **body, **self.endpoint.extra_body}
        headers = dict(self._headers, **{"X-Adaptcot-Request-Key": str(tag)})
        problem = ""
        for attempt in range(retry.max_retries + 1):
            if attempt:
                self.retries += 1
            await limiter.wait()
            retry_after = None
            try:
                async with session.post(self.url, json=payload, headers=headers) as response:
                    if response.status == 200:
                        return _parse(await response.json(content_type=None), attempt + 1)
                    text = (await response.text())[:300]
                    problem = f"HTTP {response.status}: {text}"
                    if response.status not in RETRY_STATUS:
                        return ChatResult(error=problem, attempts=attempt + 1)
                    retry_after = _seconds(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"[:300]
            if attempt < retry.max_retries:
                backoff = min(retry.max_delay_s, retry.base_delay_s * 2 ** attempt) * random.uniform(0.5, 1.5)
                await asyncio.sleep(max(backoff, retry_after or 0.0))
        return ChatResult(error=f"gave up after {retry.max_retries + 1} attempts; last: {problem}",
                          attempts=retry.max_retries + 1)


def _parse(data: dict, attempts: int) -> ChatResult:
    choice = (data.get("choices") or [{}])[0]
    reasoning, answer = split_reasoning(choice.get("message") or {})
    usage = data.get("usage") or {}
    return ChatResult(reasoning=reasoning, answer_text=answer, finish_reason=choice.get("finish_reason"),
                      prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                      attempts=attempts)


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
