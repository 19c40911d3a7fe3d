"""Reference-image styles: a brand's style image steers the background.

Weight-free: the studio backdrop takes the reference's palette. Neural: a tiny IP-Adapter, loaded through
the config like a real one, steers the tiny diffusers inpainter per row. Input: ``style_image_uri`` in a
catalog is fetched (cached per URI), decoded into ``style_image`` and carried to every output row.
"""

from __future__ import annotations

import colorsys
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from canvas_ray.backdrops import MAX_WALL_SATURATION, palette_from_reference, render_backdrop
from canvas_ray.config import config_from_dict, load_config
from canvas_ray.io.catalog import read_catalog
from canvas_ray.models.tiny import (
    TINY_IP_ADAPTER_SUBFOLDER,
    TINY_IP_ADAPTER_WEIGHT,
    build_tiny_inpainter,
    build_tiny_ip_adapter,
)
from canvas_ray.pipeline import LocalPipeline, items_batch
from canvas_ray.rows import PLACEHOLDER_IMAGE
from canvas_ray.stages.decode import STYLE_IMAGE_SIDE, Decode, Fetch
from canvas_ray.stages.inpaint import DiffusersInpainter, StudioInpainter
from canvas_ray.styles import Backdrop, StyleBook
from canvas_ray.testing import png_bytes, product_image

# tiny models on a shared 2-core runner: one intra-op thread (see tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEAL = (30, 140, 140)


