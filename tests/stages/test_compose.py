"""Placement, pasting, model sizes, inpainting masks, the final composite and the product checks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from canvas_ray.compose import (
    HARD,
    Placement,
    aspect_slug,
    background_mask,
    composite,
    contact_shadow,
    model_size,
    place_product,
    plan_placement,
    product_bbox,
    verify_against_source,
    verify_product_preserved,
)
from canvas_ray.config import parse_aspect

ASPECTS = ["1:1", "2:3", "16:9", "4:5", "9:16"]


def _product(
    h: int = 180, w: int = 140, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """A random source photo and a soft-edged elliptical product mask with a known bounding box."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    big = np.zeros((h * 4, w * 4), np.uint8)
    cv2.ellipse(big, (w * 2 + 20, h * 2 + 40), (w * 2 - 90, h * 2 - 110), 0, 0, 360, 255, -1)
    mask = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)
    return image, mask, product_bbox(mask)


def _far_from(hard: np.ndarray, distance: float) -> np.ndarray:
    """Pixels more than ``distance`` px away from any hard product pixel."""
    dist = cv2.distanceTransform((~hard).astype(np.uint8), cv2.DIST_L2, 5)
    return dist > distance


# --- bbox and placement ---------------------------------------------------------------------------------


def test_product_bbox_exclusive_ends():
    mask = np.zeros((50, 60), np.uint8)
    mask[10:20, 5:45] = 255
    mask[25, 50] = 1  # any weight counts
    assert product_bbox(mask) == (5, 10, 51, 26)
    with pytest.raises(ValueError, match="empty"):
        product_bbox(np.zeros((5, 5), np.uint8))


@pytest.mark.parametrize("aspect", ASPECTS)
@pytest.mark.parametrize("fill", [0.78, 0.5, 1.0])
def test_plan_placement_aspect_and_fill(aspect, fill):
    _, mask, (x0, y0, x1, y1) = _product()
    w, h = x1 - x0, y1 - y0
    ratio = parse_aspect(aspect)
    where = plan_placement(mask, ratio, fill=fill, placement="center")
    cw, ch = where.canvas
    assert where.crop == (x0, y0, x1, y1)
    assert where.scale == 1.0
    # the requested aspect, within one pixel of rounding on either side
    assert abs(cw - ratio * ch) <= 1.0 + ratio
    # the product fits with the fill share (rounding may add half a pixel)
    assert w <= fill * cw + 1 and h <= fill * ch + 1
    # smallest such canvas: one side is tight
    assert max(w / (fill * cw), h / (fill * ch)) == pytest.approx(1.0, abs=0.02)
    # the product lies inside the canvas
    x, y = where.offset
    assert x >= 0 and x + w <= cw and y >= 0 and y + h <= ch


