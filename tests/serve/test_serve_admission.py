"""Admission control and strict JSON parsing, without a live Serve (serve/admission.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve.admission import Admission, RateLimiter, parse_json_object, with_deadline
from serve.errors import ApiError


def test_admission_runs_queues_then_sheds_with_retry_after():
    async def scenario() -> tuple[list[str], Admission]:
        gate = Admission(max_inflight=2, max_queued=3, retry_after_s=2.5)
        release = asyncio.Event()
        outcomes: list[str] = []

        async def request() -> None:
            try:
                async with gate.slot():
                    await release.wait()
                outcomes.append("done")
            except ApiError as refused:
                assert refused.status == 503 and refused.headers == {"Retry-After": "3"}
                outcomes.append("shed")

        tasks = [asyncio.create_task(request()) for _ in range(9)]
        await asyncio.sleep(0.05)
        assert gate.inflight == 2 and gate.queued == 3 and gate.saturated
        release.set()
        await asyncio.gather(*tasks)
        return outcomes, gate

    outcomes, gate = asyncio.run(scenario())
    assert outcomes.count("done") == 5 and outcomes.count("shed") == 4 and gate.shed == 4
    assert gate.inflight == 0 and gate.queued == 0 and not gate.saturated


def test_rate_limiter_is_per_key_and_refills():
    limiter = RateLimiter(rate=2.0, burst=2)
    limiter.take("a", now=0.0)
    limiter.take("a", now=0.0)
    with pytest.raises(ApiError) as refused:
        limiter.take("a", now=0.1)
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"
    limiter.take("b", now=0.1)  # another key has its own bucket
    limiter.take("a", now=0.6)  # refilled: 0.5 s x 2/s = one token


def test_deadline_cancels_the_work():
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def scenario() -> None:
        with pytest.raises(ApiError) as refused:
            await with_deadline(slow(), 0.05)
        assert refused.value.status == 504
        assert cancelled.is_set()
        assert await with_deadline(asyncio.sleep(0, result=7), 1.0) == 7

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested deeper"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, 400, "nested deeper"),
        ('{"style": "x"}'.encode("utf-16"), 400, "byte-order mark"),
        (b'\xef\xbb\xbf{"style": "x"}', 400, "byte-order mark"),
        ('{"style": "x"}'.encode("utf-16-le"), 400, "not valid"),
        (b'{"style": "\xff\xfe"}', 400, "not valid UTF-8"),
        (b'{"style": "a", "style": "b"}', 400, "more than once"),
        (b"[1, 2]", 422, "must be an object"),
        (b'"just a string"', 422, "must be an object"),
        (b"", 400, "not valid JSON"),
        (b"{", 400, "not valid JSON"),
        (b"NaN", 422, "must be an object"),
    ],
)
def test_hostile_json_is_refused_with_a_reason(body, status, needle):
    with pytest.raises(ApiError) as refused:
        parse_json_object(body)
    assert refused.value.status == status and needle in refused.value.message


def test_strings_with_brackets_do_not_count_as_nesting():
    data = parse_json_object(json.dumps({"style": "[" * 1000 + '"\\"{' * 100}).encode())
    assert data["style"].startswith("[[[")
