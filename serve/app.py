"""Ray Serve app: the stage classes as deployments, composed behind one FastAPI ingress.

```
POST /v1/backgrounds ──▶ Ingress: Decode ──▶ SegmentDeployment ──▶ CaptionDeployment ──▶ Ingress: Prompt
                         ──▶ InpaintDeployment ──▶ Ingress: Composite+Verify ──▶ JSON (or the image bytes)
```

The model stages (Segment, Caption, Inpaint) are deployments with dynamic batching (``@serve.batch``):
requests that arrive within ``serve.batch_wait_timeout_s`` are concatenated into one batch, the stage
runs once, and the result is split back per request by the ``request_id`` column. The cheap stages run
in the ingress. Replicas and Ray resources come from each stage's ``resources`` in the config.

Run it with ``canvas-ray serve --config configs/local.yaml`` or ``serve run configs/serve.yaml``.
"""

# No `from __future__ import annotations`: FastAPI must resolve the route signatures of the ingress class.
import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request as StarletteRequest

from canvas_ray.config import REPO_ROOT, CanvasConfig, ModelStage, canonical_aspect, load_config
from canvas_ray.io.images import encode_image
from canvas_ray.io.outputs import join_uri, safe_name, write_bytes
from canvas_ray.pipeline import QUALITY_COLUMNS, TIMING_COLUMNS, items_batch
from canvas_ray.spec import in_process_stages, model_stages
from canvas_ray.stages.base import OK, REVIEW, Batch, concat_batches, num_rows, take_rows
from canvas_ray.stages.caption import Caption
from canvas_ray.stages.composite import Composite
from canvas_ray.stages.decode import Decode, Fetch
from canvas_ray.stages.inpaint import Inpaint
from canvas_ray.stages.prompt import Prompt
from canvas_ray.stages.segment import Segment
from canvas_ray.styles import MAX_STYLE_TEXT, StyleBook
from serve.admission import Admission, RateLimiter, RefusedError, parse_json_object, with_deadline
from serve.jobs import JobRoutes
from serve.jobs import router as jobs_router
from serve.metrics import BatchMetrics, ServiceMetrics

log = logging.getLogger("canvas_ray.serve")

REQUEST_COLUMN = "request_id"
STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_CONFIG = os.environ.get("CANVAS_RAY_CONFIG", "configs/local.yaml")
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
FORMAT_OF_MIME = {mime: fmt for fmt, mime in MIME.items()}
MAX_PROMPT_TEXT = 1000
MAX_TITLE_TEXT = 200
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # tab and newline are text; the rest is not
MAX_SEED = 2**31 - 1
# Room for the multipart framing and the small form fields around the image.
FORM_OVERHEAD = 256 * 1024
DELIVERED = (OK, REVIEW)  # statuses whose image is returned (review: flagged, for a person to check)
# Stages whose error rows mean "this input cannot be used" (422) rather than a failure of ours (500).
INPUT_STAGES = ("decode", "segment", "prompt", "fetch", "profile", "compliance")


# --------------------------------------------------------------------------------------- batch helpers


def split_by_request(batch: Batch, request_ids: list[str]) -> list[Batch]:
    """One batch per request id, rows in their original order."""
    column = [str(v) for v in batch[REQUEST_COLUMN]]
    return [take_rows(batch, [i for i, v in enumerate(column) if v == rid]) for rid in request_ids]


# ---------------------------------------------------------------------------------- model deployments


class _StageServer:
    """Shared body of the model deployments: one stage instance, batched calls, observed batch sizes."""

    def __init__(self, stage: Any, config: CanvasConfig):
        self.stage = stage
        self.config = config
        # the recent calls only: a long-running replica must not grow with its traffic
        self._sizes: deque[int] = deque(maxlen=100_000)
        self._rows: deque[int] = deque(maxlen=100_000)
        self._metrics = BatchMetrics(type(stage).__name__.lower())

    def _process(self, batches: list[Batch]) -> list[Batch]:
        self._sizes.append(len(batches))
        self._metrics.observe(len(batches))
        ids = [str(b[REQUEST_COLUMN][0]) for b in batches]
        if len(set(ids)) != len(ids):  # never expected; keeps the split unambiguous anyway
            return [self.stage(b) for b in batches]
        merged = concat_batches(batches)
        self._rows.append(num_rows(merged))
        try:
            return split_by_request(self.stage(merged), ids)
        except Exception:  # noqa: BLE001 - stages catch per-row errors; a failed batch is retried alone
            if len(batches) == 1:
                raise
            log.exception("batch of %d requests failed; running them one by one", len(batches))
            return [self.stage(b) for b in batches]

    async def _run(self, batches: list[Batch]) -> list[Batch]:
        return await asyncio.to_thread(self._process, batches)

    def batch_sizes(self) -> list[int]:
        """Requests per stage call, in order (for tests and tuning)."""
        return list(self._sizes)

    def batch_rows(self) -> list[int]:
        """Rows per stage call (a request may carry several rows after Prompt)."""
        return list(self._rows)

    def ping(self) -> bool:
        return True