def teal_reference(width: int = 160, height: int = 120) -> np.ndarray:
    """Mostly teal, with a cream band and a little black text-like detail."""
    image = np.full((height, width, 3), TEAL, np.uint8)
    image[: height // 4] = (245, 240, 225)
    image[-10:, :30] = (15, 15, 15)
    return image


def hue_saturation(rgb: np.ndarray) -> tuple[float, float]:
    hue, saturation, _ = colorsys.rgb_to_hsv(*(np.asarray(rgb, np.float64) / 255.0))
    return hue * 360.0, saturation


def canvas_row(style: str = "studio white", seed: int = 7, reference: np.ndarray | None = None) -> dict:
    """One Inpaint row: a 64x64 canvas with the product in the middle."""
    canvas = np.full((64, 64, 3), 230, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    canvas[20:52, 24:40] = 60
    mask[20:52, 24:40] = 255
    row: dict[str, Any] = {
        "canvas": canvas,
        "canvas_mask": mask,
        "style": style,
        "seed": seed,
        "prompt": "a bottle on a table",
        "negative_prompt": "blurry",
    }
    if reference is not None:
        row["style_image"] = reference
    return row


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-reference")
    return {
        "inpainter": build_tiny_inpainter(root / "inpainter"),
        "ip_adapter": build_tiny_ip_adapter(root / "ip_adapter"),
    }


def diffusers_config(tiny: dict[str, Path], ip_adapter: bool = True):
    inpaint: dict[str, Any] = {
        "backend": "diffusers",
        "model": str(tiny["inpainter"]),
        "resolution": 64,
        "steps": 2,
        "device": "cpu",
    }
    if ip_adapter:
        inpaint["ip_adapter"] = {"model": str(tiny["ip_adapter"]), "weight_name": TINY_IP_ADAPTER_WEIGHT}
    return config_from_dict({"inpaint": inpaint})


@pytest.fixture(scope="module")
def ip_inpainter(tiny: dict[str, Path]) -> DiffusersInpainter:
    config = diffusers_config(tiny)
    return DiffusersInpainter(config.inpaint, StyleBook.from_config(config))


# ------------------------------------------------------------------------------------ weight-free palette


def test_palette_follows_the_reference_and_stays_tasteful() -> None:
    backdrop = palette_from_reference(teal_reference())
    assert backdrop.kind == "sweep" and len(backdrop.colors) == 2 and backdrop.floor is not None
    image = render_backdrop(backdrop, (96, 96), seed=3, horizon=0.7)
    hue, saturation = hue_saturation(image.reshape(-1, 3).mean(axis=0))
    assert 160 <= hue <= 200 and saturation > 0.15, (hue, saturation)  # teal, not cream or grey
    wall, floor = image[:40].mean(), image[-15:].mean()
    assert wall > floor  # light wall, darker floor
    # a neon reference gives a muted wall of the same hue
    neon = palette_from_reference(np.full((40, 40, 3), (250, 20, 200), np.uint8))
    wall_hue, wall_saturation = hue_saturation(np.array(Image.new("RGB", (1, 1), neon.colors[0]))[0, 0])
    assert wall_saturation <= MAX_WALL_SATURATION + 0.02 and abs(wall_hue - 313) < 8
    # the requested style keeps its recipe; only the colours come from the reference
    marble = Backdrop(kind="gradient", colors=["#eeeeee", "#dddddd"], texture="marble", light="left")
    tinted = palette_from_reference(teal_reference(), marble)
    assert (tinted.kind, tinted.texture, tinted.light) == ("gradient", "marble", "left")
    assert tinted.colors != marble.colors


def test_studio_backdrop_with_reference_differs_from_without() -> None:
    config = config_from_dict({})
    studio = StudioInpainter(config.inpaint, StyleBook.from_config(config))
    with_reference, placeholder, without = studio.backgrounds(
        [
            canvas_row(reference=teal_reference()),
            canvas_row(reference=PLACEHOLDER_IMAGE),
            canvas_row(),  # rows built before this feature have no style_image key at all
        ]
    )
    assert np.array_equal(placeholder, without)
    assert np.abs(with_reference.astype(int) - without.astype(int)).mean() > 10
    hue, _ = hue_saturation(with_reference[:16].reshape(-1, 3).mean(axis=0))
    assert 160 <= hue <= 200


# ------------------------------------------------------------------------------------- fetch and decode


def test_fetch_and_decode_style_images(tmp_path: Path) -> None:
    (tmp_path / "brand.png").write_bytes(png_bytes(teal_reference(1200, 600)))
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    (tmp_path / "product.png").write_bytes(png_bytes(product_image()))
    product = str(tmp_path / "product.png")
    brand, missing, broken = (str(tmp_path / n) for n in ("brand.png", "missing.png", "broken.png"))
    batch = items_batch(
        [
            {"item_id": "a", "image_uri": product, "style_image_uri": brand},
            {"item_id": "b", "image_uri": product, "style_image_uri": ""},
            {"item_id": "c", "image_uri": product, "style_image_uri": missing},
            {"item_id": "d", "image_uri": product, "style_image_uri": broken},
            {"item_id": "e", "image_uri": product, "style_image_uri": brand},
            {"item_id": "f", "image_uri": product},  # no such key in this row: None
        ]
    )
    config = config_from_dict({})
    fetch = Fetch(config)
    out = Decode(config)(fetch(batch))
    assert fetch.style_reads == 2  # brand once for both rows (cached), broken once; missing never read
    assert list(out["status"]) == ["ok", "ok", "error", "error", "ok", "ok"]
    assert out["error"][2] == f"fetch: style image: file not found: {missing}"
    assert out["error"][3].startswith("decode: style image: not an image")
    assert out["style_image"][0].shape == (STYLE_IMAGE_SIDE // 2, STYLE_IMAGE_SIDE, 3)
    assert out["style_image"][0].dtype == np.uint8
    assert np.array_equal(out["style_image"][0], out["style_image"][4])
    assert all(out["style_image"][i] is PLACEHOLDER_IMAGE for i in (1, 5))
    assert "style_image_bytes" not in out and out["image"][0].shape == (96, 96, 3)
    # a second batch through the same instance reads nothing again
    fetch(items_batch([{"item_id": "g", "image_uri": product, "style_image_uri": brand}]))
    assert fetch.style_reads == 2


def test_catalog_style_image_uri_reaches_every_output(tmp_path: Path) -> None:
    from canvas_ray.io.manifest import read_manifest
    from canvas_ray.io.outputs import WriteOutputs

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "p.png").write_bytes(png_bytes(product_image()))
    (tmp_path / "brand.png").write_bytes(png_bytes(teal_reference()))
    rows = [
        {"item_id": "teal-1", "image_uri": "images/p.png", "style_image_uri": "brand.png"},
        {"item_id": "plain-1", "image_uri": "images/p.png"},
    ]
    (tmp_path / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    catalog = read_catalog(str(tmp_path / "catalog.jsonl"))
    config = config_from_dict({"output": {"aspect_ratios": ["1:1", "4:5"], "variants": 1}})
    pipeline = LocalPipeline(config, keep_intermediate=True)
    out = pipeline.run_batch(items_batch(catalog.table.to_pylist()))
    assert list(out["status"]) == ["ok"] * 4, list(out["error"])
    assert list(out["item_id"]) == ["teal-1", "teal-1", "plain-1", "plain-1"]
    assert list(out["style_image_uri"]) == [str(tmp_path / "brand.png")] * 2 + ["", ""]
    assert [out["style_image"][i].shape[:2] for i in range(4)] == [(120, 160)] * 2 + [(1, 1)] * 2
    teal_background, plain_background = out["background"][0], out["background"][2]
    assert hue_saturation(teal_background[:10].reshape(-1, 3).mean(axis=0))[1] > 0.15
    assert hue_saturation(plain_background[:10].reshape(-1, 3).mean(axis=0))[1] < 0.1
    WriteOutputs(str(tmp_path / "out"), "run", config.fingerprint())(out)
    manifest = {r["output_id"]: r for r in read_manifest(str(tmp_path / "out")).to_pylist()}
    assert (
        sorted(r["style_image_uri"] for r in manifest.values())
        == ["", ""] + [str(tmp_path / "brand.png")] * 2
    )


# -------------------------------------------------------------------------------------------- IP-Adapter


class CallSpy:
    """Wraps a pipeline and records the batch size and IP-Adapter scale of every call."""

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.calls: list[tuple[int, float]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def __call__(self, **kwargs: Any) -> Any:
        scales = {
            float(scale)
            for processor in self.pipe.unet.attn_processors.values()
            for scale in getattr(processor, "scale", [])
        }
        assert "ip_adapter_image" in kwargs and len(scales) == 1
        self.calls.append((len(kwargs["prompt"]), scales.pop()))
        return self.pipe(**kwargs)


def test_ip_adapter_loads_from_a_config_file(tiny: dict[str, Path], tmp_path: Path) -> None:
    """The tiny adapter folder loads with stock diffusers through `inpaint.ip_adapter` (relative path)."""
    folder = tiny["ip_adapter"].parent / "configs"
    folder.mkdir(exist_ok=True)
    (folder / "reference.yaml").write_text(
        f"inpaint:\n  backend: diffusers\n  model: ../inpainter\n  device: cpu\n  resolution: 64\n"
        f"  steps: 2\n  ip_adapter:\n    model: ../ip_adapter\n    subfolder: {TINY_IP_ADAPTER_SUBFOLDER}\n"
        f"    weight_name: {TINY_IP_ADAPTER_WEIGHT}\n    scale: 0.8\n"
    )
    config = load_config(folder / "reference.yaml")
    assert config.inpaint.ip_adapter is not None
    assert Path(config.inpaint.ip_adapter.model) == tiny["ip_adapter"].resolve()
    inpainter = DiffusersInpainter(config.inpaint, StyleBook.from_config(config))
    pipe = inpainter.pipe
    assert pipe.image_encoder is not None and pipe.image_encoder.config.image_size == 32
    assert pipe.feature_extractor.crop_size["height"] == 32  # sized for the encoder, not 224
    assert pipe.unet.encoder_hid_proj is not None
    assert all(p.scale == [0.8] for p in pipe.unet.attn_processors.values() if hasattr(p, "scale"))
    # the fingerprint counts the adapter by folder name (like other local models), and counts it
    elsewhere = tmp_path / "elsewhere" / "ip_adapter"
    shutil.copytree(tiny["ip_adapter"], elsewhere)
    moved = config.model_copy(deep=True)
    assert moved.inpaint.ip_adapter is not None
    moved.inpaint.ip_adapter.model = str(elsewhere)
    assert config.fingerprint() == moved.fingerprint()
    moved.inpaint.ip_adapter = None
    assert config.fingerprint() != moved.fingerprint()


def test_reference_steers_rows_and_mixed_batches_run(
    tiny: dict[str, Path], ip_inpainter: DiffusersInpainter
) -> None:
    reference = teal_reference()
    other = np.full((80, 80, 3), (200, 60, 40), np.uint8)
    spy = CallSpy(ip_inpainter.pipe)
    ip_inpainter.pipe = spy
    try:
        alone = ip_inpainter.backgrounds([canvas_row(reference=reference)])
        mixed = ip_inpainter.backgrounds(
            [
                canvas_row(reference=reference),
                canvas_row(reference=PLACEHOLDER_IMAGE),
                canvas_row(),
                canvas_row(seed=8, reference=reference.copy()),  # same content: same group
                canvas_row(reference=other),
            ]
        )
    finally:
        ip_inpainter.pipe = spy.pipe
    # one call per reference (diffusers applies one IP-Adapter image to the whole call): teal ×2, none ×2,
    # other ×1; rows without a reference run at scale 0
    assert spy.calls[0] == (1, 0.6)
    assert sorted(spy.calls[1:]) == [(1, 0.6), (2, 0.0), (2, 0.6)]
    assert len(mixed) == 5 and all(image.shape == (64, 64, 3) for image in mixed)
    assert np.abs(mixed[0].astype(int) - alone[0].astype(int)).max() <= 1  # batching does not change a row
    assert np.array_equal(mixed[1], mixed[2])
    assert np.abs(mixed[0].astype(int) - mixed[1].astype(int)).mean() > 1  # the reference changes the image
    assert np.abs(mixed[0].astype(int) - mixed[4].astype(int)).mean() > 1  # ... and which one matters
    # without a reference the adapter is off: the same image as the plain pipeline's
    plain_config = diffusers_config(tiny, ip_adapter=False)
    plain = DiffusersInpainter(plain_config.inpaint, StyleBook.from_config(plain_config))
    (without,) = plain.backgrounds([canvas_row()])
    assert np.abs(without.astype(int) - mixed[2].astype(int)).max() <= 1


def test_mismatched_feature_extractor_is_replaced(tiny: dict[str, Path]) -> None:
    """SD checkpoints ship a 224 px feature extractor; a smaller image encoder gets one sized for it."""
    from diffusers import AutoPipelineForInpainting
    from transformers import CLIPImageProcessor

    from canvas_ray.config import IPAdapterSpec
    from canvas_ray.models.loading import load_ip_adapter

    pipe = AutoPipelineForInpainting.from_pretrained(str(tiny["inpainter"]), safety_checker=None)
    pipe.register_modules(feature_extractor=CLIPImageProcessor())  # 224 px, like real checkpoints
    spec = IPAdapterSpec(model=str(tiny["ip_adapter"]), weight_name=TINY_IP_ADAPTER_WEIGHT)
    load_ip_adapter(pipe, spec)
    assert pipe.feature_extractor.crop_size["height"] == 32
    pipe.set_progress_bar_config(disable=True)
    result = pipe(
        prompt="a bottle",
        image=Image.new("RGB", (64, 64), (200, 200, 200)),
        mask_image=Image.new("L", (64, 64), 255),
        ip_adapter_image=Image.fromarray(teal_reference()),
        num_inference_steps=2,
        width=64,
        height=64,
        output_type="np",
    ).images
    assert result.shape == (1, 64, 64, 3) and np.isfinite(result).all()


def test_ip_adapter_spec_validation() -> None:
    from canvas_ray.config import ConfigError

    base = {"backend": "diffusers", "model": "x"}
    for bad in (
        {"model": "h94/IP-Adapter", "weight_name": "../x.safetensors"},
        {"model": "h94/IP-Adapter", "weight_name": "weights.txt"},
        {"model": "h94/IP-Adapter", "subfolder": "../up"},
        {"model": "h94/IP-Adapter", "scale": -1},
        {"model": ""},
        {"model": "h94/IP-Adapter", "colour": "red"},
    ):
        with pytest.raises(ConfigError, match="inpaint.ip_adapter"):
            config_from_dict({"inpaint": {**base, "ip_adapter": bad}})
    spec = config_from_dict(
        {"inpaint": {**base, "ip_adapter": {"model": "h94/IP-Adapter"}}}
    ).inpaint.ip_adapter
    assert spec is not None
    assert (spec.subfolder, spec.weight_name, spec.image_encoder_folder, spec.scale) == (
        "models",
        "ip-adapter_sd15.safetensors",
        "image_encoder",
        0.6,
    )


def test_tiny_ip_adapter_is_seed_stable() -> None:
    from canvas_ray.models.tiny import make_tiny_ip_adapter

    torch.manual_seed(123)
    expected = torch.rand(2)
    torch.manual_seed(123)
    (encoder, state), (again_encoder, again), (_, other) = (make_tiny_ip_adapter(s) for s in (0, 0, 1))
    assert torch.equal(torch.rand(2), expected)  # the caller's RNG is untouched
    assert state.keys() == again.keys() == other.keys()
    assert len([k for k in state if k.startswith("ip_adapter.")]) == 2 * 6  # 6 cross-attention layers
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert any(not torch.equal(state[k], other[k]) for k in state if k != "image_proj.norm.weight")
    encoder_state, again_state = encoder.state_dict(), again_encoder.state_dict()
    assert all(torch.equal(v, again_state[k]) for k, v in encoder_state.items())


# ------------------------------------------------------------------ on Ray (last: Ray stays up to module end)


def test_batch_job_on_ray_carries_style_image_uri(ray_local, tmp_path: Path) -> None:
    from canvas_ray.batch import GenerateRequest, run_generate

    (tmp_path / "p.png").write_bytes(png_bytes(product_image()))
    (tmp_path / "brand.png").write_bytes(png_bytes(teal_reference()))
    rows = [
        {"item_id": "a", "image_uri": "p.png", "style_image_uri": "brand.png"},
        {"item_id": "b", "image_uri": "p.png", "style_image_uri": "brand.png"},
        {"item_id": "c", "image_uri": "p.png"},
        {"item_id": "d", "image_uri": "p.png", "style_image_uri": "gone.png"},
    ]
    (tmp_path / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    small = {"num_cpus": 0.25, "concurrency": 1, "batch_size": 4}
    sections: dict[str, Any] = {s: {"resources": small} for s in ("caption", "inpaint")}
    # two items per block: a, b (one reference) and c, d (none); Inpaint batches join the two blocks,
    # whose style_image columns differ in shape
    sections["segment"] = {"resources": {**small, "batch_size": 2}}
    config = config_from_dict(sections)
    out = tmp_path / "out"
    summary = run_generate(GenerateRequest(config, str(tmp_path / "catalog.jsonl"), str(out), progress=False))
    manifest = {r["item_id"]: r for r in pq.read_table(out / "manifest").to_pylist()}
    assert summary["ok"] == 3 and summary["errors"] == 1
    assert manifest["a"]["style_image_uri"] == manifest["b"]["style_image_uri"] == str(tmp_path / "brand.png")
    assert manifest["c"]["style_image_uri"] == "" and manifest["c"]["status"] == "ok"
    assert manifest["d"]["error"] == f"fetch: style image: file not found: {tmp_path / 'gone.png'}"
