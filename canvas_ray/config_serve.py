"""Config sections of the online service: ``serve`` and its catalog jobs over HTTP (``serve.jobs``).
Part of :class:`canvas_ray.config.CanvasConfig`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from canvas_ray.config_base import StrictModel, checked_prefixes


class JobsConfig(StrictModel):
    """Catalog jobs over HTTP (``POST /v1/jobs``, serve/jobs.py): submitted to Ray through the Jobs API."""

    allowed_catalog_prefixes: list[str] = Field(
        default_factory=list, description="catalog URIs must start with one of these (none: every job is 403)"
    )
    allowed_row_prefixes: list[str] | None = Field(
        None,
        description="image and style-image URIs of a job's catalog rows must lie under one of these "
        "(None: the allowed catalog prefixes); a row outside is an error row",
    )
    output_root: str | None = Field(
        None, description="jobs write under this root (None: serve.output_root/jobs; neither: jobs disabled)"
    )
    dashboard_address: str | None = Field(
        None,
        description="Ray Jobs API address, e.g. http://127.0.0.1:8265 (None: RAY_ADDRESS or the local one)",
    )
    python: str = Field("python", min_length=1, description="interpreter of the job's entry point")
    working_dir: str | None = Field(
        None, description="runtime_env working_dir of the job (None: this checkout on PYTHONPATH)"
    )
    max_concurrent_per_key: int = Field(2, ge=1, le=1000, description="running jobs per API key")
    max_variants: int = Field(4, ge=1, le=64)
    max_styles: int = Field(8, ge=1, le=64)
    max_aspects: int = Field(8, ge=1, le=64, description="distinct aspect ratios per job")
    max_profiles: int = Field(8, ge=1, le=64, description="distinct output profiles per job")
    max_outputs: int = Field(
        100_000,
        ge=1,
        description="outputs per item × catalog rows (after `limit`) a job may ask for; more is a 400",
    )
    claim_grace_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="a job slot claimed for a submission the job server never saw is free after this",
    )
    owner_secret_env: str = Field(
        "CANVAS_RAY_OWNER_SECRET",
        description="environment variable with the key of the owner tag (HMAC of the API key); unset: a "
        "random key kept in OUTPUT_ROOT/.owner-secret, shared by every replica",
    )
    webhook_allowed_origins: list[str] = Field(
        default_factory=list,
        description="webhook URLs (and every redirect) must have one of these origins, scheme://host:port",
    )
    webhook_secret_env: str = Field(
        "CANVAS_RAY_WEBHOOK_SECRET", description="environment variable holding the HMAC-SHA256 shared secret"
    )
    webhook_timeout_s: float = Field(10.0, gt=0, le=120, description="per attempt")
    webhook_attempts: int = Field(4, ge=1, le=20)
    webhook_backoff_s: float = Field(1.0, ge=0, le=60, description="first retry delay, doubled each time")
    webhook_deadline_s: float = Field(120.0, gt=0, le=3600, description="all attempts together")
    poll_s: float = Field(2.0, gt=0, le=60, description="how often a job's state is checked for its webhook")
    retry_after_s: float = Field(
        10.0, gt=0, le=3600, description="Retry-After of the 503 sent when the job server refuses"
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "webhook_allowed_hosts" in data:
            raise ValueError(
                "webhook_allowed_hosts was replaced by webhook_allowed_origins: full origins such as "
                "'https://hooks.example.com:443' (a host alone let webhooks reach any of its ports)"
            )
        return data

    @field_validator("allowed_catalog_prefixes")
    @classmethod
    def _prefixes(cls, values: list[str]) -> list[str]:
        return checked_prefixes(values)

    @field_validator("allowed_row_prefixes")
    @classmethod
    def _row_prefixes(cls, values: list[str] | None) -> list[str] | None:
        return None if values is None else checked_prefixes(values)

    @field_validator("webhook_allowed_origins")
    @classmethod
    def _origins(cls, values: list[str]) -> list[str]:
        from canvas_ray.io.uris import origin_of

        origins = []
        for value in values:
            origin = origin_of(value)
            if origin is None or value.rstrip("/").lower() != origin:
                raise ValueError(
                    f"webhook origin {value!r} must be scheme://host:port, e.g. 'https://hooks.example.com:443'"
                )
            origins.append(origin)
        return origins


# Which stages share a replica online (canvas_ray.spec.serve_groups): one hand-off per model deployment.
Colocate = Literal["split", "chained", "models", "ingress"]


class ServeConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    colocate: Colocate = Field(
        "chained",
        description="split: a deployment per model stage; chained: segment+caption share one; models: one "
        "deployment runs segment..inpaint; ingress: the ingress replicas hold the models (no hand-off)",
    )
    max_batch_size: int = Field(8, ge=1, le=256)
    batch_wait_timeout_s: float = Field(0.05, ge=0, le=10)
    max_upload_bytes: int = Field(15 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(25_000_000, ge=64 * 64)
    max_variants: int = Field(4, ge=1, le=16)
    api_keys: list[str] = Field(default_factory=list)
    api_keys_env: str = "CANVAS_RAY_API_KEYS"
    allowed_uri_prefixes: list[str] = Field(default_factory=list)
    output_root: str | None = None
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    # load shedding: bounded queues instead of ever-longer waits (503 + Retry-After past the bound)
    max_inflight: int = Field(8, ge=1, le=4096, description="generate requests running in the ingress")
    max_queued: int = Field(16, ge=0, le=100_000, description="requests waiting for a slot; more get 503")
    model_max_queued: int = Field(
        64, ge=1, le=100_000, description="max_queued_requests of each model deployment (503 past it)"
    )
    retry_after_s: float = Field(2.0, gt=0, le=3600, description="the Retry-After sent with 503 and 429")
    request_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="deadline of one request: cancelled and answered 504 past it"
    )
    rate_limit_per_key: float | None = Field(
        None, gt=0, description="requests per second per API key (429 past it); None = no limit"
    )
    rate_limit_burst: int = Field(10, ge=1, le=10_000)
    max_json_depth: int = Field(32, ge=2, le=1000, description="deepest nesting accepted in JSON bodies")
    max_drain_bytes: int = Field(
        256 * 2**20,
        ge=0,
        description="a refused (413) body is read and dropped up to this size so clients see the 413",
    )
