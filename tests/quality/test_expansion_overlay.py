"""A rejected output says which pixels grew: the guard's overlay, the writer's PNG and ``expansion_uri``,
and the review page that shows it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from canvas_ray.io.images import decode_image
from canvas_ray.io.outputs import MANIFEST_SCHEMA, WriteOutputs
from canvas_ray.quality.expansion import expansion_overlay, measure_expansion
from canvas_ray.report import render_item_pages
from canvas_ray.rows import object_column
from tests.quality.test_quality import guarded_stage, product_batch


def red(image: np.ndarray) -> np.ndarray:
    """Pixels the overlay tints as grown: strongly red, little green and blue."""
    rgb = image[..., :3].astype(int)
    return (rgb[..., 0] > 150) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)


def test_overlay_tints_exactly_the_grown_pixels():
    inside = np.zeros((40, 40), bool)
    inside[10:20, 10:20] = True
    out = inside.copy()
    out[20:26, 10:20] = True  # grown below
    expansion = measure_expansion(inside, out)
    generated = np.full((40, 40, 3), 128, np.uint8)
    overlay = expansion_overlay(generated, expansion)
    assert overlay is not None and overlay.shape == (40, 40, 3)
    np.testing.assert_array_equal(red(overlay), out & ~inside)
    # measured at half scale (the meter's ``resolution``): scaled back to the canvas, nearest-neighbour
    half = measure_expansion(inside[::2, ::2], out[::2, ::2])
    overlay = expansion_overlay(generated, half)
    assert overlay is not None
    np.testing.assert_array_equal(red(overlay), out & ~inside)
    # nothing grew: no overlay
    assert expansion_overlay(generated, measure_expansion(inside, inside)) is None


def test_guard_rejection_carries_the_grown_pixels_in_red():
    """The planted inpainter redraws a red box 50% taller (y 50-65 under a box at y 20-50, x 33-63); the
    rejected row's overlay is red there and nowhere else, beyond the meter's 2 px tolerance."""
    stage = guarded_stage(grow_calls=99)
    out = stage(product_batch(1))
    assert out["status"][0] == "rejected"
    overlay = out["expansion_overlay"][0]
    assert overlay.shape == (96, 96, 3)
    grown = red(overlay)
    grew = np.zeros((96, 96), bool)
    grew[52:65, 33:63] = True  # the growth beyond the 2 px tolerance
    assert grown[grew].mean() > 0.95
    assert not grown[~grew].any(), np.argwhere(grown & ~grew)[:5]
    # the product itself (red in the source) is washed out, not counted as grown
    assert not grown[20:50, 33:63].any()


def test_kept_output_that_did_not_grow_has_no_overlay():
    out = guarded_stage(grow_calls=0)(product_batch(1))
    assert out["status"][0] == "ok" and out["expansion_overlay"][0].shape == (1, 1, 3)


def test_writer_stores_the_overlay_and_the_review_page_shows_it(tmp_path):
    out = guarded_stage(grow_calls=99)(product_batch(1))
    batch = {
        "output_id": np.array(["sku-1__studio-white__1x1__v0"], dtype=object),
        "item_id": np.array(["sku-1"], dtype=object),
        "status": out["status"],
        "error": out["error"],
        "style": np.array(["studio white"], dtype=object),
        "style_key": np.array(["studio-white"], dtype=object),
        "aspect": np.array(["1:1"], dtype=object),
        "variant": np.zeros(1, dtype=np.int64),
        "seed": out["seed"],
        "expansion_ratio": out["expansion_ratio"],
        "expansion_overlay": out["expansion_overlay"],
        "result": object_column([np.zeros((1, 1, 3), np.uint8)]),
    }
    table = WriteOutputs(str(tmp_path), "run-1", "fp", write_part=False).rows(batch)
    (row,) = table.to_pylist()
    assert row["status"] == "rejected" and row["output_uri"] == ""
    assert row["expansion_uri"].startswith("expansion/") and row["expansion_uri"].endswith(".png")
    written = decode_image((Path(tmp_path) / row["expansion_uri"]).read_bytes())
    np.testing.assert_array_equal(written, out["expansion_overlay"][0])
    assert red(written)[55:62, 40:56].all()
    (page,) = render_item_pages(pa.Table.from_pylist([row], schema=MANIFEST_SCHEMA), "bucket=00000")
    assert f'src="../../{row["expansion_uri"]}"' in page
    assert "where the product grew" in page
