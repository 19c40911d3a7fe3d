"""Synthetic inputs shared by the tests and the benchmarks (the tiny models live in ``models/tiny.py``)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def product_image(width: int = 96, height: int = 96, seed: int = 0, backdrop: int = 236) -> np.ndarray:
    """A dark, textured box product on a plain light backdrop (what the ``backdrop`` segmenter expects)."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), backdrop, np.uint8)
    y0, y1, x0, x1 = height // 4, 3 * height // 4, width // 3, 2 * width // 3
    image[y0:y1, x0:x1] = rng.integers(10, 120, (y1 - y0, x1 - x0, 3), dtype=np.uint8)
    return image


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def product_png(width: int = 96, height: int = 96, seed: int = 0) -> bytes:
    return png_bytes(product_image(width, height, seed))


def lora_params(unet: Any, adapter: str) -> dict[str, Any]:
    """LoRA parameters of one adapter, keyed like the saved file (``unet.<module>.lora_A.weight``)."""
    out = {}
    for name, param in unet.named_parameters():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.{adapter}."
            if marker in name:
                out["unet." + name.replace(marker, f".{part}.")] = param.detach()
    return out
