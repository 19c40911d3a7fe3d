"""Quality guards: the expansion metric, the retrying guard, candidate scoring, and the CLIP path."""

from __future__ import annotations

import numpy as np
import pytest

from canvas_ray.compose import composite
from canvas_ray.config import load_config
from canvas_ray.quality.expansion import measure_expansion
from canvas_ray.quality.guard import candidate_seed
from canvas_ray.quality.scoring import color_harmony, exposure, seam_energy, weight_free_scores
from canvas_ray.rows import object_column
from canvas_ray.stages.inpaint import Inpaint

PRODUCT = (200, 30, 30)
BACKDROP = 235


# ---- the metric -------------------------------------------------------------------------------------


def square(size: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_expansion_is_area_of_union_minus_input():
    inside = square(64, 20, 30, 20, 30)  # 100 px
    grown = inside | square(64, 30, 35, 20, 30)  # + 50 px below
    result = measure_expansion(inside, grown)
    assert (result.pixels, result.product_pixels) == (50, 100)
    assert result.ratio == pytest.approx(0.5)
    assert result.pixels == int((inside | grown).sum() - inside.sum())
    # a segmentation smaller than the product does not count as expansion
    assert measure_expansion(inside, square(64, 22, 28, 22, 28)).pixels == 0
    # a detached blob counts in full
    assert measure_expansion(inside, inside | square(64, 50, 54, 50, 55)).pixels == 20
    # edge jitter within the tolerance is forgiven, beyond it is not
    jitter = square(64, 19, 31, 19, 31)
    assert measure_expansion(inside, jitter).pixels == 44
    assert measure_expansion(inside, jitter, tolerance_px=1).pixels == 4  # the corners are √2 px away
    assert measure_expansion(inside, jitter, tolerance_px=2).pixels == 0
    assert measure_expansion(inside, grown, tolerance_px=2).pixels == 30
    with pytest.raises(ValueError, match="empty"):
        measure_expansion(np.zeros((8, 8), bool), np.ones((8, 8), bool))
    with pytest.raises(ValueError, match="shapes"):
        measure_expansion(inside, np.zeros((8, 8), bool))


def ring(size: int, centre: int, outer: int, inner: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    r2 = (y - centre) ** 2 + (x - centre) ** 2
    return (r2 <= outer**2) & (r2 > inner**2)


def test_expansion_does_not_count_a_hole_the_segmenter_reads_into_the_product():
    band = ring(64, 32, 20, 12)
    disc = ring(64, 32, 20, -1)  # a segmenter that fills the ring's hole
    assert measure_expansion(band, disc).ratio > 0.3  # the old reading: the hole "grew"
    calm = measure_expansion(band, disc, control=disc)  # the same segmenter on the product alone
    assert calm.pixels == 0 and calm.box is None
    # growth beyond what the control explains still counts, and says where it is
    grown = measure_expansion(band, disc | square(64, 52, 60, 28, 36), control=disc)
    assert grown.pixels == 64 - int((disc & square(64, 52, 60, 28, 36)).sum())
    assert grown.box is not None and grown.box[1] >= 52 and grown.box[3] == 60
    assert "x 28-36" in grown.where()
    # hull mode: a traced 1 px line (a horizon) is no growth, a solid part outside the hull is
    line = np.zeros((64, 64), bool)
    line[58, :] = True
    assert measure_expansion(band, disc | line, control=disc, hull=True).pixels == 0
    assert measure_expansion(band, disc | square(64, 52, 60, 28, 36), control=disc, hull=True).pixels > 40


# ---- the guard --------------------------------------------------------------------------------------


class GrowingInpainter:
    """A planted inpainter that redraws the product 50% taller on its first ``grow_calls`` calls."""

    paints_product = True

    def __init__(self, grow_calls: int):
        self.grow_calls = grow_calls
        self.calls: list[list[tuple[int, int]]] = []

    def backgrounds(self, rows):
        self.calls.append([(int(row["seed"]), int(row["keep_dilate_px"])) for row in rows])
        out = []
        for row in rows:
            canvas, hard = row["canvas"], row["canvas_mask"] >= 128
            image = np.full_like(canvas, BACKDROP)
            image[hard] = canvas[hard]
            if len(self.calls) <= self.grow_calls:
                ys, xs = np.nonzero(hard)
                height = ys.max() - ys.min() + 1
                image[ys.max() + 1 : ys.max() + 1 + height // 2, xs.min() : xs.max() + 1] = PRODUCT
            out.append(image)
        return out


def product_batch(rows: int = 2) -> dict[str, np.ndarray]:
    canvas = np.full((96, 96, 3), BACKDROP, np.uint8)
    mask = np.zeros((96, 96), np.uint8)
    canvas[20:50, 33:63] = PRODUCT
    mask[20:50, 33:63] = 255
    return {
        "output_id": np.array([f"o{i}" for i in range(rows)], dtype=object),
        "canvas": object_column([canvas.copy() for _ in range(rows)]),
        "canvas_mask": object_column([mask.copy() for _ in range(rows)]),
        "style": np.array(["studio white"] * rows, dtype=object),
        "seed": np.array([11 + i for i in range(rows)], dtype=np.int64),
        "prompt": np.array(["a red box on a white sweep"] * rows, dtype=object),
        "negative_prompt": np.array([""] * rows, dtype=object),
    }


def guarded_stage(grow_calls: int, **quality):
    overrides = {"quality.expansion.max_attempts": 3, "quality.expansion.threshold": 0.15}
    overrides.update({f"quality.{k}": v for k, v in quality.items()})
    stage = Inpaint(load_config(None, overrides))
    stage.inpainter = GrowingInpainter(grow_calls)
    return stage


def test_guard_retries_with_new_seeds_and_a_wider_kept_region():
    stage = guarded_stage(grow_calls=1)
    out = stage(product_batch())
    assert list(out["status"]) == ["ok", "ok"]
    calls = stage.inpainter.calls
    assert len(calls) == 2  # first attempt grew, the retry did not
    assert [seed for seed, _ in calls[0]] == [11, 12]  # the first attempt keeps the output's seed
    assert [seed for seed, _ in calls[1]] == [candidate_seed(11, 1, 0), candidate_seed(12, 1, 0)]
    assert {dilate for _, dilate in calls[1]} == {4}  # retry_dilate_px grows the kept region
    assert list(out["attempts"]) == [2, 2] and list(out["candidates"]) == [2, 2]
    assert list(out["seed"]) == [candidate_seed(11, 1, 0), candidate_seed(12, 1, 0)]
    assert np.all(out["expansion_ratio"] <= 0.15)
    assert out["background"][0].shape == (96, 96, 3)


def test_guard_stops_after_max_attempts_and_rejects_with_the_figure():
    stage = guarded_stage(grow_calls=99)
    out = stage(product_batch())
    assert len(stage.inpainter.calls) == 3
    assert list(out["status"]) == ["rejected", "rejected"]
    assert "grew by" in out["error"][0] and "3 attempts" in out["error"][0]
    assert list(out["attempts"]) == [3, 3]
    # E = 15 rows x 30 px beyond a 2 px tolerance (13 x 30 = 390) over 900 product pixels
    assert out["expansion_ratio"][0] == pytest.approx(390 / 900, abs=0.05)
    assert out["background"][0].shape == (1, 1, 3)  # a rejected image is not delivered


def test_guard_keep_best_delivers_the_least_expanded_candidate():
    stage = guarded_stage(grow_calls=99, **{"expansion.on_fail": "keep_best"})
    out = stage(product_batch(1))
    assert list(out["status"]) == ["ok"] and out["attempts"][0] == 3
    assert out["expansion_ratio"][0] > 0.15  # recorded, so a reviewer can see it


def test_candidates_keep_the_best_score():
    stage = guarded_stage(grow_calls=0, candidates=3)
    out = stage(product_batch(1))
    assert out["candidates"][0] == 3 and out["attempts"][0] == 1
    assert len(stage.inpainter.calls) == 1 and len(stage.inpainter.calls[0]) == 3
    seeds = [seed for seed, _ in stage.inpainter.calls[0]]
    assert len(set(seeds)) == 3 and out["seed"][0] in seeds
    for column in ("quality_score", "seam_energy", "color_harmony", "exposure"):
        assert 0.0 <= out[column][0] <= 1.0
    assert np.isnan(out["clip_score"][0])  # no CLIP model configured


def test_guard_disabled_measures_nothing_and_never_retries():
    stage = guarded_stage(grow_calls=99, **{"expansion.enabled": False})
    out = stage(product_batch(1))
    assert list(out["status"]) == ["ok"] and len(stage.inpainter.calls) == 1
    assert np.isnan(out["expansion_ratio"][0]) and out["expansion_px"][0] == -1


def test_studio_backend_skips_the_guard_unless_asked():
    stage = Inpaint(load_config(None))
    out = stage(product_batch(2))
    assert list(out["status"]) == ["ok", "ok"] and list(out["attempts"]) == [1, 1]
    assert np.all(np.isnan(out["expansion_ratio"]))  # a rendered backdrop cannot grow the product
    assert stage.guard.meter is not None and stage.guard.meter._segmenter is None  # never loaded
    assert np.all(out["quality_score"] > 0)
    stage = Inpaint(load_config(None, {"quality.expansion.applies_to": "always"}))
    out = stage(product_batch(2))
    assert list(out["status"]) == ["ok", "ok"] and np.all(out["expansion_ratio"] <= 0.05)


def ring_batch() -> dict[str, np.ndarray]:
    batch = product_batch(1)
    canvas = np.full((96, 96, 3), BACKDROP, np.uint8)
    band = np.pad(ring(64, 32, 26, 15), 16)
    canvas[band] = PRODUCT
    batch["canvas"] = object_column([canvas])
    batch["canvas_mask"] = object_column([band.astype(np.uint8) * 255])
    return batch


def test_guard_keeps_a_ring_whose_hole_the_guard_segmenter_fills():
    """A generator that paints the product but leaves it as it was: the weight-free guard segmenter fills
    the ring's hole (it fills enclosed holes), which used to read as 60% growth and reject a right product."""
    stage = guarded_stage(grow_calls=0, **{"expansion.segment": {"backend": "backdrop"}})
    out = stage(ring_batch())
    assert list(out["status"]) == ["ok"], out["error"][0]
    assert out["attempts"][0] == 1 and out["expansion_ratio"][0] <= 0.05


def test_a_rejection_says_which_pixels_grew():
    stage = guarded_stage(grow_calls=99)
    out = stage(product_batch(1))
    assert out["status"][0] == "rejected"
    # the planted growth: 15 rows under the product (y 50-65), across its width (x 33-63)
    assert "in the box x 33-63, y 52-65 of the canvas" in out["error"][0], out["error"][0]


# ---- scoring ----------------------------------------------------------------------------------------


def scene(background: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    canvas = np.full((128, 128, 3), 128, np.uint8)
    mask = np.zeros((128, 128), np.uint8)
    canvas[34:94, 44:84] = PRODUCT
    mask[34:94, 44:84] = 255
    return composite(canvas, mask, background, feather_px=2), canvas, mask


def test_weight_free_checks_rank_a_planted_good_candidate_first():
    rng = np.random.default_rng(0)
    soft = np.linspace(225, 245, 128, dtype=np.float32)[:, None, None] * np.ones((1, 128, 3), np.float32)
    good, _, mask = scene(soft.astype(np.uint8))
    # bad: a noisy halo hugging the outline, blown-out white elsewhere, a colour that clashes with red
    bad_bg = np.full((128, 128, 3), 255, np.uint8)
    ring = np.zeros((128, 128), bool)
    ring[26:102, 36:92] = True
    bad_bg[ring] = rng.integers(0, 255, (int(ring.sum()), 3), dtype=np.uint8)
    bad, _, _ = scene(bad_bg)
    good_scores, bad_scores = weight_free_scores(good, mask), weight_free_scores(bad, mask)
    assert good_scores.seam_energy < 0.1 < bad_scores.seam_energy
    assert good_scores.exposure > bad_scores.exposure
    weights = {"seam": 1.0, "harmony": 0.5, "exposure": 0.5}
    assert good_scores.total(weights) > bad_scores.total(weights) + 0.2


def test_individual_checks_move_the_right_way():
    _, _, mask = scene(np.full((128, 128, 3), 200, np.uint8))
    flat = np.full((128, 128, 3), 200, np.uint8)
    assert seam_energy(flat, mask) == 0.0
    assert exposure(np.zeros((64, 64, 3), np.uint8)) == 0.0
    assert exposure(np.full((64, 64, 3), 120, np.uint8)) == 1.0
    assert exposure(np.full((64, 64, 3), 255, np.uint8)) == 0.0
    beige, _, _ = scene(np.full((128, 128, 3), (226, 214, 190), np.uint8))
    red_on_red, _, _ = scene(np.full((128, 128, 3), (190, 40, 35), np.uint8))
    clash, _, _ = scene(np.full((128, 128, 3), (40, 230, 40), np.uint8))  # louder than the product
    assert color_harmony(beige, mask) > color_harmony(clash, mask)
    assert color_harmony(beige, mask) > color_harmony(red_on_red, mask)  # the product must stand out


def test_clip_alignment_with_a_tiny_clip(tiny_models):
    stage = Inpaint(
        load_config(None, {"quality.candidates": 2, "quality.scoring.clip_model": str(tiny_models["clip"])})
    )
    out = stage(product_batch(2))
    assert list(out["status"]) == ["ok", "ok"]
    assert np.all((out["clip_score"] >= 0) & (out["clip_score"] <= 1))
    assert not np.any(np.isnan(out["clip_score"]))
    again = stage(product_batch(2))
    assert np.array_equal(again["clip_score"], out["clip_score"])  # deterministic scoring
    assert np.array_equal(again["seed"], out["seed"])


def test_score_weights_are_validated():
    from canvas_ray.config import ConfigError

    with pytest.raises(ConfigError, match="unknown score names"):
        load_config(None, {"quality.scoring.weights": {"beauty": 1.0}})
    with pytest.raises(ConfigError, match="candidates"):
        load_config(None, {"quality.candidates": 0})
