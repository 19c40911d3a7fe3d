"""The catalog job against real infrastructure: S3 (moto server on 127.0.0.1) and `ray job submit`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, SAMPLE_CATALOG

pytestmark = pytest.mark.ray_cluster  # starts its own Ray (conftest: the own-cluster xdist group)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, timeout: float = 60.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)  # noqa: S310 - loopback only
            return
        except urllib.error.HTTPError:  # answering (e.g. 401 before auth) means it is up
            return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.3)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def s3_server():
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_catalog_and_outputs_on_s3(s3_server, ray_local):
    import s3fs

    from canvas_ray.batch import GenerateRequest, run_generate
    from canvas_ray.config import load_config
    from canvas_ray.io.manifest import read_manifest

    options = {
        "key": "testing",
        "secret": "testing",
        "use_listings_cache": False,
        "client_kwargs": {"endpoint_url": s3_server, "region_name": "eu-west-1"},
    }
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("catalogs")
    fs.mkdir("results")
    lines = (SAMPLE_CATALOG / "catalog.jsonl").read_text().splitlines()[:4]
    fs.pipe("catalogs/spring/catalog.jsonl", "\n".join(lines).encode())
    for line in lines:
        uri = json.loads(line)["image_uri"]
        fs.pipe(f"catalogs/spring/{uri}", (SAMPLE_CATALOG / uri).read_bytes())

    config = load_config(
        REPO / "configs" / "weightfree.yaml",
        {"output.aspect_ratios": ["1:1"], "styles.default": ["beach summer"]},
    )
    request = GenerateRequest(
        config,
        "s3://catalogs/spring/catalog.jsonl",
        "s3://results/run1",
        storage_options=options,
        progress=False,
    )
    summary = run_generate(request)
    assert summary["ok"] + summary["review"] == summary["outputs_expected"] == 4 and summary["errors"] == 0
    manifest = read_manifest("s3://results/run1", options).to_pylist()
    assert len(manifest) == 4
    for row in manifest:
        assert row["image_uri"].startswith("s3://catalogs/spring/images/")
        assert fs.exists(f"results/run1/{row['output_uri']}")
        assert row["product_preserved"]
    assert fs.exists("results/run1/index.html") and fs.glob("results/run1/manifest/bucket=*/*.parquet")
    assert not fs.exists("results/run1/manifest/_staging")
    # resume on S3: nothing left to do
    again = run_generate(request)
    assert again["items_skipped_done"] == 4 and again["items_processed"] == 0


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A separate Ray head node on 127.0.0.1 with the job server and token auth, as on a real cluster."""
    import secrets

    import ray

    if ray.is_initialized():
        ray.shutdown()
    port, dashboard = _free_port(), _free_port()
    temp = head_temp_dir()
    env = dict(os.environ, RAY_DEDUP_LOGS="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    # the job's `python` is whatever the head node's PATH finds: make it this environment's, as on a cluster
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    head = start_head(temp, port, dashboard, env, num_cpus=2)
    try:
        _wait_http(f"http://127.0.0.1:{dashboard}/api/version", timeout=120)
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        _stop_head(head, str(temp))


def head_temp_dir() -> Path:
    """A short temp dir for a Ray head (``_stop_head`` removes it): Ray's unix socket paths are capped at
    107 bytes, and pytest's own (``/tmp/pytest-of-root/pytest-N/popen-gw0/…`` under xdist) leave too
    little room for ``session_<date>_<pid>/sockets/plasma_store``; the head then never comes up."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))


def start_head(temp: Path, port: int, dashboard: int, env: dict[str, str], num_cpus: int) -> subprocess.Popen:
    """``ray start --head --block`` on 127.0.0.1 with the job server, in its own process group: the test
    owns that group and stops only it (:func:`_stop_head`), never every Ray process on the machine."""
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--node-ip-address=127.0.0.1"]
    command += [f"--port={port}", f"--num-cpus={num_cpus}", "--include-dashboard=true"]
    command += ["--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--temp-dir={temp}"]
    # the job agent's default port (52365) may be held by another Ray on the machine: then every submission
    # fails with "No available agent to submit job"
    command += [f"--dashboard-agent-listen-port={_free_port()}", "--disable-usage-stats", "--block"]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def _stop_head(head: subprocess.Popen, temp: str) -> None:
    """Stop the head this test started: its process group, then any process still using its temp dir."""
    import signal

    import psutil

    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGTERM)
    try:
        # `ray start --block` can take 30 s to exit on SIGTERM: the group's servers get a second to end,
        # then the group is killed (its temp dir goes below)
        head.wait(timeout=1)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(temp in part for part in process.info["cmdline"] or []):
                process.kill()
    shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit(ray_head, tmp_path):
    address, env = ray_head
    output = tmp_path / "job-output"
    command = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(REPO),
        "--",
        "python",
        "-m",
        "jobs.generate",
        # weight-free (the default, configs/local.yaml, runs IS-Net: the real-model step tests that)
        "--config",
        "configs/weightfree.yaml",
        "--catalog",
        str(SAMPLE_CATALOG / "catalog.jsonl"),
        "--output",
        str(output),
        "--limit",
        "3",
        "--aspect",
        "1:1",
        "--style",
        "studio white",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "succeeded" in log.lower(), log[-4000:]
    rows = pq.read_table(output / "manifest").to_pylist()  # the bucketed dataset, as any reader opens it
    assert len(rows) == 3 and all(r["status"] in ("ok", "review") and r["product_preserved"] for r in rows)
    assert all(Path(output / r["output_uri"]).is_file() for r in rows)
