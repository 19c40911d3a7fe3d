"""The one config schema shared by the batch job, the online service and the tools.

A YAML file maps onto :class:`CanvasConfig`. Unknown keys and bad values fail with a :class:`ConfigError`
that names the offending key (``inpaint.steps: Input should be greater than 0``). Paths inside a config
(styles file, local model folders) are resolved relative to the config file.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
DEFAULT_STYLES_FILE = REPO_ROOT / "configs" / "styles.yaml"
DEFAULT_PROFILES_FILE = REPO_ROOT / "configs" / "profiles.yaml"
_ASPECT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[:x/]\s*(\d+(?:\.\d+)?)\s*$")


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names the key and says what to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Resources(_Strict):
    """Ray resources of one stage: an actor pool for model stages, tasks for cheap ones.

    ``concurrency`` sizes an actor pool: a fixed size (``4``), a range (``"1..8"`` or ``[1, 8]``) that
    Ray Data autoscales within, or ``"auto"`` / ``"1..auto"``: up to every actor the cluster's free
    GPUs (CPUs for CPU pools) can hold once the other pools have their minimum
    (:func:`canvas_ray.cluster.size_pools`). A range is stored as ``concurrency`` (the minimum) and
    ``max_concurrency`` (an int or ``"auto"``).
    """

    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; fractions share a GPU (0.5: two actors)")
    num_cpus: float = Field(1.0, gt=0)
    concurrency: int = Field(1, ge=1, description="actors in the pool (its minimum) or max parallel tasks")
    max_concurrency: int | Literal["auto"] | None = Field(
        None, description="autoscale the actor pool up to this size ('auto': what the cluster can hold)"
    )
    batch_size: int = Field(4, ge=1, description="rows per model call (and per map_batches call)")
    memory_mb: int | None = Field(
        None, ge=1, description="memory per actor or task, declared to Ray's scheduler (None: step default)"
    )
    custom: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources per actor, e.g. {inpaint_node: 1}: pin a pool"
    )

    @model_validator(mode="before")
    @classmethod
    def _range(cls, data: Any) -> Any:
        """``concurrency: "2..8"`` / ``[2, 8]`` / ``"auto"`` / ``"1..auto"`` → minimum and maximum."""
        if not isinstance(data, dict) or "concurrency" not in data:
            return data
        value = data["concurrency"]
        low: Any
        high: Any
        if isinstance(value, list | tuple):
            if len(value) != 2:
                raise ValueError(f"concurrency as a list is [min, max], got {value!r}")
            low, high = value
        elif isinstance(value, str):
            text = value.strip().lower()
            if text == "auto":
                low, high = 1, "auto"
            elif re.fullmatch(r"\d+\s*\.\.\s*(\d+|auto)", text):
                low, high = (part.strip() for part in text.split(".."))
            else:
                raise ValueError(f"concurrency must be N, 'MIN..MAX', 'MIN..auto' or 'auto', got {value!r}")
        else:
            return data
        data = dict(data)
        data["concurrency"] = int(low)
        data["max_concurrency"] = high if high == "auto" else int(high)
        return data

    @model_validator(mode="after")
    def _ordered(self) -> Resources:
        if isinstance(self.max_concurrency, int) and self.max_concurrency < self.concurrency:
            raise ValueError(
                f"max_concurrency {self.max_concurrency} is below concurrency {self.concurrency}"
            )
        return self

    @property
    def autoscales(self) -> bool:
        return self.max_concurrency == "auto" or (
            isinstance(self.max_concurrency, int) and self.max_concurrency > self.concurrency
        )


class ModelStage(_Strict):
    """How one stage gets its model: a named backend plus, for neural backends, a checkpoint."""

    backend: str
    model: str | None = Field(None, description="hub id or local folder, loaded with from_pretrained")
    revision: str | None = None
    dtype: Literal["float32", "float16", "bfloat16", "auto"] = "float32"
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    trust_remote_code: bool = False
    options: dict[str, Any] = Field(default_factory=dict, description="backend-specific settings")
    resources: Resources = Field(default_factory=Resources)

    @field_validator("backend")
    @classmethod
    def _registered(cls, value: str) -> str:
        """The name must be in the stage's backend registry (which lists the valid ones on error)."""
        from canvas_ray.registry import registry_for

        kind = {"SegmentConfig": "segment", "CaptionConfig": "caption", "InpaintConfig": "inpaint"}.get(
            cls.__name__
        )
        return registry_for(kind).check(value) if kind else value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError(f"device must be auto, cpu, mps, cuda or cuda:N, got {value!r}")
        return value


