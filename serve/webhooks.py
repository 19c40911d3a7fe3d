"""Signed webhooks.

**Signature.** The JSON body is signed with HMAC-SHA256 over ``"<unix time>." + body`` with a shared secret:
header ``X-Canvas-Ray-Signature: t=<time>,v1=<64 hex>``. A receiver (:func:`verify_signature`, or the
runnable ``examples/webhook_receiver.py``) recomputes it, compares in constant time, refuses a timestamp more
than ``tolerance_s`` (300 s) away from its clock, and de-duplicates on ``X-Canvas-Ray-Delivery`` (one id per
event, the same on every retry) so that a replayed or retried delivery is acted on once.

**Delivery.** Targets must have an allowlisted origin (``scheme://host:port``, parsed by httpx, the client
that sends); redirects are followed by hand, at most 3, each hop checked again. Each attempt has a
timeout; 5xx, 429 and network errors are retried with doubling backoff, all within a deadline. Whatever a
target does (bad URLs included) becomes the outcome record, never an exception. The record keeps the
details for the operator's log; callers see only :func:`public_outcome`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
import uuid
from typing import Any
from urllib.parse import urljoin

from canvas_ray.io.uris import origin_of

MAX_REDIRECTS = 3
SIGNATURE_HEADER = "X-Canvas-Ray-Signature"
DELIVERY_HEADER = "X-Canvas-Ray-Delivery"
TOLERANCE_S = 300
_FIELD = re.compile(r"^(t|v1)=([0-9a-f]{1,64})$", re.ASCII)
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$", re.ASCII)
_DIGEST = re.compile(r"^[0-9a-f]{64}$", re.ASCII)


def _digest(secret: str, body: bytes, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    return f"t={timestamp},v1={_digest(secret, body, timestamp)}"


def verify_signature(
    secret: str, body: bytes, header: str | None, tolerance_s: float = TOLERANCE_S, now: float | None = None
) -> bool:
    """What a receiver does: parse ``t=<digits>,v1=<64 hex>`` (ASCII only, each field once), refuse a
    timestamp further than ``tolerance_s`` from ``now``, recompute the HMAC over ``t.body`` and compare in
    constant time. False for anything malformed; never raises."""
    try:
        if not secret or not isinstance(header, str) or not header.isascii() or len(header) > 200:
            return False
        fields: dict[str, str] = {}
        for part in header.split(","):
            match = _FIELD.match(part.strip())
            if match is None or match.group(1) in fields:
                return False
            fields[match.group(1)] = match.group(2)
        stamp, given = fields.get("t", ""), fields.get("v1", "")
        if not _TIMESTAMP.match(stamp) or not _DIGEST.match(given):
            return False
        current = time.time() if now is None else now
        if abs(current - int(stamp)) > tolerance_s:
            return False
        expected = _digest(secret, body, int(stamp))
        return hmac.compare_digest(expected.encode("ascii"), given.encode("ascii"))
    except Exception:  # noqa: BLE001 - a verifier answers False, whatever it was given
        return False


def origin_allowed(url: str, origins: list[str]) -> bool:
    """``url``'s origin (as httpx parses it) is on the allowlist of ``scheme://host:port`` entries."""
    origin = origin_of(url)
    return origin is not None and origin in origins


def public_outcome(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a caller may learn of a delivery: delivered or not, how many attempts, for which event."""
    if not record:
        return None
    return {
        "delivered": bool(record.get("delivered")),
        "attempts": int(record.get("attempts") or 0),
        "event": record.get("event"),
    }


async def deliver_webhook(
    url: str,
    payload: dict[str, Any],
    secret: str,
    origins: list[str],
    *,
    timeout_s: float = 10.0,
    attempts: int = 4,
    backoff_s: float = 1.0,
    deadline_s: float = 120.0,
) -> dict[str, Any]:
    """POST ``payload`` signed; follow redirects only onto allowed origins; retry 5xx/network errors.

    Returns the outcome record (``delivered``, ``attempts``, ``status``, ``error``); never raises for
    anything the target or the URL does.
    """
    import httpx

    body = json.dumps(payload, sort_keys=True).encode()
    delivery = uuid.uuid4().hex
    record: dict[str, Any] = {
        "url": url,
        "delivery": delivery,
        "delivered": False,
        "attempts": 0,
        "error": None,
        "status": None,
    }

    async def attempt_all() -> None:
        delay = backoff_s
        async with httpx.AsyncClient(follow_redirects=False, timeout=timeout_s, trust_env=False) as client:
            for attempt in range(attempts):
                record["attempts"] = attempt + 1
                target = url
                try:
                    for _ in range(MAX_REDIRECTS + 1):
                        if not origin_allowed(target, origins):
                            record["error"] = f"refused: {target[:200]!r} is not on an allowed origin"
                            return  # never retried: the receiver asked for somewhere we will not go
                        headers = {
                            "Content-Type": "application/json",
                            SIGNATURE_HEADER: sign(secret, body, int(time.time())),
                            DELIVERY_HEADER: delivery,
                            "User-Agent": "canvas-ray-webhook/1",
                        }
                        response = await client.post(target, content=body, headers=headers)
                        if response.is_redirect and "location" in response.headers:
                            target = urljoin(target, response.headers["location"])
                            continue
                        break
                    else:
                        record["error"] = "too many redirects"
                        return
                    record["status"] = response.status_code
                    if 200 <= response.status_code < 300:
                        record["delivered"], record["error"] = True, None
                        return
                    record["error"] = f"HTTP {response.status_code}"
                    if response.status_code < 500 and response.status_code != 429:
                        return  # the receiver refused this body: retrying would not help
                except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as error:
                    record["error"] = f"bad URL: {type(error).__name__}"
                    return  # the same URL will not get better
                except Exception as error:  # noqa: BLE001 - network errors and anything else: retried
                    record["error"] = f"{type(error).__name__}: {error}"[:300]
                if attempt + 1 < attempts:
                    await asyncio.sleep(delay)
                    delay *= 2

    try:
        await asyncio.wait_for(attempt_all(), timeout=deadline_s)
    except TimeoutError:
        record["error"] = f"deadline of {deadline_s:g} s passed"
    return record
