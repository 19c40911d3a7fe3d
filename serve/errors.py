"""Every error the service answers with: one JSON shape, ``{"error": {"code", "message"}}``, a 4xx for
anything the caller can fix and a 5xx only for failures of ours. The handlers are installed on the
FastAPI app by :func:`install_handlers`."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# what POST /v1/backgrounds may answer besides 200 (its OpenAPI responses)
ERROR_RESPONSES = {
    400: "bad field value",
    401: "missing or wrong API key",
    413: "upload too large",
    415: "unsupported media type",
    422: "invalid image or request",
    429: "per-key rate limit exceeded (Retry-After)",
    503: "at capacity (Retry-After)",
    504: "the request could not finish within serve.request_timeout_s",
}


class ApiError(Exception):
    """An answer other than 200: HTTP status, a stable error code, a message that says what to fix, and
    ``Retry-After`` when the caller should come back later (503 shed, 429 rate-limited)."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))} if retry_after_s else {}
        if status == 401:
            self.headers["WWW-Authenticate"] = "Bearer"


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def pydantic_message(errors: Any) -> str:
    """Pydantic's error list as one line: ``field: problem; field: problem``."""
    parts = []
    for item in errors:
        loc = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "query"))
        message = item.get("msg", "invalid")
        if item.get("type") == "extra_forbidden":
            message = "unknown field"
        parts.append(f"{loc or 'request'}: {message}")
    return "; ".join(parts)[:2000]


async def _api_error(_: Request, error: ApiError) -> JSONResponse:
    return error_response(error.status, error.code, error.message, error.headers or None)


async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    return error_response(422, "validation_error", pydantic_message(error.errors()))


async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return error_response(error.status_code, code, str(error.detail))


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
