"""The jobs API under attack (issue 21), as an attacker with a valid key sees it: one real Ray head (with the
job server) and one Serve app on 127.0.0.1 for the module. Most cases are answered at submission, so only
three kinds of job are submitted: one catalog whose rows point outside the allowlist (it runs to the end),
and the races on slots and output names (their winners are cancelled at once). The refusing job server and
the signature checks run without a cluster."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pyarrow.dataset as pads
import pytest
import ray

from canvas_ray.config import REPO_ROOT, JobsConfig, load_config
from canvas_ray.io.uris import uri_allowed
from serve.errors import ApiError
from serve.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, deliver_webhook, sign, verify_signature
from tests.jobs.test_cluster import _free_port, _stop_head, _wait_http, head_temp_dir, start_head

pytestmark = pytest.mark.ray_cluster  # starts its own Ray (conftest: the own-cluster xdist group)

SAMPLE = REPO_ROOT / "examples" / "catalog"
KEYS = {name: f"hostile-{name}-{secrets.token_hex(4)}" for name in ("rows", "race", "output", "misc")}
SECRET = secrets.token_hex(16)
SMALL = {"num_cpus": 0.1, "concurrency": 1, "batch_size": 4}
LIMIT = 2
MAX_OUTPUTS = 200


class Recorder:
    """An HTTP server on 127.0.0.1 that records every request. ``/hop`` redirects to ``redirect_to``,
    ``/fail`` answers 400 with a body that must never reach the caller, anything else 204."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.redirect_to = ""
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                )
                if self.path.startswith("/hop"):
                    self.send_response(307)
                    self.send_header("Location", recorder.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path.startswith("/fail"):
                    detail = b"internal detail of the target"
                    self.send_response(400)
                    self.send_header("Content-Length", str(len(detail)))
                    self.end_headers()
                    self.wfile.write(detail)
                    return
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _record  # noqa: N815 - http.server's names

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]


