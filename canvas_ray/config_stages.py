"""Config sections of the model stages: Ray resources of a step, and how segment, caption and inpaint get
their models (backend, checkpoint, adapters). Part of :class:`canvas_ray.config.CanvasConfig`."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from canvas_ray.config_base import StrictModel, check_device, multiple_of_8


def registered_backend(kind: str, value: str) -> str:
    """The backend name ``value`` of a ``kind`` stage (segment, caption, inpaint) if its registry has it;
    the registry's error lists the valid names."""
    from canvas_ray.registry import registry_for

    return registry_for(kind).check(value)


class Resources(StrictModel):
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


class ModelStage(StrictModel):
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
        kind = {"SegmentConfig": "segment", "CaptionConfig": "caption", "InpaintConfig": "inpaint"}.get(
            cls.__name__
        )
        return registered_backend(kind, value) if kind else value

    _device = field_validator("device")(check_device)


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


class LoraSpec(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: str
    weight: float = 1.0
    weight_name: str | None = None


class IPAdapterSpec(StrictModel):
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

    _resolution = field_validator("resolution")(multiple_of_8)

    @model_validator(mode="after")
    def _offload_needs_gpu(self) -> InpaintConfig:
        if self.offload != "none" and self.device in ("cpu", "mps"):
            raise ValueError(
                f"offload={self.offload} moves models between CPU and a CUDA GPU; with device={self.device} "
                "set offload: none"
            )
        return self