def _configure_batching(method: Any, config: CanvasConfig) -> None:
    """``@serve.batch`` takes constants; the config's values are set per replica here."""
    method.set_max_batch_size(config.serve.max_batch_size)
    method.set_batch_wait_timeout_s(config.serve.batch_wait_timeout_s)


@serve.deployment
class SegmentDeployment(_StageServer):
    def __init__(self, config: CanvasConfig):
        super().__init__(Segment(config), config)
        _configure_batching(self.run, config)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def run(self, batches: list[Batch]) -> list[Batch]:
        return await self._run(batches)


@serve.deployment
class CaptionDeployment(_StageServer):
    def __init__(self, config: CanvasConfig):
        super().__init__(Caption(config), config)
        _configure_batching(self.run, config)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def run(self, batches: list[Batch]) -> list[Batch]:
        return await self._run(batches)


@serve.deployment
class InpaintDeployment(_StageServer):
    def __init__(self, config: CanvasConfig):
        super().__init__(Inpaint(config, StyleBook.from_config(config)), config)
        _configure_batching(self.run, config)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def run(self, batches: list[Batch]) -> list[Batch]:
        return await self._run(batches)


# ---------------------------------------------------------------------------------------------- API


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class GenerateFields(BaseModel):
    """The fields of POST /v1/backgrounds (form fields, or JSON with ``image_base64``)."""

    model_config = ConfigDict(extra="forbid")
    style: str = Field(description="style preset name (GET /v1/styles) or a free-text description")
    prompt: str | None = Field(None, description="replaces the generated diffusion prompt")
    n: int = Field(1, description="variants per aspect ratio, 1..serve.max_variants")
    seed: int | None = Field(None, description=f"fixed seed 0..{MAX_SEED}; variant k uses seed+k")
    aspect_ratios: str | None = Field(None, description="comma-separated W:H, e.g. '1:1,4:5'")
    profile: str | None = Field(
        None,
        description="comma-separated output profiles (GET /v1/profiles), e.g. 'amazon-main,stories'; "
        "each is checked for compliance; without aspect_ratios only the profiles are made",
    )
    format: Literal["png", "jpeg", "webp"] = "png"
    title: str | None = Field(None, description="product title, helps the caption")
    image_uri: str | None = Field(None, description="fetch the image from here (only allowed prefixes)")


class GenerateJSON(GenerateFields):
    image_base64: str | None = Field(None, description="the product photo, base64")
    style_image_b64: str | None = Field(
        None, description="optional reference image (base64): the background follows its look and colours"
    )


def _openapi_body() -> dict[str, Any]:
    form = GenerateFields.model_json_schema()
    form["properties"] = {
        "image": {"type": "string", "format": "binary"},
        "style_image": {
            "type": "string",
            "format": "binary",
            "description": "optional reference image: the background follows its look and colours "
            "(same size and pixel limits as `image`)",
        },
        **form["properties"],
    }
    form["required"] = ["image", "style"]
    json_schema = GenerateJSON.model_json_schema()
    json_schema["required"] = ["style"]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": form},
                "application/json": {"schema": json_schema},
            },
        },
        "responses": {
            "200": {
                "description": "generated images (JSON), or the image itself when Accept asks for one",
                "content": {"application/json": {}, "image/png": {}, "image/jpeg": {}, "image/webp": {}},
            },
            **{
                str(code): {"description": text}
                for code, text in (
                    (400, "bad field value"),
                    (401, "missing or wrong API key"),
                    (413, "upload too large"),
                    (415, "unsupported media type"),
                    (422, "invalid image or request"),
                )
            },
        },
    }


