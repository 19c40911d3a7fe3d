"""Catalog jobs over HTTP: ``POST/GET/DELETE /v1/jobs``, run on the Ray cluster through the Ray Jobs API.

```
POST /v1/jobs ─▶ checks (catalog prefix allowlist, output under the jobs root, webhook host allowlist,
  per-key limit) ─▶ job-config.yaml in the output ─▶ JobSubmissionClient.submit_job(
  "python -m jobs.generate --config … --catalog … --output …") ─▶ {"job_id"}
GET /v1/jobs/{id} ─▶ Ray job state + OUTPUT/progress.json (while it runs) / summary.json (at the end)
DELETE /v1/jobs/{id} ─▶ stop_job;  GET /v1/jobs ─▶ this key's recent jobs
watcher (one asyncio task per submitted job) ─▶ terminal state ─▶ signed webhook (retries, deadline)
```
The Ray job server is the only store: a job's owner (a hash of its API key), catalog, output and webhook
ride in the job's metadata, so any ingress replica answers for any job and the per-key limit counts the
cluster's own record.

**Webhooks.** The body is JSON; ``X-Canvas-Ray-Signature: t=<unix time>,v1=<hex>`` where ``<hex>`` is
HMAC-SHA256 over ``"<t>." + body`` with the secret from the environment variable named by
``serve.jobs.webhook_secret_env``. Redirects are followed by hand, at most 3, and only to allowlisted hosts;
each attempt has a timeout, failures are retried with doubling backoff, all within a deadline. The outcome
is kept as ``OUTPUT/webhook.json`` and shown by ``GET /v1/jobs/{id}``.
"""

# No `from __future__ import annotations`: FastAPI must resolve the route signatures.
import asyncio
import hashlib
import json
import os
import re
import shlex
import time
import uuid
from pathlib import Path
from typing import Any

import fsspec
import yaml
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from canvas_ray.config import REPO_ROOT, CanvasConfig, canonical_aspect
from canvas_ray.io.outputs import join_uri, write_bytes
from canvas_ray.logs import get_logger
from canvas_ray.profiles import valid_profile_name
from serve.auth import uri_allowed
from serve.errors import ApiError
from serve.parsing import BodyReader, validate_model
from serve.webhooks import deliver_webhook, host_allowed

log = get_logger("canvas_ray.serve.jobs")
router = APIRouter()

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
ACTIVE = ("PENDING", "RUNNING")
JOB_ID_RE = re.compile(r"^cr-[0-9a-f]{20}$")
OUTPUT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_JOB_BODY = 64 * 1024  # a job request is a few fields
# Files of a job's output that GET /v1/jobs/{id}/files/... may return (the review pages and what they show).
SERVABLE = re.compile(r"^(index\.html|summary\.json|progress\.json|(review|images|thumbs)/[A-Za-z0-9._/-]+)$")


class JobRequest(BaseModel):
    """The body of POST /v1/jobs."""

    model_config = ConfigDict(extra="forbid")
    catalog: str = Field(min_length=1, max_length=2000, description="catalog URI under an allowed prefix")
    styles: list[str] | None = Field(None, description="style presets (default: the config's)")
    profiles: list[str] | None = Field(None, description="output profiles, e.g. ['amazon-main']")
    aspect_ratios: list[str] | None = Field(None, description="plain aspect ratios, e.g. ['1:1']")
    variants: int | None = Field(None, description="variants per item × style × target")
    output: str | None = Field(None, description="output folder name under the jobs root (default: job id)")
    webhook_url: str | None = Field(None, max_length=2000, description="POSTed on completion or failure")
    limit: int | None = Field(None, ge=1, le=10_000_000, description="only the first N catalog rows")


class JobError(ApiError):
    """A job request refused or failed: answered like every other API error (serve.errors)."""


def owner_of(api_key: str | None) -> str:
    return hashlib.sha256((api_key or "").encode()).hexdigest()[:24] if api_key else "anonymous"