class SegmentConfig(ModelStage):
    backend: str = Field("backdrop", description="a registered segmenter: hf, alpha, backdrop, onnx, …")
    fallback: Literal["backdrop", "none"] = Field(
        "backdrop", description="what `alpha` uses for images without a usable alpha channel"
    )
    threshold: float = Field(0.5, gt=0, lt=1, description="soft mask value at which a pixel is product")
    min_area: float = Field(
        0.002, ge=0, lt=1, description="a product mask smaller than this share is an error"
    )
    refine: Literal["none", "grabcut"] = Field(
        "none",
        description="grabcut: a colour model seeded from the soft mask opens enclosed holes the model filled "
        "and claims parts it was unsure of (kept because it raised IoU on the busy-scene set)",
    )
    min_confidence: float = Field(
        0.6, ge=0, le=1, description="outputs whose mask_confidence is below this are `review`, never `ok`"
    )


class CaptionConfig(ModelStage):
    backend: str = Field("metadata", description="a registered captioner: hf, metadata, …")
    prompt: str = (
        "Describe this product photo in detail in two parts. "
        "Product: what the product is, its material, colour and shape. "
        "Background: the setting, surface, lighting and colours behind the product."
    )
    max_new_tokens: int = Field(96, ge=1, le=1024)
    max_words: int = Field(20, ge=4, description="product description cap in prompts (CLIP reads 77 tokens)")


class LoraSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: str
    weight: float = 1.0
    weight_name: str | None = None


class IPAdapterSpec(_Strict):
    """An IP-Adapter for the diffusers inpainter: reference-image styles (``style_image`` per row).

    Loaded with diffusers' ``pipe.load_ip_adapter(model, subfolder=..., weight_name=...,
    image_encoder_folder=...)``; the layout of ``h94/IP-Adapter`` (``models/ip-adapter_sd15.safetensors``,
    ``models/image_encoder/``) is the default.
    """

    model: str = Field(min_length=1, description="hub id or local folder holding the adapter weights")
    subfolder: str = Field("models", description="folder of the weight file inside `model` ('' for none)")
    weight_name: str = Field("ip-adapter_sd15.safetensors", description="the adapter's weight file")
    image_encoder_folder: str | None = Field(
        "image_encoder",
        description="CLIP image encoder folder: inside `subfolder` unless it contains '/'; "
        "None keeps the pipeline's own image_encoder",
    )
    scale: float = Field(0.6, ge=0, le=2, description="how strongly the reference steers the background")

    @field_validator("weight_name")
    @classmethod
    def _weight_file(cls, value: str) -> str:
        if "/" in value or "\\" in value or not value.endswith((".safetensors", ".bin")):
            raise ValueError(f"weight_name must be a .safetensors or .bin file name, got {value!r}")
        return value

    @field_validator("subfolder", "image_encoder_folder")
    @classmethod
    def _inside(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("/") or ".." in value.split("/")):
            raise ValueError(f"must be a relative folder inside the adapter repository, got {value!r}")
        return value


