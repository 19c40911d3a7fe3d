"""Request parsing and validation for ``POST /v1/backgrounds``: bounded body reading (413 from
``Content-Length`` before a byte is read, and while streaming), multipart or JSON (strict UTF-8, bounded
depth, no duplicate keys), base64, the pydantic field models, and the value checks. Nothing here needs a
running Serve: :class:`RequestReader` takes a Starlette request and the config, and answers a
:class:`ParsedRequest` or raises :class:`~serve.errors.ApiError` (always a 4xx)."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from canvas_ray.config import ServeConfig, canonical_aspect
from canvas_ray.profiles import ProfileBook
from canvas_ray.styles import StyleBook
from serve.admission import parse_json_object
from serve.auth import uri_allowed
from serve.errors import ApiError, pydantic_message

MAX_PROMPT_TEXT = 1000
MAX_TITLE_TEXT = 200
MAX_SEED = 2**31 - 1
MAX_ASPECTS = 8
MAX_PROFILES = 8
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # tab and newline are text; the rest is not
# Room for the multipart framing and the small form fields around the image.
FORM_OVERHEAD = 256 * 1024


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
    product_box: str | None = Field(
        None, description="which object is the product: 'x0,y0,x1,y1' in the photo's pixels (optional)"
    )
    image_uri: str | None = Field(None, description="fetch the image from here (only allowed prefixes)")


class GenerateJSON(GenerateFields):
    image_base64: str | None = Field(None, description="the product photo, base64")
    style_image_b64: str | None = Field(
        None, description="optional reference image (base64): the background follows its look and colours"
    )


@dataclass(frozen=True)
class ParsedRequest:
    """A request that passed every check: its fields, the image bytes (or an allowlisted URI in
    ``fields.image_uri``), the optional reference image, and the canonical aspects and profiles."""

    fields: GenerateFields
    image: bytes | None
    style_image: bytes | None
    aspects: list[str]
    profiles: list[str]


def request_body_openapi(responses: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of POST /v1/backgrounds (both encodings) plus ``responses``."""
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
        "responses": responses,
    }


