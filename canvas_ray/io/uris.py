"""Which URIs a run may read: an allowlist of prefixes, checked on the normalised URI.

A URI is refused outright when it holds whitespace, control characters, a backslash, fsspec's chain
separator ``::`` or a ``..`` segment (also percent-encoded, once or twice). Local paths (plain or
``file://``) are then resolved (``..`` and every symlink) and must lie under a resolved prefix, so a link
inside an allowed folder cannot lead out of it; other URIs must start with a prefix as written. Prefixes
end in ``/`` (``s3://catalogs`` would also allow ``s3://catalogs-evil/``), which the config enforces.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit


class UriRefusedError(ValueError):
    """A URI outside the allowlist (the message says which)."""


def prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot be an allowlist entry, or None."""
    if not prefix or not prefix.endswith("/"):
        return f"prefix {prefix!r} must end in '/' (a folder or bucket prefix)"
    if ".." in prefix.split("/") or _unsafe(prefix):
        return f"prefix {prefix!r} must not hold '..', '::', backslashes or control characters"
    return None


def _unsafe(uri: str) -> bool:
    return "::" in uri or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 or ch == "\\" for ch in uri)


def _local_path(uri: str) -> str | None:
    """The filesystem path of a local URI (plain path or ``file://``), None for any other scheme."""
    if uri.startswith("file://"):
        return uri[len("file://") :]
    if "://" in uri:
        return None
    return uri


def resolve_allowed(uri: str, prefixes: list[str]) -> str | None:
    """The URI to read if ``uri`` is under one of ``prefixes`` after normalisation, else None.

    For local paths the answer is the resolved path (read that, not the link); other URIs come back as
    given.
    """
    if not uri or _unsafe(uri):
        return None
    path = urlsplit(uri).path if "://" in uri else uri
    decoded = unquote(unquote(path))
    if ".." in decoded.split("/") or _unsafe(decoded):
        return None
    local = _local_path(uri)
    if local is not None:
        if not local.startswith("/"):
            return None  # relative paths depend on the reader's working directory
        real = os.path.realpath(local)
        for prefix in prefixes:
            root = _local_path(prefix)
            if root is None or not root.startswith("/"):
                continue
            real_root = os.path.realpath(root).rstrip("/") + "/"
            if real.startswith(real_root):
                return real
        return None
    scheme = uri.split("://", 1)[0].lower()
    normalised = scheme + uri[len(scheme) :]
    return uri if any(p and normalised.startswith(p) for p in prefixes) else None


def uri_allowed(uri: str, prefixes: list[str]) -> bool:
    """``uri`` lies under an allowed prefix once normalised (symlinks resolved for local paths)."""
    return resolve_allowed(uri, prefixes) is not None


def origin_of(url: str) -> str | None:
    """``scheme://host:port`` of an http(s) URL as the client that sends to it parses it (httpx), the
    default port filled in; None for anything else: other schemes, user info, a port outside 1..65535,
    whitespace or control characters anywhere."""
    import httpx

    if not url or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 or ch == "\\" for ch in url):
        return None
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError, TypeError):
        return None
    if parsed.scheme not in ("http", "https") or not parsed.host or parsed.userinfo:
        return None
    port = port if port is not None else (443 if parsed.scheme == "https" else 80)
    if not 1 <= port <= 65535:
        return None
    host = parsed.host.lower()
    host = f"[{host}]" if ":" in host else host
    return f"{parsed.scheme}://{host}:{port}"
