"""The catalog job service behind ``/v1/jobs``: submits jobs to the Ray job server (after the checks of
:mod:`serve.job_checks` and the claims of :mod:`serve.claims`), reads them back, stops them, and starts the
webhook watchers of :mod:`serve.job_watch`. The Ray job server keeps each job's record."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import shlex
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from canvas_ray.config import REPO_ROOT, CanvasConfig
from canvas_ray.io.outputs import join_uri, write_bytes
from canvas_ray.logs import get_logger
from serve.claims import Claims
from serve.job_checks import (
    JobError,
    JobRequest,
    check_catalog,
    check_output,
    check_size,
    check_webhook,
    job_config,
    row_prefixes,
)
from serve.job_watch import TERMINAL, describe_job, job_links, watch_job

log = get_logger("canvas_ray.serve.jobs")

ACTIVE = ("PENDING", "RUNNING")
JOB_ID_RE = re.compile(r"^cr-[0-9a-f]{20}$")
# Files of a job's output that GET /v1/jobs/{id}/files/... may return (the review pages and what they show).
SERVABLE = re.compile(r"^(index\.html|summary\.json|progress\.json|(review|images|thumbs)/[A-Za-z0-9._/-]+)$")


def owner_of(api_key: str | None, secret: bytes) -> str:
    """The owner tag of a job: an HMAC of the API key under the server's key (the dashboard shows it, so
    it must not be a plain hash anyone could test keys against)."""
    if not api_key:
        return "anonymous"
    return hmac.new(secret, api_key.encode(), hashlib.sha256).hexdigest()[:32]


class JobService:
    """Submits, reads and stops catalog jobs; the Ray job server keeps their record."""

    def __init__(self, config: CanvasConfig):
        self.config = config
        self.jobs = config.serve.jobs
        root = self.jobs.output_root or (
            join_uri(config.serve.output_root, "jobs") if config.serve.output_root else None
        )
        self.root = root.rstrip("/") if root else None
        self.claims = Claims(self.root, self.jobs.claim_grace_s) if self.root else None
        self._owner_secret: bytes | None = None
        self._client: Any = None
        self._watchers: dict[str, asyncio.Task[None]] = {}

    def unavailable(self, what: str, error: BaseException | None = None) -> JobError:
        """503 with Retry-After: the job server (or the jobs root) refused; nothing was kept."""
        cause = f" ({type(error).__name__})" if error is not None else ""
        log.warning("jobs unavailable: %s%s: %s", what, cause, error)
        return JobError(
            503,
            "jobs_unavailable",
            f"{what}{cause}; nothing was submitted, retry later",
            retry_after_s=self.jobs.retry_after_s,
        )

    def owner(self, api_key: str | None) -> str:
        if self._owner_secret is None:
            from_env = os.environ.get(self.jobs.owner_secret_env, "")
            if from_env:
                self._owner_secret = from_env.encode()
            elif self.claims is not None:
                try:
                    self._owner_secret = self.claims.owner_secret()
                except OSError as error:
                    raise self.unavailable("the jobs root cannot be written", error) from None
            else:
                raise JobError(503, "jobs_disabled", "no output root for jobs (serve.jobs.output_root)")
        return owner_of(api_key, self._owner_secret)

    @property
    def client(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            try:
                self._client = JobSubmissionClient(self.jobs.dashboard_address)
            except Exception as error:  # noqa: BLE001 - no job server: say so
                raise self.unavailable("the Ray job server does not answer", error) from None
        return self._client

    def _jobs(self) -> list[Any]:
        """This service's jobs on the job server (any owner)."""
        try:
            jobs = self.client.list_jobs()
        except JobError:
            raise
        except Exception as error:  # noqa: BLE001 - the job server refused
            raise self.unavailable("the Ray job server cannot list jobs", error) from None
        return [job for job in jobs if (job.metadata or {}).get("canvas_ray") == "1"]

    def _states(self) -> dict[str, tuple[str, str, float]]:
        """``{job id: (state, owner tag, start time)}`` of this service's jobs, from the job server."""
        states: dict[str, tuple[str, str, float]] = {}
        for job in self._jobs():
            if job.submission_id:
                owner = str(job.metadata.get("owner", ""))
                states[str(job.submission_id)] = (str(job.status), owner, float(job.start_time or 0))
        return states

    def row_prefixes(self) -> list[str]:
        """What a job's rows may read: the operator's list, else the catalog prefixes."""
        return row_prefixes(self.jobs)

    def _mine(self, owner: str) -> list[Any]:
        return [job for job in self._jobs() if job.metadata.get("owner") == owner]

    # -- operations -------------------------------------------------------------------------------

    def submit(self, body: JobRequest, api_key: str | None) -> dict[str, Any]:
        job_id = "cr-" + uuid.uuid4().hex[:20]
        catalog = check_catalog(self.jobs, body.catalog)
        webhook = check_webhook(self.jobs, body.webhook_url)
        config = job_config(self.config, body)
        output = check_output(self.root, body.output, job_id)
        expected = check_size(self.jobs, catalog, config, body.limit)
        owner = self.owner(api_key)
        limit = self.jobs.max_concurrent_per_key
        states = self._states()
        running = sum(1 for state, who, _ in states.values() if who == owner and state in ACTIVE)
        if running >= limit:
            raise self._too_many(running)
        assert self.claims is not None  # _output refused already when there is no jobs root
        try:
            slot = self.claims.claim_slot(owner, limit, job_id, {k: v[0] for k, v in states.items()})
        except OSError as error:
            raise self.unavailable("the jobs root cannot be written", error) from None
        if slot is None:
            raise self._too_many(limit)
        claimed_output = False
        try:
            record = {
                "job_id": job_id,
                "catalog": catalog,
                "output": output,
                "webhook_url": webhook,
                "submitted_at": time.time(),
            }
            if not self.claims.claim_output(output, record):
                raise JobError(409, "output_in_use", f"output {body.output!r} belongs to another job")
            claimed_output = True
            config_uri = join_uri(output, "job-config.yaml")
            write_bytes(config_uri, yaml.safe_dump(config.model_dump(mode="json")).encode(), {})
            command = [
                self.jobs.python, "-m", "jobs.generate", "--config", config_uri,
                "--catalog", catalog, "--output", output,
            ]  # fmt: skip
            if body.limit is not None:
                command += ["--limit", str(body.limit)]
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
                "webhook": "1" if webhook else "",  # the URL stays in job.json, off the dashboard
            }
            try:
                self.client.submit_job(
                    entrypoint=shlex.join(command),
                    submission_id=job_id,
                    runtime_env=runtime_env,
                    metadata=metadata,
                )
            except JobError:
                raise
            except Exception as error:  # noqa: BLE001 - the job server refused: 503, claims given back
                raise self.unavailable("the Ray job server refused the job", error) from None
        except BaseException:
            if claimed_output:
                self.claims.release_output(output)
            self.claims.release_slot(slot, job_id)
            raise
        self._recount(job_id, owner, limit)
        return {
            "job_id": job_id,
            "state": "PENDING",
            "output": output,
            "outputs_expected": expected,
            "links": self.links(job_id, output),
        }

    def _too_many(self, running: int) -> JobError:
        return JobError(
            429,
            "too_many_jobs",
            f"{running} jobs are running for this key (limit {self.jobs.max_concurrent_per_key}); "
            "wait or cancel one",
            retry_after_s=self.jobs.retry_after_s,
        )

    def _recount(self, job_id: str, owner: str, limit: int) -> None:
        """After submission: if more than ``limit`` jobs of this key are active and this one is not among
        the ``limit`` oldest (a store without exclusive create, an expired claim), stop it: 429."""
        try:
            states = self._states()
        except JobError:
            return  # the job is submitted and its slot held; nothing to correct
        mine = sorted(
            (start, jid) for jid, (state, who, start) in states.items() if who == owner and state in ACTIVE
        )
        ranked = [jid for _, jid in mine]
        if job_id in ranked and ranked.index(job_id) >= limit:
            log.warning("job %s over the limit of its key after submission: stopped", job_id)
            try:
                self.client.stop_job(job_id)
            except Exception:  # noqa: BLE001 - best effort; the error below still tells the caller
                log.exception("could not stop %s", job_id)
            raise self._too_many(len(ranked) - 1)

    def _job(self, job_id: str, api_key: str | None) -> Any:
        if not JOB_ID_RE.match(job_id):
            raise JobError(404, "not_found", "no such job")
        try:
            job = self.client.get_job_info(job_id)
        except Exception:  # noqa: BLE001 - the job server answers 404 as an exception
            raise JobError(404, "not_found", "no such job") from None
        metadata = job.metadata or {}
        if metadata.get("canvas_ray") != "1" or metadata.get("owner") != self.owner(api_key):
            raise JobError(404, "not_found", "no such job")  # another key's job does not exist for you
        return job

    def status(self, job_id: str, api_key: str | None) -> dict[str, Any]:
        job = self._job(job_id, api_key)
        return self.describe(job)

    def describe(self, job: Any) -> dict[str, Any]:
        return describe_job(job)

    def links(self, job_id: str, output: str) -> dict[str, str]:
        return job_links(job_id, output)

    def cancel(self, job_id: str, api_key: str | None) -> dict[str, Any]:
        job = self._job(job_id, api_key)
        if str(job.status) in TERMINAL:
            raise JobError(409, "finished", f"job is already {job.status}")
        self.client.stop_job(job_id)
        return {"job_id": job_id, "state": "STOPPING"}

    def recent(self, api_key: str | None, limit: int = 50) -> list[dict[str, Any]]:
        jobs = sorted(self._mine(self.owner(api_key)), key=lambda j: j.start_time or 0, reverse=True)
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
        """Deliver the job's webhook when it ends (:func:`serve.job_watch.watch_job`, one task per job)."""
        task = asyncio.get_running_loop().create_task(watch_job(self.client, self.jobs, job_id, url, output))
        self._watchers[job_id] = task
        task.add_done_callback(lambda _: self._watchers.pop(job_id, None))
