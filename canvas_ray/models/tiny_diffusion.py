"""Tiny diffusion models: the Stable Diffusion inpainting pipeline (9-channel UNet) and an IP-Adapter
shaped for it. Built in memory here; saved by :mod:`canvas_ray.models.tiny`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from canvas_ray.models.tiny_common import clip_text_kwargs, clip_tokenizer, isolated

if TYPE_CHECKING:
    from diffusers import StableDiffusionInpaintPipeline
    from transformers import CLIPVisionModelWithProjection

# The tiny inpainting UNet (diffusers' get_dummy_components sizes, 9 input channels); the IP-Adapter
# weights of build_tiny_ip_adapter are shaped for it.
_TINY_UNET: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "sample_size": 32,
    "in_channels": 9,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
}
# Where build_tiny_ip_adapter puts its files: the layout of h94/IP-Adapter, so the same three arguments
# of `pipe.load_ip_adapter` (and of `inpaint.ip_adapter`) load either.
TINY_IP_ADAPTER_SUBFOLDER = "models"
TINY_IP_ADAPTER_WEIGHT = "ip-adapter_tiny.safetensors"
TINY_IP_ADAPTER_ENCODER = "image_encoder"


def sd_scheduler() -> Any:
    """The PNDM scheduler of the SD 1.5 inpainting checkpoints (shared by the tiny and full-size builds)."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )


def make_tiny_inpainter(seed: int = 0) -> StableDiffusionInpaintPipeline:
    """In-memory Stable Diffusion inpainting pipeline, diffusers test-sized, no safety checker."""
    with isolated():
        from diffusers import (
            AutoencoderKL,
            UNet2DConditionModel,
        )
        from transformers import CLIPTextConfig, CLIPTextModel

        tokenizer = clip_tokenizer()
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**_TINY_UNET)
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            block_out_channels=[32, 64],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
            latent_channels=4,
            sample_size=64,
        )
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(num_hidden_layers=5, **clip_text_kwargs(tokenizer)))
        pipe = inpaint_pipeline(vae, text_encoder, tokenizer, unet)
    return pipe


def inpaint_pipeline(vae: Any, text_encoder: Any, tokenizer: Any, unet: Any) -> Any:
    """An SD inpainting pipeline of these parts in eval mode (no safety checker), with the SD scheduler."""
    from diffusers import StableDiffusionInpaintPipeline

    return StableDiffusionInpaintPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def make_tiny_ip_adapter(seed: int = 0) -> tuple[CLIPVisionModelWithProjection, dict[str, torch.Tensor]]:
    """In-memory IP-Adapter for :func:`make_tiny_inpainter`: a 32 px CLIP image encoder (projection 32) and
    the adapter's original-format state dict (``image_proj.*``: embeds → 4 tokens of the UNet's
    cross-attention width; ``ip_adapter.{1,3,5,...}.to_{k,v}_ip.weight``: one pair per cross-attention
    layer, numbered in the order diffusers' ``_convert_ip_adapter_attn_to_diffusers`` walks them)."""
    with isolated():
        from diffusers import UNet2DConditionModel
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        vision = CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            projection_dim=32,
        )
        torch.manual_seed(seed)
        encoder = CLIPVisionModelWithProjection(vision).eval()
        with torch.device("meta"):  # only the layer names and widths are needed
            unet = UNet2DConditionModel(**_TINY_UNET)
        widths = list(_TINY_UNET["block_out_channels"])
        cross = int(_TINY_UNET["cross_attention_dim"])
        tokens = 4
        torch.manual_seed(seed + 1)
        proj = torch.nn.Linear(vision.projection_dim, tokens * cross)
        norm = torch.nn.LayerNorm(cross)
        state: dict[str, torch.Tensor] = {
            "image_proj.proj.weight": proj.weight,
            "image_proj.proj.bias": proj.bias,
            "image_proj.norm.weight": norm.weight,
            "image_proj.norm.bias": norm.bias,
        }
        key_id = 1
        for name in unet.attn_processors:  # type: ignore[attr-defined]  # (mypy loses ModelMixin)
            if name.endswith("attn1.processor"):
                continue
            if name.startswith("mid_block"):
                hidden = widths[-1]
            elif name.startswith("up_blocks"):
                hidden = list(reversed(widths))[int(name[len("up_blocks.")])]
            else:
                hidden = widths[int(name[len("down_blocks.")])]
            for part in ("to_k_ip", "to_v_ip"):
                layer = torch.nn.Linear(cross, hidden, bias=False)
                state[f"ip_adapter.{key_id}.{part}.weight"] = layer.weight
            key_id += 2
        state = {key: value.detach().contiguous() for key, value in state.items()}
    return encoder, state
