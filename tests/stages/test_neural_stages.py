"""The neural (Hugging Face) backends on the tiny offline models: segment ``hf``, caption ``hf``, inpaint
``diffusers`` (with LoRA adapters), the production loaders, and the ``tiny-models`` / ``generate-one`` CLI.

The tiny models are random, so these tests check shapes, batching, loading, determinism and the product
guarantee, never image quality. The tiny segmenter cannot find products by itself: its classifier output
is planted (zero weights + a bias, or a forward hook with a known pattern) so the expected mask is known.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from canvas_ray.compose import HARD, model_size
from canvas_ray.config import DEFAULT_STYLES_FILE, config_from_dict, load_config
from canvas_ray.models.tiny import (
    make_tiny_captioner,
    make_tiny_inpainter,
    make_tiny_segmenter,
)
from canvas_ray.pipeline import LocalPipeline, items_batch
from canvas_ray.rows import PLACEHOLDER_MASK, Batch
from canvas_ray.stages.caption import Caption, split_caption
from canvas_ray.stages.decode import Decode
from canvas_ray.stages.inpaint import DiffusersInpainter, Inpaint
from canvas_ray.stages.segment import HFSegmenter, Segment
from canvas_ray.testing import lora_params, png_bytes, product_image
from canvas_ray.train.config import LORA_TARGETS

# tiny models on a shared 2-core runner: one intra-op thread (see tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ASPECTS = ["1:1", "2:3", "16:9"]
CAPTION_RE = re.compile(r"^Product: (?P<product>.+)\. Background: (?P<background>.+)\.$", re.S)


# ----------------------------------------------------------------------------------------------- helpers


def make_config(tiny: dict[str, Path], **sections: dict[str, Any]):
    """CPU config on the tiny models: hf caption + diffusers inpaint at 64 px, 2 steps; sections override."""
    data: dict[str, Any] = {
        "segment": {"backend": "backdrop", "device": "cpu"},
        "caption": {"backend": "hf", "model": str(tiny["captioner"]), "max_new_tokens": 8, "device": "cpu"},
        "inpaint": {
            "backend": "diffusers",
            "model": str(tiny["inpainter"]),
            "resolution": 64,
            "steps": 2,
            "device": "cpu",
        },
        "output": {"aspect_ratios": ASPECTS, "variants": 2},
        "styles": {"default": ["studio white"]},
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return config_from_dict(data)


def items() -> list[dict[str, Any]]:
    return [
        {"item_id": "bottle", "image_bytes": png_bytes(product_image(96, 80, 0)), "title": "red bottle"},
        {"item_id": "shoe", "image_bytes": png_bytes(product_image(64, 112, 1)), "title": "leather shoe"},
    ]


def take(batch: Batch, indices: list[int]) -> Batch:
    """Rows ``indices`` of a batch (object columns stay object columns)."""
    out: Batch = {}
    for key, column in batch.items():
        picked = np.empty(len(indices), dtype=column.dtype) if column.dtype == object else column[indices]
        if column.dtype == object:
            for position, index in enumerate(indices):
                picked[position] = column[index]
        out[key] = picked
    return out


def copy_batch(batch: Batch) -> Batch:
    return take(batch, list(range(len(batch["status"]))))


def prompt_rows(pipeline: LocalPipeline) -> Batch:
    """The two items up to the Prompt stage: one row per item × aspect × variant, with canvas and mask."""
    batch = items_batch(items())
    for stage in (pipeline.decode, pipeline.segment, pipeline.caption, pipeline.prompt):
        batch = stage(batch)
    assert list(batch["status"]) == ["ok"] * len(batch["status"]), list(batch["error"])
    return batch


def assert_state_equal(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    a, b = expected.state_dict(), actual.state_dict()
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert b[key].dtype == value.dtype, key
        torch.testing.assert_close(b[key], value, atol=0, rtol=0, msg=key)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny(tiny_models: dict[str, Path]) -> dict[str, Path]:
    """The session's tiny models (seed 0), built once for every module that needs them."""
    return tiny_models


@pytest.fixture(scope="module")
def pipeline(tiny: dict[str, Path]) -> LocalPipeline:
    return LocalPipeline(make_config(tiny), keep_intermediate=True)


