"""Admission control for the online service: bounded queues that shed load, per-key rate limits,
request deadlines, and strict JSON parsing. Plain asyncio, no Serve types: unit-testable without Serve.

- :class:`Admission` lets ``max_inflight`` requests run and ``max_queued`` wait; the next one is refused
  at once with 503 and ``Retry-After`` instead of waiting behind an unbounded queue.
- :class:`RateLimiter` is a token bucket per API key (429 and ``Retry-After`` when empty).
- :func:`with_deadline` cancels a request's work when it cannot finish in time (504).
- :func:`parse_json_object` refuses what ``json.loads`` would choke on or silently accept: bodies that
  are not UTF-8 (UTF-16, a BOM), nesting deeper than a bound (``json`` recursion), duplicate keys.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from serve.errors import ApiError

T = TypeVar("T")
MAX_JSON_DEPTH = 32


class Admission:
    """At most ``max_inflight`` requests run; at most ``max_queued`` more wait; the rest get 503."""

    def __init__(self, max_inflight: int, max_queued: int, retry_after_s: float):
        self.max_inflight, self.max_queued, self.retry_after_s = max_inflight, max_queued, retry_after_s
        self.inflight = 0
        self.queued = 0
        self.shed = 0
        self._slots = asyncio.Semaphore(max_inflight)

    @property
    def saturated(self) -> bool:
        return self.inflight >= self.max_inflight and self.queued >= self.max_queued

    @asynccontextmanager
    async def slot(self):  # type: ignore[no-untyped-def]
        if self.inflight >= self.max_inflight and self.queued >= self.max_queued:
            self.shed += 1
            raise ApiError(
                503,
                "overloaded",
                f"the service is at capacity ({self.inflight} running, {self.queued} waiting); "
                f"retry after the Retry-After delay",
                self.retry_after_s,
            )
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1
            self._slots.release()


class RateLimiter:
    """Token bucket per key: ``rate`` requests per second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000):
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, last refill time)

    def take(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise ApiError(
                429,
                "rate_limited",
                f"more than {self.rate:g} requests per second for this API key; slow down",
                (1.0 - tokens) / self.rate,
            )
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            self._buckets.pop(next(iter(self._buckets)))  # bounded memory: forget the oldest key
        self._buckets[key] = (tokens - 1.0, now)


async def with_deadline(work: Awaitable[T], seconds: float) -> T:
    """``work`` or 504 after ``seconds``; the work is cancelled (downstream Serve calls with it)."""
    try:
        return await asyncio.wait_for(work, timeout=seconds)
    except asyncio.TimeoutError:
        raise ApiError(
            504, "deadline_exceeded", f"the request did not finish within {seconds:g} s and was cancelled"
        ) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ApiError(400, "bad_request", f"field {key!r} is given more than once")
        out[key] = value
    return out


def _depth(text: str, limit: int) -> int:
    """Deepest bracket nesting outside strings (stops counting past ``limit``)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
        elif char in "]}":
            depth -= 1
    return deepest


def parse_json_object(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """A JSON object from a UTF-8 body, or :class:`RefusedError` (400/422) saying what to fix."""
    if body.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        raise ApiError(400, "bad_request", "the JSON body starts with a byte-order mark: send plain UTF-8")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ApiError(400, "bad_request", f"the JSON body is not valid UTF-8 (byte {error.start})") from None
    if _depth(text, max_depth) > max_depth:
        raise ApiError(400, "bad_request", f"the JSON body is nested deeper than {max_depth} levels")
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as error:
        raise ApiError(400, "bad_request", f"the body is not valid JSON: {str(error)[:200]}") from None
    if not isinstance(data, dict):
        raise ApiError(422, "validation_error", "the JSON body must be an object")
    return data