def _catalog_rows(allowed: Path, outside: Path, probe: Recorder) -> list[dict[str, str]]:
    """One good row and every way a row tried to read outside the allowlist (issue 21, item 1)."""
    outside_image = outside / "images" / "sku-0003.jpg"
    (allowed / "images" / "link.jpg").symlink_to(outside_image)
    return [
        {"item_id": "good", "image_uri": "images/sku-0002.jpg"},
        {"item_id": "abs-outside", "image_uri": str(outside_image)},
        {"item_id": "file-url-outside", "image_uri": f"file://{outside_image}"},
        {"item_id": "dotdot", "image_uri": f"../{outside.name}/images/sku-0003.jpg"},
        {"item_id": "symlink", "image_uri": "images/link.jpg"},
        {"item_id": "http-loopback", "image_uri": f"{probe.origin}/x.jpg"},
        {
            "item_id": "style-loopback",
            "image_uri": "images/sku-0002.jpg",
            "style_image_uri": f"{probe.origin}/y.jpg",
        },
    ]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from ray import serve

    from serve.app import build_app

    if ray.is_initialized():
        ray.shutdown()
    temp = head_temp_dir()  # short: Ray's unix socket paths are capped at 107 bytes
    port, dashboard, http_port = _free_port(), _free_port(), _free_port()
    env = dict(os.environ, RAY_DEDUP_LOGS="0", CANVAS_RAY_WEBHOOK_SECRET=SECRET)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    head = start_head(temp, port, dashboard, env, num_cpus=4)  # stopped by _stop_head: its process group
    base = tmp_path_factory.mktemp("hostile")
    allowed, outside, jobs_root = base / "allowed", base / "outside", base / "job-outputs"
    for folder in (allowed, outside):
        shutil.copytree(SAMPLE / "images", folder / "images")
    jobs_root.mkdir()
    probe, receiver = Recorder(), Recorder()
    (allowed / "quick.jsonl").write_text(json.dumps({"item_id": "one", "image_uri": "images/sku-0002.jpg"}))
    rows = _catalog_rows(allowed, outside, probe)
    (allowed / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (outside / "quick.jsonl").write_text((allowed / "quick.jsonl").read_text())
    (allowed / "catalog-link.jsonl").symlink_to(outside / "quick.jsonl")
    many = [{"item_id": f"m{i:04d}", "image_uri": "images/sku-0002.jpg"} for i in range(MAX_OUTPUTS + 1)]
    (allowed / "many.jsonl").write_text("\n".join(json.dumps(r) for r in many))
    overrides: dict[str, Any] = {f"{s}.resources": dict(SMALL) for s in ("segment", "caption", "inpaint")}
    overrides.update(
        {
            "composite.resources": dict(SMALL),
            "serve.api_keys": list(KEYS.values()),
            "serve.jobs.allowed_catalog_prefixes": [str(allowed) + "/"],
            "serve.jobs.output_root": str(jobs_root),
            "serve.jobs.dashboard_address": f"http://127.0.0.1:{dashboard}",
            "serve.jobs.webhook_allowed_origins": [receiver.origin],
            "serve.jobs.max_concurrent_per_key": LIMIT,
            "serve.jobs.max_outputs": MAX_OUTPUTS,
            "serve.jobs.poll_s": 0.5,
            "serve.jobs.webhook_backoff_s": 0.2,
            "serve.jobs.webhook_deadline_s": 20,
        }
    )
    config = load_config(REPO_ROOT / "configs" / "weightfree.yaml", overrides)
    try:
        _wait_http(f"http://127.0.0.1:{dashboard}/api/version", timeout=180)
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        serve.run(build_app(config), name="hostile", route_prefix="/")
        url = f"http://127.0.0.1:{http_port}"
        with httpx.Client(base_url=url, timeout=120, trust_env=False) as client:
            yield {
                "client": client,
                "base": url,
                "dashboard": f"http://127.0.0.1:{dashboard}",
                "allowed": allowed,
                "outside": outside,
                "jobs_root": jobs_root,
                "probe": probe,
                "receiver": receiver,
                "rows": rows,
            }
    finally:
        probe.server.shutdown()
        receiver.server.shutdown()
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        _stop_head(head, str(temp))


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def wait_for(
    client: httpx.Client, job_id: str, key: str, states: tuple[str, ...], timeout: float = 300
) -> dict:
    deadline = time.time() + timeout
    body: dict[str, Any] = {}
    while time.time() < deadline:
        body = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        if body["state"] in states:
            return body
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {body}")


def cancel_all(client: httpx.Client, key: str, job_ids: list[str]) -> None:
    for job_id in job_ids:
        response = client.delete(f"/v1/jobs/{job_id}", headers=auth(key))
        assert response.status_code in (200, 409), response.text  # 409: it had already finished
    for job_id in job_ids:
        wait_for(client, job_id, key, ("STOPPED", "SUCCEEDED", "FAILED"), timeout=120)


def concurrently(client: httpx.Client, bodies: list[dict[str, Any]], key: str) -> list[httpx.Response]:
    """POST every body at the same moment (a barrier releases the threads together)."""
    barrier = threading.Barrier(len(bodies))
    responses: list[httpx.Response | None] = [None] * len(bodies)

    def post(index: int) -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=120, trust_env=False) as own:
            barrier.wait()
            responses[index] = own.post("/v1/jobs", json=bodies[index], headers=auth(key))

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r is not None for r in responses)
    return [r for r in responses if r is not None]


# ---- 1. catalog rows obey the allowlist; webhooks reach only allowed origins, on every hop ------------


