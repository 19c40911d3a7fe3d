"""Image bytes over http(s), as merchant feeds link them: bounded in time, size, retries and per host.

Used by the batch job's Fetch stage for ``http://`` / ``https://`` image URIs (the online service fetches
no URLs). Every failure raises :class:`FetchError` with a reason a person can act on (status code, size,
redirect loop, timeout), which Fetch turns into an error row.

- **time**: ``limits.fetch_timeout_s`` bounds connecting and each read, and the whole download;
- **size**: a ``Content-Length`` above ``limits.max_image_bytes`` is refused before the body is read, and
  a body is never read past the limit (+1 byte to detect it);
- **retries**: connection errors, timeouts, 429 and 5xx are retried ``limits.fetch_retries`` times with
  doubling back-off; 4xx are final;
- **per host**: at most ``limits.fetch_per_host`` downloads from one host at a time in a process;
- **redirects**: at most 5, and a loop is reported as such.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from urllib.parse import urlsplit

from canvas_ray.config import LimitsConfig

MAX_REDIRECTS = 5
BACKOFF_S = 0.25
USER_AGENT = "canvas-ray (product image fetch)"
_HOST_SLOTS: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_HOST_LOCK = threading.Lock()
_ACTIVE: defaultdict[str, int] = defaultdict(int)  # downloads in flight per host (for tests and logs)
_PEAK: defaultdict[str, int] = defaultdict(int)


class FetchError(OSError):
    """An image URL that could not be fetched, with the reason."""


class _Redirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS
    max_repeats = 1  # the same URL twice is a loop


def _slot(host: str, per_host: int) -> threading.BoundedSemaphore:
    with _HOST_LOCK:
        key = (host, per_host)
        if key not in _HOST_SLOTS:
            _HOST_SLOTS[key] = threading.BoundedSemaphore(per_host)
        return _HOST_SLOTS[key]


def peak_per_host(host: str) -> int:
    """Most downloads seen at once from ``host`` in this process."""
    return _PEAK[host]


def is_http(uri: str) -> bool:
    return uri[:8].lower().startswith(("http://", "https://"))


def fetch_url(uri: str, limits: LimitsConfig) -> bytes:
    """The body of ``uri`` (http/https) under the limits above; :class:`FetchError` when it cannot be had."""
    host = urlsplit(uri).netloc.lower()
    if not host:
        raise FetchError(f"not a URL: {uri[:200]}")
    attempts = 1 + limits.fetch_retries
    last = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        try:
            with _slot(host, limits.fetch_per_host):
                _ACTIVE[host] += 1
                _PEAK[host] = max(_PEAK[host], _ACTIVE[host])
                try:
                    return _download(uri, limits)
                finally:
                    _ACTIVE[host] -= 1
        except _FinalError as final:
            raise FetchError(str(final)) from None
        except _RetryableError as error:
            last = str(error)
    raise FetchError(f"{last} (after {attempts} attempts)")


class _FinalError(Exception):
    pass


class _RetryableError(Exception):
    pass


def _download(uri: str, limits: LimitsConfig) -> bytes:
    opener = urllib.request.build_opener(_Redirects())
    request = urllib.request.Request(uri, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
    deadline = time.monotonic() + limits.fetch_timeout_s
    try:
        with opener.open(request, timeout=limits.fetch_timeout_s) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limits.max_image_bytes:
                raise _FinalError(_too_big(int(length), limits))
            chunks: list[bytes] = []
            size = 0
            while True:
                if time.monotonic() > deadline:
                    raise _RetryableError(f"timed out after {limits.fetch_timeout_s:g} s reading {uri[:200]}")
                chunk = response.read(min(1 << 20, limits.max_image_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > limits.max_image_bytes:
                    raise _FinalError(_too_big(size, limits, at_least=True))
            return b"".join(chunks)
    except urllib.error.HTTPError as error:
        if error.code in (301, 302, 303, 307, 308):  # raised by the handler: too many, or a loop
            raise _FinalError(f"redirect loop or more than {MAX_REDIRECTS} redirects: {uri[:200]}") from None
        reason = f"HTTP {error.code} {error.reason} for {uri[:200]}"
        if error.code == 429 or error.code >= 500:
            raise _RetryableError(reason) from None
        raise _FinalError(reason) from None
    except (_FinalError, _RetryableError):
        raise
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as error:
        why = getattr(error, "reason", None) or error
        raise _RetryableError(f"cannot fetch {uri[:200]}: {why}") from None


def _too_big(size: int, limits: LimitsConfig, at_least: bool = False) -> str:
    more = "more than " if at_least else ""
    return (
        f"image is {more}{size / 2**20:.1f} MiB; the limit is {limits.max_image_bytes / 2**20:.1f} MiB "
        "(limits.max_image_bytes)"
    )
