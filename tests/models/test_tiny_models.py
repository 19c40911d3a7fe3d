"""The tiny stand-in models build, reload through the production loaders offline, run, and are seed-stable."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from canvas_ray.models.tiny import (
    MARKER_FILE,
    TINY_KINDS,
    build_tiny_models,
    is_complete,
    make_tiny_captioner,
    make_tiny_clip,
    make_tiny_inpainter,
    make_tiny_segmenter,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "a photo of"


def _assert_same_state(built: torch.nn.Module, loaded: torch.nn.Module) -> None:
    a, b = built.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert value.dtype == b[key].dtype, key
        torch.testing.assert_close(b[key], value, atol=0, rtol=0, msg=key)


def _differs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sb = b.state_dict()
    return any(not torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def _modules(kind: str, seed: int) -> list[torch.nn.Module]:
    if kind == "segmenter":
        return [make_tiny_segmenter(seed)[0]]
    if kind == "captioner":
        return [make_tiny_captioner(seed)[0]]
    if kind == "clip":
        return [make_tiny_clip(seed)[0]]
    pipe = make_tiny_inpainter(seed)
    return [pipe.unet, pipe.vae, pipe.text_encoder]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_tiny_models(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
    ]


def test_layout_and_size(tiny: dict[str, Path]) -> None:
    assert set(tiny) == set(TINY_KINDS)
    total = 0
    for kind, folder in tiny.items():
        assert folder.name == kind
        assert is_complete(folder, kind, seed=0)
        assert not is_complete(folder, kind, seed=1)
        total += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert total < 15 * 2**20
    assert not list(next(iter(tiny.values())).parent.glob(".*tmp*"))


def test_build_is_idempotent(tiny: dict[str, Path]) -> None:
    stamps = {kind: (folder / MARKER_FILE).stat().st_mtime_ns for kind, folder in tiny.items()}
    again = build_tiny_models(next(iter(tiny.values())).parent, seed=0)
    assert again == tiny
    assert {kind: (folder / MARKER_FILE).stat().st_mtime_ns for kind, folder in again.items()} == stamps


def test_incomplete_or_other_seed_is_rebuilt(tmp_path: Path) -> None:
    paths = build_tiny_models(tmp_path, seed=0)
    (paths["captioner"] / "model.safetensors").unlink()
    stamp = (paths["segmenter"] / MARKER_FILE).stat().st_mtime_ns
    assert not is_complete(paths["captioner"], "captioner")
    build_tiny_models(tmp_path, seed=0)
    assert is_complete(paths["captioner"], "captioner", seed=0)
    assert (paths["segmenter"] / MARKER_FILE).stat().st_mtime_ns == stamp
    build_tiny_models(tmp_path, seed=1)
    assert all(is_complete(paths[kind], kind, seed=1) for kind in TINY_KINDS)


def test_segmenter_roundtrip(tiny: dict[str, Path], images: list[Image.Image]) -> None:
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    model = AutoModelForSemanticSegmentation.from_pretrained(tiny["segmenter"]).eval()
    processor = AutoImageProcessor.from_pretrained(tiny["segmenter"])
    _assert_same_state(make_tiny_segmenter(0)[0], model)
    assert model.config.id2label == {0: "background", 1: "product"}
    inputs = processor(images=images, return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 64, 64)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (2, 2, 16, 16)
    assert torch.isfinite(logits).all()


def test_captioner_roundtrip(tiny: dict[str, Path], images: list[Image.Image]) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor, BlipForConditionalGeneration

    model = AutoModelForImageTextToText.from_pretrained(tiny["captioner"]).eval()
    processor = AutoProcessor.from_pretrained(tiny["captioner"])
    assert isinstance(model, BlipForConditionalGeneration)
    _assert_same_state(make_tiny_captioner(0)[0], model)

    inputs = processor(images=images, text=[PROMPT, PROMPT], return_tensors="pt", padding=True)
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    assert processor.tokenizer.unk_token_id not in inputs["input_ids"]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12)
    prompt_len = inputs["input_ids"].shape[1] - 1  # generate() drops the trailing [SEP] of the prompt
    assert out.shape[0] == 2 and prompt_len < out.shape[1] <= prompt_len + 12
    texts = processor.batch_decode(out, skip_special_tokens=True)
    assert all(isinstance(t, str) and t.startswith(PROMPT) for t in texts)  # BLIP echoes the prompt
    new = processor.batch_decode(out[:, prompt_len:], skip_special_tokens=True)
    assert all(isinstance(t, str) for t in new)

    with torch.no_grad():
        unprompted = model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=5)
    assert unprompted.shape[0] == 2 and unprompted.shape[1] <= 6


def test_inpainter_roundtrip(tiny: dict[str, Path], images: list[Image.Image]) -> None:
    from diffusers import AutoPipelineForInpainting, StableDiffusionInpaintPipeline

    pipe = AutoPipelineForInpainting.from_pretrained(tiny["inpainter"])
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe, StableDiffusionInpaintPipeline)
    assert callable(getattr(pipe, "load_lora_weights", None))
    assert pipe.safety_checker is None
    assert pipe.tokenizer.model_max_length == 77
    built = make_tiny_inpainter(0)
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_state(getattr(built, name), getattr(pipe, name))

    square = [img.resize((64, 64)) for img in images]
    mask = np.full((64, 64), 255, np.uint8)
    mask[16:48, 16:48] = 0  # keep the centre (product), repaint the rest
    masks = [Image.fromarray(mask)] * 2

    def run() -> Any:
        return pipe(
            prompt=["a product photo on a marble table", "a bottle on the beach, soft light"],
            image=square,
            mask_image=masks,
            num_inference_steps=2,
            generator=[torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)],
            height=64,
            width=64,
            output_type="np",
        ).images

    first = run()
    assert first.shape == (2, 64, 64, 3)
    assert first.dtype == np.float32
    assert first.min() >= 0.0 and first.max() <= 1.0
    np.testing.assert_array_equal(run(), first)


def test_clip_roundtrip(tiny: dict[str, Path], images: list[Image.Image]) -> None:
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(tiny["clip"]).eval()
    processor = CLIPProcessor.from_pretrained(tiny["clip"])
    _assert_same_state(make_tiny_clip(0)[0], model)
    assert processor.tokenizer.model_max_length == 77
    texts = ["a photo of a bottle", "a shoe on the beach", "marble table, soft light"]
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits_per_image.shape == (2, 3)
    assert out.logits_per_text.shape == (3, 2)
    assert torch.isfinite(out.logits_per_image).all()


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_seed_determinism(kind: str) -> None:
    first, again, other = _modules(kind, 0), _modules(kind, 0), _modules(kind, 1)
    for a, b, c in zip(first, again, other, strict=True):
        _assert_same_state(a, b)
        assert _differs(a, c)


def test_building_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    make_tiny_segmenter(7)
    assert torch.equal(torch.rand(4), expected)
