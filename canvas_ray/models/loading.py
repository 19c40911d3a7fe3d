"""The one place where a stage config becomes a loaded model (hub id or local folder, via from_pretrained).

Device ``auto`` picks CUDA, then MPS, then CPU. Half precision on CPU is replaced by float32 (CPU kernels
for fp16 convolutions are slow or missing) with a log line saying so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from canvas_ray.config import CaptionConfig, InpaintConfig, IPAdapterSpec, ModelStage, SegmentConfig
from canvas_ray.logs import get_logger

log = get_logger(__name__)
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


def load_clip(name: str, device: str = "auto") -> LoadedModel:
    """A CLIP-family dual encoder (transformers ``CLIPModel``) and its ``CLIPProcessor``: image–text."""
    from transformers import CLIPModel, CLIPProcessor

    resolved = resolve_device(device)
    model = CLIPModel.from_pretrained(name)
    model.to(resolved).eval()  # type: ignore[arg-type]
    return LoadedModel(model, CLIPProcessor.from_pretrained(name), resolved, model.dtype)


def load_image_encoder(name: str, device: str = "auto") -> LoadedModel:
    """Any transformers vision model (``AutoModel``) with its image processor: features for FID/KID."""
    from transformers import AutoImageProcessor, AutoModel

    resolved = resolve_device(device)
    model = AutoModel.from_pretrained(name)
    model.to(resolved).eval()
    return LoadedModel(model, AutoImageProcessor.from_pretrained(name), resolved, model.dtype)


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
    if spec.ip_adapter is not None:
        load_ip_adapter(pipe, spec.ip_adapter)
    pipe.set_progress_bar_config(disable=True)
    apply_fast_path(pipe, spec, device)  # moves the pipeline to the device (or sets up CPU offload)
    return LoadedModel(pipe, None, device, dtype)


def load_ip_adapter(pipe: Any, spec: IPAdapterSpec) -> None:
    """Stock ``pipe.load_ip_adapter`` + ``set_ip_adapter_scale``; a feature extractor fit for the encoder.

    diffusers only creates a feature extractor (sized ``image_encoder.config.image_size``) when the pipeline
    has none; SD checkpoints ship a 224 px one for their safety checker, which an image encoder of another
    input size cannot take, so a mismatched one is replaced the same way diffusers would create it.
    """
    from transformers import CLIPImageProcessor

    pipe.load_ip_adapter(
        spec.model,
        subfolder=spec.subfolder,
        weight_name=spec.weight_name,
        image_encoder_folder=spec.image_encoder_folder,
    )
    pipe.set_ip_adapter_scale(spec.scale)
    encoder = getattr(pipe, "image_encoder", None)
    if encoder is None:
        raise ValueError(
            f"inpaint.ip_adapter {spec.model!r}: no image encoder loaded (set image_encoder_folder to the "
            "folder of its CLIPVisionModelWithProjection)"
        )
    size = int(encoder.config.image_size)
    extractor = getattr(pipe, "feature_extractor", None)
    crop = getattr(extractor, "crop_size", None)
    height = crop.get("height") if isinstance(crop, dict) else getattr(crop, "height", None)
    if extractor is None or height != size:
        log.info(
            "inpaint.ip_adapter: feature extractor resized from %s to %d px for the image encoder",
            height,
            size,
        )
        pipe.register_modules(feature_extractor=CLIPImageProcessor(size=size, crop_size=size))
    log.info(
        "loaded IP-Adapter %s/%s/%s at scale %g", spec.model, spec.subfolder, spec.weight_name, spec.scale
    )


def apply_fast_path(pipe: Any, spec: InpaintConfig, device: torch.device) -> None:
    """Move ``pipe`` to ``device`` and apply the config's speed/memory knobs, in diffusers' own terms.

    - ``offload``: ``enable_model_cpu_offload`` / ``enable_sequential_cpu_offload`` (accelerate) instead
      of moving the whole pipeline; CUDA only.
    - ``attention: sdpa``: plain ``AttnProcessor`` layers become ``AttnProcessor2_0`` (torch SDPA); special
      processors (IP-Adapter, …) already use SDPA and are left as they are. ``default`` keeps what loaded.
    - ``channels_last``: UNet and VAE weights in NHWC, what cuDNN's fastest convolutions want.
    - ``vae_slicing`` / ``vae_tiling``: ``vae.enable_slicing()`` / ``vae.enable_tiling()``.
    - ``compile``: ``unet.compile(mode=...)`` — in place, so the module keeps its type and LoRA adapters
      loaded afterwards still find their layers (the first call of each new shape or adapter mix recompiles).
    """
    if spec.offload != "none":
        if device.type != "cuda":
            raise ValueError(
                f"inpaint.offload={spec.offload} needs a CUDA GPU (the models wait in CPU memory and move to "
                f"the GPU when used), but the device is {device.type}: set inpaint.offload: none"
            )
        import importlib.util

        if importlib.util.find_spec("accelerate") is None:
            raise ImportError(
                f"inpaint.offload={spec.offload} needs accelerate: pip install 'accelerate>=1.10'"
            )
        if spec.offload == "model":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if spec.attention == "sdpa":
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        processors = pipe.unet.attn_processors
        if any(type(p) is AttnProcessor for p in processors.values()):
            pipe.unet.set_attn_processor(
                {n: AttnProcessor2_0() if type(p) is AttnProcessor else p for n, p in processors.items()}
            )
    if spec.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if spec.vae_slicing:
        pipe.vae.enable_slicing()
    if spec.vae_tiling:
        pipe.vae.enable_tiling()
    if spec.compile:
        pipe.unet.compile(mode=spec.compile_mode)
        log.info("inpaint: UNet compiled with torch.compile(mode=%s) on first use", spec.compile_mode)
