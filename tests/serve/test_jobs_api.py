"""Catalog jobs over HTTP on a real Ray head (job server) and Serve: submit → SUCCEEDED with a signed
webhook, cancel mid-run, per-key limits, allowlists (catalog 403, webhook hosts, redirects off the
allowlist), the CLI client, the ``profile`` field of POST /v1/backgrounds, and the page's Jobs tab in
headless chromium (screenshot: test-artifacts/serve-jobs-tab.png)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from canvas_ray.config import REPO_ROOT, load_config
from canvas_ray.testing import product_png
from serve.webhooks import SIGNATURE_HEADER, verify_signature
from tests.jobs.test_cluster import _free_port, _stop_head, _wait_http, head_temp_dir, start_head
from tests.serve.test_serve_page import CHROMEDRIVER, CHROMIUM, browser  # noqa: F401 - the browser fixture

pytestmark = pytest.mark.ray_cluster  # starts its own Ray (conftest: the own-cluster xdist group)

SAMPLE = REPO_ROOT / "examples" / "catalog"
KEY, OTHER_KEY = "jobs-key-1", "jobs-key-2"
SECRET = secrets.token_hex(16)
QUICK = "{allowed}/quick.jsonl"
SMALL = {"num_cpus": 0.1, "concurrency": 1, "batch_size": 4}


class Receiver:
    """Webhook receiver on 127.0.0.1: records POSTs; ``/redirect`` answers 302 to ``redirect_to``."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.redirect_to = ""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if self.path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("Location", receiver.redirect_to)
                else:
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Ray head (with the job server) started by this module, Serve with the jobs API, a webhook receiver."""
    import ray
    from ray import serve

    from serve.app import build_app

    if ray.is_initialized():
        ray.shutdown()
    temp = head_temp_dir()  # short: Ray's unix socket paths are capped at 107 bytes
    port, dashboard, http_port = _free_port(), _free_port(), _free_port()
    # Ray token auth is off for this loopback-only head, as for this process (tests/conftest.py); the API
    # under test has its own keys
    env = dict(os.environ, RAY_DEDUP_LOGS="0", CANVAS_RAY_WEBHOOK_SECRET=SECRET)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    head = start_head(temp, port, dashboard, env, num_cpus=4)  # stopped by _stop_head: its process group
    allowed = tmp_path_factory.mktemp("allowed-catalogs")
    outside = tmp_path_factory.mktemp("other-catalogs")
    jobs_root = tmp_path_factory.mktemp("job-outputs")
    for folder in (allowed, outside):
        shutil.copytree(SAMPLE / "images", folder / "images")
    quick = [{"item_id": f"sku-{i:04d}", "image_uri": f"images/sku-{i:04d}.jpg"} for i in (2, 3)]
    (allowed / "quick.jsonl").write_text("\n".join(json.dumps(r) for r in quick))
    (outside / "quick.jsonl").write_text("\n".join(json.dumps(r) for r in quick))
    shutil.copy(SAMPLE / "catalog.csv", allowed / "catalog.csv")
    receiver = Receiver()
    overrides: dict[str, Any] = {f"{s}.resources": dict(SMALL) for s in ("segment", "caption", "inpaint")}
    overrides.update(
        {
            "composite.resources": dict(SMALL),
            "serve.api_keys": [KEY, OTHER_KEY],
            "serve.jobs.allowed_catalog_prefixes": [str(allowed) + "/"],
            "serve.jobs.output_root": str(jobs_root),
            "serve.jobs.dashboard_address": f"http://127.0.0.1:{dashboard}",
            "serve.jobs.webhook_allowed_origins": [f"http://127.0.0.1:{receiver.port}"],
            "serve.jobs.max_concurrent_per_key": 1,
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
        serve.run(build_app(config), name="jobs", route_prefix="/")
        base = f"http://127.0.0.1:{http_port}"
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=base, timeout=60, headers=headers, trust_env=False) as client:
            yield {
                "client": client,
                "base": base,
                "allowed": allowed,
                "outside": outside,
                "receiver": receiver,
                "jobs_root": jobs_root,
            }
    finally:
        receiver.server.shutdown()
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        _stop_head(head, str(temp))  # its process group, and anything left using its temp dir


def wait_for(client: httpx.Client, job_id: str, states: tuple[str, ...], timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = client.get(f"/v1/jobs/{job_id}").json()
        if body["state"] in states:
            return body
        assert body["state"] not in ("FAILED",), body
        time.sleep(1)
    raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {body}")


def test_submit_runs_to_succeeded_with_signed_webhook(stack):
    client, receiver = stack["client"], stack["receiver"]
    response = client.post(
        "/v1/jobs",
        json={
            "catalog": str(stack["allowed"] / "quick.jsonl"),
            "profiles": ["amazon-main"],
            "styles": ["studio white"],
            "output": "quick-run",
            "webhook_url": receiver.url("/hook"),
        },
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["job_id"].startswith("cr-") and job["output"] == str(stack["jobs_root"] / "quick-run")
    done = wait_for(client, job["job_id"], ("SUCCEEDED",))
    progress = done["progress"]
    assert progress["outputs_done"] == progress["outputs_expected"] == 2
    assert progress["ok"] + progress["review"] == 2 and progress["error"] == 0
    assert done["profiles"]["amazon-main"]["compliant"] == 2
    manifest = Path(done["output"]) / "manifest"
    assert any(manifest.rglob("*.parquet"))
    summary = client.get(done["links"]["summary"])
    assert summary.status_code == 200 and summary.json()["outputs"] == 2
    review = client.get(done["links"]["review"])
    assert review.status_code == 200 and "<html" in review.text
    assert client.get(f"/v1/jobs/{job['job_id']}/files/job-config.yaml").status_code == 404
    # the webhook arrives, signed with the shared secret
    deadline = time.time() + 30
    while not any(r["path"] == "/hook" for r in receiver.received) and time.time() < deadline:
        time.sleep(0.2)
    hook = next(r for r in receiver.received if r["path"] == "/hook")
    header = hook["headers"][SIGNATURE_HEADER]
    assert verify_signature(SECRET, hook["body"], header)
    stamp = int(header.split(",")[0].removeprefix("t="))
    assert abs(stamp - time.time()) < 600
    # the documented HMAC-SHA256 over "<time>." + body, recomputed here without serve.webhooks
    digest = hmac.new(SECRET.encode(), f"{stamp}.".encode() + hook["body"], hashlib.sha256).hexdigest()
    assert header == f"t={stamp},v1={digest}"
    assert not verify_signature("wrong-secret", hook["body"], hook["headers"][SIGNATURE_HEADER])
    payload = json.loads(hook["body"])
    assert payload["event"] == "job.succeeded" and payload["job_id"] == job["job_id"]
    assert payload["progress"]["outputs_done"] == 2
    # listed for its key, invisible to another key; the CLI client reads the same API
    assert job["job_id"] in [j["job_id"] for j in client.get("/v1/jobs").json()["jobs"]]
    other = client.get(f"/v1/jobs/{job['job_id']}", headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert other.status_code == 404
    command = [
        sys.executable,
        "-m",
        "canvas_ray.cli",
        "jobs",
        "status",
        job["job_id"],
        "--api",
        stack["base"],
    ]
    cli = subprocess.run(
        command, env=dict(os.environ, CANVAS_RAY_API_KEY=KEY), capture_output=True, text=True
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["state"] == "SUCCEEDED"


def test_cancel_mid_run_limit_per_key_and_redirect_refused(stack):
    client, receiver = stack["client"], stack["receiver"]
    receiver.redirect_to = receiver.url("/stolen", host="localhost")  # not on the allowlist
    response = client.post(
        "/v1/jobs",
        json={
            "catalog": str(stack["allowed"] / "catalog.csv"),
            "styles": ["studio white", "marble countertop", "minimalist pastel"],
            "aspect_ratios": ["1:1", "4:5", "16:9"],
            "webhook_url": receiver.url("/redirect"),
        },
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    second = client.post("/v1/jobs", json={"catalog": str(stack["allowed"] / "quick.jsonl")})
    assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_jobs"
    wait_for(client, job_id, ("RUNNING",))
    cancelled = client.delete(f"/v1/jobs/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "STOPPING"
    stopped = wait_for(client, job_id, ("STOPPED",), timeout=60)
    assert not (Path(stopped["output"]) / "summary.json").exists()  # it never finished
    deadline = time.time() + 30
    body = stopped
    while body.get("webhook") is None and time.time() < deadline:
        time.sleep(0.5)
        body = client.get(f"/v1/jobs/{job_id}").json()
    # the caller learns only the outcome; the reason stays in the operator's record
    assert body["webhook"] == {"delivered": False, "attempts": 1, "event": "job.stopped"}
    record = json.loads((Path(stopped["output"]) / "webhook.json").read_text())
    assert "localhost" in record["error"] and "not on an allowed origin" in record["error"]
    assert body["message"] == "the job was stopped"
    assert [r["path"] for r in receiver.received].count("/redirect") == 1
    assert not any(r["path"] == "/stolen" for r in receiver.received)
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 409


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"catalog": "{outside}/quick.jsonl"}, 403, "catalog_not_allowed"),
        ({"catalog": "{allowed}/../other/quick.jsonl"}, 403, "catalog_not_allowed"),
        ({"catalog": "http://169.254.169.254/latest/meta-data"}, 403, "catalog_not_allowed"),
        (
            {"catalog": "{allowed}/quick.jsonl", "webhook_url": "http://169.254.169.254/x"},
            400,
            "webhook_not_allowed",
        ),
        (
            {"catalog": "{allowed}/quick.jsonl", "webhook_url": "file:///etc/passwd"},
            400,
            "webhook_not_allowed",
        ),
        ({"catalog": "{allowed}/quick.jsonl", "output": "../escape"}, 400, "bad_output"),
        ({"catalog": "{allowed}/quick.jsonl", "profiles": ["nope"]}, 400, "bad_profile"),
        ({"catalog": "{allowed}/quick.jsonl", "variants": 99}, 400, "bad_request"),
        ({"catalog": "{allowed}/quick.jsonl", "extra": 1}, 422, "validation_error"),
    ],
)
def test_refused_requests(stack, body, status, code):
    filled = {
        k: v.format(allowed=stack["allowed"], outside=stack["outside"]) if isinstance(v, str) else v
        for k, v in body.items()
    }
    response = stack["client"].post("/v1/jobs", json=filled)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_jobs_need_the_api_key(stack):
    response = httpx.get(stack["base"] + "/v1/jobs", trust_env=False)
    assert response.status_code == 401


def test_backgrounds_profile_field(stack):
    client = stack["client"]
    files = {"image": ("p.png", product_png(320, 320, seed=5), "image/png")}
    response = client.post(
        "/v1/backgrounds", data={"style": "studio white", "profile": "instagram-square"}, files=files
    )
    assert response.status_code == 200, response.text
    image = response.json()["images"][0] if response.json()["images"] else None
    entry = image or response.json()["errors"][0]  # review (mask gate) comes back as an error entry
    assert entry["profile"] == "instagram-square"
    assert entry["compliance"]["compliant"] is True and entry["compliance"]["upscaled"] is True
    if image is not None:
        assert (image["width"], image["height"]) == (1080, 1080)
    small = client.post(
        "/v1/backgrounds", data={"style": "studio white", "profile": "amazon-main"}, files=files
    )
    assert small.status_code == 422
    assert "too small for profile amazon-main" in small.json()["error"]["message"]
    unknown = client.post("/v1/backgrounds", data={"style": "studio white", "profile": "ebay"}, files=files)
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "bad_profile"
    listed = client.get("/v1/profiles").json()["profiles"]
    assert {"amazon-main", "stories"} <= {p["name"] for p in listed}


@pytest.mark.skipif(
    (CHROMEDRIVER is None or shutil.which(CHROMIUM) is None) and not os.environ.get("CI"),
    reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)",
)
def test_jobs_tab_submits_and_shows_progress(stack, browser, artifacts):  # noqa: F811 - fixture
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(stack["base"] + "/")
    browser.find_element(By.ID, "apikey").send_keys(KEY)
    browser.find_element(By.ID, "tab-jobs-button").click()
    assert browser.find_element(By.ID, "job-form").is_displayed()
    assert not browser.find_element(By.ID, "form").is_displayed()
    browser.find_element(By.ID, "job-catalog").send_keys(str(stack["allowed"] / "quick.jsonl"))
    profiles = browser.find_element(By.ID, "job-profiles")
    profiles.clear()
    profiles.send_keys("amazon-main")
    browser.find_element(By.ID, "job-styles").send_keys("studio white")
    browser.find_element(By.ID, "job-submit").click()
    seen: set[str] = set()

    def status_text(driver: Any) -> str:  # read in one script call: the tab re-renders as it polls
        return str(driver.execute_script("return document.getElementById('job-status').innerText"))

    def finished(driver: Any) -> bool:
        text = status_text(driver)
        seen.add(text.split(" ")[0])
        return any(state in text for state in ("SUCCEEDED", "FAILED", "STOPPED"))

    WebDriverWait(browser, 300, poll_frequency=0.5).until(finished)
    status = status_text(browser)
    assert status.startswith("SUCCEEDED · 2/2 outputs"), status
    assert "amazon-main compliant 2/2" in status
    assert seen & {"submitted", "PENDING", "RUNNING"}  # progress was shown before the end
    bar = browser.find_element(By.ID, "job-progress")
    assert bar.get_attribute("value") == bar.get_attribute("max") == "2"
    assert browser.find_element(By.ID, "job-link-review").is_displayed()
    # the rows' text in one script call too (a row found first and read after can be a replaced element)
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#jobs-list tr')].map(row => row.innerText)"
    )
    assert len(rows) >= 2 and "SUCCEEDED" in rows[1], rows
    browser.save_screenshot(str(artifacts / "serve-jobs-tab.png"))
    assert (artifacts / "serve-jobs-tab.png").stat().st_size > 10_000
