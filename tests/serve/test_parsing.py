"""Request parsing and validation without a running Serve: a Starlette request built from an ASGI scope
and a receive callable, through the same RequestReader the ingress uses."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from canvas_ray.config import load_config
from canvas_ray.profiles import ProfileBook
from canvas_ray.styles import StyleBook
from canvas_ray.testing import product_png
from serve.auth import authorize, uri_allowed
from serve.errors import ApiError
from serve.parsing import MAX_SEED, BodyReader, RequestReader

LIMITS = {"serve.max_upload_bytes": 64 * 1024, "serve.max_json_depth": 8, "serve.max_drain_bytes": 1024}


@pytest.fixture(scope="module")
def reader() -> RequestReader:
    config = load_config(None, LIMITS)
    return RequestReader(
        config.serve, StyleBook.from_config(config), ProfileBook.load(config.output.profiles_file)
    )


def request(body: bytes, content_type: str, chunk: int | None = None, length: bool = True) -> Request:
    """An ASGI request whose body arrives in ``chunk``-byte messages."""
    headers = [(b"content-type", content_type.encode())]
    if length:
        headers.append((b"content-length", str(len(body)).encode()))
    parts = [body[i : i + chunk] for i in range(0, len(body), chunk)] if chunk else [body]
    messages = [
        {"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)
    ]
    received: list[int] = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/backgrounds",
        "headers": headers,
        "query_string": b"",
    }
    req = Request(scope, receive)
    req.state.received = received
    return req


def multipart(fields: dict[str, str], image: bytes | None = None) -> tuple[bytes, str]:
    files = {"image": ("p.png", image, "image/png")} if image is not None else None
    built = httpx.Request("POST", "http://x/", data=fields, files=files)
    return built.read(), built.headers["content-type"]


def read(reader: RequestReader, req: Request) -> Any:
    return asyncio.run(reader.read(req))


def refused(reader: RequestReader, req: Request) -> ApiError:
    with pytest.raises(ApiError) as caught:
        read(reader, req)
    assert 400 <= caught.value.status < 500 and len(caught.value.message) > 10
    return caught.value


def test_multipart_and_json_give_the_same_request(reader):
    png = product_png(32, 32)
    fields = {"style": "studio white", "n": "2", "seed": "7", "aspect_ratios": "1:1, 16:9,1:1"}
    body, ctype = multipart(fields, png)
    form = read(reader, request(body, ctype, chunk=1000))
    payload = {**fields, "n": 2, "seed": 7, "image_base64": base64.b64encode(png).decode()}
    as_json = read(reader, request(json.dumps(payload).encode(), "application/json"))
    for parsed in (form, as_json):
        assert parsed.image == png and parsed.fields.n == 2 and parsed.fields.seed == 7
        assert parsed.aspects == ["1:1", "16:9"]  # canonical, de-duplicated
        assert parsed.profiles == [] and parsed.style_image is None


def test_profiles_are_checked(reader):
    body, ctype = multipart(
        {"style": "studio white", "profile": "amazon-main, amazon-main"}, product_png(32, 32)
    )
    assert read(reader, request(body, ctype)).profiles == ["amazon-main"]
    body, ctype = multipart({"style": "studio white", "profile": "no-such-shop"}, product_png(32, 32))
    assert refused(reader, request(body, ctype)).code == "bad_profile"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"style": "studio white", "n": "0"}, "bad_request"),
        ({"style": "studio white", "seed": str(MAX_SEED + 1)}, "bad_request"),
        ({"style": "a|b"}, "bad_style"),
        ({"style": "x" * 5000}, "bad_style"),
        ({"style": "studio\x1b[31m white"}, "bad_request"),
        ({"style": "studio white", "title": "t\x00"}, "bad_request"),
        ({"style": "studio white", "aspect_ratios": "1:0"}, "bad_aspect"),
        ({"style": "studio white", "aspect_ratios": " , "}, "bad_aspect"),
        ({"style": "studio white", "image_uri": "file:///etc/passwd"}, "url_fetch_disabled"),
        ({"style": "studio white", "n": "two"}, "validation_error"),
        ({"style": "studio white", "colour": "red"}, "validation_error"),
        ({"style": "studio white", "product_box": "10,10,5,20"}, "bad_product_box"),
        ({"style": "studio white", "product_box": "a,b,c,d"}, "bad_product_box"),
    ],
)
def test_bad_fields_are_4xx_with_a_reason(reader, fields, code):
    body, ctype = multipart(fields, product_png(32, 32))
    assert refused(reader, request(body, ctype)).code == code


def test_body_limits_from_the_header_and_while_streaming(reader):
    big = b'{"style": "x", "image_base64": "' + b"A" * 1_000_000 + b'"}'  # past the JSON cap (~440 kB)
    req = request(big, "application/json", chunk=4096)
    assert refused(reader, req).status == 413
    assert req.state.received == []  # refused from Content-Length, before reading (and past the drain cap)
    streamed = request(big, "application/json", chunk=4096, length=False)
    assert refused(reader, streamed).status == 413
    assert len(streamed.state.received) < len(big) // 4096  # stopped soon after passing the cap


@pytest.mark.parametrize(
    ("body", "ctype", "status"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "application/json", 400),  # deeper than max_json_depth
        ('{"style": "x"}'.encode("utf-16"), "application/json", 400),
        (b"\xef\xbb\xbf" + b'{"style": "x"}', "application/json", 400),
        (b'{"style": "x", "style": "y"}', "application/json", 400),
        (b'{"style": "\xff"}', "application/json", 400),
        (b'["style"]', "application/json", 422),
        (b"{}", "application/json", 422),
        (b'{"style": "x", "image_base64": "***"}', "application/json", 422),
        (b"<a/>", "application/xml", 415),
        (b"--x\r\nContent-Disposition: form-data; name=", "multipart/form-data; boundary=x", 422),
    ],
)
def test_hostile_bodies(reader, body, ctype, status):
    assert refused(reader, request(body, ctype)).status == status


def test_body_reader_refuses_a_bad_content_length():
    reader = BodyReader(load_config(None, LIMITS).serve)
    req = request(b"{}", "application/json")
    req.scope["headers"] = [(b"content-length", b"12abc")]
    with pytest.raises(ApiError) as caught:
        asyncio.run(reader.read(req, 1024))
    assert caught.value.status == 400


def test_authorize_and_uri_allowlist():
    assert authorize({}, []) is None  # no keys configured: open
    assert authorize({"authorization": "Bearer k1"}, ["k0", "k1"]) == "k1"
    for headers in ({}, {"authorization": "Basic k1"}, {"authorization": "Bearer nope"}):
        with pytest.raises(ApiError) as caught:
            authorize(headers, ["k1"])
        assert caught.value.status == 401
    allowed = ["s3://bucket/images/"]
    assert uri_allowed("s3://bucket/images/a.png", allowed)
    for uri in (
        "s3://bucket/images/../secret.png",
        "s3://bucket/images/%2e%2e/secret.png",
        "s3://bucket/images/%252e%252e/secret.png",
        "s3://bucket/other/a.png",
        "s3://bucket/images/a.png\n",
        "http://169.254.169.254/latest/meta-data/",
    ):
        assert not uri_allowed(uri, allowed), uri