class InpaintConfig(ModelStage):
    backend: str = Field("studio", description="a registered inpainter: diffusers, studio, …")
    resolution: int = Field(512, ge=64, le=2048, description="long side of the model canvas (multiple of 8)")
    steps: int = Field(30, ge=1, le=500)
    guidance_scale: float = Field(7.5, ge=0, le=50)
    strength: float = Field(1.0, gt=0, le=1)
    scheduler: str | None = Field(
        None, description="diffusers scheduler class name, e.g. DPMSolverMultistepScheduler"
    )
    keep_dilate_px: int = Field(
        0, ge=0, le=64, description="grow the kept (product) region given to the model"
    )
    loras: list[LoraSpec] = Field(default_factory=list, description="adapters always loaded, mixed by weight")
    ip_adapter: IPAdapterSpec | None = Field(
        None, description="reference-image styles for the diffusers backend (None: references are ignored)"
    )
    # GPU fast path (diffusers backend): speed and memory knobs applied by load_inpainter after the move to
    # the device. None of them changes what is drawn (vae_tiling aside), so they stay out of the fingerprint.
    channels_last: bool = Field(False, description="UNet (and VAE) weights in channels_last memory format")
    compile: bool = Field(False, description="torch.compile the UNet (slow first call, faster after)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode when compile is true (max-autotune: slower compile)"
    )
    attention: Literal["sdpa", "default"] = Field(
        "sdpa", description="sdpa: torch scaled_dot_product_attention (AttnProcessor2_0); default: as loaded"
    )
    vae_slicing: bool = Field(False, description="decode a batch one image at a time (less memory)")
    vae_tiling: bool = Field(False, description="encode/decode large images in overlapping tiles")
    offload: Literal["none", "model", "sequential"] = Field(
        "none",
        description="CPU offload for small GPUs (accelerate): model = one model at a time on the GPU, "
        "sequential = one layer at a time (least memory, slowest); needs a CUDA device",
    )

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"resolution must be a multiple of 8, got {value}")
        return value

    @model_validator(mode="after")
    def _offload_needs_gpu(self) -> InpaintConfig:
        if self.offload != "none" and self.device in ("cpu", "mps"):
            raise ValueError(
                f"offload={self.offload} moves models between CPU and a CUDA GPU; with device={self.device} "
                "set offload: none"
            )
        return self


class ExpansionConfig(_Strict):
    """Object-expansion guard: re-segment the generated image and retry when the product has grown."""

    enabled: bool = True
    threshold: float = Field(
        0.15, ge=0, description="largest accepted E / area(product), E = area(out ∪ in) - area(in)"
    )
    tolerance_px: int = Field(2, ge=0, le=32, description="segmenter edge jitter ignored around the product")
    resolution: int = Field(
        256, ge=32, le=2048, description="long side at which generated images are re-segmented"
    )
    max_attempts: int = Field(3, ge=1, le=16, description="generations per output, the first included")
    retry_dilate_px: int = Field(
        4, ge=0, le=64, description="grow the kept region by this much more on each retry"
    )
    on_fail: Literal["reject", "keep_best"] = Field(
        "reject", description="after max_attempts: a `rejected` row, or the least-expanded candidate"
    )
    applies_to: Literal["generative", "always"] = Field(
        "generative",
        description="generative: only for generators that paint the product region (diffusion); a "
        "procedural studio backdrop cannot grow the product. always: every generator",
    )
    segment: SegmentConfig | None = Field(
        None, description="segmenter for the generated image; None = the segment stage's (alpha → backdrop)"
    )


class ScoringConfig(_Strict):
    """How candidates are ranked: weight-free checks, plus CLIP image–text alignment when a model is named."""

    clip_model: str | None = Field(None, description="CLIP checkpoint (hub id or folder) for alignment")
    clip_device: str = "auto"
    weights: dict[str, float] = Field(
        default_factory=lambda: {"clip": 1.0, "seam": 1.0, "harmony": 0.5, "exposure": 0.5},
        description="weight per figure: clip, seam, harmony, exposure",
    )

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - {"clip", "seam", "harmony", "exposure"})
        if unknown:
            raise ValueError(f"unknown score names {unknown}; use clip, seam, harmony, exposure")
        if any(weight < 0 for weight in value.values()):
            raise ValueError("score weights must be >= 0")
        return value


class QualityConfig(_Strict):
    candidates: int = Field(1, ge=1, le=16, description="generations per requested output; the best is kept")
    expansion: ExpansionConfig = Field(default_factory=ExpansionConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)


class CompositeConfig(_Strict):
    fill: float = Field(
        0.78, gt=0.05, le=1.0, description="largest share of canvas width/height the product takes"
    )
    placement: Literal["center", "floor"] = "floor"
    floor_margin: float = Field(
        0.1, ge=0, lt=0.5, description="gap under the product for `floor`, share of height"
    )
    scale: Literal["native", "fit"] = Field(
        "native",
        description="native keeps source pixels bit-exact; fit resamples the product to output.long_side",
    )
    shadow: float | None = Field(None, ge=0, le=1, description="contact shadow strength; None = the style's")
    feather_px: int = Field(2, ge=0, le=32, description="soft edge width, applied outside the product only")
    resources: Resources = Field(default_factory=lambda: Resources(batch_size=8))