app = FastAPI(
    title="canvas-ray",
    version="0.1.0",
    description="AI backgrounds for product photos; product pixels are never changed.",
)


app.include_router(jobs_router)  # /v1/jobs: catalog jobs on the cluster (serve/jobs.py)


@app.exception_handler(ApiError)
async def _api_error(_: Request, error: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return error_response(error.status, error.code, error.message, headers)


@app.exception_handler(RefusedError)
async def _refused(_: Request, error: RefusedError) -> JSONResponse:
    return error_response(error.status, error.code, error.message, error.headers or None)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    return error_response(422, "validation_error", _pydantic_message(error.errors()))


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return error_response(error.status_code, code, str(error.detail))


def _pydantic_message(errors: Any) -> str:
    parts = []
    for item in errors:
        loc = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "query"))
        message = item.get("msg", "invalid")
        if item.get("type") == "extra_forbidden":
            message = "unknown field"
        parts.append(f"{loc or 'request'}: {message}")
    return "; ".join(parts)[:2000]


def configured_api_keys(config: CanvasConfig, environ: dict[str, str] | None = None) -> list[str]:
    """Keys from ``serve.api_keys`` plus the comma-separated env var named by ``serve.api_keys_env``."""
    env = os.environ if environ is None else environ
    from_env = [k.strip() for k in env.get(config.serve.api_keys_env, "").split(",") if k.strip()]
    return [k for k in config.serve.api_keys if k] + from_env


def serve_limits_config(config: CanvasConfig) -> CanvasConfig:
    """A copy of the config whose decode limits are the (smaller) serving limits."""
    limits = config.limits.model_copy(
        update={
            "max_pixels": min(config.limits.max_pixels, config.serve.max_pixels),
            "max_image_bytes": min(config.limits.max_image_bytes, config.serve.max_upload_bytes),
        }
    )
    return config.model_copy(update={"limits": limits})


def _uri_allowed(uri: str, prefixes: list[str]) -> bool:
    """``uri`` starts with an allowed prefix and cannot climb out of it (no ``..``, no odd characters)."""
    if any(ch.isspace() or ord(ch) < 32 or ch == "\\" for ch in uri):
        return False
    path = unquote(unquote(urlsplit(uri).path if "://" in uri else uri))
    if ".." in path.split("/"):
        return False
    return any(prefix and uri.startswith(prefix) for prefix in prefixes)


def quality_figures(batch: Batch, index: int) -> dict[str, Any]:
    """The expansion and score figures of one output (None where not measured)."""
    figures: dict[str, Any] = {}
    for name in QUALITY_COLUMNS:
        if name not in batch:
            figures[name] = None
            continue
        value = batch[name][index]
        number = float(value)
        if number != number or (name in ("expansion_px",) and number < 0):
            figures[name] = None
        elif name in ("expansion_px", "attempts", "candidates"):
            figures[name] = int(number)
        else:
            figures[name] = round(number, 4)
    # Trust in product_preserved comes from the mask: its confidence, and whether a person must check it.
    if "mask_confidence" in batch:
        figures["mask_confidence"] = round(float(batch["mask_confidence"][index]), 4)
    figures["mask_review"] = str(batch["status"][index]) == REVIEW
    return figures


def compliance_figures(batch: Batch, index: int) -> dict[str, Any]:
    """``profile`` and its ``compliance`` check for one output (both None for plain aspect ratios)."""
    profile = _text(batch["profile"][index]) if "profile" in batch else ""
    if not profile:
        return {"profile": None, "compliance": None}
    checked = "compliant" in batch and batch["compliant"][index] is not None
    if not checked:
        return {"profile": profile, "compliance": None}

    def number(name: str) -> float | None:
        value = float(batch[name][index]) if name in batch else float("nan")
        return None if value != value else round(value, 6)

    issues = _text(batch["compliance_issues"][index])
    return {
        "profile": profile,
        "compliance": {
            "compliant": bool(batch["compliant"][index]),
            "issues": [part for part in issues.split("; ") if part],
            "fill_ratio": number("fill_ratio"),
            "background_purity": number("background_purity"),
            "product_scale": number("product_scale"),
            "upscaled": bool(batch["upscaled"][index]),
        },
    }