def validate_model(model: type[BaseModel], data: Any) -> Any:
    """``model.model_validate(data)``, or a 422 whose message names each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ApiError(422, "validation_error", pydantic_message(error.errors())) from None


class BodyReader:
    """Reads a request body in chunks, never more than a cap (413 beyond, refused from
    ``Content-Length`` before reading when it is declared), and drains refused bodies up to
    ``serve.max_drain_bytes`` so that a client still uploading sees the 413 rather than a broken pipe."""

    def __init__(self, limits: ServeConfig):
        self.limits = limits

    def too_large(self, field: str | None = None, limit: int | None = None) -> ApiError:
        """413 naming the limit that applies: ``limit`` when given (a body with its own cap, such as a job
        request), else the upload limit."""
        what = f"{field}: the file" if field else ("the body" if limit else "the upload")
        cap = limit or self.limits.max_upload_bytes
        return ApiError(413, "too_large", f"{what} is larger than the limit of {cap} bytes")

    async def read(self, request: Request, cap: int, limit: int | None = None) -> bytes:
        """The body, at most ``cap`` bytes; the 413 names ``limit`` (default: the upload limit)."""
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise ApiError(400, "bad_request", "Content-Length is not a number")
            if int(length) > cap:  # refused from the header, before reading a byte
                await self.drain(request, int(length))
                raise self.too_large(limit=limit)
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > cap:  # a streamed body is refused once it passes the limit
                await self.drain(request, None)
                raise self.too_large(limit=limit)
            chunks.append(chunk)
        return b"".join(chunks)

    async def drain(self, request: Request, length: int | None) -> None:
        if length is not None and length > self.limits.max_drain_bytes:
            return  # beyond that, the connection is closed
        drained = 0
        async for chunk in request.stream():
            drained += len(chunk)
            if drained > self.limits.max_drain_bytes:
                return

    async def read_json(self, request: Request, cap: int) -> dict[str, Any]:
        """A bounded body parsed as one JSON object (UTF-8 only, bounded depth, no duplicate keys)."""
        return parse_json_object(await self.read(request, cap, limit=cap), self.limits.max_json_depth)


class RequestReader:
    """Parses and checks one ``POST /v1/backgrounds`` request against the serving limits."""

    def __init__(self, limits: ServeConfig, styles: StyleBook, profiles: ProfileBook):
        self.limits = limits
        self.styles = styles
        self.profiles = profiles
        self.body = BodyReader(limits)

    async def read(self, request: Request) -> ParsedRequest:
        fields, image, style_image = await self.parse(request)
        aspects = self.check(fields)
        profiles = self.check_profiles(fields)
        if image is not None and fields.image_uri is not None:
            raise ApiError(400, "bad_request", "give either an image or image_uri, not both")
        if image is None and fields.image_uri is None:
            raise ApiError(422, "validation_error", "image: a product photo is required")
        return ParsedRequest(fields, image, style_image, aspects, profiles)

    # -- encodings ----------------------------------------------------------------------------------

    async def parse(self, request: Request) -> tuple[GenerateFields, bytes | None, bytes | None]:
        """Fields, product image bytes and optional reference (style) image bytes."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        upload = self.limits.max_upload_bytes
        # two files at most (product + reference), each under the upload limit
        if ctype == "multipart/form-data":
            body = await self.body.read(request, 2 * upload + FORM_OVERHEAD)
            return await self.parse_form(request, body)
        if ctype == "application/json" or ctype.endswith("+json"):
            body = await self.body.read(request, 2 * (upload * 4 // 3) + FORM_OVERHEAD)
            return self.parse_json(body)
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send multipart/form-data (field 'image') or application/json (field 'image_base64'), "
            f"not {ctype or 'no content type'}",
        )

    async def parse_form(
        self, request: Request, body: bytes
    ) -> tuple[GenerateFields, bytes | None, bytes | None]:
        sent = False

        async def replay() -> dict[str, Any]:  # the already-bounded body, handed to Starlette's parser
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(
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
            raise self.body.too_large()
        fields = {k: v for k, v in fields.items() if not (k != "style" and v == "")}
        return validate_model(GenerateFields, fields), files.get("image"), files.get("style_image")

    async def _read_upload(self, upload: Any, field: str) -> bytes:
        chunks, total = [], 0
        while chunk := await upload.read(64 * 1024):
            total += len(chunk)
            if total > self.limits.max_upload_bytes:
                raise self.body.too_large(field)
            chunks.append(chunk)
        return b"".join(chunks)

    def parse_json(self, body: bytes) -> tuple[GenerateFields, bytes | None, bytes | None]:
        data = parse_json_object(body, self.limits.max_json_depth)  # UTF-8 only, bounded depth, no dup keys
        fields: GenerateJSON = validate_model(GenerateJSON, data)
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
            raise self.body.too_large(field)
        return data

    # -- values -------------------------------------------------------------------------------------

    def check(self, fields: GenerateFields) -> list[str]:
        """Value checks (400); returns the canonical aspect ratios."""
        if fields.image_uri is not None:
            allowed = self.limits.allowed_uri_prefixes
            if not allowed:
                raise ApiError(400, "url_fetch_disabled", "URL fetching is disabled: upload the image")
            if not uri_allowed(fields.image_uri, allowed):
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
        if fields.product_box:
            from canvas_ray.stages.segment import parse_box

            try:
                parse_box(fields.product_box[:200])
            except ValueError as error:
                raise ApiError(400, "bad_product_box", str(error)) from None
        try:
            self.styles.resolve(fields.style)
        except ValueError as error:
            raise ApiError(400, "bad_style", str(error)) from None
        if fields.prompt is not None and len(fields.prompt) > MAX_PROMPT_TEXT:
            raise ApiError(400, "bad_request", f"prompt is longer than {MAX_PROMPT_TEXT} characters")
        if fields.title is not None and len(fields.title) > MAX_TITLE_TEXT:
            raise ApiError(400, "bad_request", f"title is longer than {MAX_TITLE_TEXT} characters")
        if fields.aspect_ratios is None:
            return []
        aspects: list[str] = []
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
        if len(aspects) > MAX_ASPECTS:
            raise ApiError(400, "bad_aspect", f"at most {MAX_ASPECTS} aspect ratios")
        return aspects

    def check_profiles(self, fields: GenerateFields) -> list[str]:
        """The requested output profiles, each known (400 otherwise)."""
        names = [p.strip() for p in (fields.profile or "").split(",") if p.strip()]
        if len(names) > MAX_PROFILES:
            raise ApiError(400, "bad_profile", f"at most {MAX_PROFILES} profiles")
        for name in names:
            try:
                self.profiles.get(name)
            except ValueError as error:
                raise ApiError(400, "bad_profile", str(error)) from None
        return list(dict.fromkeys(names))