class OutputConfig(_Strict):
    aspect_ratios: list[str] = Field(default_factory=lambda: ["1:1"], min_length=1)
    variants: int = Field(1, ge=1, le=64)
    format: Literal["png", "jpeg", "webp"] = "png"
    quality: int = Field(95, ge=1, le=100)
    long_side: int | None = Field(None, ge=64, le=8192, description="output size for composite.scale=fit")
    shard_width: int = Field(2, ge=1, le=4, description="hex chars of the image-folder shard prefix")
    manifest_bucket_rows: int = Field(
        100_000,
        ge=1,
        description="target rows per manifest bucket file; fixes the bucket count of a new output root",
    )
    manifest_part_rows: int = Field(
        256,
        ge=1,
        le=1_000_000,
        description="manifest rows per staging part while a run goes (a crash loses at most the unflushed)",
    )

    profiles: list[str] = Field(
        default_factory=list,
        description="output profiles (configs/profiles.yaml) made per item and style; when set, the default "
        "aspect_ratios are not made (a row's own aspect_ratios still are)",
    )
    profiles_file: str = Field(str(DEFAULT_PROFILES_FILE), description="YAML file of output profiles")

    @field_validator("profiles")
    @classmethod
    def _profiles(cls, values: list[str]) -> list[str]:
        from canvas_ray.profiles import PROFILE_NAME

        for value in values:
            if not re.fullmatch(PROFILE_NAME, value):
                raise ValueError(f"bad profile name {value!r} (lowercase letters, digits and '-')")
        if len(set(values)) != len(values):
            raise ValueError(f"profiles repeat: {values}")
        return values

    @field_validator("aspect_ratios")
    @classmethod
    def _aspects(cls, values: list[str]) -> list[str]:
        canonical = [canonical_aspect(value) for value in values]
        if len(set(canonical)) != len(canonical):
            raise ValueError(f"aspect ratios repeat: {values}")
        return canonical


class StylesConfig(_Strict):
    file: str = Field(str(DEFAULT_STYLES_FILE), description="YAML file of named presets")
    default: list[str] = Field(default_factory=lambda: ["studio white"], min_length=1)
    extra_files: list[str] = Field(
        default_factory=list, description="more preset files, e.g. published LoRA styles"
    )


class ProvenanceConfig(_Strict):
    """How generated images say so (canvas_ray.provenance): IPTC XMP always, plus a signed C2PA manifest."""

    c2pa: Literal["sign", "unsigned"] = Field(
        "sign",
        description="sign: a C2PA manifest signed with key/cert (no key: outputs are error rows); unsigned: "
        "an explicit opt-out, XMP only, recorded in every manifest row",
    )
    cert: str | None = Field(None, description="PEM certificate chain file (leaf first); or cert_env")
    key: str | None = Field(None, description="PEM private key file of the leaf certificate; or key_env")
    cert_env: str = Field("CANVAS_RAY_C2PA_CERT", description="environment variable: chain file or PEM")
    key_env: str = Field("CANVAS_RAY_C2PA_KEY", description="environment variable: key file or PEM")
    alg: Literal["es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"] = "es256"
    timestamp_url: str | None = Field(None, description="RFC 3161 time-stamp authority (None: none)")