class JobService:
    """Submits, reads and stops catalog jobs; the Ray job server keeps their record."""

    def __init__(self, config: CanvasConfig):
        self.config = config
        self.jobs = config.serve.jobs
        root = self.jobs.output_root or (
            join_uri(config.serve.output_root, "jobs") if config.serve.output_root else None
        )
        self.root = root.rstrip("/") if root else None
        self._client: Any = None
        self._watchers: dict[str, asyncio.Task[None]] = {}

    @property
    def client(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            try:
                self._client = JobSubmissionClient(self.jobs.dashboard_address)
            except Exception as error:  # noqa: BLE001 - no job server: say so, and where we looked
                raise JobError(
                    503,
                    "jobs_unavailable",
                    f"the Ray job server at {self.jobs.dashboard_address} does not answer "
                    f"({type(error).__name__}); start Ray with its dashboard, or set "
                    "serve.jobs.dashboard_address",
                ) from None
        return self._client

    # -- checks -----------------------------------------------------------------------------------

    def _catalog(self, uri: str) -> str:
        if not self.jobs.allowed_catalog_prefixes:
            raise JobError(403, "catalog_not_allowed", "no catalog prefixes are allowed on this server")
        if not uri_allowed(uri, self.jobs.allowed_catalog_prefixes):
            raise JobError(403, "catalog_not_allowed", "catalog is not under an allowed prefix")
        return uri

    def _output(self, name: str | None, job_id: str) -> str:
        if self.root is None:
            raise JobError(503, "jobs_disabled", "no output root for jobs (serve.jobs.output_root)")
        name = name or job_id
        if not OUTPUT_NAME_RE.match(name) or name in (".", ".."):
            raise JobError(400, "bad_output", "output must be a folder name: letters, digits, '.', '_', '-'")
        output = join_uri(self.root, name)
        if "://" not in self.root:
            base = Path(self.root).resolve()
            target = Path(output).resolve()
            if base not in target.parents:
                raise JobError(400, "bad_output", "output escapes the jobs root")
            output = str(target)
        fs, path = fsspec.core.url_to_fs(output)
        if fs.exists(path + "/job.json"):
            raise JobError(409, "output_in_use", f"output {name!r} belongs to another job")
        return output

    def _webhook(self, url: str | None) -> str | None:
        if url is None:
            return None
        if not host_allowed(url, self.jobs.webhook_allowed_hosts):
            raise JobError(400, "webhook_not_allowed", "webhook_url must be http(s) on an allowed host")
        if not os.environ.get(self.jobs.webhook_secret_env):
            raise JobError(503, "webhook_unavailable", "webhooks need a shared secret on the server")
        return url

    def _arguments(self, body: JobRequest) -> list[str]:
        from canvas_ray.profiles import ProfileBook
        from canvas_ray.styles import StyleBook

        args: list[str] = []
        styles = StyleBook.from_config(self.config)
        for style in body.styles or []:
            try:
                styles.resolve(style)
            except ValueError as error:
                raise JobError(400, "bad_style", str(error)) from None
            args += ["--style", style]
        if body.styles is not None and not 1 <= len(body.styles) <= self.jobs.max_styles:
            raise JobError(400, "bad_style", f"give 1..{self.jobs.max_styles} styles")
        book = ProfileBook.load(self.config.output.profiles_file)
        for name in body.profiles or []:
            if not valid_profile_name(name):
                raise JobError(400, "bad_profile", f"bad profile name {name[:60]!r}")
            try:
                book.get(name)
            except ValueError as error:
                raise JobError(400, "bad_profile", str(error)) from None
            args += ["--profile", name]
        for aspect in body.aspect_ratios or []:
            try:
                args += ["--aspect", canonical_aspect(aspect)]
            except ValueError as error:
                raise JobError(400, "bad_aspect", str(error)) from None
        if body.variants is not None:
            if not 1 <= body.variants <= self.jobs.max_variants:
                raise JobError(400, "bad_request", f"variants must be 1..{self.jobs.max_variants}")
            args += ["--variants", str(body.variants)]
        if body.limit is not None:
            args += ["--limit", str(body.limit)]
        return args

    def _mine(self, owner: str) -> list[Any]:
        return [
            job
            for job in self.client.list_jobs()
            if (job.metadata or {}).get("canvas_ray") == "1" and job.metadata.get("owner") == owner
        ]

    # -- operations -------------------------------------------------------------------------------

    def submit(self, body: JobRequest, api_key: str | None) -> dict[str, Any]:
        owner = owner_of(api_key)
        job_id = "cr-" + uuid.uuid4().hex[:20]
        catalog = self._catalog(body.catalog)
        webhook = self._webhook(body.webhook_url)
        arguments = self._arguments(body)
        output = self._output(body.output, job_id)
        running = [j for j in self._mine(owner) if str(j.status) in ACTIVE]
        if len(running) >= self.jobs.max_concurrent_per_key:
            raise JobError(
                429,
                "too_many_jobs",
                f"{len(running)} jobs are running for this key (limit "
                f"{self.jobs.max_concurrent_per_key}); wait or cancel one",
            )
        # the job runs this server's config (minus serving), written beside its outputs
        job_config = self.config.model_dump(mode="json", exclude={"serve", "source"})
        config_uri = join_uri(output, "job-config.yaml")
        write_bytes(config_uri, yaml.safe_dump(job_config).encode(), {})
        record = {"job_id": job_id, "catalog": catalog, "output": output, "submitted_at": time.time()}
        write_bytes(join_uri(output, "job.json"), json.dumps(record).encode(), {})
        command = [
            self.jobs.python, "-m", "jobs.generate", "--config", config_uri,
            "--catalog", catalog, "--output", output, *arguments,
        ]  # fmt: skip
        runtime_env: dict[str, Any] = (
            {"working_dir": self.jobs.working_dir}
            if self.jobs.working_dir
            else {"env_vars": {"PYTHONPATH": str(REPO_ROOT)}}
        )
        metadata = {
            "canvas_ray": "1",
            "owner": owner,
            "catalog": catalog[:1000],
            "output": output[:1000],
            "webhook": webhook or "",
        }
        self.client.submit_job(
            entrypoint=shlex.join(command),
            submission_id=job_id,
            runtime_env=runtime_env,
            metadata=metadata,
        )
        return {"job_id": job_id, "state": "PENDING", "output": output, "links": self.links(job_id, output)}

    def _job(self, job_id: str, api_key: str | None) -> Any:
        if not JOB_ID_RE.match(job_id):
            raise JobError(404, "not_found", "no such job")
        try:
            job = self.client.get_job_info(job_id)
        except Exception:  # noqa: BLE001 - the job server answers 404 as an exception
            raise JobError(404, "not_found", "no such job") from None
        metadata = job.metadata or {}
        if metadata.get("canvas_ray") != "1" or metadata.get("owner") != owner_of(api_key):
            raise JobError(404, "not_found", "no such job")  # another key's job does not exist for you
        return job

    def status(self, job_id: str, api_key: str | None) -> dict[str, Any]:
        job = self._job(job_id, api_key)
        return self.describe(job)

    def describe(self, job: Any) -> dict[str, Any]:
        metadata = job.metadata or {}
        output = metadata.get("output", "")
        progress = _read_json(join_uri(output, "progress.json")) if output else None
        summary = _read_json(join_uri(output, "summary.json")) if output else None
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
            "message": (job.message or "")[:500],
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
            "webhook": _read_json(join_uri(output, "webhook.json")) if metadata.get("webhook") else None,
            "links": self.links(job.submission_id, output),
        }

    def links(self, job_id: str, output: str) -> dict[str, str]:
        return {
            "self": f"/v1/jobs/{job_id}",
            "summary": f"/v1/jobs/{job_id}/files/summary.json",
            "review": f"/v1/jobs/{job_id}/files/index.html",
            "summary_uri": join_uri(output, "summary.json"),
            "review_uri": join_uri(output, "index.html"),
        }

    def cancel(self, job_id: str, api_key: str | None) -> dict[str, Any]:
        job = self._job(job_id, api_key)
        if str(job.status) in TERMINAL:
            raise JobError(409, "finished", f"job is already {job.status}")
        self.client.stop_job(job_id)
        return {"job_id": job_id, "state": "STOPPING"}

    def recent(self, api_key: str | None, limit: int = 50) -> list[dict[str, Any]]:
        jobs = sorted(self._mine(owner_of(api_key)), key=lambda j: j.start_time or 0, reverse=True)
        return [
            {
                "job_id": j.submission_id,
                "state": str(j.status),
                "catalog": j.metadata.get("catalog"),
                "output": j.metadata.get("output"),
                "submitted_at": (j.start_time or 0) / 1000 or None,
            }
            for j in jobs[:limit]
        ]

    def file(self, job_id: str, api_key: str | None, rel: str) -> Path:
        job = self._job(job_id, api_key)
        output = (job.metadata or {}).get("output", "")
        if not SERVABLE.match(rel) or ".." in rel.split("/") or "://" in output:
            raise JobError(404, "not_found", "no such file")
        base = Path(output).resolve()
        target = (base / rel).resolve()
        if base not in target.parents or not target.is_file():
            raise JobError(404, "not_found", "no such file")
        return target

    # -- webhooks ---------------------------------------------------------------------------------

    def watch(self, job_id: str, url: str, output: str) -> None:
        task = asyncio.get_running_loop().create_task(self._watch(job_id, url, output))
        self._watchers[job_id] = task
        task.add_done_callback(lambda _: self._watchers.pop(job_id, None))

    async def _watch(self, job_id: str, url: str, output: str) -> None:
        jobs = self.jobs
        try:
            while True:
                state = str(await asyncio.to_thread(self.client.get_job_status, job_id))
                if state in TERMINAL:
                    break
                await asyncio.sleep(jobs.poll_s)
            job = await asyncio.to_thread(self.client.get_job_info, job_id)
            payload = {"event": f"job.{state.lower()}", **self.describe(job)}
            payload.pop("webhook", None)
            secret = os.environ.get(jobs.webhook_secret_env, "")
            record = await deliver_webhook(
                url,
                payload,
                secret,
                jobs.webhook_allowed_hosts,
                timeout_s=jobs.webhook_timeout_s,
                attempts=jobs.webhook_attempts,
                backoff_s=jobs.webhook_backoff_s,
                deadline_s=jobs.webhook_deadline_s,
            )
            record["event"] = payload["event"]
            write_bytes(join_uri(output, "webhook.json"), json.dumps(record).encode(), {})
            log.info("webhook for %s: %s", job_id, record)
        except Exception:  # noqa: BLE001 - a watcher must never take the replica down
            log.exception("webhook watcher for %s failed", job_id)