def _text(value: Any) -> str:
    return "" if value is None else str(value)


@serve.deployment
@serve.ingress(app)
class Ingress(JobRoutes):
    def __init__(
        self,
        config: CanvasConfig,
        segment: Any,
        caption: Any,
        inpaint: Any,
        api_keys: list[str] | None = None,
    ):
        self.config = serve_limits_config(config)
        self.limits = self.config.serve
        self.styles = StyleBook.from_config(self.config)
        self.fetch = Fetch(self.config)
        self.decode = Decode(self.config)
        self.prompt = Prompt(self.config, self.styles)
        self.composite = Composite(self.config, self.styles)
        self.segment, self.caption, self.inpaint = segment, caption, inpaint
        # the stage order comes from the one pipeline spec: model stages are deployments (handles), the
        # cheap ones run here in a thread
        self.models = {"segment": segment, "caption": caption, "inpaint": inpaint}
        self.order = in_process_stages()
        self.api_keys = configured_api_keys(self.config) if api_keys is None else api_keys
        self.ready = False
        self.init_jobs()
        self.admission = Admission(
            self.limits.max_inflight, self.limits.max_queued, self.limits.retry_after_s
        )
        self.metrics = ServiceMetrics()
        rate = self.limits.rate_limit_per_key
        self.rate_limiter = RateLimiter(rate, self.limits.rate_limit_burst) if rate else None

    # -- helpers ------------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        if not self.api_keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <API key>'")
        token = token.strip()
        if not any(hmac.compare_digest(token.encode(), key.encode()) for key in self.api_keys):
            raise ApiError(401, "unauthorized", "the API key is not valid")

    async def _read_body(self, request: Request, cap: int) -> bytes:
        """The request body, read in chunks, never more than ``cap`` bytes (413 beyond)."""
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise ApiError(400, "bad_request", "Content-Length is not a number")
            if int(length) > cap:  # refused from the header, before reading a byte
                await self._drain(request, int(length))
                raise ApiError(413, "too_large", self._too_large_message())
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > cap:  # a streamed body is refused once it passes the limit
                await self._drain(request, None)
                raise ApiError(413, "too_large", self._too_large_message())
            chunks.append(chunk)
        return b"".join(chunks)

    async def _drain(self, request: Request, length: int | None) -> None:
        """Read and drop the rest of a refused body (up to ``serve.max_drain_bytes``), so that a client
        still uploading gets the 413 instead of a broken pipe; beyond that, the connection is closed."""
        if length is not None and length > self.limits.max_drain_bytes:
            return
        drained = 0
        async for chunk in request.stream():
            drained += len(chunk)
            if drained > self.limits.max_drain_bytes:
                return

    def _too_large_message(self, field: str | None = None) -> str:
        what = f"{field}: the file" if field else "the upload"
        return f"{what} is larger than the limit of {self.limits.max_upload_bytes} bytes"

    async def _parse(self, request: Request) -> tuple[GenerateFields, bytes | None, bytes | None]:
        """Fields, product image bytes and optional reference (style) image bytes."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        upload = self.limits.max_upload_bytes
        # two files at most (product + reference), each under the upload limit
        if ctype == "multipart/form-data":
            body = await self._read_body(request, 2 * upload + FORM_OVERHEAD)
            return await self._parse_form(request, body)
        if ctype == "application/json" or ctype.endswith("+json"):
            body = await self._read_body(request, 2 * (upload * 4 // 3) + FORM_OVERHEAD)
            return self._parse_json(body)
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send multipart/form-data (field 'image') or application/json (field 'image_base64'), "
            f"not {ctype or 'no content type'}",
        )

    async def _parse_form(
        self, request: Request, body: bytes
    ) -> tuple[GenerateFields, bytes | None, bytes | None]:
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await StarletteRequest(request.scope, replay).form(
                max_files=2, max_fields=16, max_part_size=64 * 1024
            )
        except MultiPartException as error:
            raise ApiError(400, "bad_request", f"malformed multipart body: {error.message}") from None
        fields: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        for key, value in form.multi_items():
            if key in fields or key in files:
                raise ApiError(400, "bad_request", f"field {key!r} is given more than once")
            if key in ("image", "style_image"):
                if isinstance(value, str):
                    raise ApiError(422, "validation_error", f"{key}: must be a file upload")
                files[key] = await self._read_upload(value, key)
            elif isinstance(value, str):
                fields[key] = value
            else:
                raise ApiError(422, "validation_error", f"{key}: must be a plain form field, not a file")
        if len(body) > self.limits.max_upload_bytes + FORM_OVERHEAD and len(files) < 2:
            # only a product *and* a reference image may take the body past one upload (an unterminated
            # oversized part, which the parser drops, must not slip through as a missing field)
            raise ApiError(413, "too_large", self._too_large_message())
        fields = {k: v for k, v in fields.items() if not (k != "style" and v == "")}
        return self._validate(GenerateFields, fields), files.get("image"), files.get("style_image")

    async def _read_upload(self, upload: Any, field: str = "image") -> bytes:
        chunks, total = [], 0
        while True:
            chunk = await upload.read(64 * 1024)
            if not chunk:
                break
            total += len(chunk)
            if total > self.limits.max_upload_bytes:
                raise ApiError(413, "too_large", self._too_large_message(field))
            chunks.append(chunk)
        return b"".join(chunks)

    def _parse_json(self, body: bytes) -> tuple[GenerateFields, bytes | None, bytes | None]:
        data = parse_json_object(body, self.limits.max_json_depth)  # UTF-8 only, bounded depth, no dup keys
        fields = self._validate(GenerateJSON, data)
        assert isinstance(fields, GenerateJSON)
        image = self._base64(fields.image_base64, "image_base64")
        style_image = self._base64(fields.style_image_b64, "style_image_b64")
        return fields, image, style_image

    def _base64(self, text: str | None, field: str) -> bytes | None:
        if text is None:
            return None
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "invalid_image", f"{field} is not valid base64") from None
        if len(data) > self.limits.max_upload_bytes:
            raise ApiError(413, "too_large", self._too_large_message(field))
        return data

    @staticmethod
    def _validate(model: type[GenerateFields], data: dict[str, Any]) -> GenerateFields:
        try:
            return model.model_validate(data)
        except ValidationError as error:
            raise ApiError(422, "validation_error", _pydantic_message(error.errors())) from None

    def _check(self, fields: GenerateFields) -> list[str]:
        """Value checks (400); returns the canonical aspect ratios."""
        if fields.image_uri is not None:
            allowed = self.limits.allowed_uri_prefixes
            if not allowed:
                raise ApiError(400, "url_fetch_disabled", "URL fetching is disabled: upload the image")
            if not _uri_allowed(fields.image_uri, allowed):
                raise ApiError(400, "url_not_allowed", "image_uri is not under an allowed prefix")
        if not 1 <= fields.n <= self.limits.max_variants:
            raise ApiError(400, "bad_request", f"n must be between 1 and {self.limits.max_variants}")
        if fields.seed is not None and not 0 <= fields.seed <= MAX_SEED:
            raise ApiError(400, "bad_request", f"seed must be between 0 and {MAX_SEED}")
        for name in ("style", "title", "prompt"):
            text = getattr(fields, name)
            if text is not None and CONTROL_CHARS.search(text):
                raise ApiError(400, "bad_request", f"{name} contains control characters: send plain text")
        if "|" in fields.style:
            raise ApiError(400, "bad_style", "style must be one style ('|' is not allowed)")
        try:
            self.styles.resolve(fields.style)
        except ValueError as error:
            raise ApiError(400, "bad_style", str(error)) from None
        if fields.prompt is not None and len(fields.prompt) > MAX_PROMPT_TEXT:
            raise ApiError(400, "bad_request", f"prompt is longer than {MAX_PROMPT_TEXT} characters")
        if fields.title is not None and len(fields.title) > MAX_TITLE_TEXT:
            raise ApiError(400, "bad_request", f"title is longer than {MAX_TITLE_TEXT} characters")
        aspects: list[str] = []
        if fields.aspect_ratios is not None:
            for raw in fields.aspect_ratios.split(","):
                if not raw.strip():
                    continue
                try:
                    aspect = canonical_aspect(raw)
                except ValueError as error:
                    raise ApiError(400, "bad_aspect", str(error)) from None
                if aspect not in aspects:
                    aspects.append(aspect)
            if not aspects:
                raise ApiError(400, "bad_aspect", "aspect_ratios is empty")
            if len(aspects) > 8:
                raise ApiError(400, "bad_aspect", "at most 8 aspect ratios")
        return aspects

    def _check_profiles(self, fields: GenerateFields) -> list[str]:
        """The requested output profiles, each known (400 otherwise)."""
        names = [p.strip() for p in (fields.profile or "").split(",") if p.strip()]
        if len(names) > 8:
            raise ApiError(400, "bad_profile", "at most 8 profiles")
        for name in names:
            try:
                self.prompt.profiles.get(name)
            except ValueError as error:
                raise ApiError(400, "bad_profile", str(error)) from None
        return list(dict.fromkeys(names))

    @staticmethod
    def _input_error(batch: Batch) -> None:
        """422 when every row failed because of the input; 500 when it failed in generation."""
        statuses = list(batch["status"])
        if any(s in DELIVERED for s in statuses):
            return
        reason = str(batch["error"][0]) if statuses else "no output"
        stage = reason.split(":", 1)[0]
        if stage in INPUT_STAGES:
            code = {"prompt": "invalid_request", "profile": "invalid_request", "compliance": "not_compliant"}
            raise ApiError(422, code.get(stage, "invalid_image"), reason)
        raise ApiError(500, "generation_failed", reason)

    # -- the pipeline -------------------------------------------------------------------------------

    async def generate(
        self,
        fields: GenerateFields,
        image: bytes | None,
        aspects: list[str],
        rid: str,
        style_image: bytes | None = None,
    ) -> Batch:
        source = image if image is not None else (fields.image_uri or "").encode()
        item: dict[str, Any] = {
            "item_id": "upload-" + hashlib.sha256(source).hexdigest()[:16],
            "style": " ".join(fields.style.split()),
            "variants": fields.n,
            "aspect_ratios": "|".join(aspects) if aspects else None,
            "profile": "|".join(self._check_profiles(fields)) or None,
            "seed": fields.seed,
            "title": fields.title or "",
            REQUEST_COLUMN: rid,
        }
        if image is not None:
            item["image_bytes"] = image
        else:
            item["image_uri"] = fields.image_uri
        if style_image is not None:  # decoded into `style_image` by Decode, never fetched from a URL
            item["style_image_bytes"] = style_image
        batch = items_batch([item])
        for name in self.order:
            if name == "fetch" and image is not None:
                continue  # uploaded bytes; URIs are fetched only when allowlisted
            begun = time.perf_counter()
            if name in self.models:
                try:
                    batch = await self.models[name].run.remote(batch)
                except BackPressureError:
                    raise RefusedError(
                        503,
                        "overloaded",
                        f"the {name} model is at capacity; retry later",
                        self.limits.retry_after_s,
                    ) from None
            else:
                batch = await asyncio.to_thread(getattr(self, name), batch)
            self.metrics.stage(name, time.perf_counter() - begun)
            if name == "prompt":
                n = num_rows(batch)
                batch[REQUEST_COLUMN] = np.asarray([rid] * n, dtype=object)
                if fields.prompt:
                    batch["prompt"] = np.asarray([fields.prompt] * n, dtype=object)
            if name != "caption":  # a caption failure is ours (5xx), every other stage may reject input
                self._input_error(batch)
        return batch

    def _save(self, rid: str, name: str, data: bytes) -> str | None:
        root = self.limits.output_root
        if not root:
            return None
        folder = safe_name(rid, limit=64)
        uri = join_uri(root, folder, safe_name(name, limit=160))
        if "://" not in root:
            base = Path(root).resolve()
            target = Path(uri).resolve()
            if base not in target.parents:  # never outside output_root
                raise ApiError(400, "bad_request", "output path escapes output_root")
            target.parent.mkdir(parents=True, exist_ok=True)
            uri = str(target)
        write_bytes(uri, data, {})
        return uri

    # -- routes -------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def page(self) -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/v1/stats", summary="this replica's request counts, queue depth and stage latencies")
    async def stats(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return self.metrics.snapshot(self.admission.inflight, self.admission.queued)

    @app.get("/healthz", summary="process is up")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="200 once every model deployment answers", responses={503: {}})
    async def readyz(self) -> JSONResponse:
        if not self.ready:
            try:
                pings = [h.ping.remote() for h in (self.segment, self.caption, self.inpaint)]
                results = await asyncio.wait_for(asyncio.gather(*pings), timeout=5)
                self.ready = all(results)
            except Exception as error:  # noqa: BLE001 - not ready yet, whatever the reason
                return error_response(503, "not_ready", f"model deployments not ready: {error}"[:500])
        if not self.ready:
            return error_response(503, "not_ready", "model deployments not ready")
        if self.admission.saturated:
            return error_response(
                503,
                "saturated",
                f"every slot is busy and the queue is full ({self.admission.inflight} running, "
                f"{self.admission.queued} waiting)",
                {"Retry-After": str(max(1, round(self.limits.retry_after_s)))},
            )
        return JSONResponse({"status": "ready"})

    @app.get("/v1/styles", summary="style presets", responses={401: {}})
    async def styles_list(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return {
            "styles": [
                {"name": name, "description": preset.description}
                for name, preset in self.styles.presets.items()
            ],
            "default": list(self.config.styles.default),
            "aspect_ratios": list(self.config.output.aspect_ratios),
            "max_variants": self.limits.max_variants,
            "max_style_chars": MAX_STYLE_TEXT,
        }

    @app.get("/v1/profiles", summary="output profiles (channel rules)", responses={401: {}})
    async def profiles_list(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        book = self.prompt.profiles
        return {"profiles": [book.get(name).model_dump(mode="json") for name in book.names()]}

    @app.post("/v1/backgrounds", summary="new backgrounds for a product photo", openapi_extra=_openapi_body())
    async def backgrounds(self, request: Request) -> Response:
        started = time.perf_counter()
        self._authorize(request)
        if self.rate_limiter is not None:  # per API key (per client address without keys)
            header = request.headers.get("authorization", "")
            self.rate_limiter.take(header or (request.client.host if request.client else "-"))
        code = 500
        try:
            async with self.admission.slot():  # bounded: past the queue, 503 + Retry-After at once
                self.metrics.admission(self.admission.inflight, self.admission.queued)
                response = await with_deadline(
                    self._backgrounds(request, started), self.limits.request_timeout_s
                )
            code = response.status_code
            return response
        except (ApiError, RefusedError) as error:
            code = error.status
            raise
        finally:
            self.metrics.request(code)
            self.metrics.admission(self.admission.inflight, self.admission.queued)

    async def _backgrounds(self, request: Request, started: float) -> Response:
        fields, image, style_image = await self._parse(request)
        aspects = self._check(fields)
        self._check_profiles(fields)
        if image is not None and fields.image_uri is not None:
            raise ApiError(400, "bad_request", "give either an image or image_uri, not both")
        if image is None and fields.image_uri is None:
            raise ApiError(422, "validation_error", "image: a product photo is required")
        rid = uuid.uuid4().hex
        batch = await self.generate(fields, image, aspects, rid, style_image)
        # `review` outputs are delivered too, flagged: the mask is not vouched for (quality.mask_review)
        ok = [i for i in range(num_rows(batch)) if batch["status"][i] in DELIVERED]
        self.metrics.review(sum(batch["status"][i] == REVIEW for i in ok))
        accept = [part.split(";")[0].strip().lower() for part in request.headers.get("accept", "").split(",")]
        wanted = next((FORMAT_OF_MIME[a] for a in accept if a in FORMAT_OF_MIME), None)
        if wanted is not None and len(ok) == 1:
            data = await asyncio.to_thread(self._encode, batch["result"][ok[0]], wanted)
            self._save(rid, str(batch["output_id"][ok[0]]) + "." + wanted, data)
            figures = quality_figures(batch, ok[0])
            headers = {
                "X-Request-ID": rid,
                "X-Product-Preserved": "true",
                "X-Status": _text(batch["status"][ok[0]]),
            }
            headers.update(
                {f"X-{k.replace('_', '-').title()}": str(v) for k, v in figures.items() if v is not None}
            )
            return Response(data, media_type=MIME[wanted], headers=headers)
        images = []
        for i in ok:
            result = batch["result"][i]
            data = await asyncio.to_thread(self._encode, result, fields.format)
            uri = self._save(rid, f"{batch['output_id'][i]}.{fields.format}", data)
            images.append(
                {
                    "status": _text(batch["status"][i]),
                    "image_base64": base64.b64encode(data).decode(),
                    "mime": MIME[fields.format],
                    "style": _text(batch["style"][i]),
                    "aspect": _text(batch["aspect"][i]),
                    "variant": int(batch["variant"][i]),
                    "seed": int(batch["seed"][i]),
                    "caption": _text(batch["caption"][i]) if "caption" in batch else "",
                    "prompt": _text(batch["prompt"][i]),
                    "product_preserved": bool(batch["product_preserved"][i]),
                    "max_product_diff": int(batch["max_product_diff"][i]),
                    "width": int(result.shape[1]),
                    "height": int(result.shape[0]),
                    "quality": quality_figures(batch, i),
                    **compliance_figures(batch, i),
                    "timings": {c: round(float(batch[c][i]), 4) for c in TIMING_COLUMNS if c in batch},
                    **({"uri": uri} if uri else {}),
                }
            )
        errors = [
            {
                "style": _text(batch["style"][i]),
                "aspect": _text(batch["aspect"][i]),
                "variant": int(batch["variant"][i]),
                "status": _text(batch["status"][i]),
                "error": _text(batch["error"][i]),
                "quality": quality_figures(batch, i),
                **compliance_figures(batch, i),
            }
            for i in range(num_rows(batch))
            if batch["status"][i] not in DELIVERED
        ]
        caption = _text(batch["caption"][ok[0]]) if ok and "caption" in batch else ""
        body = {
            "request_id": rid,
            "caption": caption,
            "images": images,
            "errors": errors,
            "seconds": round(time.perf_counter() - started, 4),
        }
        return JSONResponse(body, headers={"X-Request-ID": rid})

    def _encode(self, image: np.ndarray, fmt: str) -> bytes:
        return encode_image(image, fmt, quality=100 if fmt == "webp" else self.config.output.quality)


# --------------------------------------------------------------------------------------------- build


def _options(stage: ModelStage, config: CanvasConfig) -> dict[str, Any]:
    res = stage.resources
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus},
        # Enough requests in flight per replica for a full batch to form.
        "max_ongoing_requests": max(2 * config.serve.max_batch_size, 8),
        # a bounded queue per model deployment: past it callers get BackPressureError (503), not a wait
        "max_queued_requests": config.serve.model_max_queued,
    }
    if res.max_concurrency is not None and res.max_concurrency > res.concurrency:
        options["autoscaling_config"] = {
            "min_replicas": res.concurrency,
            "initial_replicas": res.concurrency,
            "max_replicas": res.max_concurrency,
            "target_ongoing_requests": config.serve.max_batch_size,
        }
    else:
        options["num_replicas"] = res.concurrency
    return options


def build_app(config: CanvasConfig, api_keys: list[str] | None = None) -> serve.Application:
    """The bound Serve application for ``config`` (``api_keys`` overrides the configured keys)."""
    # `@serve.deployment` turns the classes into Deployments; type checkers still see the classes.
    deployments: dict[str, Any] = {
        "segment": SegmentDeployment,
        "caption": CaptionDeployment,
        "inpaint": InpaintDeployment,
        "ingress": Ingress,
    }
    bound = {  # one deployment per model stage of the pipeline spec
        name: deployments[name].options(**_options(getattr(config, name), config)).bind(config)
        for name in model_stages()
    }
    segment, caption, inpaint = bound["segment"], bound["caption"], bound["inpaint"]
    ingress_resources = config.composite.resources
    ingress = deployments["ingress"].options(
        num_replicas=ingress_resources.concurrency,
        ray_actor_options={"num_cpus": ingress_resources.num_cpus},
        max_ongoing_requests=128,
    )
    return ingress.bind(config, segment, caption, inpaint, api_keys)


def _config_path(value: str) -> Path:
    """A config path as given, else relative to the repository (Serve may run from another folder)."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    return REPO_ROOT / path


def app_builder(args: dict[str, Any]) -> serve.Application:
    """``serve run serve.app:app_builder config=configs/local.yaml`` (or ``args: {config: ...}`` in YAML)."""
    return build_app(load_config(_config_path(str(args.get("config") or DEFAULT_CONFIG))))


def __getattr__(name: str) -> Any:
    """``serve.app:application``: the app for $CANVAS_RAY_CONFIG (for ``serve build``), built on first use."""
    if name == "application":
        return app_builder({})
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
