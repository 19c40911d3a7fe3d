"""Catalog jobs over HTTP: ``POST/GET/DELETE /v1/jobs``, run on the Ray cluster through the Ray Jobs API.

```
POST /v1/jobs ─▶ checks (strict bounded fields, catalog prefix allowlist after symlinks, output under the
  jobs root, webhook origin allowlist, outputs cap) ─▶ claims (a job slot of this key, the output folder:
  exclusive creates, serve/claims.py) ─▶ job-config.yaml in the output (the request's styles, targets,
  variants and the row allowlist `limits.allowed_read_prefixes`) ─▶ JobSubmissionClient.submit_job(
  "python -m jobs.generate --config … --catalog … --output …") ─▶ recount ─▶ {"job_id"}
GET /v1/jobs/{id} ─▶ Ray job state + OUTPUT/progress.json (while it runs) / summary.json (at the end)
DELETE /v1/jobs/{id} ─▶ stop_job;  GET /v1/jobs ─▶ this key's recent jobs
watcher (one asyncio task per submitted job) ─▶ terminal state ─▶ signed webhook (retries, deadline)
```
The Ray job server keeps each job's record: its owner tag (an HMAC of the API key under a server key), catalog
and output ride in the job's metadata, so any ingress replica answers for any job. The webhook URL does not
(the dashboard shows metadata to anyone who reaches it): it stays in ``OUTPUT/job.json``. Limits hold under
concurrency and across replicas: slots and output names are claimed before submission, a failed submission
gives both back (503 with ``Retry-After`` when the job server refuses), and a recount after submission stops
a job that still finds itself over the limit.

**Every URI a job reads is checked.** The catalog must be under ``serve.jobs.allowed_catalog_prefixes``;
its rows' image and style-image URIs under ``serve.jobs.allowed_row_prefixes`` (default: the catalog
prefixes), enforced inside the job by the Fetch stage (a refused row is an error row).

**Webhooks** (serve/webhooks.py): signed with a timestamp, sent only to allowlisted origins (every hop);
the caller sees ``{delivered, attempts, event}``, the full record stays in ``OUTPUT/webhook.json``.

This module holds the HTTP routes; the checks are :mod:`serve.job_checks`, the service (submit, read, stop)
:mod:`serve.job_service`, status and webhook watcher :mod:`serve.job_watch`. Every name stays importable
from here.
"""

# No `from __future__ import annotations`: FastAPI must resolve the route signatures.
import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from canvas_ray.config import CanvasConfig
from serve.job_checks import MAX_LIST, OUTPUT_NAME_RE, JobError, JobRequest, Name, outputs_per_item
from serve.job_service import ACTIVE, JOB_ID_RE, SERVABLE, JobService, owner_of
from serve.job_watch import TERMINAL, failure_reason
from serve.parsing import BodyReader, validate_model

__all__ = [
    "ACTIVE",
    "JOB_ID_RE",
    "MAX_JOB_BODY",
    "MAX_LIST",
    "OUTPUT_NAME_RE",
    "SERVABLE",
    "TERMINAL",
    "JobError",
    "JobRequest",
    "JobRoutes",
    "JobService",
    "Name",
    "failure_reason",
    "outputs_per_item",
    "owner_of",
    "router",
]

router = APIRouter()
MAX_JOB_BODY = 64 * 1024  # a job request is a few fields


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
        if body.webhook_url:  # checked at submission (origin allowlist, parsed by httpx)
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
