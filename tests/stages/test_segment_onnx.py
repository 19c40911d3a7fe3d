"""The ``onnx`` segment backend with tiny models exported here by ``torch.onnx.export`` (no download):
preset maths, output selection, fixed-batch-1 looping, threads and providers from config, model lookup."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from canvas_ray.config import load_config
from canvas_ray.stages.segment import Segment, build_segmenter
from canvas_ray.stages.segment_onnx import PRESETS, preset_from_options, session_providers, session_threads

SIZE = 32


def _export(path: Path, fixed_batch: bool) -> Path:
    """A model whose ``output`` is the normalised red channel and ``side`` the green one (1x1xSxS each)."""
    import torch

    class RedGreen(torch.nn.Module):
        def forward(self, x):
            return x[:, 0:1], x[:, 1:2]

    kwargs = (
        {} if fixed_batch else {"dynamic_axes": {"input": {0: "b"}, "output": {0: "b"}, "side": {0: "b"}}}
    )
    torch.onnx.export(
        RedGreen(),
        (torch.zeros(1, 3, SIZE, SIZE),),
        str(path),
        input_names=["input"],
        output_names=["output", "side"],
        dynamo=False,
        **kwargs,
    )
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    return {
        "fixed": _export(folder / "fixed-batch.onnx", fixed_batch=True),
        "dynamic": _export(folder / "dynamic-batch.onnx", fixed_batch=False),
    }


def _config(model: Path, **options):
    return load_config(
        overrides={
            "segment.backend": "onnx",
            "segment.model": str(model),
            "segment.options": {"input_size": SIZE, **options},
            "segment.device": "cpu",
        }
    )


def _image(red: int, green: int = 0, shape=(48, 40)) -> np.ndarray:
    image = np.zeros((*shape, 3), np.uint8)
    image[..., 0], image[..., 1] = red, green
    return image


def test_isnet_imgly_preset_maths(models):
    segmenter = build_segmenter(_config(models["fixed"], preset="isnet-imgly").segment)
    (mask,) = segmenter.product_masks([_image(200)])
    assert mask.shape == (48, 40) and mask.dtype == np.float32
    np.testing.assert_allclose(mask, (200 - 128) / 256, atol=1e-6)  # (RGB - 128) / 256, no activation
    (dark,) = segmenter.product_masks([_image(20)])
    assert float(dark.max()) == 0.0  # clipped into [0, 1]


def test_birefnet_preset_sigmoid_and_imagenet(models):
    segmenter = build_segmenter(_config(models["dynamic"], preset="birefnet").segment)
    (mask,) = segmenter.product_masks([_image(90)])
    logit = (90 / 255 - 0.485) / 0.229
    np.testing.assert_allclose(mask, 1 / (1 + math.exp(-logit)), atol=1e-5)


def test_isnet_general_use_preset_minmax_and_output_by_index(models):
    image = _image(0, shape=(SIZE, SIZE))
    image[:, SIZE // 2 :, 0] = 255  # right half red
    segmenter = build_segmenter(_config(models["fixed"], preset="isnet-general-use").segment)
    (mask,) = segmenter.product_masks([image])
    assert mask[:, : SIZE // 2 - 1].max() == 0.0 and mask[:, SIZE // 2 + 1 :].min() == 1.0  # min-max
    side = build_segmenter(_config(models["fixed"], preset="isnet-imgly", output="side").segment)
    (green,) = side.product_masks([_image(0, green=192)])
    np.testing.assert_allclose(green, (192 - 128) / 256, atol=1e-6)


def test_presets_overridable_and_unknown_options_fail():
    preset = preset_from_options({"preset": "u2net", "input_size": 512, "mean": 0.5, "activation": "sigmoid"})
    assert preset.input_size == 512 and preset.mean == (0.5, 0.5, 0.5) and preset.activation == "sigmoid"
    assert preset.std == PRESETS["u2net"].std
    assert PRESETS["u2net"].input_size == 320 and PRESETS["isnet-imgly"].output == "output"
    assert preset_from_options({}, "models/birefnet-general.onnx") == PRESETS["birefnet"]
    with pytest.raises(ValueError, match="inputsize"):
        preset_from_options({"inputsize": 5})
    with pytest.raises(ValueError, match="preset"):
        preset_from_options({"preset": "sam"})


def test_fixed_batch_of_one_is_looped(models):
    images = [_image(140), _image(180), _image(220, shape=(20, 64))]
    fixed = build_segmenter(_config(models["fixed"], preset="isnet-imgly").segment)
    dynamic = build_segmenter(_config(models["dynamic"], preset="isnet-imgly").segment)
    assert fixed.fixed_batch and not dynamic.fixed_batch
    looped, batched = fixed.product_masks(images), dynamic.product_masks(images)
    assert fixed.runs == 3 and dynamic.runs == 1
    for a, b, image in zip(looped, batched, images, strict=True):
        assert a.shape == image.shape[:2]
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(looped[2], (220 - 128) / 256, atol=1e-6)


def test_cutouts_keep_their_alpha(models):
    segmenter = build_segmenter(_config(models["fixed"]).segment)
    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[10:20, 10:20, 3] = 255
    (mask,) = segmenter.product_masks([rgba])
    assert segmenter.runs == 0 and mask[15, 15] == 1.0 and mask[0, 0] == 0.0


def test_threads_follow_num_cpus_and_providers_from_config(models):
    config = _config(models["fixed"])
    assert session_threads(config.segment) == 1
    config.segment.resources.num_cpus = 1.5
    assert session_threads(config.segment) == 2
    config.segment.options["threads"] = 3
    assert session_threads(config.segment) == 3
    assert session_providers(config.segment, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    config.segment.device = "auto"
    assert session_providers(config.segment, ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == (
        "CUDAExecutionProvider"
    )
    config.segment.device = "cuda"
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        session_providers(config.segment, ["CPUExecutionProvider"])
    config.segment.options["providers"] = ["TensorrtExecutionProvider"]
    with pytest.raises(ValueError, match="not available"):
        session_providers(config.segment, ["CPUExecutionProvider"])


def test_missing_model_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CANVAS_RAY_MODELS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="canvas-ray models fetch isnet"):
        Segment(load_config(overrides={"segment.backend": "onnx", "segment.model": "isnet"}))
    with pytest.raises(FileNotFoundError, match="not found: .*nope.onnx"):
        Segment(
            load_config(overrides={"segment.backend": "onnx", "segment.model": str(tmp_path / "nope.onnx")})
        )


def test_segment_stage_with_the_onnx_backend(models):
    """Rows flow through: mask at image size, confidence in [0, 1], flags text, an error row stays alone."""
    config = _config(models["dynamic"], preset="isnet-imgly")
    config.segment.threshold = 0.4
    image = np.full((64, 48, 3), 20, np.uint8)
    image[16:48, 12:36, 0] = 255  # a red product: (255 - 128) / 256 ≈ 0.5 ≥ 0.4 → product
    column = np.empty(3, dtype=object)
    column[0], column[1], column[2] = image, np.full((40, 40, 3), 20, np.uint8), image[:, ::-1].copy()
    batch = Segment(config)({"item_id": np.array(["a", "empty", "b"], dtype=object), "image": column})
    assert list(batch["status"]) == ["ok", "error", "ok"]
    assert batch["error"][1].startswith("segment: no product found")
    mask = batch["product_mask"][0]
    assert mask.shape == (64, 48) and mask.dtype == np.uint8
    assert (mask[16:48, 12:36] >= 128).mean() > 0.9 and (mask[:10] < 128).all()
    for index in (0, 2):
        assert 0.0 <= batch["mask_confidence"][index] <= 1.0 and isinstance(batch["mask_flags"][index], str)
    assert batch["mask_confidence"][1] == 0.0


def test_flip_tta_fuses_two_views_and_scores_their_disagreement(models):
    """options.tta: flip runs the model on the image and its mirror; the mask is their mean, both views are
    returned, and a mask one view keeps and the other drops is not trusted."""
    from canvas_ray.stages.mask_trust import assess_mask

    plain = build_segmenter(_config(models["fixed"], preset="isnet-imgly").segment)
    tta = build_segmenter(_config(models["fixed"], preset="isnet-imgly", tta="flip").segment)
    image = np.zeros((48, 40, 3), np.uint8)
    image[:, :12, 0] = 250
    ((mask, views),) = tta.masks_and_views([image])
    assert tta.runs == 2 and len(views) == 2
    np.testing.assert_allclose(views[1], views[0], atol=1e-6)  # this model commutes with the mirror
    np.testing.assert_allclose(mask, plain.product_masks([image])[0], atol=1e-6)
    with pytest.raises(ValueError, match="tta"):
        build_segmenter(_config(models["fixed"], tta="rotate").segment)

    scene = np.full((96, 64, 3), 40, np.uint8)
    scene[8:88, 24:40] = (150, 90, 40)  # a strap above and below a dial
    scene[32:64, 16:48] = (200, 200, 210)
    both = np.zeros((96, 64), np.float32)
    both[8:88, 24:40] = 1.0
    both[32:64, 16:48] = 1.0
    upper_only = both.copy()
    upper_only[64:88] = 0.0
    agreed = assess_mask(scene, both, views=[both, both])
    torn = assess_mask(scene, both, views=[both, upper_only])
    assert agreed.figures["views"] == 1.0 and "mirrored" not in agreed.flags
    assert torn.figures["views"] < 0.8 and torn.confidence < 0.6 and "mirrored view disagrees" in torn.flags
