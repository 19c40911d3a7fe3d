"""The inpainting training objective: noise prediction on the 9-channel inpainting input.

Per example: encode the image with the VAE, add noise at a random timestep, and predict it from
``cat([noisy_latents, mask, masked_image_latents])``, where ``mask`` is the BACKGROUND mask (1 = repaint)
and ``masked_image`` is the image with its background zeroed: the product is given, the background is
learned. The first ``random_mask_steps`` optimiser steps use random rectangles as masks (as the
inpainting fine-tuning recipes do). The loss can weight background latents (``background_loss_weight``)
against product latents (``product_loss_weight``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from canvas_ray.train.config import FinetuneConfig


def random_rectangles(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` masks of 1s in one random rectangle each (a quarter to three quarters of each side)."""
    masks = torch.zeros(count, 1, size, size)
    for i in range(count):
        h, w = (int(v) for v in torch.randint(size // 4, 3 * size // 4 + 1, (2,), generator=generator))
        y = int(torch.randint(0, size - h + 1, (1,), generator=generator))
        x = int(torch.randint(0, size - w + 1, (1,), generator=generator))
        masks[i, 0, y : y + h, x : x + w] = 1.0
    return masks


class Objective:
    """The inpainting noise-prediction loss of one batch.

    Args:
        pipe: the frozen base pipeline (VAE, text encoder, tokenizer, scheduler config).
        unet (`torch.nn.Module`): the UNet to train, as the loop calls it (DDP-wrapped on several workers).
        config (`FinetuneConfig`): loss weights.
        device (`torch.device`): where the batch goes.
    """

    def __init__(self, pipe: Any, unet: torch.nn.Module, config: FinetuneConfig, device: torch.device):
        from diffusers import DDPMScheduler

        self.pipe, self.unet, self.config, self.device = pipe, unet, config, device
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.scaling = float(pipe.vae.config.scaling_factor)
        self._prompt_cache: dict[str, torch.Tensor] = {}  # captions repeat every epoch: encode each once

    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> torch.Tensor:
        """Text-encoder states of ``captions`` (``pipe.encode_prompt``, no guidance), cached by caption."""
        missing = [c for c in dict.fromkeys(captions) if c not in self._prompt_cache]
        if missing:
            states, _ = self.pipe.encode_prompt(missing, self.device, 1, False)
            self._prompt_cache.update(zip(missing, states, strict=True))
        return torch.stack([self._prompt_cache[c] for c in captions])

    def loss(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        captions: list[str],
        generator: torch.Generator,
        random_mask: bool = False,
    ) -> torch.Tensor:
        device = self.device
        pixels = torch.from_numpy(np.asarray(images, np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).to(device)
        if random_mask:
            repaint = random_rectangles(len(pixels), pixels.shape[-1], generator).to(device)
        else:  # background = 1 (repaint), product = 0 (kept)
            repaint = torch.from_numpy((np.asarray(masks) < 128).astype(np.float32))[:, None].to(device)
        masked = pixels * (repaint < 0.5)
        with torch.no_grad():
            vae = self.pipe.vae
            latents = vae.encode(pixels).latent_dist.mean * self.scaling
            masked_latents = vae.encode(masked).latent_dist.mean * self.scaling
            hidden = self.encode_prompts(captions)
        latent_mask = torch.nn.functional.interpolate(repaint, size=latents.shape[-2:], mode="nearest")
        noise = torch.randn(latents.shape, generator=generator).to(device)
        steps = self.scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (len(latents),), generator=generator).to(device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        model_input = torch.cat([noisy, latent_mask, masked_latents], dim=1)
        pred = self.unet(model_input, timesteps, encoder_hidden_states=hidden).sample
        weight = self.config.background_loss_weight * latent_mask + self.config.product_loss_weight * (
            1.0 - latent_mask
        )
        error = (pred.float() - target.float()) ** 2
        return (error * weight).mean() / weight.mean().clamp_min(1e-8)
