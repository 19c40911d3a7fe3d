"""Schema of a fine-tuning config (``configs/finetune.yaml``); unknown keys fail like the main config.

Derived from the main schema: the same strict base, the same backend registries and device rule for the
data-prep models (:mod:`canvas_ray.config_stages`), the same resolution rule as ``inpaint.resolution``, and
the same loading, overrides and relative-path rules (:mod:`canvas_ray.config`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from canvas_ray.config import apply_overrides, read_yaml_mapping, relative_to, validated
from canvas_ray.config_base import StrictModel, check_device, multiple_of_8
from canvas_ray.config_stages import registered_backend

LORA_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)


class LoraSection(StrictModel):
    rank: int = Field(8, ge=1, le=512)
    alpha: int = Field(8, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_TARGETS), min_length=1)


class DataSection(StrictModel):
    segment_backend: str = "backdrop"
    segment_model: str | None = None
    caption_backend: str = "metadata"
    caption_model: str | None = None
    trust_remote_code: bool = Field(False, description="for remote-code segmenters such as BiRefNet")
    device: str = Field("cpu", description="device of the data-prep models: cpu | cuda | auto")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per data-prep actor (Ray Data path)")
    actors: int = Field(1, ge=1, description="data-prep actor pool size (Ray Data path)")
    use_ray_data: bool = Field(False, description="prepare examples with Ray Data instead of in-process")
    limit: int | None = Field(None, ge=1)

    @field_validator("segment_backend", "caption_backend")
    @classmethod
    def _registered(cls, value: str, info: Any) -> str:
        """The same backend registries as generation (their error lists the valid names)."""
        return registered_backend(info.field_name.removesuffix("_backend"), value)

    _device = field_validator("device")(check_device)


class ScalingSection(StrictModel):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)


class FinetuneConfig(StrictModel):
    """Everything one LoRA fine-tuning run needs."""

    base_model: str = Field(description="diffusers inpainting pipeline: hub id or local folder")
    revision: str | None = None
    resolution: int = Field(512, ge=32, le=2048)
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(1, ge=1, description="examples per worker per micro-step")
    gradient_accumulation: int = Field(1, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    lr_warmup_steps: int = Field(0, ge=0)
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
    ] = Field("constant_with_warmup", description="diffusers.optimization.get_scheduler name")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="used on GPU only")
    random_mask_steps: int = Field(0, ge=0, description="first steps use random rectangles as masks")
    background_loss_weight: float = Field(1.0, ge=0, description="loss weight of background latents")
    product_loss_weight: float = Field(1.0, ge=0, description="loss weight of product latents")
    checkpoint_every: int = Field(100, ge=1)
    validation_prompts: list[str] = Field(default_factory=list)
    validation_steps: int = Field(10, ge=1, description="denoising steps of validation images")
    seed: int = 0
    lora: LoraSection = Field(default_factory=LoraSection)
    data: DataSection = Field(default_factory=DataSection)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    source: str | None = Field(None, exclude=True)

    _resolution = field_validator("resolution")(multiple_of_8)


def finetune_config_from_dict(
    data: dict[str, Any] | None, source: str = "<dict>", base: Path | None = None
) -> FinetuneConfig:
    data = dict(data or {})
    if base is not None:
        data["base_model"] = relative_to(base, data.get("base_model"))
        section = data.get("data")
        if isinstance(section, dict):
            for key in ("segment_model", "caption_model"):
                section[key] = relative_to(base, section.get(key))
    return validated(FinetuneConfig, data, source)


def load_finetune_config(path: str | Path, overrides: dict[str, Any] | None = None) -> FinetuneConfig:
    """Read a fine-tuning YAML; ``overrides`` are dotted keys like ``{"scaling.num_workers": 2}``."""
    file = Path(path)
    data = read_yaml_mapping(file, " (pass --config with a fine-tuning YAML such as configs/finetune.yaml)")
    apply_overrides(data, overrides)
    return finetune_config_from_dict(data, source=str(file), base=file.resolve().parent)