class LimitsConfig(_Strict):
    max_image_bytes: int = Field(40 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(40_000_000, ge=64 * 64)
    min_side: int = Field(16, ge=1)
    fetch_timeout_s: float = Field(60.0, gt=0)
    fetch_retries: int = Field(2, ge=0, le=10, description="http(s) images: retries on 5xx/429/timeouts")
    fetch_per_host: int = Field(4, ge=1, le=256, description="http(s) images: downloads at once per host")
    allowed_read_prefixes: list[str] | None = Field(
        None,
        description="image and style-image URIs of catalog rows must lie under one of these (checked "
        "after normalisation and, for local paths, symlink resolution); a refused row is an error row. "
        "None: read whatever the catalog names (the CLI); jobs submitted over HTTP always get a list",
    )

    @field_validator("allowed_read_prefixes")
    @classmethod
    def _read_prefixes(cls, values: list[str] | None) -> list[str] | None:
        return None if values is None else _checked_prefixes(values)


class RayConfig(_Strict):
    address: str | None = Field(None, description="None: RAY_ADDRESS or a local cluster")
    read_parallelism: int | None = Field(None, ge=1)
    io_concurrency: int = Field(4, ge=1, description="parallel fetch/write tasks")
    block_rows: int = Field(
        256, ge=1, le=100_000, description="rows per batch of the cheap steps (fetch/decode, prompt)"
    )
    block_mb: int = Field(
        32,
        ge=1,
        le=1024,
        description="target MB per block of the generation plan: small blocks of decoded images, so every"
        " pool gets work from the first minutes and no task holds a huge block",
    )
    attach_timeout_s: float = Field(
        30.0, gt=0, le=600, description="seconds a cluster address may take to answer before the job fails"
    )
    stall_timeout_s: float = Field(
        1800.0,
        ge=0,
        description="seconds in which no block moves through the plan (e.g. pool actors lost with their "
        "node and nowhere to restart) before the job fails with the reason; a re-run resumes. 0: wait for "
        "ever. Raise it for models whose loading takes longer",
    )


class JobsConfig(_Strict):
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
        return _checked_prefixes(values)

    @field_validator("allowed_row_prefixes")
    @classmethod
    def _row_prefixes(cls, values: list[str] | None) -> list[str] | None:
        return None if values is None else _checked_prefixes(values)

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


def _checked_prefixes(values: list[str]) -> list[str]:
    from canvas_ray.io.uris import prefix_problem

    for value in values:
        problem = prefix_problem(value)
        if problem:
            raise ValueError(problem)
    return values


class ServeConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
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


class CanvasConfig(_Strict):
    """Everything a run needs; the same file drives `canvas-ray generate`, `generate-one` and `serve`."""

    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    caption: CaptionConfig = Field(default_factory=CaptionConfig)
    inpaint: InpaintConfig = Field(default_factory=InpaintConfig)
    composite: CompositeConfig = Field(default_factory=CompositeConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    styles: StylesConfig = Field(default_factory=StylesConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    provenance: ProvenanceConfig = Field(default_factory=ProvenanceConfig)
    source: str | None = Field(None, exclude=True, description="file this config was read from")

    @model_validator(mode="after")
    def _fit_needs_size(self) -> CanvasConfig:
        if self.composite.scale == "fit" and self.output.long_side is None:
            raise ValueError("composite.scale=fit needs output.long_side")
        if self.output.profiles:
            from canvas_ray.profiles import ProfileBook

            book = ProfileBook.load(self.output.profiles_file)
            for name in self.output.profiles:
                book.get(name)  # unknown names fail here, listing the known ones
        return self

    def fingerprint(self) -> str:
        """Hash of everything that changes pixels (not resources, not serving), plus the style presets."""
        payload = self.model_dump(mode="json", exclude={"ray", "serve", "limits", "source", "provenance"})
        for stage in ("segment", "caption", "inpaint"):
            payload[stage].pop("resources", None)
            payload[stage].pop("device", None)
        for knob in ("channels_last", "compile", "compile_mode", "attention", "vae_slicing", "offload"):
            payload["inpaint"].pop(knob, None)  # how fast, not what is drawn
        if not payload["inpaint"].get("vae_tiling"):
            payload["inpaint"].pop("vae_tiling", None)  # tiles can leave seams: counts only when on
        payload["composite"].pop("resources", None)
        # Style files count by content, not by path: the same job from another checkout keeps its seeds.
        files = [payload["styles"].pop("file"), *payload["styles"].pop("extra_files")]
        payload["styles_content"] = [Path(f).read_bytes().decode() if Path(f).is_file() else f for f in files]
        for stage in ("segment", "caption", "inpaint"):
            model = payload[stage].get("model")
            if model and Path(model).is_dir():  # local folders count by name, not by absolute path
                payload[stage]["model"] = Path(model).name
        adapter = payload["inpaint"].get("ip_adapter")
        if adapter and Path(adapter["model"]).is_dir():
            adapter["model"] = Path(adapter["model"]).name
        # Which profiles are made is part of each output id (like aspect ratios); what they draw counts by
        # content when a run uses them (left out otherwise, so plain runs keep their fingerprints).
        profiles_file = payload["output"].pop("profiles_file")
        if payload["output"].pop("profiles"):
            payload["profiles_content"] = Path(profiles_file).read_text()
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def parse_aspect(value: str) -> float:
    """``"2:3"`` (also ``2x3``, ``2/3``) → width / height."""
    match = _ASPECT_RE.match(value)
    if not match or float(match.group(1)) <= 0 or float(match.group(2)) <= 0:
        raise ValueError(f"aspect ratio must look like 'W:H' with positive numbers, got {value!r}")
    ratio = float(match.group(1)) / float(match.group(2))
    if not 0.2 <= ratio <= 5.0:
        raise ValueError(f"aspect ratio {value!r} is outside 1:5 .. 5:1")
    return ratio


def canonical_aspect(value: str) -> str:
    """``"16x9"``, ``" 16 / 9 "`` → ``"16:9"`` (so equal ratios get equal output ids)."""
    parse_aspect(value)
    match = _ASPECT_RE.match(value)
    assert match is not None
    width, height = (f"{float(g):g}" for g in match.groups())
    return f"{width}:{height}"


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see configs/local.yaml for every key)"
        lines.append(f"  {key}: {message}")
    return f"invalid config {source}:\n" + "\n".join(lines)


def _resolve_relative(data: dict[str, Any], base: Path) -> None:
    """Make relative file paths in a config file relative to that file, if they exist there."""

    def fix(value: str | None) -> str | None:
        if not value or "://" in value or Path(value).is_absolute():
            return value
        candidate = (base / value).resolve()
        return str(candidate) if candidate.exists() or value.startswith(".") else value

    for stage in ("segment", "caption", "inpaint"):
        section = data.get(stage)
        if isinstance(section, dict) and isinstance(section.get("model"), str):
            section["model"] = fix(section["model"])
        adapter = section.get("ip_adapter") if isinstance(section, dict) else None
        if isinstance(adapter, dict) and isinstance(adapter.get("model"), str):
            adapter["model"] = fix(adapter["model"])
        if isinstance(section, dict) and isinstance(section.get("loras"), list):
            for lora in section["loras"]:
                if isinstance(lora, dict) and isinstance(lora.get("path"), str):
                    lora["path"] = fix(lora["path"])
    output = data.get("output")
    if isinstance(output, dict) and isinstance(output.get("profiles_file"), str):
        output["profiles_file"] = fix(output["profiles_file"])
    styles = data.get("styles")
    if isinstance(styles, dict):
        if isinstance(styles.get("file"), str):
            styles["file"] = fix(styles["file"])
        if isinstance(styles.get("extra_files"), list):
            styles["extra_files"] = [fix(v) if isinstance(v, str) else v for v in styles["extra_files"]]


def config_from_dict(
    data: dict[str, Any] | None, source: str = "<dict>", base: Path | None = None
) -> CanvasConfig:
    data = dict(data or {})
    if base is not None:
        _resolve_relative(data, base)
    try:
        config = CanvasConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None
    config.source = source
    return config


def read_yaml_mapping(file: Path, missing_hint: str = "") -> dict[str, Any]:
    """A YAML file that must hold a mapping of sections; clear ConfigErrors otherwise."""
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}{missing_hint}")
    try:
        loaded = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config {file} is not valid YAML: {error}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {file} must be a mapping of sections")
    return loaded


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> None:
    """Set dotted keys like ``{"output.variants": 2}`` in a config mapping, creating sections as needed."""
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted}: {part} is not a section")
        node[leaf] = value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> CanvasConfig:
    """Read a YAML config (None: defaults); apply dotted overrides like ``{"output.variants": 2}``."""
    data: dict[str, Any] = {}
    base = None
    source = "<defaults>"
    if path is not None:
        file = Path(path)
        data = read_yaml_mapping(file, " (pass --config with a path to a YAML file)")
        base, source = file.resolve().parent, str(file)
    apply_overrides(data, overrides)
    return config_from_dict(data, source=source, base=base)
