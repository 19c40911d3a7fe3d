"""The one place where a stage config becomes a loaded model (hub id or local folder, via from_pretrained).

Device ``auto`` picks CUDA, then MPS, then CPU. Half precision on CPU is replaced by float32 (CPU kernels
for fp16 convolutions are slow or missing) with a log line saying so.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from canvas_ray.config import CaptionConfig, InpaintConfig, ModelStage, SegmentConfig

log = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but torch sees no CUDA GPU (use device: auto or cpu)")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtype = _DTYPES[name]
    if device.type == "cpu" and dtype != torch.float32:
        log.info("dtype %s on CPU replaced by float32", name)
        return torch.float32
    return dtype


def _require_model(spec: ModelStage, stage: str) -> str:
    if not spec.model:
        raise ValueError(
            f"{stage}.backend={spec.backend} needs {stage}.model (a hub id or a local folder); "
            f"build tiny test models with `canvas-ray tiny-models DIR`"
        )
    return spec.model


def _pretrained_kwargs(spec: ModelStage) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if spec.revision:
        kwargs["revision"] = spec.revision
    if spec.trust_remote_code:
        kwargs["trust_remote_code"] = True
    return kwargs


@dataclass
class LoadedModel:
    """A model with its pre/post-processor, on its device."""

    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype


def load_segmenter(spec: SegmentConfig) -> LoadedModel:
    """A transformers segmentation model: semantic segmentation classes, or remote-code matting models."""
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageSegmentation,
        AutoModelForSemanticSegmentation,
    )

    name = _require_model(spec, "segment")
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    kwargs = _pretrained_kwargs(spec)
    errors = []
    model = None
    for auto in (AutoModelForSemanticSegmentation, AutoModelForImageSegmentation):
        try:
            model = auto.from_pretrained(name, dtype=dtype, **kwargs)
            break
        except (ValueError, KeyError, OSError) as error:  # class not mapped by this Auto class
            errors.append(f"{auto.__name__}: {error}")
    if model is None:
        raise ValueError(f"cannot load segmenter {name!r}: " + " | ".join(errors))
    try:
        processor = AutoImageProcessor.from_pretrained(name, **kwargs)
    except (OSError, ValueError):
        processor = None  # some matting models ship no processor; the stage normalises by itself
    model.to(device).eval()
    return LoadedModel(model, processor, device, dtype)


def load_captioner(spec: CaptionConfig) -> LoadedModel:
    """A visual LLM / captioner under AutoModelForImageTextToText, with its AutoProcessor."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    name = _require_model(spec, "caption")
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    kwargs = _pretrained_kwargs(spec)
    model: torch.nn.Module = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype, **kwargs)
    processor = AutoProcessor.from_pretrained(name, **kwargs)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"  # decoder-only VLMs generate after the prompt
    model.to(device).eval()
    return LoadedModel(model, processor, device, dtype)


def load_inpainter(spec: InpaintConfig) -> LoadedModel:
    """A diffusers inpainting pipeline (SD 1.5 / 2 / XL) through AutoPipelineForInpainting."""
    import diffusers
    from diffusers import AutoPipelineForInpainting

    name = _require_model(spec, "inpaint")
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    kwargs = _pretrained_kwargs(spec)
    if os.path.isdir(name) and os.path.isfile(os.path.join(name, "model_index.json")):
        kwargs.pop("revision", None)
    pipe = AutoPipelineForInpainting.from_pretrained(
        name, dtype=dtype, safety_checker=None, requires_safety_checker=False, **kwargs
    )
    if spec.scheduler:
        scheduler_cls = getattr(diffusers, spec.scheduler, None)
        if scheduler_cls is None:
            raise ValueError(f"inpaint.scheduler {spec.scheduler!r} is not a diffusers scheduler class")
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return LoadedModel(pipe, None, device, dtype)
