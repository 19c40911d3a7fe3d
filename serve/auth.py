"""Who may call, and what they may point us at: API keys (Bearer, compared in constant time) and the
URI allowlist that keeps the service from fetching arbitrary URLs (no SSRF, no ``..`` out of a prefix)."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

from canvas_ray.config import CanvasConfig
from canvas_ray.io.uris import uri_allowed as _uri_allowed
from serve.errors import ApiError


def configured_api_keys(config: CanvasConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    """Keys from ``serve.api_keys`` plus the comma-separated env var named by ``serve.api_keys_env``."""
    env = os.environ if environ is None else environ
    from_env = [k.strip() for k in env.get(config.serve.api_keys_env, "").split(",") if k.strip()]
    return [k for k in config.serve.api_keys if k] + from_env


def bearer_token(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def authorize(headers: Mapping[str, str], api_keys: list[str]) -> str | None:
    """The caller's key (None when the service has no keys); 401 when it is missing or wrong."""
    if not api_keys:
        return None
    token = bearer_token(headers)
    if token is None:
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <API key>'")
    if not any(hmac.compare_digest(token.encode(), key.encode()) for key in api_keys):
        raise ApiError(401, "unauthorized", "the API key is not valid")
    return token


def uri_allowed(uri: str, prefixes: list[str]) -> bool:
    """``uri`` starts with an allowed prefix and cannot climb out of it (no ``..``, no odd characters, no
    symlink out of a local prefix): :func:`canvas_ray.io.uris.uri_allowed`."""
    return _uri_allowed(uri, prefixes)
