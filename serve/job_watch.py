"""What a catalog job's caller sees of it: its state and progress (from the Ray job record and the
``progress.json`` / ``summary.json`` it writes), and the watcher that POSTs a signed webhook
(serve/webhooks.py) when the job ends, keeping the full delivery record in ``OUTPUT/webhook.json``."""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any

from canvas_ray.config import JobsConfig
from canvas_ray.io.outputs import join_uri, write_bytes
from canvas_ray.logs import get_logger
from serve.claims import read_json
from serve.webhooks import deliver_webhook, public_outcome

log = get_logger("canvas_ray.serve.jobs")

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def failure_reason(state: str, message: str | None) -> str:
    """A short, user-facing reason for a job's state; the full log stays with the operator."""
    if state == "FAILED":
        code = re.search(r"exit code (-?\d+)", message or "")
        if code:
            return f"the job failed (exit code {code.group(1)}); the operator has its log"
        return "the job could not run; the operator has its log"
    if state == "STOPPED":
        return "the job was stopped"
    return ""


def job_links(job_id: str, output: str) -> dict[str, str]:
    """The API routes and the output URIs of a job's summary and review page."""
    return {
        "self": f"/v1/jobs/{job_id}",
        "summary": f"/v1/jobs/{job_id}/files/summary.json",
        "review": f"/v1/jobs/{job_id}/files/index.html",
        "summary_uri": join_uri(output, "summary.json"),
        "review_uri": join_uri(output, "index.html"),
    }


def describe_job(job: Any) -> dict[str, Any]:
    """The status of a job (a Ray ``JobDetails``) as the API answers it."""
    metadata = job.metadata or {}
    output = metadata.get("output", "")
    progress = read_json(join_uri(output, "progress.json")) if output else None
    summary = read_json(join_uri(output, "summary.json")) if output else None
    state = str(job.status)
    done = expected = None
    counts: dict[str, int] = {}
    throughput = eta = None
    if progress:
        done, expected = progress.get("outputs_done"), progress.get("outputs_total")
        counts = {k: int(progress.get(k, 0)) for k in ("ok", "error", "rejected", "review")}
        throughput, eta = progress.get("outputs_per_second"), progress.get("eta_s")
    if summary and summary.get("run_id") == (progress or {}).get("run_id", summary.get("run_id")):
        counts = {
            "ok": summary.get("ok", 0),
            "error": summary.get("errors", 0),
            "rejected": summary.get("rejected", 0),
            "review": summary.get("review", 0),
        }
        done, expected = summary.get("outputs"), summary.get("outputs_expected")
        throughput, eta = summary.get("outputs_per_second"), 0 if state == "SUCCEEDED" else eta
    return {
        "job_id": job.submission_id,
        "state": state,
        "message": failure_reason(state, job.message),
        "catalog": metadata.get("catalog"),
        "output": output,
        "submitted_at": (job.start_time or 0) / 1000 or None,
        "finished_at": (job.end_time or 0) / 1000 or None,
        "progress": {
            "outputs_done": done,
            "outputs_expected": expected,
            **counts,
            "outputs_per_second": throughput,
            "eta_s": eta,
        },
        "profiles": (summary or {}).get("profiles"),
        "webhook": public_outcome(read_json(join_uri(output, "webhook.json")))
        if metadata.get("webhook")
        else None,
        "links": job_links(job.submission_id, output),
    }


async def watch_job(client: Any, jobs: JobsConfig, job_id: str, url: str, output: str) -> None:
    """Poll job ``job_id`` until it ends, then deliver its webhook to ``url`` and record the outcome in
    ``OUTPUT/webhook.json``; never raises (a watcher that failed leaves a record saying so)."""
    try:
        while True:
            state = str(await asyncio.to_thread(client.get_job_status, job_id))
            if state in TERMINAL:
                break
            await asyncio.sleep(jobs.poll_s)
        job = await asyncio.to_thread(client.get_job_info, job_id)
        payload = {"event": f"job.{state.lower()}", **describe_job(job)}
        payload.pop("webhook", None)
        secret = os.environ.get(jobs.webhook_secret_env, "")
        record = await deliver_webhook(
            url,
            payload,
            secret,
            jobs.webhook_allowed_origins,
            timeout_s=jobs.webhook_timeout_s,
            attempts=jobs.webhook_attempts,
            backoff_s=jobs.webhook_backoff_s,
            deadline_s=jobs.webhook_deadline_s,
        )
        record["event"] = payload["event"]
    except Exception as error:  # noqa: BLE001 - a watcher must never die without a record
        log.exception("webhook watcher for %s failed", job_id)
        record = {"url": url, "delivered": False, "attempts": 0, "error": f"watcher: {error!r}"[:300]}
    try:
        write_bytes(join_uri(output, "webhook.json"), json.dumps(record).encode(), {})
        log.info("webhook for %s: %s", job_id, record)
    except Exception:  # noqa: BLE001 - nor take the replica down
        log.exception("webhook record for %s not written", job_id)
