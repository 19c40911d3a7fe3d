"""The in-generation quality guard: k scored candidates per output, object-expansion retries.

For each output the guard asks an inpainter for ``quality.candidates`` backgrounds, re-segments each
generated image to measure object expansion (:mod:`canvas_ray.quality.expansion`), scores the composites
(:mod:`canvas_ray.quality.scoring`), and keeps the best candidate within the expansion threshold. When
none is within it, it tries again with new seeds and a kept region grown by ``retry_dilate_px`` per
attempt, up to ``max_attempts``; then it keeps the least-expanded candidate or marks the row ``rejected``
(``quality.expansion.on_fail``). This runs inside the Inpaint stage; evaluating a finished run is
:mod:`canvas_ray.quality.evaluate`'s job.

Expansion is measured only where the generator can grow the product: backends that paint the product region
(``paints_product``, diffusion inpainting). A weight-free studio backdrop never draws near the product (the
product is pasted over it), so there it is skipped unless ``quality.expansion.applies_to: always``.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol

import numpy as np

from canvas_ray import schema
from canvas_ray.compose import HARD
from canvas_ray.config import CanvasConfig
from canvas_ray.quality.expansion import Expansion, ExpansionMeter, SegmenterFactory, expansion_overlay
from canvas_ray.quality.scoring import ClipScorer, Scores, weight_free_scores
from canvas_ray.rows import OK, PLACEHOLDER_IMAGE, REJECTED, Batch, object_column, run_rows, set_error

# The columns of a row an inpainter reads.
ROW_COLUMNS = ("canvas", "canvas_mask", "style", "seed", "prompt", "negative_prompt", "style_image")
SCORE_COLUMNS = ("expansion_ratio", *schema.SCORE_COLUMNS)


class Inpainter(Protocol):
    """What the guard needs of an inpainting backend."""

    paints_product: bool  # True: returns the whole generated image; False: the backdrop alone

    def backgrounds(self, rows: list[dict[str, Any]]) -> list[np.ndarray]: ...


class Compositor(Protocol):
    """What the guard needs to score a candidate as it will be delivered (a
    :class:`canvas_ray.stages.composite.Composite`): the final image of one output."""

    def render(
        self, canvas: np.ndarray, mask: np.ndarray, background: np.ndarray, style: str, profile: str = ""
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class Candidate:
    """One generated background for one output, with its expansion and scores; ``generated``: the image
    the expansion was measured on (None when not measured)."""

    background: np.ndarray
    seed: int
    attempt: int
    expansion: Expansion | None
    scores: Scores
    score: float
    generated: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def expansion_ratio(self) -> float:
        return self.expansion.ratio if self.expansion is not None else 0.0


def candidate_seed(seed: int, attempt: int, candidate: int) -> int:
    """The first candidate of the first attempt keeps the output's seed; the others derive from it."""
    if attempt == 0 and candidate == 0:
        return seed
    digest = hashlib.sha256(f"{seed}:{attempt}:{candidate}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class CandidateGuard:
    """Generates, measures, scores and chooses backgrounds for the ``ok`` rows of a batch.

    Adds ``background``, ``expansion_ratio``, ``expansion_px``, ``expansion_overlay`` (the kept or, for
    a rejected row, the least-grown candidate's generated image with the grown pixels in red, see
    :func:`~canvas_ray.quality.expansion.expansion_overlay`; a 1x1 placeholder where nothing grew),
    ``attempts``, ``candidates``, ``quality_score``, ``clip_score``, ``seam_energy``, ``color_harmony``,
    ``exposure``, ``inpaint_s`` and ``quality_s``; ``seed`` becomes the kept candidate's seed.

    The caller (the Inpaint stage) injects what the guard needs of the stages above it, so that quality
    never imports a stage:

    Args:
        config (CanvasConfig): ``quality``, ``inpaint.keep_dilate_px`` and ``composite.feather_px``.
        compositor (Compositor): renders each candidate as it will be delivered, to score it.
        build_segmenter (SegmenterFactory): builds the segmenter that re-segments generated images to
            measure object expansion (on first use; never when expansion is not measured).
        stage (str, default "inpaint"): the stage named in the error of a row whose generation failed.
    """

    def __init__(
        self,
        config: CanvasConfig,
        compositor: Compositor,
        build_segmenter: SegmenterFactory,
        stage: str = "inpaint",
    ):
        self.stage = stage
        self.keep_dilate_px = config.inpaint.keep_dilate_px
        self.quality = config.quality
        self.feather_px = config.composite.feather_px
        self.meter = ExpansionMeter(config, build_segmenter) if self.quality.expansion.enabled else None
        self.clip = ClipScorer(self.quality.scoring) if self.quality.scoring.clip_model else None
        self.preview = compositor
        self._quality_s = 0.0

    def candidates(
        self, inpainter: Inpainter, batch: Batch, selected: list[int], *, attempt: int
    ) -> list[list[Candidate]]:
        """Generate, measure and score ``quality.candidates`` backgrounds for each selected row."""
        k = self.quality.candidates
        keep_dilate = self.keep_dilate_px + attempt * self.quality.expansion.retry_dilate_px
        rows = []
        for index in selected:
            row = {c: batch[c][index] for c in ROW_COLUMNS if c in batch}
            for number in range(k):
                seed = candidate_seed(int(row["seed"]), attempt, number)
                rows.append({**row, "seed": seed, "keep_dilate_px": keep_dilate})
        backgrounds = inpainter.backgrounds(rows)
        if len(backgrounds) != len(rows):
            raise RuntimeError(f"the inpainter returned {len(backgrounds)} images for {len(rows)} requests")
        start = time.perf_counter()
        masks = [row["canvas_mask"] for row in rows]
        expansions: list[Expansion | None] = [None] * len(rows)
        generated: list[np.ndarray | None] = [None] * len(rows)
        if self.measures(inpainter):
            assert self.meter is not None
            images = backgrounds
            if not inpainter.paints_product:
                images = [
                    np.where((mask >= HARD)[..., None], row["canvas"], background)
                    for row, mask, background in zip(rows, masks, backgrounds, strict=True)
                ]
            expansions = list(self.meter.measure(images, masks, [row["canvas"] for row in rows]))
            generated = list(images)
        composites = [
            self.preview.render(row["canvas"], row["canvas_mask"], background, str(row["style"]))
            for row, background in zip(rows, backgrounds, strict=True)
        ]
        scores = [
            weight_free_scores(image, mask, self.feather_px)
            for image, mask in zip(composites, masks, strict=True)
        ]
        if self.clip is not None:
            alignment = self.clip(composites, [str(row["prompt"]) for row in rows])
            scores = [replace(s, clip_score=a) for s, a in zip(scores, alignment, strict=True)]
        weights = dict(self.quality.scoring.weights)
        candidates = [
            Candidate(background, int(row["seed"]), attempt, expansion, score, score.total(weights), image)
            for row, background, expansion, score, image in zip(
                rows, backgrounds, expansions, scores, generated, strict=True
            )
        ]
        self._quality_s += time.perf_counter() - start
        return [candidates[i * k : (i + 1) * k] for i in range(len(selected))]

    def measures(self, inpainter: Inpainter) -> bool:
        """Whether expansion is measured for this generator (see the module docstring)."""
        if self.meter is None:
            return False
        return bool(inpainter.paints_product) or self.quality.expansion.applies_to == "always"

    def __call__(self, inpainter: Inpainter, batch: Batch, indices: list[int]) -> Batch:
        """Choose a background for each row in ``indices`` (``ok`` rows); record every row's figures."""
        n = len(batch["status"])
        guard = self.quality.expansion
        active = self.measures(inpainter)
        threshold = guard.threshold if active else float("inf")
        max_attempts = guard.max_attempts if active else 1
        history: dict[int, list[Candidate]] = defaultdict(list)
        chosen: dict[int, Candidate] = {}
        start, self._quality_s = time.perf_counter(), 0.0
        todo, attempt = list(indices), 0
        while todo and attempt < max_attempts:
            generate = partial(self.candidates, inpainter, batch, attempt=attempt)
            results = run_rows(batch, todo, self.stage, generate)
            todo = []
            for index, candidates in results.items():
                history[index].extend(candidates)
                within = [c for c in candidates if c.expansion_ratio <= threshold]
                if within:
                    chosen[index] = max(within, key=lambda c: c.score)
                else:
                    todo.append(index)
            attempt += 1
        for index in todo:
            least = min(history[index], key=lambda c: (c.expansion_ratio, -c.score))
            if guard.on_fail == "keep_best":
                chosen[index] = least
                continue
            set_error(
                batch,
                index,
                "quality",
                f"the product grew by {_where(least)} in the best of "
                f"{len(history[index])} candidates over {attempt} attempts (limit {threshold:.0%}); "
                "raise quality.expansion.threshold or max_attempts, or set on_fail: keep_best",
            )
            batch["status"][index] = REJECTED
            chosen[index] = least  # its figures are recorded; its image is not delivered
        self._record(batch, n, indices, chosen, history, time.perf_counter() - start)
        return batch

    def _record(
        self,
        batch: Batch,
        n: int,
        indices: list[int],
        chosen: dict[int, Candidate],
        history: dict[int, list[Candidate]],
        elapsed: float,
    ) -> None:
        backgrounds = [PLACEHOLDER_IMAGE] * n
        overlays = [PLACEHOLDER_IMAGE] * n
        columns = {name: np.full(n, np.nan) for name in SCORE_COLUMNS}
        expansion_px = np.full(n, -1, dtype=np.int64)
        attempts = np.zeros(n, dtype=np.int64)
        counts = np.zeros(n, dtype=np.int64)
        seeds = np.asarray(batch["seed"]).copy() if "seed" in batch else np.zeros(n, dtype=np.int64)
        for index, best in chosen.items():
            if batch["status"][index] == OK:
                backgrounds[index] = best.background
            seeds[index] = best.seed
            attempts[index] = max(c.attempt for c in history[index]) + 1
            counts[index] = len(history[index])
            if best.expansion is not None:
                columns["expansion_ratio"][index] = best.expansion.ratio
                expansion_px[index] = best.expansion.pixels
                if best.generated is not None:
                    overlay = expansion_overlay(best.generated, best.expansion)
                    overlays[index] = PLACEHOLDER_IMAGE if overlay is None else overlay
            columns["quality_score"][index] = best.score
            columns["seam_energy"][index] = best.scores.seam_energy
            columns["color_harmony"][index] = best.scores.color_harmony
            columns["exposure"][index] = best.scores.exposure
            if best.scores.clip_score is not None:
                columns["clip_score"][index] = best.scores.clip_score
        batch["background"] = object_column(backgrounds)
        batch["seed"] = seeds
        batch.update(columns)
        batch["expansion_px"] = expansion_px
        batch["expansion_overlay"] = object_column(overlays)
        batch["attempts"] = attempts
        batch["candidates"] = counts
        share = 1.0 / len(indices) if indices else 0.0
        inpaint_s = np.zeros(n)
        quality_s = np.zeros(n)
        inpaint_s[indices] = max(0.0, elapsed - self._quality_s) * share
        quality_s[indices] = self._quality_s * share
        batch["inpaint_s"] = inpaint_s
        batch["quality_s"] = quality_s


def _where(candidate: Candidate) -> str:
    if candidate.expansion is None:
        return f"{candidate.expansion_ratio:.0%} of its area"
    return candidate.expansion.where()
