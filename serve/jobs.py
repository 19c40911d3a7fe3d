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
"""
# No `from __future__ import annotations`: FastAPI must resolve the route signatures.
import asyncio
import hashlib
import hmac
import json
import os
import re
import shlex
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import fsspec
import yaml
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from canvas_ray.config import REPO_ROOT, CanvasConfig, canonical_aspect
from canvas_ray.io.outputs import join_uri, write_bytes
from canvas_ray.io.uris import resolve_allowed
from canvas_ray.logs import get_logger
from canvas_ray.profiles import valid_profile_name
from serve.claims import Claims
from serve.errors import ApiError
from serve.parsing import CONTROL_CHARS, BodyReader, validate_model
from serve.webhooks import deliver_webhook, origin_allowed, public_outcome

log = get_logger("canvas_ray.serve.jobs")
router = APIRouter()

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
ACTIVE = ("PENDING", "RUNNING")
JOB_ID_RE = re.compile(r"^cr-[0-9a-f]{20}$")
OUTPUT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_JOB_BODY = 64 * 1024  # a job request is a few fields
# Files of a job's output that GET /v1/jobs/{id}/files/... may return (the review pages and what they show).
SERVABLE = re.compile(r"^(index\.html|summary\.json|progress\.json|(review|images|thumbs)/[A-Za-z0-9._/-]+)$")


MAX_LIST = 64  # entries of a list field before de-duplication (the caps in serve.jobs apply after)
Name = Annotated[str, Field(min_length=1, max_length=200)]


class JobRequest(BaseModel):
    """The body of POST /v1/jobs. Strict types: ``true`` is not a number, ``"2"`` is not an integer."""

    model_config = ConfigDict(extra="forbid", strict=True)
    catalog: str = Field(min_length=1, max_length=2000, description="catalog URI under an allowed prefix")
    styles: list[Name] | None = Field(
        None, max_length=MAX_LIST, description="style presets (default: the config's)"
    )
    profiles: list[Name] | None = Field(
        None, max_length=MAX_LIST, description="output profiles, e.g. ['amazon-main']"
    )
    aspect_ratios: list[Name] | None = Field(
        None, max_length=MAX_LIST, description="plain aspect ratios, e.g. ['1:1']"
    )
    variants: int | None = Field(None, description="variants per item × style × target")
    output: str | None = Field(
        None, max_length=64, description="output folder name under the jobs root (default: job id)"
    )
    webhook_url: str | None = Field(None, max_length=2000, description="POSTed on completion or failure")
    limit: int | None = Field(None, ge=1, le=10_000_000, description="only the first N catalog rows")


class JobError(ApiError):
    """A job request refused or failed: answered like every other API error (serve.errors)."""


def owner_of(api_key: str | None, secret: bytes) -> str:
    """The owner tag of a job: an HMAC of the API key under the server's key (the dashboard shows it, so
    it must not be a plain hash anyone could test keys against)."""
    if not api_key:
        return "anonymous"
    return hmac.new(secret, api_key.encode(), hashlib.sha256).hexdigest()[:32]


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


def outputs_per_item(config: CanvasConfig) -> int:
    """Outputs one catalog row asks for under ``config`` (rows without their own style/profile columns):
    styles × targets × variants, where targets are the profiles when any are set, else the aspect ratios
    (:meth:`canvas_ray.stages.prompt.Prompt.requests`)."""
    targets = len(config.output.profiles) or len(config.output.aspect_ratios)
    return len(config.styles.default) * max(1, targets) * config.output.variants


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

    def _states(self) -> dict[str, tuple[str, str, float]]:
        """``{job id: (state, owner tag, start time)}`` of this service's jobs, from the job server."""
        try:
            jobs = self.client.list_jobs()
        except JobError:
            raise
        except Exception as error:  # noqa: BLE001 - the job server refused
            raise self.unavailable("the Ray job server cannot list jobs", error) from None
        states: dict[str, tuple[str, str, float]] = {}
        for job in jobs:
            metadata = job.metadata or {}
            if metadata.get("canvas_ray") == "1" and job.submission_id:
                owner = str(metadata.get("owner", ""))
                states[str(job.submission_id)] = (str(job.status), owner, float(job.start_time or 0))
        return states

    # -- checks -----------------------------------------------------------------------------------

    def _catalog(self, uri: str) -> str:
        """The catalog to read: under an allowed prefix once normalised (a local path comes back resolved,
        so the job reads what was checked, not a link that could change)."""
        if not self.jobs.allowed_catalog_prefixes:
            raise JobError(403, "catalog_not_allowed", "no catalog prefixes are allowed on this server")
        resolved = resolve_allowed(uri, self.jobs.allowed_catalog_prefixes)
        if resolved is None:
            raise JobError(403, "catalog_not_allowed", "catalog is not under an allowed prefix")
        return resolved

    def row_prefixes(self) -> list[str]:
        """What a job's rows may read: the operator's list, else the catalog prefixes."""
        rows = self.jobs.allowed_row_prefixes
        return list(self.jobs.allowed_catalog_prefixes if rows is None else rows)

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
        if fs.exists(path + "/job.json"):  # early answer; the claim at submission is the real check
            raise JobError(409, "output_in_use", f"output {name!r} belongs to another job")
        return output

    def _webhook(self, url: str | None) -> str | None:
        if url is None:
            return None
        if not origin_allowed(url, self.jobs.webhook_allowed_origins):
            raise JobError(
                400, "webhook_not_allowed", "webhook_url must be an http(s) URL on an allowed origin"
            )
        if not os.environ.get(self.jobs.webhook_secret_env):
            raise JobError(503, "webhook_unavailable", "webhooks need a shared secret on the server")
        return url

    def _job_config(self, body: JobRequest) -> CanvasConfig:
        """The job's config: this server's, with the request's styles, targets and variants (each list
        de-duplicated and capped) and the row allowlist. Every value is checked here (400)."""
        from canvas_ray.profiles import ProfileBook
        from canvas_ray.styles import StyleBook

        jobs = self.jobs
        overrides: dict[str, Any] = {"limits.allowed_read_prefixes": self.row_prefixes()}
        if body.styles is not None:
            styles = list(dict.fromkeys(s.strip() for s in body.styles))
            if not 1 <= len(styles) <= jobs.max_styles:
                raise JobError(400, "bad_style", f"give 1..{jobs.max_styles} distinct styles")
            book = StyleBook.from_config(self.config)
            for style in styles:
                if CONTROL_CHARS.search(style) or "|" in style:
                    raise JobError(400, "bad_style", "a style is plain text, no '|' or control characters")
                try:
                    book.resolve(style)
                except ValueError as error:
                    raise JobError(400, "bad_style", str(error)[:300]) from None
            overrides["styles.default"] = styles
        if body.profiles is not None:
            profiles = list(dict.fromkeys(body.profiles))
            if not 1 <= len(profiles) <= jobs.max_profiles:
                raise JobError(400, "bad_profile", f"give 1..{jobs.max_profiles} distinct profiles")
            profile_book = ProfileBook.load(self.config.output.profiles_file)
            for name in profiles:
                if not valid_profile_name(name):
                    raise JobError(400, "bad_profile", f"bad profile name {name[:60]!r}")
                try:
                    profile_book.get(name)
                except ValueError as error:
                    raise JobError(400, "bad_profile", str(error)[:300]) from None
            overrides["output.profiles"] = profiles
        if body.aspect_ratios is not None:
            aspects: list[str] = []
            for aspect in body.aspect_ratios:
                try:
                    aspects.append(canonical_aspect(aspect))
                except ValueError as error:
                    raise JobError(400, "bad_aspect", str(error)[:300]) from None
            aspects = list(dict.fromkeys(aspects))
            if not 1 <= len(aspects) <= jobs.max_aspects:
                raise JobError(400, "bad_aspect", f"give 1..{jobs.max_aspects} distinct aspect ratios")
            overrides["output.aspect_ratios"] = aspects
        if body.variants is not None:
            if not 1 <= body.variants <= jobs.max_variants:
                raise JobError(400, "bad_request", f"variants must be 1..{jobs.max_variants}")
            overrides["output.variants"] = body.variants
        data = self.config.model_dump(mode="json", exclude={"serve", "source"})
        for dotted, value in overrides.items():
            section, key = dotted.split(".")
            data[section][key] = value
        try:
            return CanvasConfig.model_validate(data)
        except ValueError as error:
            raise JobError(400, "bad_request", str(error).splitlines()[0][:300]) from None

    def _check_size(self, catalog: str, config: CanvasConfig, limit: int | None) -> int:
        """Outputs the job will ask for, at most ``serve.jobs.max_outputs`` (400 beyond). Reads at most
        ``max_outputs / outputs per item + 1`` catalog rows (bounded, whatever the catalog's size)."""
        from canvas_ray.io.catalog import list_catalog, read_catalog_rows

        per_item = outputs_per_item(config)
        most = self.jobs.max_outputs // per_item
        if most < 1:
            raise JobError(
                400, "too_many_outputs", f"{per_item} outputs per item; the limit is {self.jobs.max_outputs}"
            )
        try:
            rows = read_catalog_rows(list_catalog(catalog), {}, min(limit or most + 1, most + 1)).num_rows
        except (OSError, ValueError) as error:
            log.info("catalog %s unreadable: %s", catalog, error)
            reason = f"the catalog cannot be read ({type(error).__name__})"
            raise JobError(400, "bad_catalog", reason) from None
        if rows > most:
            raise JobError(
                400,
                "too_many_outputs",
                f"more than {most} rows × {per_item} outputs per item passes the limit of "
                f"{self.jobs.max_outputs} outputs per job; use 'limit' or fewer styles/targets/variants",
            )
        return rows * per_item

    def _mine(self, owner: str) -> list[Any]:
        try:
            jobs = self.client.list_jobs()
        except JobError:
            raise
        except Exception as error:  # noqa: BLE001 - the job server refused
            raise self.unavailable("the Ray job server cannot list jobs", error) from None
        return [
            job
            for job in jobs
            if (job.metadata or {}).get("canvas_ray") == "1" and job.metadata.get("owner") == owner
        ]

    # -- operations -------------------------------------------------------------------------------

    def submit(self, body: JobRequest, api_key: str | None) -> dict[str, Any]:
        job_id = "cr-" + uuid.uuid4().hex[:20]
        catalog = self._catalog(body.catalog)
        webhook = self._webhook(body.webhook_url)
        job_config = self._job_config(body)
        output = self._output(body.output, job_id)
        expected = self._check_size(catalog, job_config, body.limit)
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
            write_bytes(config_uri, yaml.safe_dump(job_config.model_dump(mode="json")).encode(), {})
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
            "webhook": public_outcome(_read_json(join_uri(output, "webhook.json")))
            if metadata.get("webhook")
            else None,
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