def test_rows_outside_the_allowlist_become_error_rows(stack):
    client, probe, receiver = stack["client"], stack["probe"], stack["receiver"]
    # the webhook's first hop is allowed; its redirect goes to another port of the same host (the Ray
    # dashboard's job API): refused, nothing sent there, and the caller learns only the outcome
    receiver.redirect_to = stack["dashboard"] + "/api/jobs/"
    response = client.post(
        "/v1/jobs",
        headers=auth("rows"),
        json={
            "catalog": str(stack["allowed"] / "rows.jsonl"),
            "styles": ["studio white"],
            "aspect_ratios": ["1:1"],
            "output": "rows-run",
            "webhook_url": receiver.origin + "/hop",
        },
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert response.json()["outputs_expected"] == len(stack["rows"])
    done = wait_for(client, job_id, "rows", ("SUCCEEDED", "FAILED"))
    assert done["state"] == "SUCCEEDED", done
    # one record per requested output: the good row made its image, every other row is an error row
    manifest = pads.dataset(Path(done["output"]) / "manifest", format="parquet").to_table().to_pylist()
    by_id = {row["item_id"]: row for row in manifest}
    assert sorted(by_id) == sorted(r["item_id"] for r in stack["rows"]) and len(manifest) == len(by_id)
    assert by_id["good"]["status"] in ("ok", "review")
    for item_id, row in by_id.items():
        if item_id == "good":
            continue
        assert row["status"] == "error" and row["error_stage"] == "fetch", row
        assert "not under an allowed prefix" in row["error_reason"], row
    assert done["progress"]["error"] == len(stack["rows"]) - 1
    assert probe.requests == []  # no GET from inside the cluster reached the loopback server
    # nothing of the outside file can be downloaded: the refused rows wrote no image or thumbnail
    written = [p.name for p in Path(done["output"]).rglob("*") if p.is_file()]
    assert any(name.startswith("good__") for name in written)
    assert not any(name.startswith(("abs-outside", "symlink", "file-url", "dotdot")) for name in written)
    # webhook: one hop delivered to the receiver, the redirect onto the dashboard's port refused
    deadline = time.time() + 30
    body = done
    while body.get("webhook") is None and time.time() < deadline:
        time.sleep(0.5)
        body = client.get(f"/v1/jobs/{job_id}", headers=auth("rows")).json()
    assert body["webhook"] == {"delivered": False, "attempts": 1, "event": "job.succeeded"}
    assert receiver.paths().count("/hop") == 1
    hop = next(r for r in receiver.requests if r["path"] == "/hop")
    assert verify_signature(SECRET, hop["body"], hop["headers"][SIGNATURE_HEADER])
    stamp = int(hop["headers"][SIGNATURE_HEADER].split(",")[0].removeprefix("t="))
    assert hop["headers"][SIGNATURE_HEADER] == independent_signature(SECRET, hop["body"], stamp)
    assert len(hop["headers"][DELIVERY_HEADER]) == 32
    record = json.loads((Path(done["output"]) / "webhook.json").read_text())
    assert "not on an allowed origin" in record["error"]  # the operator's record keeps the reason
    # the unauthenticated dashboard shows neither the webhook URL nor a plain hash of the key
    listed = httpx.get(stack["dashboard"] + "/api/jobs/", trust_env=False).json()
    metadata = next(j["metadata"] for j in listed if j.get("submission_id") == job_id)
    assert receiver.origin not in json.dumps(metadata)
    assert metadata["owner"] != hashlib.sha256(KEYS["rows"].encode()).hexdigest()[:24]
    assert KEYS["rows"] not in json.dumps(listed)
    assert body["message"] == ""  # a finished job has no failure reason to tell


# ---- 2. and 3. limits that hold under concurrency -------------------------------------------------------


def test_per_key_limit_holds_for_20_concurrent_submissions(stack):
    client = stack["client"]
    small = {
        "catalog": str(stack["allowed"] / "quick.jsonl"),
        "styles": ["studio white"],
        "aspect_ratios": ["1:1"],
    }
    responses = concurrently(client, [small] * 20, "race")
    codes = sorted(r.status_code for r in responses)
    accepted = [r.json()["job_id"] for r in responses if r.status_code == 202]
    try:
        assert codes == [202] * LIMIT + [429] * (20 - LIMIT), codes
        refused = [r for r in responses if r.status_code == 429]
        assert all(r.json()["error"]["code"] == "too_many_jobs" for r in refused)
        assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
        listed = client.get("/v1/jobs", headers=auth("race")).json()["jobs"]
        assert sorted(j["job_id"] for j in listed) == sorted(accepted)
    finally:
        cancel_all(client, "race", accepted)
    # once they are finished, the key has its slots back
    again = client.post("/v1/jobs", json=small, headers=auth("race"))
    assert again.status_code == 202, again.text
    cancel_all(client, "race", [again.json()["job_id"]])


def test_two_submissions_never_share_an_output(stack):
    client = stack["client"]
    body = {
        "catalog": str(stack["allowed"] / "quick.jsonl"),
        "styles": ["studio white"],
        "aspect_ratios": ["1:1"],
        "output": "shared",
    }
    responses = concurrently(client, [body, body], "output")
    codes = sorted(r.status_code for r in responses)
    accepted = [r.json()["job_id"] for r in responses if r.status_code == 202]
    try:
        assert codes == [202, 409], [r.text for r in responses]
        conflict = next(r for r in responses if r.status_code == 409)
        assert conflict.json()["error"]["code"] == "output_in_use"
        record = json.loads((stack["jobs_root"] / "shared" / "job.json").read_text())
        assert record["job_id"] == accepted[0]
    finally:
        cancel_all(client, "output", accepted)


# ---- 4., 5., 9., 10.: answered at submission ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        # unbounded list fields (400 distinct aspects; 4,000 copies of one profile)
        ({"aspect_ratios": [f"{i}:{i + 1}" for i in range(1, 401)]}, 422, "validation_error"),
        ({"profiles": ["amazon-main"] * 4000}, 422, "validation_error"),
        ({"aspect_ratios": [f"{i}:{i + 1}" for i in range(1, 10)]}, 400, "bad_aspect"),
        ({"styles": ["studio white\u0007"]}, 400, "bad_style"),
        # outputs per item × items over the operator's cap: 8 styles × 8 aspects × 4 variants on one row,
        # and MAX_OUTPUTS + 1 rows of one output each
        (
            {
                "styles": ["studio white", "marble countertop", "minimalist pastel"]
                + [f"a plain {colour} wall" for colour in ("red", "blue", "green", "grey", "pink")],
                "aspect_ratios": ["1:1", "4:5", "16:9", "9:16", "3:2", "2:3", "4:3", "3:4"],
                "variants": 4,
            },
            400,
            "too_many_outputs",
        ),
        ({"catalog": "{allowed}/many.jsonl"}, 400, "too_many_outputs"),
        # strict types: no booleans or strings for numbers
        ({"limit": True}, 422, "validation_error"),
        ({"variants": "2"}, 422, "validation_error"),
        ({"variants": 2.0}, 422, "validation_error"),
        # webhook URLs: control characters, other ports of an allowed host, bad ports, other schemes
        ({"webhook_url": "{receiver}/a\nb"}, 400, "webhook_not_allowed"),
        ({"webhook_url": " {receiver}/a"}, 400, "webhook_not_allowed"),
        ({"webhook_url": "{dashboard}/api/jobs/"}, 400, "webhook_not_allowed"),
        ({"webhook_url": "http://127.0.0.1:99999/"}, 400, "webhook_not_allowed"),
        ({"webhook_url": "http://127.0.0.1/"}, 400, "webhook_not_allowed"),
        ({"webhook_url": "https://127.0.0.1:{receiver_port}/"}, 400, "webhook_not_allowed"),
        ({"webhook_url": "http://user@127.0.0.1:{receiver_port}/"}, 400, "webhook_not_allowed"),
        # symlinks in the allowed folder do not lead out of it
        ({"catalog": "{allowed}/catalog-link.jsonl"}, 403, "catalog_not_allowed"),
        ({"catalog": "{allowed}/../outside/quick.jsonl"}, 403, "catalog_not_allowed"),
        # duplicates are folded before the caps: 9 copies of one aspect pass, the bad output answers
        ({"aspect_ratios": ["1:1"] * 9, "output": "../escape"}, 400, "bad_output"),
    ],
)
def test_refused_at_submission(stack, body, status, code):
    fill = {
        "allowed": str(stack["allowed"]),
        "receiver": stack["receiver"].origin,
        "receiver_port": str(stack["receiver"].port),
        "dashboard": stack["dashboard"],
    }
    request = {"catalog": str(stack["allowed"] / "quick.jsonl")}
    for key, value in body.items():
        request[key] = value.format(**fill) if isinstance(value, str) else value
    before = {p.name for p in stack["jobs_root"].iterdir()}
    response = stack["client"].post("/v1/jobs", json=request, headers=auth("misc"))
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert {p.name for p in stack["jobs_root"].iterdir()} == before  # nothing claimed, nothing written


