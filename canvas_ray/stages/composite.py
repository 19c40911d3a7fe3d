"""Composite + Verify: the final image, with the product pasted back and checked pixel by pixel.

Adds ``result`` (HxWx3 uint8), ``product_preserved`` (bool), ``max_product_diff`` (int),
``product_pixels`` and ``composite_s``; drops the large intermediate columns (``canvas``,
``canvas_mask``, ``background``) unless asked to keep them. A row whose product check fails is an error
row: an altered product is never delivered as ``ok``. The check is only as good as the mask, so an ``ok``
row whose ``mask_confidence`` is below ``segment.min_confidence`` becomes ``review`` (image kept for a
person to look at, never counted or delivered as ``ok``).

``preserve_rule`` records what "preserved" means for the output (:mod:`canvas_ray.matte`): ``opaque``, every
product pixel the source's; or ``matte`` (hair, fur, glass, sheer fabric: a wide partial band in the mask,
``composite.matte: auto``), the opaque pixels the source's and the partial ones ``alpha*F + (1-alpha)*B_new``
from the estimated foreground. A matte that cannot be separated well keeps ``opaque`` and makes the output
``review``, its reason added to ``mask_flags``.

Outputs made for an output profile (``profile`` column, :mod:`canvas_ray.profiles`) are drawn by its rules
(pure white: the product on RGB 255 with no feathering or shadow) and checked against it: ``compliant``,
``compliance_issues``, ``fill_ratio``, ``background_purity``, ``upscaled``. An output that fails its
profile's check is ``rejected`` with the reason ``compliance: <profile>: <issues>``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from canvas_ray.compose import composite, verify_product_preserved
from canvas_ray.config import CanvasConfig
from canvas_ray.matte import MattePlan, composite_matte, plan_matte, verify_matte_preserved
from canvas_ray.profiles import Compliance, ProfileBook, check_compliance, render_pure_white
from canvas_ray.rows import (
    OK,
    PLACEHOLDER_IMAGE,
    REJECTED,
    REVIEW,
    Batch,
    ensure_status,
    object_column,
    ok_indices,
    run_rows,
    set_error,
)
from canvas_ray.stages.base import StageContext, timed

STAGE = "composite"
INTERMEDIATE = ("canvas", "canvas_mask", "background")


class Composite:
    requires: tuple[str, ...] = ("canvas", "canvas_mask", "background", "style")
    produces: tuple[str, ...] = (
        "result",
        "product_preserved",
        "max_product_diff",
        "product_pixels",
        "preserve_rule",
        "composite_s",
    )

    def __init__(self, config: CanvasConfig, context: StageContext | None = None):
        context = context or StageContext()
        self.spec = config.composite
        self.min_confidence = config.segment.min_confidence
        self.styles = context.style_book(config)
        self.keep_intermediate = context.keep_intermediate
        self.profiles_file = config.output.profiles_file
        self._profiles: ProfileBook | None = None

    @property
    def profiles(self) -> ProfileBook:
        if self._profiles is None:
            self._profiles = ProfileBook.load(self.profiles_file)
        return self._profiles

    def plan(self, canvas: np.ndarray, mask: np.ndarray, profile: str = "") -> MattePlan:
        """The preservation rule for one output: ``matte`` only where the mask asks for one, it can be
        separated, and the output is not a pure-white profile (drawn by its own rules)."""
        rules = self.profiles.get(profile) if profile else None
        mode = "off" if rules is not None and rules.background == "pure_white" else self.spec.matte
        return plan_matte(mask, canvas, mode)

    def _shadow(self, style: str, profile: str) -> float:
        rules = self.profiles.get(profile) if profile else None
        shadow = self.spec.shadow
        if shadow is None:
            shadow = self.styles.resolve(style).backdrop.shadow
        if rules is not None and not rules.shadow:
            shadow = 0.0
        return shadow

    def render(
        self, canvas: np.ndarray, mask: np.ndarray, background: np.ndarray, style: str, profile: str = ""
    ) -> np.ndarray:
        """The final image for one output (also used by Inpaint to score candidates)."""
        return self._compose(canvas, mask, background, style, profile, self.plan(canvas, mask, profile))[0]

    def _compose(
        self,
        canvas: np.ndarray,
        mask: np.ndarray,
        background: np.ndarray,
        style: str,
        profile: str,
        plan: MattePlan,
    ) -> tuple[np.ndarray, Any]:
        """(the final image, the matte composite when ``plan`` says matte, else None) under one plan."""
        rules = self.profiles.get(profile) if profile else None
        if rules is not None and rules.background == "pure_white":
            return render_pure_white(canvas, mask), None
        shadow = self._shadow(style, profile)
        if plan.matte:
            made = composite_matte(canvas, mask, background, shadow=shadow)
            return made.result, made
        return composite(canvas, mask, background, feather_px=self.spec.feather_px, shadow=shadow), None

    def _one(self, batch: Batch, index: int) -> tuple[np.ndarray, int, int, Compliance | None, MattePlan]:
        canvas, mask = batch["canvas"][index], batch["canvas_mask"][index]
        profile = str(batch["profile"][index] or "") if "profile" in batch else ""
        plan = self.plan(canvas, mask, profile)  # once per output: it measures the mask's partial band
        style, background = str(batch["style"][index]), batch["background"][index]
        result, made = self._compose(canvas, mask, background, style, profile, plan)
        if made is not None:
            check = verify_matte_preserved(result, canvas, mask, made.foreground, made.background)
        else:
            # the canvas holds the product as pasted (resampled where the profile scaled it): compare with it
            check = verify_product_preserved(result, canvas, mask)
        if not check.product_preserved:
            raise RuntimeError(
                f"product pixels changed (max difference {check.max_product_diff}, rule {plan.rule}); "
                "output rejected"
            )
        compliance = None
        if profile:
            scale = float(batch["product_scale"][index]) if "product_scale" in batch else 1.0
            compliance = check_compliance(result, mask, self.profiles.get(profile), scale)
        return result, check.max_product_diff, check.product_pixels, compliance, plan

    @staticmethod
    def gate_on_matte(batch: Batch, plans: dict[int, MattePlan]) -> None:
        """``ok`` rows whose soft edge needed a matte that could not be separated become ``review``; the
        reason is added to ``mask_flags``."""
        refused = {index: plan for index, plan in plans.items() if plan.refused}
        if not refused:
            return
        n = len(batch["status"])
        column = np.array([str(f or "") for f in batch.get("mask_flags", [""] * n)], dtype=object)
        for index, plan in refused.items():
            column[index] = f"{column[index]}; {plan.refused}" if column[index] else plan.refused
            if batch["status"][index] == OK:
                batch["status"][index] = REVIEW
                batch["error"][index] = f"composite: {plan.refused}; check the edge before publishing"
        batch["mask_flags"] = column

    def gate_on_mask_confidence(self, batch: Batch) -> None:
        """``ok`` rows whose mask we cannot vouch for become ``review``, with the reason."""
        if "mask_confidence" not in batch:
            return
        flags = batch.get("mask_flags")
        for index, status in enumerate(batch["status"]):
            confidence = float(batch["mask_confidence"][index])
            if status != OK or confidence >= self.min_confidence:
                continue
            why = str(flags[index]) if flags is not None and flags[index] else "low confidence"
            batch["status"][index] = REVIEW
            batch["error"][index] = (
                f"segment: mask confidence {confidence:.2f} < {self.min_confidence:.2f} ({why}); "
                "check the mask before publishing"
            )

    def __call__(self, batch: Batch) -> Batch:
        batch = ensure_status(batch)
        n = len(batch["status"])
        indices = ok_indices(batch)
        results = [PLACEHOLDER_IMAGE] * n
        preserved = np.zeros(n, dtype=bool)
        max_diff = np.full(n, -1, dtype=np.int64)
        pixels = np.zeros(n, dtype=np.int64)
        checks: list[Compliance | None] = [None] * n
        rules = np.array([None] * n, dtype=object)
        plans: dict[int, MattePlan] = {}
        with timed(batch, "composite_s", indices):
            done = run_rows(batch, indices, STAGE, lambda rows: [self._one(batch, i) for i in rows])
        for index, (result, diff, count, compliance, plan) in done.items():
            if batch["status"][index] != "ok":
                continue
            if result.shape[:2] != batch["canvas"][index].shape[:2]:
                set_error(batch, index, STAGE, "result size differs from canvas")
                continue
            results[index], preserved[index], max_diff[index], pixels[index] = result, diff == 0, diff, count
            checks[index], rules[index], plans[index] = compliance, plan.rule, plan
            if compliance is not None and not compliance.compliant:
                batch["status"][index] = REJECTED
                batch["error"][index] = f"compliance: {compliance.profile}: " + "; ".join(compliance.issues)
        self.gate_on_mask_confidence(batch)
        self.gate_on_matte(batch, plans)
        if "profile" in batch:
            record_compliance(batch, checks)
        batch["result"] = object_column(results)
        batch["product_preserved"] = preserved
        batch["max_product_diff"] = max_diff
        batch["product_pixels"] = pixels
        batch["preserve_rule"] = rules
        if not self.keep_intermediate:
            for column in INTERMEDIATE:
                batch.pop(column, None)
        return batch


def record_compliance(batch: Batch, checks: list[Compliance | None]) -> None:
    """Compliance columns (None/NaN where an output has no profile or was not checked)."""
    batch["compliant"] = np.asarray([None if c is None else c.compliant for c in checks], dtype=object)
    batch["compliance_issues"] = np.asarray(
        [None if c is None else "; ".join(c.issues) for c in checks], dtype=object
    )
    batch["fill_ratio"] = np.asarray(
        [np.nan if c is None else c.fill_ratio for c in checks], dtype=np.float64
    )
    batch["background_purity"] = np.asarray(
        [np.nan if c is None or c.background_purity is None else c.background_purity for c in checks],
        dtype=np.float64,
    )
    batch["upscaled"] = np.asarray([None if c is None else c.upscaled for c in checks], dtype=object)