def _read_json(uri: str) -> dict[str, Any] | None:
    try:
        with fsspec.open(uri, "rb") as handle:
            data = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class JobRoutes:
    """The /v1/jobs routes; mixed into the Serve ingress (which supplies ``_authorize`` and ``config``)."""

    config: CanvasConfig
    jobs_service: JobService

    def init_jobs(self) -> None:
        self.jobs_service = JobService(self.config)

    def _authorize(self, request: Request) -> str | None:  # the ingress's: the caller's API key, or 401
        raise NotImplementedError

    @router.post("/v1/jobs", summary="start a catalog job", status_code=202)
    async def jobs_submit(self, request: Request) -> dict[str, Any]:
        key = self._authorize(request)
        # bounded like every body: 413 past the cap, strict UTF-8 JSON of bounded depth, no duplicate keys
        data = await BodyReader(self.config.serve).read_json(request, MAX_JOB_BODY)
        body: JobRequest = validate_model(JobRequest, data)
        result = await asyncio.to_thread(self.jobs_service.submit, body, key)
        if body.webhook_url:
            self.jobs_service.watch(result["job_id"], body.webhook_url, result["output"])
        return result

    @router.get("/v1/jobs", summary="recent catalog jobs of this key")
    async def jobs_list(self, request: Request) -> dict[str, Any]:
        key = self._authorize(request)
        return {"jobs": await asyncio.to_thread(self.jobs_service.recent, key)}

    @router.get("/v1/jobs/{job_id}", summary="a catalog job's state and progress")
    async def jobs_status(self, job_id: str, request: Request) -> dict[str, Any]:
        key = self._authorize(request)
        return await asyncio.to_thread(self.jobs_service.status, job_id, key)

    @router.delete("/v1/jobs/{job_id}", summary="cancel a catalog job")
    async def jobs_cancel(self, job_id: str, request: Request) -> dict[str, Any]:
        key = self._authorize(request)
        return await asyncio.to_thread(self.jobs_service.cancel, job_id, key)

    @router.get("/v1/jobs/{job_id}/files/{rel:path}", summary="a file of a job's output (review pages)")
    async def jobs_file(self, job_id: str, rel: str, request: Request) -> FileResponse:
        key = self._authorize(request)
        path = await asyncio.to_thread(self.jobs_service.file, job_id, key, rel)
        return FileResponse(path)