def test_oversized_job_body_names_the_real_limit(stack):
    padding = "x" * (70 * 1024)
    response = stack["client"].post(
        "/v1/jobs",
        content=json.dumps({"catalog": padding}),
        headers={**auth("misc"), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert "65536 bytes" in response.json()["error"]["message"]


def test_prefixes_need_a_trailing_slash():
    with pytest.raises(ValueError, match="must end in '/'"):
        JobsConfig(allowed_catalog_prefixes=["s3://catalogs"])
    with pytest.raises(ValueError, match="must end in '/'"):
        JobsConfig(allowed_row_prefixes=["s3://images"])
    with pytest.raises(ValueError, match="replaced by webhook_allowed_origins"):
        JobsConfig.model_validate({"webhook_allowed_hosts": ["127.0.0.1"]})
    with pytest.raises(ValueError, match="scheme://host:port"):
        JobsConfig(webhook_allowed_origins=["http://127.0.0.1"])
    assert not uri_allowed("s3://catalogs-evil/x.jsonl", ["s3://catalogs/"])
    assert uri_allowed("s3://catalogs/x.jsonl", ["s3://catalogs/"])


# ---- 7. signatures ---------------------------------------------------------------------------------------


def independent_signature(secret: str, body: bytes, timestamp: int) -> str:
    """The documented header (serve/webhooks.py: HMAC-SHA256 over ``"<unix time>." + body``, sent as
    ``t=<time>,v1=<64 hex>``) computed here with ``hmac`` and ``hashlib``, not with the code under test."""
    mac = hmac.new(secret.encode(), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def test_signature_is_hmac_sha256_of_time_dot_body():
    # the helper is HMAC-SHA256: RFC 4231, test case 2
    rfc = hmac.new(b"Jefe", b"what do ya want for nothing?", hashlib.sha256).hexdigest()
    assert rfc == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    # a fixed vector of the documented format, written out once, so that sign() and the helper are
    # each held to a value neither of them computed
    body, secret, now = (
        b'{"event":"job.succeeded","job_id":"cr-0123"}',
        "whsec-canvas-ray-test",
        1_900_000_000,
    )
    vector = "t=1900000000,v1=027c32c5fa0573b523b74239850f1446f7d4ebed19d57d8e1f1fc4f50b76f62f"
    assert independent_signature(secret, body, now) == vector
    assert sign(secret, body, now) == vector
    assert verify_signature(secret, body, vector, now=now)
    assert not verify_signature(secret, body, independent_signature(secret, body + b"x", now), now=now)
    assert not verify_signature(secret, body, independent_signature("other", body, now), now=now)
    later = independent_signature(secret, body, now + 60)  # the timestamp is inside the MAC
    assert later.split("v1=")[1] != vector.split("v1=")[1]
    assert not verify_signature(secret, body, f"t={now},v1={later.split('v1=')[1]}", now=now)


def test_signatures_expire_and_malformed_headers_are_false():
    body, now = b'{"event":"job.succeeded"}', 1_900_000_000
    fresh = sign(SECRET, body, now)
    assert verify_signature(SECRET, body, fresh, now=now + 299)
    assert not verify_signature(SECRET, body, fresh, now=now + 301)  # replayed after the tolerance
    assert not verify_signature(SECRET, body, sign(SECRET, body, now - 365 * 86400), now=now)  # a year old
    assert not verify_signature(SECRET, body + b" ", fresh, now=now)
    assert not verify_signature("other", body, fresh, now=now)
    digest = fresh.split("v1=")[1]
    for header in (
        "t=١٢٣,v1=00",  # Arabic-Indic digits: str.isdigit() says yes, int() agrees, ASCII parsing does not
        f"t=١٩٠٠٠٠٠٠٠٠,v1={digest}",
        f"t={now},v1={digest.upper()}",
        f"t={now},v1={digest},v1={digest}",
        f"t={now},t={now},v1={digest}",
        f"t=+{now},v1={digest}",
        f"t={now} ,v1={digest}x",
        f"v1={digest}",
        f"t={now}",
        "",
        "garbage",
        f"t={now},v1={'ä' * 64}",
        f"t={'9' * 400},v1={digest}",
    ):
        assert verify_signature(SECRET, body, header, now=now) is False, header
    assert verify_signature(SECRET, body, None, now=now) is False  # type: ignore[arg-type]


def test_webhook_target_errors_are_records_not_exceptions():
    import asyncio

    target = Recorder()
    try:
        origins = [target.origin]
        payload = {"event": "job.failed"}
        refused = asyncio.run(deliver_webhook(target.origin + "/fail", payload, SECRET, origins, backoff_s=0))
        assert refused["delivered"] is False and refused["attempts"] == 1 and refused["status"] == 400
        closed = f"http://127.0.0.1:{_free_port()}"
        down = asyncio.run(deliver_webhook(closed + "/x", payload, SECRET, [closed], attempts=2, backoff_s=0))
        assert down["delivered"] is False and down["attempts"] == 2 and "ConnectError" in down["error"]
        for bad in (target.origin + "/a\nb", "http://127.0.0.1:99999/", "nonsense"):
            record = asyncio.run(deliver_webhook(bad, payload, SECRET, origins + [bad], backoff_s=0))
            assert record["delivered"] is False and "allowed origin" in record["error"], record
        assert target.paths() == ["/fail"]
    finally:
        target.server.shutdown()


# ---- 8. a job server that refuses ------------------------------------------------------------------------


class RefusingJobServer:
    """Answers like a Ray dashboard whose job agent is unavailable: version and list work, submit fails."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith("/api/version"):
                    self._send(200, {"version": "4", "ray_version": ray.__version__, "ray_commit": "x"})
                else:
                    self._send(200, [])

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(500)
                message = b"No available agent to submit job, please try again later."
                self.send_header("Content-Length", str(len(message)))
                self.end_headers()
                self.wfile.write(message)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_refusing_job_server_is_503_and_gives_back_output_and_slot(tmp_path):
    from serve.jobs import JobRequest, JobService

    refusing = RefusingJobServer()
    allowed = tmp_path / "allowed"
    shutil.copytree(SAMPLE / "images", allowed / "images")
    (allowed / "quick.jsonl").write_text(json.dumps({"item_id": "one", "image_uri": "images/sku-0002.jpg"}))
    config = load_config(
        REPO_ROOT / "configs" / "weightfree.yaml",
        {
            "serve.jobs.allowed_catalog_prefixes": [str(allowed) + "/"],
            "serve.jobs.output_root": str(tmp_path / "jobs"),
            "serve.jobs.dashboard_address": refusing.address,
            "serve.jobs.max_concurrent_per_key": 1,
            "serve.jobs.retry_after_s": 7,
        },
    )
    service = JobService(config)
    body = JobRequest(catalog=str(allowed / "quick.jsonl"), output="kept-name")
    try:
        for _ in range(3):  # the same name again and again: 503 each time, never 409 (name given back),
            with pytest.raises(ApiError) as caught:  # never 429 (slot given back)
                service.submit(body, "some-key")
            assert caught.value.status == 503 and caught.value.code == "jobs_unavailable"
            assert caught.value.headers["Retry-After"] == "7"
            assert "No available agent" not in caught.value.message  # the server's words stay in the log
            assert not (tmp_path / "jobs" / "kept-name" / "job.json").exists()
        claims = sorted((tmp_path / "jobs" / ".claims").rglob("slot-*"))
        assert [p.name.split("-")[1] for p in claims] == ["0"] * 6  # three claims, each with its release
        released = [bool(json.loads(p.read_text()).get("released")) for p in claims]
        assert released == [False, True] * 3
    finally:
        refusing.server.shutdown()


def test_failure_reason_is_short():
    from serve.jobs import failure_reason

    log_tail = (
        "Job entrypoint command failed with exit code 1, last available logs: Traceback ... /srv/secret"
    )
    assert failure_reason("FAILED", log_tail) == "the job failed (exit code 1); the operator has its log"
    assert failure_reason("FAILED", "runtime_env setup failed: /srv/x") == (
        "the job could not run; the operator has its log"
    )
    assert failure_reason("SUCCEEDED", "anything") == ""


def test_example_receiver_verifies_and_refuses_replays():
    """examples/webhook_receiver.py, run as a user would: a real delivery is accepted once; the same
    request again is not acted on; a year-old signature and a wrong one are 401."""
    import asyncio
    import subprocess

    port = _free_port()
    env = dict(os.environ, CANVAS_RAY_WEBHOOK_SECRET=SECRET)
    receiver = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "examples" / "webhook_receiver.py"), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None and "listening" in receiver.stdout.readline()
        origin = f"http://127.0.0.1:{port}"
        payload = {"event": "job.succeeded", "job_id": "cr-0123456789abcdef0123"}
        record = asyncio.run(deliver_webhook(origin + "/hook", payload, SECRET, [origin]))
        assert record["delivered"] is True and record["status"] == 204
        assert json.loads(receiver.stdout.readline()) == {
            "event": "job.succeeded",
            "job_id": payload["job_id"],
        }
        body = json.dumps(payload, sort_keys=True).encode()
        headers = {
            SIGNATURE_HEADER: sign(SECRET, body, int(time.time())),
            DELIVERY_HEADER: record["delivery"],
        }
        replay = httpx.post(origin + "/hook", content=body, headers=headers, trust_env=False)
        assert replay.status_code == 200 and replay.text == "already received"
        old = {**headers, SIGNATURE_HEADER: sign(SECRET, body, int(time.time()) - 365 * 86400)}
        assert httpx.post(origin + "/hook", content=body, headers=old, trust_env=False).status_code == 401
        wrong = {**headers, SIGNATURE_HEADER: sign("not-the-secret", body, int(time.time()))}
        assert httpx.post(origin + "/hook", content=body, headers=wrong, trust_env=False).status_code == 401
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
