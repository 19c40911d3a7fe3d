"""The model parts of LoRA fine-tuning: the frozen base pipeline, the LoRA adapter, and its files.

Only LoRA weights train (peft ``LoraConfig`` on every UNet layer type); UNet, VAE and text encoder are
frozen. The adapter is saved as the raw ``get_peft_model_state_dict`` (NOT
``convert_state_dict_to_diffusers``, which drops the attention LoRA on reload) in
``pytorch_lora_weights.safetensors`` through diffusers' ``save_lora_weights``, beside ``canvas_lora.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from canvas_ray.train.config import FinetuneConfig

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
META_NAME = "canvas_lora.json"


def load_base(config: FinetuneConfig, device: torch.device | str = "cpu") -> Any:
    """The diffusers inpainting pipeline of ``base_model``, frozen, on ``device`` (float32 weights)."""
    from diffusers import StableDiffusionInpaintPipeline

    kwargs: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
    if config.revision:
        kwargs["revision"] = config.revision
    pipe = StableDiffusionInpaintPipeline.from_pretrained(config.base_model, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False)
        part.to(device)
    return pipe


def add_lora(unet: torch.nn.Module, config: FinetuneConfig) -> list[torch.nn.Parameter]:
    """Add the LoRA adapter to every targeted layer; returns the trainable (LoRA) parameters, in float32."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    unet.requires_grad_(False)
    lora = LoraConfig(
        r=config.lora.rank,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        init_lora_weights="gaussian",
        target_modules=list(config.lora.target_modules),
    )
    unet.add_adapter(lora)  # type: ignore[operator]  # peft marks only the LoRA weights trainable
    cast_training_params(unet, dtype=torch.float32)
    return [p for p in unet.parameters() if p.requires_grad]


def lora_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the raw peft state dict (NOT convert_state_dict_to_diffusers: that drops attention LoRA on
    reload). Copied: on CPU ``.cpu()`` would return the live parameters, and a snapshot would follow later
    training steps or restores."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def save_lora(unet: torch.nn.Module, folder: str | Path) -> Path:
    from diffusers import StableDiffusionInpaintPipeline

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionInpaintPipeline.save_lora_weights(str(folder), unet_lora_layers=lora_state_dict(unet))
    return folder / WEIGHTS_NAME


def load_lora_into(unet: torch.nn.Module, weights: str | Path) -> None:
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = {k.removeprefix("unet."): v for k, v in load_file(str(weights)).items()}
    set_peft_model_state_dict(unet, state)


def lora_meta(config: FinetuneConfig, fingerprint: str, steps: int, examples: int) -> dict[str, Any]:
    """What ``canvas_lora.json`` records beside the weights."""
    return {
        "base_model": config.base_model,
        "revision": config.revision,
        "rank": config.lora.rank,
        "alpha": config.lora.alpha,
        "target_modules": list(config.lora.target_modules),
        "data_fingerprint": fingerprint,
        "examples": examples,
        "steps": steps,
        "resolution": config.resolution,
        "weight_name": WEIGHTS_NAME,
    }


def export_lora(checkpoint: Path, output: Path, meta: dict[str, Any]) -> Path:
    """Copy a checkpoint's LoRA weights to ``output/lora`` (atomically) with ``canvas_lora.json``."""
    lora = output / "lora"
    lora.mkdir(parents=True, exist_ok=True)
    shutil.copy(checkpoint / "lora" / WEIGHTS_NAME, lora / (WEIGHTS_NAME + ".tmp"))
    os.replace(lora / (WEIGHTS_NAME + ".tmp"), lora / WEIGHTS_NAME)
    (lora / META_NAME).write_text(json.dumps(meta, indent=2))
    return lora
