"""Checks of a catalog job request (``POST /v1/jobs``): the strict body, the catalog prefix allowlist after
symlinks, the output folder under the jobs root, the webhook origin allowlist, the job's config (styles,
targets, variants, row allowlist) and the outputs cap. Every refusal is a :class:`JobError` (4xx/503)."""

# No `from __future__ import annotations`: FastAPI must resolve JobRequest's fields.
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import fsspec
from pydantic import BaseModel, ConfigDict, Field

from canvas_ray.config import CanvasConfig, JobsConfig, canonical_aspect
from canvas_ray.io.outputs import join_uri
from canvas_ray.io.uris import resolve_allowed
from canvas_ray.logs import get_logger
from canvas_ray.profiles import valid_profile_name
from serve.errors import ApiError
from serve.parsing import CONTROL_CHARS
from serve.webhooks import origin_allowed

log = get_logger("canvas_ray.serve.jobs")

OUTPUT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
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


def outputs_per_item(config: CanvasConfig) -> int:
    """Outputs one catalog row asks for under ``config`` (rows without their own style/profile columns):
    styles × targets × variants, where targets are the profiles when any are set, else the aspect ratios
    (:meth:`canvas_ray.stages.prompt.Prompt.requests`)."""
    targets = len(config.output.profiles) or len(config.output.aspect_ratios)
    return len(config.styles.default) * max(1, targets) * config.output.variants


def check_catalog(jobs: JobsConfig, uri: str) -> str:
    """The catalog to read: under an allowed prefix once normalised (a local path comes back resolved,
    so the job reads what was checked, not a link that could change)."""
    if not jobs.allowed_catalog_prefixes:
        raise JobError(403, "catalog_not_allowed", "no catalog prefixes are allowed on this server")
    resolved = resolve_allowed(uri, jobs.allowed_catalog_prefixes)
    if resolved is None:
        raise JobError(403, "catalog_not_allowed", "catalog is not under an allowed prefix")
    return resolved


def row_prefixes(jobs: JobsConfig) -> list[str]:
    """What a job's rows may read: the operator's list, else the catalog prefixes."""
    rows = jobs.allowed_row_prefixes
    return list(jobs.allowed_catalog_prefixes if rows is None else rows)


def check_output(root: str | None, name: str | None, job_id: str) -> str:
    """The job's output folder ``name`` (default: the job id) under the jobs ``root``, not yet in use."""
    if root is None:
        raise JobError(503, "jobs_disabled", "no output root for jobs (serve.jobs.output_root)")
    name = name or job_id
    if not OUTPUT_NAME_RE.match(name) or name in (".", ".."):
        raise JobError(400, "bad_output", "output must be a folder name: letters, digits, '.', '_', '-'")
    output = join_uri(root, name)
    if "://" not in root:
        base = Path(root).resolve()
        target = Path(output).resolve()
        if base not in target.parents:
            raise JobError(400, "bad_output", "output escapes the jobs root")
        output = str(target)
    fs, path = fsspec.core.url_to_fs(output)
    if fs.exists(path + "/job.json"):  # early answer; the claim at submission is the real check
        raise JobError(409, "output_in_use", f"output {name!r} belongs to another job")
    return output


def check_webhook(jobs: JobsConfig, url: str | None) -> str | None:
    """The webhook URL (or None): on an allowed origin, with a shared secret to sign it on this server."""
    if url is None:
        return None
    if not origin_allowed(url, jobs.webhook_allowed_origins):
        raise JobError(400, "webhook_not_allowed", "webhook_url must be an http(s) URL on an allowed origin")
    if not os.environ.get(jobs.webhook_secret_env):
        raise JobError(503, "webhook_unavailable", "webhooks need a shared secret on the server")
    return url


def job_config(config: CanvasConfig, body: JobRequest) -> CanvasConfig:
    """The job's config: this server's, with the request's styles, targets and variants (each list
    de-duplicated and capped) and the row allowlist. Every value is checked here (400)."""
    from canvas_ray.profiles import ProfileBook
    from canvas_ray.styles import StyleBook

    jobs = config.serve.jobs
    overrides: dict[str, Any] = {"limits.allowed_read_prefixes": row_prefixes(jobs)}
    if body.styles is not None:
        styles = _distinct((s.strip() for s in body.styles), jobs.max_styles, "bad_style", "styles")
        book = StyleBook.from_config(config)

        def resolve_style(style: str) -> None:
            if CONTROL_CHARS.search(style) or "|" in style:
                raise JobError(400, "bad_style", "a style is plain text, no '|' or control characters")
            book.resolve(style)

        _each_known(styles, resolve_style, "bad_style")
        overrides["styles.default"] = styles
    if body.profiles is not None:
        profiles = _distinct(body.profiles, jobs.max_profiles, "bad_profile", "profiles")
        profile_book = ProfileBook.load(config.output.profiles_file)

        def find_profile(name: str) -> None:
            if not valid_profile_name(name):
                raise JobError(400, "bad_profile", f"bad profile name {name[:60]!r}")
            profile_book.get(name)

        _each_known(profiles, find_profile, "bad_profile")
        overrides["output.profiles"] = profiles
    if body.aspect_ratios is not None:
        aspects = _each_known(body.aspect_ratios, canonical_aspect, "bad_aspect")
        overrides["output.aspect_ratios"] = _distinct(
            aspects, jobs.max_aspects, "bad_aspect", "aspect ratios"
        )
    if body.variants is not None:
        if not 1 <= body.variants <= jobs.max_variants:
            raise JobError(400, "bad_request", f"variants must be 1..{jobs.max_variants}")
        overrides["output.variants"] = body.variants
    data = config.model_dump(mode="json", exclude={"serve", "source"})
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        data[section][key] = value
    try:
        return CanvasConfig.model_validate(data)
    except ValueError as error:
        raise JobError(400, "bad_request", str(error).splitlines()[0][:300]) from None


def _distinct(values: Iterable[str], most: int, code: str, what: str) -> list[str]:
    """``values`` without repeats, 1 to ``most`` of them (a 400 ``code`` otherwise)."""
    unique = list(dict.fromkeys(values))
    if not 1 <= len(unique) <= most:
        raise JobError(400, code, f"give 1..{most} distinct {what}")
    return unique


def _each_known(values: list[str], check: Callable[[str], Any], code: str) -> list[Any]:
    """``check`` of each value in order; its ValueError (unknown name, bad value) is a 400 ``code``."""
    results = []
    for value in values:
        try:
            results.append(check(value))
        except ValueError as error:
            raise JobError(400, code, str(error)[:300]) from None
    return results


def check_size(jobs: JobsConfig, catalog: str, config: CanvasConfig, limit: int | None) -> int:
    """Outputs the job will ask for, at most ``serve.jobs.max_outputs`` (400 beyond). Reads at most
    ``max_outputs / outputs per item + 1`` catalog rows (bounded, whatever the catalog's size)."""
    from canvas_ray.io.catalog import list_catalog, read_catalog_rows

    per_item = outputs_per_item(config)
    most = jobs.max_outputs // per_item
    if most < 1:
        raise JobError(
            400, "too_many_outputs", f"{per_item} outputs per item; the limit is {jobs.max_outputs}"
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
            f"{jobs.max_outputs} outputs per job; use 'limit' or fewer styles/targets/variants",
        )
    return rows * per_item