@pytest.mark.parametrize("aspect", ASPECTS)
def test_center_and_floor_offsets(aspect):
    _, mask, (x0, y0, x1, y1) = _product()
    w, h = x1 - x0, y1 - y0
    ratio = parse_aspect(aspect)
    center = plan_placement(mask, ratio, placement="center")
    cw, ch = center.canvas
    assert center.offset == ((cw - w) // 2, (ch - h) // 2)
    floor = plan_placement(mask, ratio, placement="floor", floor_margin=0.1)
    assert floor.canvas == center.canvas
    fx, fy = floor.offset
    assert fx == (cw - w) // 2
    assert ch - (fy + h) == round(0.1 * ch)  # gap under the product
    assert fy >= center.offset[1]  # floor sits lower than centred


def test_floor_never_rises_above_center():
    _, mask, (x0, y0, x1, y1) = _product()
    h = y1 - y0
    where = plan_placement(mask, 1.0, placement="floor", floor_margin=0.45)
    cw, ch = where.canvas
    assert where.offset[1] == (ch - h) // 2


@pytest.mark.parametrize("long_side", [256, 1000, 2048])
@pytest.mark.parametrize("aspect", ["1:1", "2:3", "16:9"])
def test_fit_scale_long_side(aspect, long_side):
    _, mask, (x0, y0, x1, y1) = _product()
    where = plan_placement(mask, parse_aspect(aspect), long_side=long_side)
    cw, ch = where.canvas
    assert max(cw, ch) == long_side
    assert where.scale != 1.0
    image = np.random.default_rng(3).integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
    canvas, canvas_mask = place_product(image, mask, where)
    assert canvas.shape == (ch, cw, 3) and canvas_mask.shape == (ch, cw)
    # the resampled product covers about scale * bbox
    ys, xs = np.nonzero(canvas_mask > 0)
    assert abs((xs.max() - xs.min() + 1) - (x1 - x0) * where.scale) <= 3
    with pytest.raises(ValueError, match="native"):
        verify_against_source(canvas, image, mask, where)


def test_placement_json_round_trip():
    where = Placement((1, 2, 30, 40), (100, 120), (5, 6), 1.0)
    again = Placement.from_json(where.to_json())
    assert again == where
    assert isinstance(again.crop, tuple)


# --- pasting --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aspect", ASPECTS)
def test_place_product_copies_source_pixels_exactly(aspect):
    image, mask, (x0, y0, x1, y1) = _product(seed=4)
    where = plan_placement(mask, parse_aspect(aspect))
    canvas, canvas_mask = place_product(image, mask, where)
    cw, ch = where.canvas
    x, y = where.offset
    w, h = x1 - x0, y1 - y0
    assert canvas.shape == (ch, cw, 3) and canvas.dtype == np.uint8
    np.testing.assert_array_equal(canvas[y : y + h, x : x + w], image[y0:y1, x0:x1])
    np.testing.assert_array_equal(canvas_mask[y : y + h, x : x + w], mask[y0:y1, x0:x1])
    outside = np.ones((ch, cw), bool)
    outside[y : y + h, x : x + w] = False
    assert (canvas_mask[outside] == 0).all()
    # the fill outside the crop is the median colour of the source background
    expected = np.median(image[mask < HARD], axis=0).astype(int)
    assert (canvas[outside] == expected).all()


def test_place_product_explicit_fill_and_rgba_source():
    image, mask, _ = _product(seed=5)
    rgba = np.dstack([image, np.full(mask.shape, 255, np.uint8)])
    where = plan_placement(mask, 1.0)
    canvas, _ = place_product(rgba, mask, where, fill_color=(1, 2, 3))
    assert canvas.shape[2] == 3
    assert (canvas[0, 0] == [1, 2, 3]).all()
    x0, y0, x1, y1 = where.crop
    x, y = where.offset
    np.testing.assert_array_equal(canvas[y : y + y1 - y0, x : x + x1 - x0], image[y0:y1, x0:x1])


# --- model size and inpainting mask ---------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [512, 768, 1024, 64])
@pytest.mark.parametrize("aspect", ASPECTS + ["5:1", "1:5", "3:2"])
def test_model_size(aspect, resolution):
    ratio = parse_aspect(aspect)
    width, height = model_size(ratio, resolution)
    assert width % 8 == 0 and height % 8 == 0
    assert max(width, height) == resolution
    assert (width >= height) == (ratio >= 1)
    # aspect kept up to the multiple-of-8 rounding of the short side
    short = min(width, height)
    assert abs(short - resolution * min(ratio, 1 / ratio)) <= 4 or short == 8


def test_model_size_from_canvas_size():
    assert model_size((1000, 500), 512) == model_size(2.0, 512)
    width, height = model_size((300, 900), 768)
    assert height == 768 and width % 8 == 0


def test_background_mask_is_inverse_of_hard_mask():
    _, mask, _ = _product(seed=6)
    repaint = background_mask(mask)
    assert repaint.dtype == np.uint8
    assert set(np.unique(repaint)) <= {0, 255}
    np.testing.assert_array_equal(repaint == 255, mask < HARD)


def test_keep_dilate_shrinks_repaint_region():
    _, mask, _ = _product(seed=6)
    plain = background_mask(mask) == 255
    grown = background_mask(mask, keep_dilate_px=4) == 255
    assert grown.sum() < plain.sum()
    assert not (grown & ~plain).any()  # only ever shrinks
    hard = mask >= HARD
    # background right next to the product is now kept; far background still repainted
    assert not grown[~hard & ~_far_from(hard, 1.5)].any()
    assert grown[_far_from(hard, 5.5)].all()


# --- composite and verification --------------------------------------------------------------------------


def _scene(aspect: str, seed: int):
    image, mask, _ = _product(seed=seed)
    where = plan_placement(mask, parse_aspect(aspect))
    canvas, canvas_mask = place_product(image, mask, where)
    rng = np.random.default_rng(seed + 100)
    background = rng.integers(0, 256, canvas.shape, dtype=np.uint8)
    return image, mask, where, canvas, canvas_mask, background


@pytest.mark.parametrize("aspect", ASPECTS)
@pytest.mark.parametrize(("shadow", "feather"), [(0.5, 3), (1.0, 8), (0.0, 0)])
def test_composite_keeps_product_pixels_exact(aspect, shadow, feather):
    image, mask, where, canvas, canvas_mask, background = _scene(aspect, seed=20 + ASPECTS.index(aspect))
    result = composite(canvas, canvas_mask, background, feather_px=feather, shadow=shadow)
    assert result.shape == canvas.shape and result.dtype == np.uint8
    hard = canvas_mask >= HARD
    assert hard.sum() > 1000
    np.testing.assert_array_equal(result[hard], canvas[hard])
    check = verify_product_preserved(result, canvas, canvas_mask)
    assert check.product_preserved and check.max_product_diff == 0
    assert check.product_pixels == int(hard.sum())
    source_check = verify_against_source(result, image, mask, where)
    assert source_check.product_preserved and source_check.max_product_diff == 0
    assert source_check.product_pixels == int((mask >= HARD).sum())


@pytest.mark.parametrize("aspect", ASPECTS)
def test_far_background_is_background(aspect):
    _, _, _, canvas, canvas_mask, background = _scene(aspect, seed=7)
    hard = canvas_mask >= HARD
    # without shadow, everything beyond the feather reach (blur radius 4 sigma) is the background as is
    feather = 4
    plain = composite(canvas, canvas_mask, background, feather_px=feather, shadow=0.0)
    far = _far_from(hard, 4 * feather / 2.0 + 2) & (canvas_mask == 0)
    np.testing.assert_array_equal(plain[far], background[far])
    # near the edge (outside the product) the feather blends in some product colour
    ring = ~hard & ~_far_from(hard, 1.5)
    assert (plain[ring] != background[ring]).any()
    # with a shadow: darker somewhere under the product, never brighter, and untouched far above it
    shaded = composite(canvas, canvas_mask, background, feather_px=feather, shadow=0.8)
    assert (shaded[far].astype(int) <= background[far].astype(int)).all()
    assert (shaded[far].astype(int) < background[far].astype(int)).any()
    # where no product colour reaches, the result is exactly the background times the shade map
    shade = contact_shadow(canvas_mask, 0.8)
    assert shade.min() < 1.0 and shade.max() <= 1.0
    expected = np.clip(np.round(background.astype(np.float32) * shade[..., None]), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(shaded[far], expected[far])
    ys, xs = np.nonzero(hard)
    product_w = xs.max() - xs.min() + 1
    sigma = max(2.0, product_w * 0.03)
    reach = int(4 * sigma + max(1, int(product_w * 0.02)) + 3)
    above = np.zeros_like(hard)
    above[: max(0, ys.min() - reach)] = True
    assert above.any()
    np.testing.assert_array_equal(shaded[above], background[above])


@pytest.mark.parametrize(("feather", "shift"), [(2, 0), (5, 0), (3, -1)])
def test_blending_a_window_equals_blending_the_whole_canvas(feather, shift):
    """composite blends only a window around the product. Two faint mask dots in opposite corners make the
    window the whole canvas; away from the dots (beyond any blur's reach) the bytes must be the same, also
    for a product cut by the canvas edge (shift -1: the product moved past the left border)."""
    _, _, _, canvas, canvas_mask, background = _scene("4:5", seed=11)
    if shift:
        ys, xs = np.nonzero(canvas_mask >= HARD)
        canvas = np.roll(canvas, -int(xs.min()) - 5, axis=1)
        canvas_mask = np.roll(canvas_mask, -int(xs.min()) - 5, axis=1)
    dotted = canvas_mask.copy()
    dotted[0, 0] = dotted[-1, -1] = 1
    windowed = composite(canvas, canvas_mask, background, feather_px=feather, shadow=0.5)
    whole = composite(canvas, dotted, background, feather_px=feather, shadow=0.5)
    reach = 4 * max(1, feather) + 4
    away = np.ones(canvas_mask.shape, bool)
    away[:reach, :reach] = away[-reach:, -reach:] = False
    np.testing.assert_array_equal(windowed[away], whole[away])
    assert (canvas_mask == 0).mean() > 0.3  # the window is much smaller than the canvas


def test_composite_rejects_wrong_background_size():
    _, _, _, canvas, canvas_mask, background = _scene("1:1", seed=8)
    with pytest.raises(ValueError, match="background"):
        composite(canvas, canvas_mask, background[:-1])


def test_verify_detects_single_changed_pixel():
    _, _, _, canvas, canvas_mask, background = _scene("2:3", seed=9)
    result = composite(canvas, canvas_mask, background, shadow=0.3)
    ys, xs = np.nonzero(canvas_mask >= HARD)
    y, x = ys[len(ys) // 2], xs[len(xs) // 2]
    tampered = result.copy()
    tampered[y, x, 1] = (int(tampered[y, x, 1]) + 37) % 256
    expected = abs(int(tampered[y, x, 1]) - int(canvas[y, x, 1]))
    check = verify_product_preserved(tampered, canvas, canvas_mask)
    assert not check.product_preserved
    assert check.max_product_diff == expected > 0


def test_verify_ignores_background_changes_and_detects_size_mismatch():
    _, _, _, canvas, canvas_mask, background = _scene("16:9", seed=10)
    result = composite(canvas, canvas_mask, background)
    tampered = result.copy()
    tampered[canvas_mask < HARD] = 0
    assert verify_product_preserved(tampered, canvas, canvas_mask).product_preserved
    mismatch = verify_product_preserved(result[:-2], canvas, canvas_mask)
    assert not mismatch.product_preserved and mismatch.max_product_diff == 255
    empty = verify_product_preserved(result, canvas, np.zeros_like(canvas_mask))
    assert not empty.product_preserved


def test_verify_against_source_detects_shifted_offset():
    image, mask, where, canvas, canvas_mask, background = _scene("1:1", seed=11)
    result = composite(canvas, canvas_mask, background)
    assert verify_against_source(result, image, mask, where).product_preserved
    shifted = Placement(where.crop, where.canvas, (where.offset[0] + 1, where.offset[1]), 1.0)
    assert not verify_against_source(result, image, mask, shifted).product_preserved


def test_aspect_slug():
    assert aspect_slug("16:9") == "16x9"
    assert aspect_slug("4 / 5") == "4x5"


def test_edge_blend_never_shows_the_old_background():
    """Soft-edge pixels outside the product mix product colour with the new background only."""
    canvas = np.zeros((40, 40, 3), np.uint8)
    canvas[:] = (255, 0, 255)  # the photo's old background: magenta
    canvas[10:30, 10:30] = (0, 200, 0)  # the product: green
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 255
    mask[9, 10:30] = 100  # anti-aliased edge rows outside the hard mask
    mask[30, 10:30] = 100
    background = np.full((40, 40, 3), 30, np.uint8)
    out = composite(canvas, mask, background, feather_px=3, shadow=0.0)
    outside = mask < 128
    # magenta would raise red and blue above the background's 30 wherever the old background leaked in
    assert out[outside][:, 0].max() <= 30 and out[outside][:, 2].max() <= 30
    assert out[9, 15, 1] > 30  # the edge row does take some product colour
    assert np.array_equal(out[mask >= 128], canvas[mask >= 128])
