"""The sample catalog end to end without Ray: Segment quality against ground truth, and the local pipeline's
guarantee that product pixels are exactly the source photo's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from canvas_ray.compose import HARD, Placement, verify_against_source, verify_product_preserved
from canvas_ray.config import load_config
from canvas_ray.io.images import decode_image
from canvas_ray.pipeline import LocalPipeline, items_batch
from canvas_ray.stages.segment import Segment

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "catalog"
# The pipeline tests here run weight-free; the IS-Net segmenter is tested in test_segment_isnet.py.
LOCAL = REPO / "configs" / "weightfree.yaml"

# From examples/README.md and examples/make_catalog.py:
# 7 plain studio backdrops, 3 busy scenes, 2 RGBA cut-outs.
PLAIN = ["sku-0001", "sku-0002", "sku-0003", "sku-0006", "sku-0008", "sku-0011", "sku-0012"]
RGBA = ["sku-0004", "sku-0009"]
BUSY = ["sku-0005", "sku-0007", "sku-0010"]

PIPELINE_ITEMS = ["sku-0001", "sku-0004", "sku-0012"]
ASPECTS = ["1:1", "2:3", "16:9"]
STYLES = ["studio white", "marble countertop"]


def _catalog_rows() -> dict[str, dict]:
    lines = (SAMPLE / "catalog.jsonl").read_text().splitlines()
    return {row["item_id"]: row for row in (json.loads(line) for line in lines if line.strip())}


def _image_path(item_id: str) -> Path:
    return SAMPLE / _catalog_rows()[item_id]["image_uri"]


def _truth(item_id: str) -> np.ndarray:
    return np.asarray(Image.open(SAMPLE / "masks" / f"{item_id}.png").convert("L")) >= HARD


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_sample_catalog_partition_is_complete():
    images = sorted(p.stem for p in (SAMPLE / "images").iterdir())
    assert sorted(PLAIN + RGBA + BUSY) == images
    for item_id in RGBA:
        assert Image.open(_image_path(item_id)).mode == "RGBA"


@pytest.fixture(scope="module")
def segmented() -> dict[str, tuple[str, str, np.ndarray]]:
    """Segment (backend ``backdrop``) over every sample image in one batch: item → (status, error, mask)."""
    config = load_config(overrides={"segment.backend": "backdrop"})
    ids = sorted(p.stem for p in (SAMPLE / "images").iterdir())
    images = [decode_image(_image_path(i).read_bytes()) for i in ids]
    column = np.empty(len(images), dtype=object)
    for index, image in enumerate(images):
        column[index] = image
    batch = Segment(config)({"item_id": np.array(ids, dtype=object), "image": column})
    assert len(batch["status"]) == len(ids)  # no row dropped
    return {i: (batch["status"][k], batch["error"][k], batch["product_mask"][k]) for k, i in enumerate(ids)}


@pytest.mark.parametrize("item_id", PLAIN + RGBA)
def test_segment_plain_and_rgba_match_ground_truth(segmented, item_id):
    status, error, mask = segmented[item_id]
    assert status == "ok", error
    truth = _truth(item_id)
    assert mask.dtype == np.uint8 and mask.shape == truth.shape
    iou = _iou(mask >= HARD, truth)
    print(f"{item_id}: IoU {iou:.3f}")
    assert iou >= (0.99 if item_id in RGBA else 0.9)


@pytest.mark.parametrize("item_id", BUSY)
def test_segment_busy_scenes_do_not_crash(segmented, item_id):
    status, error, mask = segmented[item_id]
    assert status in ("ok", "error")
    if status == "ok":
        truth = _truth(item_id)
        assert mask.shape == truth.shape and mask.dtype == np.uint8
        assert (mask >= HARD).any()
        print(f"{item_id} (busy): IoU {_iou(mask >= HARD, truth):.3f}")
    else:
        assert error.startswith("segment: ") and len(error) > len("segment: ")
        print(f"{item_id} (busy): error {error}")


# --- the local pipeline ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_config():
    return load_config(LOCAL, overrides={"output.aspect_ratios": ASPECTS, "styles.default": STYLES})


def _items() -> list[dict]:
    rows = _catalog_rows()
    items = []
    for item_id in PIPELINE_ITEMS:
        row = rows[item_id]
        items.append(
            {
                "item_id": item_id,
                "image_bytes": _image_path(item_id).read_bytes(),
                "title": row["title"],
                "description": row["description"],
                "category": row["category"],
                "brand": row["brand"],
            }
        )
    return items


@pytest.fixture(scope="module")
def pipeline_batch(pipeline_config):
    return LocalPipeline(pipeline_config, keep_intermediate=True).run_batch(items_batch(_items()))


def test_local_pipeline_generate_all_ok(pipeline_config):
    results = LocalPipeline(pipeline_config).generate(_items())
    assert len(results) == len(PIPELINE_ITEMS) * len(ASPECTS) * len(STYLES)
    seen = set()
    for result in results:
        assert result.status == "ok", result.error
        assert result.product_preserved is True
        assert result.max_product_diff == 0
        assert result.image is not None and result.image.dtype == np.uint8 and result.image.ndim == 3
        seen.add((result.output_id.split("__")[0], result.style, result.aspect))
    assert seen == {(i, s, a) for i in PIPELINE_ITEMS for s in STYLES for a in ASPECTS}
    # each output has its requested aspect ratio (the canvas is rounded to whole pixels)
    for result in results:
        w_ratio, h_ratio = (float(v) for v in result.aspect.split(":"))
        height, width = result.image.shape[:2]
        assert abs(width / height - w_ratio / h_ratio) < 0.01


def test_local_pipeline_product_pixels_are_the_source_pixels(pipeline_config, pipeline_batch):
    batch = pipeline_batch
    n = len(batch["status"])
    assert n == len(PIPELINE_ITEMS) * len(ASPECTS) * len(STYLES)
    # independent Segment run on the same decoded sources (deterministic backend)
    sources = {i: decode_image(_image_path(i).read_bytes()) for i in PIPELINE_ITEMS}
    column = np.empty(len(PIPELINE_ITEMS), dtype=object)
    for index, item_id in enumerate(PIPELINE_ITEMS):
        column[index] = sources[item_id]
    segmented = Segment(pipeline_config)({"item_id": np.array(PIPELINE_ITEMS, dtype=object), "image": column})
    masks = {i: segmented["product_mask"][k] for k, i in enumerate(PIPELINE_ITEMS)}
    for index in range(n):
        assert batch["status"][index] == "ok", batch["error"][index]
        assert bool(batch["product_preserved"][index]) is True
        assert int(batch["max_product_diff"][index]) == 0
        result, canvas, canvas_mask = (
            batch["result"][index],
            batch["canvas"][index],
            batch["canvas_mask"][index],
        )
        assert result.shape == canvas.shape
        hard = canvas_mask >= HARD
        assert hard.sum() > 0
        np.testing.assert_array_equal(result[hard], canvas[hard])
        assert verify_product_preserved(result, canvas, canvas_mask).product_preserved
        # against the original photo, at the recorded placement
        item_id = str(batch["item_id"][index])
        where = Placement.from_json(batch["placement"][index])
        assert where.scale == 1.0 and where.canvas == (result.shape[1], result.shape[0])
        check = verify_against_source(result, sources[item_id], masks[item_id], where)
        assert check.product_preserved, (item_id, check)
        assert check.max_product_diff == 0
        assert check.product_pixels == int((masks[item_id] >= HARD).sum())
        # and directly, pixel by pixel
        x0, y0, x1, y1 = where.crop
        x, y = where.offset
        window = result[y : y + y1 - y0, x : x + x1 - x0]
        keep = masks[item_id][y0:y1, x0:x1] >= HARD
        np.testing.assert_array_equal(window[keep], sources[item_id][y0:y1, x0:x1, :3][keep])
        # the background did change: the style's backdrop, not the source photo's
        assert not np.array_equal(result[~hard], canvas[~hard])
