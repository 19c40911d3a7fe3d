"""Soft edges and see-through products (canvas_ray.matte) on synthetic scenes whose truth is known: a product
of foreground F and alpha over an old background, recomposed over a new one. The matte composite must give
alpha*F + (1-alpha)*B_new on the partial pixels (the old background does not leak, unlike the naive
composite), keep the opaque pixels byte-identical, and refuse what it cannot separate."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.matte import SCENES, Scene, naive_composite, new_background
from canvas_ray.compose import HARD, background_mask, composite, verify_product_preserved
from canvas_ray.matte import (
    CLEAR,
    OPAQUE,
    composite_matte,
    keep_level,
    plan_matte,
    verify_matte_preserved,
)


def _truth(scene: Scene, new: np.ndarray) -> np.ndarray:
    alpha = (scene.mask.astype(np.float32) / 255.0)[..., None]
    return alpha * scene.foreground + (1 - alpha) * new.astype(np.float32)


def _partial(scene: Scene) -> np.ndarray:
    return (scene.mask > CLEAR) & (scene.mask < OPAQUE)


@pytest.mark.parametrize("name", ["hair", "glass", "sheer"])
def test_see_through_products_are_recomposed_from_the_estimated_foreground(name):
    scene, new = SCENES[name](), new_background()
    plan = plan_matte(scene.mask, scene.source)
    assert plan.rule == "matte" and not plan.refused, plan
    made = composite_matte(scene.source, scene.mask, new)
    partial, opaque = _partial(scene), scene.mask >= OPAQUE
    truth = _truth(scene, new)
    matte_error = np.abs(made.result[partial].astype(np.float32) - truth[partial]).mean()
    naive = naive_composite(scene.source, scene.mask, new)
    naive_error = np.abs(naive[partial].astype(np.float32) - truth[partial]).mean()
    # decontaminated: close to the truth, where the naive composite carries the old background
    assert matte_error < 2.0, matte_error
    assert naive_error > 4 * matte_error, (naive_error, matte_error)
    assert naive_error > 8.0
    # the old background's colour does not leak into the recomposed band
    leak = np.abs(made.result[partial].astype(np.float32) - truth[partial]).max(axis=-1)
    assert np.mean(leak > 8) < 0.02
    assert np.array_equal(made.result[opaque], scene.source[opaque])
    check = verify_matte_preserved(made.result, scene.source, scene.mask, made.foreground, made.background)
    assert check.product_preserved and check.max_product_diff == 0
    assert check.product_pixels == int((scene.mask > 0).sum())


@pytest.mark.parametrize("name", ["hard", "soft_edge"])
def test_hard_edged_products_keep_the_opaque_rule(name):
    scene, new = SCENES[name](), new_background()
    plan = plan_matte(scene.mask, scene.source)
    assert plan.rule == "opaque" and not plan.refused, plan
    result = composite(scene.source, scene.mask, new, feather_px=2)
    hard = scene.mask >= HARD
    assert np.array_equal(result[hard], scene.source[hard])  # every product pixel, as today
    assert verify_product_preserved(result, scene.source, scene.mask).product_preserved
    assert keep_level(scene.mask) == HARD


def test_a_busy_old_background_is_refused_with_a_reason():
    scene = SCENES["busy_hair"]()
    plan = plan_matte(scene.mask, scene.source)
    assert plan.rule == "opaque"
    assert plan.refused.startswith("matte: old background too busy"), plan.refused
    # the same hair over a plain sky is accepted: the refusal is about the background, not the hair
    assert plan_matte(SCENES["hair"]().mask, SCENES["hair"]().source).rule == "matte"


def test_a_matte_without_opaque_core_or_far_too_wide_is_refused():
    yy, xx = np.mgrid[0:200, 0:200]
    radius = np.hypot(yy - 100, xx - 100)
    mostly_sheer = np.where(radius < 8, 255, np.where(radius < 90, 128, 0)).astype(np.uint8)
    plan = plan_matte(mostly_sheer)
    assert plan.rule == "opaque" and "partial band too wide" in plan.refused, plan
    dotted = np.where(radius < 70, 128, 0).astype(np.uint8)  # a sheer veil with a few opaque threads
    dotted[(yy % 12 < 3) & (xx % 12 < 3) & (radius < 70)] = 255
    plan = plan_matte(dotted)
    assert plan.rule == "opaque" and "no opaque core" in plan.refused, plan


def test_matte_off_always_keeps_the_opaque_rule():
    scene = SCENES["hair"]()
    assert plan_matte(scene.mask, scene.source, "off").rule == "opaque"
    assert keep_level(scene.mask, "off") == HARD
    with pytest.raises(ValueError, match="composite.matte"):
        plan_matte(scene.mask, scene.source, "sometimes")


def test_the_check_fails_on_a_leaking_band_or_a_touched_opaque_pixel():
    scene, new = SCENES["hair"](), new_background()
    made = composite_matte(scene.source, scene.mask, new)
    naive = naive_composite(scene.source, scene.mask, new)
    partial = _partial(scene)
    leaked = made.result.copy()
    leaked[partial] = naive[partial]  # the source's partial pixels, old background and all
    check = verify_matte_preserved(leaked, scene.source, scene.mask, made.foreground, made.background)
    assert not check.product_preserved and check.max_product_diff > 8
    touched = made.result.copy()
    y, x = np.argwhere(scene.mask >= OPAQUE)[0]
    touched[y, x, 0] ^= 1
    check = verify_matte_preserved(touched, scene.source, scene.mask, made.foreground, made.background)
    assert not check.product_preserved and check.max_product_diff == 1


def test_a_generator_repaints_the_whole_partial_band_under_a_matte():
    hair, hard = SCENES["hair"](), SCENES["hard"]()
    assert keep_level(hair.mask) == OPAQUE
    repaint = background_mask(hair.mask, 0, keep_level(hair.mask))
    assert (repaint[_partial(hair)] == 255).all() and (repaint[hair.mask >= OPAQUE] == 0).all()
    assert np.array_equal(background_mask(hard.mask), background_mask(hard.mask, 0, keep_level(hard.mask)))