@pytest.fixture(scope="module")
def first_run(pipeline: LocalPipeline) -> Batch:
    return pipeline.run_batch(items_batch(items()))


@pytest.fixture(scope="module")
def rows(pipeline: LocalPipeline) -> Batch:
    return prompt_rows(pipeline)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA on every UNet layer type of the tiny inpainter, with non-zero B so it changes outputs."""
    from diffusers import StableDiffusionInpaintPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = make_tiny_inpainter(0)
    unet = pipe.unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(LORA_TARGETS), init_lora_weights=True))
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    folder = tmp_path_factory.mktemp("tiny-lora")
    # raw peft state dict: convert_state_dict_to_diffusers would drop the attention LoRA on reload (NOTES.md)
    StableDiffusionInpaintPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet))
    return folder


@pytest.fixture(scope="module")
def lora_styles(tmp_path_factory: pytest.TempPathFactory, lora_dir: Path) -> Path:
    """configs/styles.yaml plus a LoRA preset and a twin preset (same prompts) without the LoRA."""
    data = yaml.safe_load(DEFAULT_STYLES_FILE.read_text())
    twin = {
        "prompt": "a wooden table in a bright studio, soft light",
        "negative_prompt": "text, watermark, blurry",
        "backdrop": {"kind": "solid", "colors": ["#ddccbb"]},
    }
    data["styles"]["tiny lora style"] = {**twin, "lora": str(lora_dir), "lora_weight": 1.0}
    data["styles"]["tiny nolora style"] = {**twin, "lora": None}
    path = tmp_path_factory.mktemp("lora-styles") / "styles.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ----------------------------------------------------------------------------------- 1. loader round trip


def test_production_loaders_round_trip(tiny: dict[str, Path]) -> None:
    from diffusers import StableDiffusionInpaintPipeline

    from canvas_ray.models.loading import load_captioner, load_inpainter, load_segmenter

    # float16 asked for on CPU must come back as float32 (and so equal the float32 builders bit for bit)
    config = make_config(
        tiny,
        segment={"backend": "hf", "model": str(tiny["segmenter"]), "dtype": "float16"},
        caption={"dtype": "float16"},
        inpaint={"dtype": "float16"},
    )

    segmenter = load_segmenter(config.segment)
    assert segmenter.device.type == "cpu" and segmenter.dtype == torch.float32
    assert not segmenter.model.training
    assert segmenter.processor is not None
    assert_state_equal(make_tiny_segmenter(0)[0], segmenter.model)

    captioner = load_captioner(config.caption)
    assert captioner.dtype == torch.float32 and not captioner.model.training
    assert captioner.processor.tokenizer.padding_side == "left"
    assert_state_equal(make_tiny_captioner(0)[0], captioner.model)

    inpainter = load_inpainter(config.inpaint)
    pipe = inpainter.model
    assert isinstance(pipe, StableDiffusionInpaintPipeline)
    assert pipe.safety_checker is None
    built = make_tiny_inpainter(0)
    for name in ("unet", "vae", "text_encoder"):
        assert_state_equal(getattr(built, name), getattr(pipe, name))
        assert getattr(pipe, name).dtype == torch.float32


def test_loader_scheduler_option(tiny: dict[str, Path]) -> None:
    from canvas_ray.models.loading import load_inpainter

    pipe = load_inpainter(make_config(tiny, inpaint={"scheduler": "DDIMScheduler"}).inpaint).model
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    with pytest.raises(ValueError, match="not a diffusers scheduler"):
        load_inpainter(make_config(tiny, inpaint={"scheduler": "NoSuchScheduler"}).inpaint)


# --------------------------------------------------------------------------------------- 2. segment (hf)


def _segment_stage(tiny: dict[str, Path], model: Path | None = None) -> Segment:
    return Segment(make_config(tiny, segment={"backend": "hf", "model": str(model or tiny["segmenter"])}))


def _plant_bias(stage: Segment, bias: tuple[float, float]) -> None:
    classifier = stage.segmenter.loaded.model.decode_head.classifier
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.copy_(torch.tensor(bias))


def _decoded(images: list[np.ndarray | bytes]) -> Batch:
    """Decode rows from images (arrays become PNG bytes; raw bytes are passed as they are)."""
    data = [png_bytes(image) if isinstance(image, np.ndarray) else image for image in images]
    batch = items_batch([{"item_id": f"i{n}", "image_bytes": b} for n, b in enumerate(data)])
    return Decode(config_from_dict({}))(batch)


def test_hf_segmenter_maps_background_label_by_id2label(tiny: dict[str, Path], tmp_path: Path) -> None:
    stage = _segment_stage(tiny)
    assert isinstance(stage.segmenter, HFSegmenter)
    assert stage.segmenter.background_index == 0

    swapped = tmp_path / "segmenter-swapped"
    shutil.copytree(tiny["segmenter"], swapped)
    config_file = swapped / "config.json"
    config = json.loads(config_file.read_text())
    config["id2label"] = {"0": "product", "1": "Background"}
    config["label2id"] = {"product": 0, "Background": 1}
    config_file.write_text(json.dumps(config))
    stage = _segment_stage(tiny, swapped)
    assert stage.segmenter.background_index == 1
    # label 0 wins everywhere: with label 0 = product that is a whole-image mask, not an empty one
    _plant_bias(stage, (8.0, -8.0))
    out = stage(_decoded([product_image(64, 64, 0)]))
    assert out["status"][0] == "error"
    assert "covers the whole image" in out["error"][0]


def test_segment_hf_planted_biases_and_error_rows(tiny: dict[str, Path]) -> None:
    stage = _segment_stage(tiny)
    images = [product_image(96, 72, 0), product_image(64, 100, 1)]

    _plant_bias(stage, (8.0, -8.0))  # background wins everywhere
    out = stage(_decoded(images))
    assert list(out["status"]) == ["error", "error"]
    assert all(e.startswith("segment: no product found") for e in out["error"])
    assert all(mask is PLACEHOLDER_MASK for mask in out["product_mask"])
    assert list(out["mask_area"]) == [0.0, 0.0]

    _plant_bias(stage, (-8.0, 8.0))  # product everywhere
    out = stage(_decoded(images))
    assert list(out["status"]) == ["error", "error"]
    whole = "segment: the mask covers the whole image: no background to replace"
    assert list(out["error"]) == [whole, whole]


def test_segment_hf_masks_follow_each_image_size(tiny: dict[str, Path]) -> None:
    """A planted logit pattern (product in the left half) gives a known mask at every image's own size."""
    stage = _segment_stage(tiny)
    model = stage.segmenter.loaded.model
    seen: list[tuple[int, ...]] = []

    def left_half_product(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(args[0].shape))
        width = output.shape[-1]
        product = torch.full_like(output[:, 0], -8.0)
        product[..., : width // 2] = 8.0
        return torch.stack([-product, product], dim=1)

    handle = model.decode_head.classifier.register_forward_hook(left_half_product)
    calls: list[int] = []
    original = stage.segmenter.product_masks

    def counting(images: list[np.ndarray]) -> list[np.ndarray]:
        calls.append(len(images))
        assert all(image.shape[0] >= 16 for image in images)  # never the 1x1 placeholder of an error row
        return original(images)

    stage.segmenter.product_masks = counting  # type: ignore[method-assign]
    try:
        sizes = [(96, 72), (64, 100), (130, 50)]
        batch = _decoded([product_image(w, h, i) for i, (w, h) in enumerate(sizes)] + [b"\x89PNG not really"])
        assert batch["status"][3] == "error" and batch["error"][3].startswith("decode:")
        upstream_error = batch["error"][3]
        out = stage(batch)
    finally:
        handle.remove()

    assert calls == [3]  # one batched forward over the ok rows only
    assert seen and seen[0][0] == 3
    assert {"product_mask", "mask_area", "segment_s"} <= set(out)
    assert list(out["status"]) == ["ok", "ok", "ok", "error"]
    for index, (width, height) in enumerate(sizes):
        mask = out["product_mask"][index]
        assert mask.dtype == np.uint8
        assert mask.shape == (height, width)
        margin = max(2, width // 8)
        assert (mask[:, : width // 2 - margin] >= HARD).all()
        assert (mask[:, width // 2 + margin :] < HARD).all()
        assert out["mask_area"][index] == pytest.approx(0.5, abs=0.1)
        assert out["segment_s"][index] > 0
    # the corrupt row passes through untouched
    assert out["error"][3] == upstream_error
    assert out["product_mask"][3] is PLACEHOLDER_MASK
    assert out["mask_area"][3] == 0.0 and out["segment_s"][3] == 0.0


# --------------------------------------------------------------------------------------- 3. caption (hf)


def test_caption_hf(tiny: dict[str, Path]) -> None:
    stage = Caption(make_config(tiny))
    sizes = [(96, 72), (64, 100), (80, 80)]
    images = [product_image(w, h, i) for i, (w, h) in enumerate(sizes)]
    masks = [np.where(image.mean(axis=2) < 200, 255, 0).astype(np.uint8) for image in images]
    titles = ["red bottle", "leather shoe", None]

    def batch() -> Batch:
        rows = [
            {"image": img, "product_mask": m, "title": t}
            for img, m, t in zip(images, masks, titles, strict=True)
        ]
        rows.append(
            {"image": np.zeros((1, 1, 3), np.uint8), "product_mask": PLACEHOLDER_MASK, "title": "broken"}
        )
        out = items_batch(rows)
        for column in ("image", "product_mask"):
            column_values = out[column]
            out[column] = np.empty(len(column_values), dtype=object)
            for i, value in enumerate(column_values):
                out[column][i] = value
        out["status"] = np.array(["ok", "ok", "ok", "error"], dtype=object)
        out["error"] = np.array(["", "", "", "decode: not an image"], dtype=object)
        return out

    first = stage(batch())
    assert list(first["status"]) == ["ok", "ok", "ok", "error"]
    for index in range(3):
        caption = first["caption"][index]
        assert isinstance(caption, str) and caption
        match = CAPTION_RE.match(caption)
        assert match, caption
        product, background = match.group("product"), match.group("background")
        assert product.strip() and background.strip()
        assert first["product_description"][index] == split_caption(caption)[0]
        if titles[index]:
            assert titles[index] in product.lower()
            assert product.lower().startswith(titles[index])
        # BLIP echoes its text prompt; the stage strips it
        assert stage.captioner.text_prompt.lower() not in caption.lower()
        assert first["caption_s"][index] > 0
    assert first["caption"][3] == "" and first["product_description"][3] == ""
    assert first["error"][3] == "decode: not an image"

    again = stage(batch())
    assert list(again["caption"]) == list(first["caption"])


# --------------------------------------------------------------------------------- 4. inpaint (diffusers)


def test_pipeline_diffusers_outputs_keep_product(first_run: Batch) -> None:
    out = first_run
    n = len(out["status"])
    assert n == 2 * len(ASPECTS) * 2
    assert list(out["status"]) == ["ok"] * n, list(out["error"])
    assert sorted(set(out["aspect"])) == sorted(ASPECTS)
    for i in range(n):
        canvas, mask = out["canvas"][i], out["canvas_mask"][i]
        background, result = out["background"][i], out["result"][i]
        height, width = canvas.shape[:2]
        width_over_height = {"1:1": 1.0, "2:3": 2 / 3, "16:9": 16 / 9}[out["aspect"][i]]
        assert width / height == pytest.approx(width_over_height, rel=0.05)
        assert background.shape == (height, width, 3) and background.dtype == np.uint8
        assert result.shape == (height, width, 3) and result.dtype == np.uint8
        hard = mask >= HARD
        assert hard.any() and not hard.all()
        np.testing.assert_array_equal(result[hard], canvas[hard])
        assert bool(out["product_preserved"][i]) is True
        assert int(out["max_product_diff"][i]) == 0
        assert int(out["product_pixels"][i]) == int(hard.sum())
        assert out["inpaint_s"][i] > 0
        assert out["caption"][i].startswith("Product: ")


def test_pipeline_diffusers_is_deterministic_and_variants_differ(
    pipeline: LocalPipeline, first_run: Batch
) -> None:
    again = pipeline.run_batch(items_batch(items()))
    assert list(again["output_id"]) == list(first_run["output_id"])
    assert list(again["seed"]) == list(first_run["seed"])
    for a, b in zip(first_run["result"], again["result"], strict=True):
        np.testing.assert_array_equal(a, b)

    by_id = {str(first_run["output_id"][i]): i for i in range(len(first_run["status"]))}
    pairs = 0
    for output_id, index in by_id.items():
        if output_id.endswith("__v0"):
            other = by_id[output_id[: -len("__v0")] + "__v1"]
            assert first_run["seed"][index] != first_run["seed"][other]
            background = first_run["canvas_mask"][index] < HARD
            a, b = first_run["background"][index], first_run["background"][other]
            assert not np.array_equal(a[background], b[background]), output_id
            pairs += 1
    assert pairs == 2 * len(ASPECTS)


# ---------------------------------------------------------------------------------------------- 5. batching


class PipeSpy:
    """Stands in for the diffusers pipeline: records each call's size and batch, then delegates."""

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.calls: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(
            {
                "width": kwargs["width"],
                "height": kwargs["height"],
                "prompts": len(kwargs["prompt"]),
                "image_sizes": {image.size for image in kwargs["image"]},
                "mask_sizes": {mask.size for mask in kwargs["mask_image"]},
                "generators": len(kwargs["generator"]),
                "negatives": len(kwargs["negative_prompt"]),
            }
        )
        return self.pipe(**kwargs)


def test_inpaint_batches_one_call_per_model_size(
    pipeline: LocalPipeline, rows: Batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    selected = [i for i, aspect in enumerate(rows["aspect"]) if aspect in ("1:1", "16:9")]
    batch = take(rows, selected)
    inpainter = pipeline.inpaint.inpainter
    spy = PipeSpy(inpainter.pipe)
    monkeypatch.setattr(inpainter, "pipe", spy)

    out = pipeline.inpaint(batch)

    expected_sizes = {model_size((c.shape[1], c.shape[0]), 64) for c in batch["canvas"]}
    assert len(expected_sizes) >= 2
    assert len(spy.calls) == len(expected_sizes)
    assert {(call["width"], call["height"]) for call in spy.calls} == expected_sizes
    for call in spy.calls:
        size = (call["width"], call["height"])
        assert call["image_sizes"] == {size} and call["mask_sizes"] == {size}  # never mixes sizes
        assert call["prompts"] == call["generators"] == call["negatives"]
    assert sum(call["prompts"] for call in spy.calls) == len(selected)
    assert list(out["status"]) == ["ok"] * len(selected)
    for canvas, background in zip(out["canvas"], out["background"], strict=True):
        assert background.shape == canvas.shape


# -------------------------------------------------------------------------------------------------- 6. LoRA


def _with_style(rows: Batch, style: str, indices: list[int]) -> Batch:
    batch = take(rows, indices)
    batch["style"] = np.array([style] * len(indices), dtype=object)
    return batch


def test_lora_file_covers_every_unet_layer_type(lora_dir: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(lora_dir / "pytorch_lora_weights.safetensors"))
    for target in LORA_TARGETS:
        assert any(f".{target}.lora_A." in key for key in saved), target
        assert any(f".{target}.lora_B." in key for key in saved), target
    assert all(key.startswith("unet.") for key in saved)
    assert all(value.abs().sum() > 0 for key, value in saved.items() if ".lora_B." in key)


def test_style_lora_loads_switches_and_disables(
    tiny: dict[str, Path], pipeline: LocalPipeline, rows: Batch, lora_dir: Path, lora_styles: Path
) -> None:
    from safetensors.torch import load_file

    config = make_config(tiny, styles={"file": str(lora_styles)})
    stage = Inpaint(config)
    inpainter = stage.inpainter
    assert isinstance(inpainter, DiffusersInpainter)
    adapter = "style_tiny_lora_style"
    assert inpainter.pipe.get_list_adapters() == {"unet": [adapter]}
    assert inpainter._style_adapters == {"tiny lora style": adapter}

    # (a) every saved LoRA tensor is in the UNet, on every targeted layer type, with the saved values
    saved = load_file(str(lora_dir / "pytorch_lora_weights.safetensors"))
    loaded = lora_params(inpainter.pipe.unet, adapter)
    assert len(loaded) == len(saved)
    assert loaded.keys() == saved.keys()
    for key, value in saved.items():
        torch.testing.assert_close(loaded[key], value, atol=0, rtol=0, msg=key)
    for target in LORA_TARGETS:
        assert any(f".{target}.lora_A." in key for key in loaded), target

    # (b) same rows, prompt and seed: the LoRA style differs, the twin without LoRA equals a LoRA-free pipe
    indices = [i for i, aspect in enumerate(rows["aspect"]) if aspect == "1:1" and rows["variant"][i] == 0]
    plain = stage(_with_style(rows, "tiny nolora style", indices))
    styled = stage(_with_style(rows, "tiny lora style", indices))
    assert inpainter.pipe.get_active_adapters() == [adapter]
    plain_again = stage(_with_style(rows, "tiny nolora style", indices))
    reference = pipeline.inpaint(_with_style(rows, "studio white", indices))  # no LoRA ever loaded

    for batch in (plain, styled, plain_again, reference):
        assert list(batch["status"]) == ["ok"] * len(indices), list(batch["error"])
    for position in range(len(indices)):
        repaint = rows["canvas_mask"][indices[position]] < HARD
        a, b = plain["background"][position], styled["background"][position]
        assert not np.array_equal(a[repaint], b[repaint])
        np.testing.assert_array_equal(plain_again["background"][position], a)
        np.testing.assert_array_equal(reference["background"][position], a)


def test_config_wide_lora_loads_with_weight(
    tiny: dict[str, Path], pipeline: LocalPipeline, rows: Batch, lora_dir: Path
) -> None:
    from safetensors.torch import load_file

    config = make_config(tiny, inpaint={"loras": [{"name": "x", "path": str(lora_dir), "weight": 0.5}]})
    stage = Inpaint(config)
    pipe = stage.inpainter.pipe
    assert pipe.get_list_adapters() == {"unet": ["x"]}
    assert stage.inpainter.adapters == {"x": 0.5}
    saved = load_file(str(lora_dir / "pytorch_lora_weights.safetensors"))
    assert lora_params(pipe.unet, "x").keys() == saved.keys()

    indices = [i for i, aspect in enumerate(rows["aspect"]) if aspect == "16:9" and rows["variant"][i] == 0]
    mixed = stage(_with_style(rows, "studio white", indices))
    reference = pipeline.inpaint(_with_style(rows, "studio white", indices))
    assert list(mixed["status"]) == ["ok"] * len(indices)
    assert pipe.get_active_adapters() == ["x"]
    scales = {
        m.scaling["x"]
        for m in pipe.unet.modules()
        if isinstance(getattr(m, "scaling", None), dict) and "x" in m.scaling
    }
    assert scales == {0.5}  # weight 0.5 × lora_alpha / r (= 1)
    for position, index in enumerate(indices):
        repaint = rows["canvas_mask"][index] < HARD
        assert not np.array_equal(
            mixed["background"][position][repaint], reference["background"][position][repaint]
        )


# --------------------------------------------------------------------------------------------------- 7. CLI


def test_cli_tiny_models_and_generate_one(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from canvas_ray.cli import main

    root = tiny["inpainter"].parent  # complete folders are reused: this only writes tiny.yaml
    assert main(["tiny-models", str(root)]) == 0
    printed = json.loads(capsys.readouterr().out)
    tiny_yaml = root / "tiny.yaml"
    assert Path(printed["config"]) == tiny_yaml and tiny_yaml.is_file()
    config = load_config(tiny_yaml)
    assert config.caption.backend == "hf" and Path(config.caption.model) == tiny["captioner"]
    assert config.inpaint.backend == "diffusers" and Path(config.inpaint.model) == tiny["inpainter"]

    source = tmp_path / "mug.png"
    source.write_bytes(png_bytes(product_image(80, 96, 3)))
    out = tmp_path / "out" / "mug-beach.png"
    code = main(
        [
            "generate-one",
            str(source),
            "--config",
            str(tiny_yaml),
            "--style",
            "beach summer",
            "--out",
            str(out),
            "--aspect",
            "1:1",
            "--title",
            "white mug",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = [line for line in captured.out.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["product_preserved"] is True
    assert report["style"] == "beach summer" and report["aspect"] == "1:1"
    assert Path(report["output"]) == out and out.is_file()
    assert "white mug" in report["caption"]
    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = image.size
        decoded = np.asarray(image.convert("RGB"))
    assert width == height and decoded.shape == (height, width, 3)
    # the canvas is sized around the product: at least its bounding box (about 27x48 px), here square
    assert width >= 48
