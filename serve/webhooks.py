"""Signed webhooks: the JSON body is signed with HMAC-SHA256 over ``"<unix time>." + body`` with a shared
secret (header ``X-Canvas-Ray-Signature: t=<time>,v1=<hex>``); redirects are followed by hand, at most 3,
and only onto allowlisted hosts; each attempt has a timeout; 5xx, 429 and network errors are retried with
doubling backoff, all within a deadline."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import urljoin, urlsplit

MAX_REDIRECTS = 3
SIGNATURE_HEADER = "X-Canvas-Ray-Signature"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does: recompute the HMAC over ``t.body`` and compare in constant time."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    if "t" not in parts or "v1" not in parts or not parts["t"].isdigit():
        return False
    return hmac.compare_digest(sign(secret, body, int(parts["t"])), header)


def host_allowed(url: str, hosts: list[str]) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return False
    return parts.hostname.lower() in hosts


async def deliver_webhook(
    url: str,
    payload: dict[str, Any],
    secret: str,
    hosts: list[str],
    *,
    timeout_s: float = 10.0,
    attempts: int = 4,
    backoff_s: float = 1.0,
    deadline_s: float = 120.0,
) -> dict[str, Any]:
    """POST ``payload`` signed; follow redirects only onto allowed hosts; retry 5xx/network errors."""
    import httpx

    body = json.dumps(payload, sort_keys=True).encode()
    record: dict[str, Any] = {"url": url, "delivered": False, "attempts": 0, "error": None, "status": None}

    async def attempt_all() -> None:
        delay = backoff_s
        async with httpx.AsyncClient(follow_redirects=False, timeout=timeout_s, trust_env=False) as client:
            for attempt in range(attempts):
                record["attempts"] = attempt + 1
                target = url
                try:
                    for _ in range(MAX_REDIRECTS + 1):
                        if not host_allowed(target, hosts):
                            record["error"] = f"refused: {urlsplit(target).hostname!r} is not an allowed host"
                            return  # never retried: the receiver asked for somewhere we will not go
                        headers = {
                            "Content-Type": "application/json",
                            SIGNATURE_HEADER: sign(secret, body, int(time.time())),
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
                except httpx.HTTPError as error:
                    record["error"] = f"{type(error).__name__}: {error}"[:300]
                if attempt + 1 < attempts:
                    await asyncio.sleep(delay)
                    delay *= 2

    try:
        await asyncio.wait_for(attempt_all(), timeout=deadline_s)
    except TimeoutError:
        record["error"] = f"deadline of {deadline_s:g} s passed"
    return record
