"""Refinement and confidence of a product mask, from evidence beside the segmenter's own answer.

A colour model (OpenCV GrabCut) is fitted from the soft mask's confident regions: pixels the segmenter
calls background far from the product are background seeds, the rest is left *probable*. Its answer is
the second opinion:

- ``refine_mask`` takes from it only what a salient-object model typically gets wrong: enclosed holes the
  model filled (a ring's inside, the gap under a handle, between chair spindles) and parts the model was
  unsure about (soft values between 0.1 and 0.5). Regions the model is sure of are never removed unless
  enclosed, so a product colour close to the backdrop is not eaten.
- ``assess_mask`` scores ``mask_confidence`` in [0, 1] as the weakest of: agreement with the colour model
  (and with a second segmenter's mask when one is given),
  soft-mask uncertainty, fragmentation, border contact, area plausibility and (for the weight-free
  ``backdrop`` segmenter, whose model assumes a plain backdrop) how busy the image border is. ``mask_flags``
  names the weak ones in words ('' when all are fine).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ROI_PAD = 24
UNSURE_LOW, UNSURE_HIGH = 0.1, 0.9
CLAIM_LOW = 0.25  # unsure pixels the colour model may claim as product
# IoU between test-time views scored 0 at VIEWS_LOW, 1 at VIEWS_HIGH (tuned on ho-tune: the views of right
# masks agreed at IoU ≥ 0.976; review below 0.92)
VIEWS_LOW, VIEWS_HIGH = 0.85, 0.97


@dataclass(frozen=True)
class MaskTrust:
    """The mask to use, its confidence and why it is low; ``figures`` for reports and tuning."""

    soft: np.ndarray  # float32 HxW in [0, 1]
    confidence: float
    flags: str
    figures: dict[str, float]


def colour_opinion(
    image: np.ndarray, soft: np.ndarray, threshold: float = 0.5, iterations: int = 4
) -> np.ndarray:
    """GrabCut's product mask (bool), seeded from ``soft``: sure background far outside, the rest probable."""
    hard = soft >= threshold
    ys, xs = np.nonzero(hard)
    if ys.size == 0:
        return hard
    height, width = hard.shape
    y0, y1 = max(0, ys.min() - ROI_PAD), min(height, ys.max() + ROI_PAD + 1)
    x0, x1 = max(0, xs.min() - ROI_PAD), min(width, xs.max() + ROI_PAD + 1)
    sub_soft, sub_hard = soft[y0:y1, x0:x1], hard[y0:y1, x0:x1]
    labels: np.ndarray = np.full(sub_soft.shape, cv2.GC_PR_BGD, np.uint8)
    far = cv2.distanceTransform((~sub_hard).astype(np.uint8), cv2.DIST_L2, 3) > 6
    labels[far & (sub_soft < 0.05)] = cv2.GC_BGD
    labels[sub_hard] = cv2.GC_PR_FGD
    if (labels == cv2.GC_BGD).sum() < 50 or sub_hard.all():
        return hard
    background_model, product_model = np.zeros((1, 65)), np.zeros((1, 65))
    rgb = np.ascontiguousarray(image[y0:y1, x0:x1, :3])
    cv2.grabCut(rgb, labels, (0, 0, 0, 0), background_model, product_model, iterations, cv2.GC_INIT_WITH_MASK)
    out = np.zeros_like(hard)
    out[y0:y1, x0:x1] = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    return out


def enclosed(background: np.ndarray) -> np.ndarray:
    """Pixels of ``background`` not connected to the image border (holes of the complementary mask)."""
    count, labels = cv2.connectedComponents(background.astype(np.uint8), connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return background & ~np.isin(labels, edge)


def refine_mask(soft: np.ndarray, opinion: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Holes the colour model found inside the product, plus unsure parts it claims; soft values kept."""
    hard = soft >= threshold
    holes = hard & enclosed(~opinion)
    claimed = opinion & ~hard & (soft > CLAIM_LOW)
    refined = soft.copy()
    refined[holes] = np.minimum(refined[holes], 0.5 * UNSURE_LOW)
    refined[claimed] = np.maximum(refined[claimed], 0.5 + 0.5 * threshold)
    return refined


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def border_busyness(image: np.ndarray, width_share: float = 0.04) -> float:
    """Mean local colour variation along the image border (0 plain … ~1 very busy), measured at 128 px on
    the short side so that sensor noise and JPEG grain average out while wood grain and tiles remain."""
    height, width = image.shape[:2]
    scale = min(1.0, 128 / min(height, width))
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    rgb = cv2.resize(np.ascontiguousarray(image[..., :3]), size, interpolation=cv2.INTER_AREA).astype(
        np.float32
    )
    height, width = rgb.shape[:2]
    band = max(2, int(round(min(height, width) * width_share)))
    grad = np.abs(np.diff(rgb, axis=1)).sum(-1)
    strips = [grad[:band], grad[-band:], grad[:, :band], grad[:, -band:]]
    return float(np.mean([s.mean() for s in strips]) / 30.0)


def assess_mask(
    image: np.ndarray,
    soft: np.ndarray,
    threshold: float = 0.5,
    refine: bool = False,
    plain_backdrop_model: bool = False,
    reference: np.ndarray | None = None,
    views: list[np.ndarray] | None = None,
) -> MaskTrust:
    """Refine (optional) and score one mask.

    Args:
        plain_backdrop_model (bool, default False): the segmenter assumes a plain backdrop (``backdrop``).
        reference (np.ndarray | None, default None): another segmenter's soft mask of the same image; its
            disagreement lowers the confidence.
        views (list[np.ndarray] | None, default None): the segmenter's soft masks of augmented views of
            the image (test-time augmentation: the image and its mirror), ``soft`` being their fusion; the
            least IoU between two of them lowers the confidence.
    """
    opinion = colour_opinion(image, soft, threshold)
    if refine:
        soft = refine_mask(soft, opinion, threshold)
    hard = soft >= threshold
    area = float(hard.mean())
    pixels = max(int(hard.sum()), 1)
    unsure = float(((soft > UNSURE_LOW) & (soft < UNSURE_HIGH)).sum() / pixels)
    agreement = _iou(hard, opinion)
    count, components, stats, _ = cv2.connectedComponentsWithStats(hard.astype(np.uint8), connectivity=8)
    sizes = np.sort(stats[1:, cv2.CC_STAT_AREA])[::-1]
    flecks = int((sizes < 0.01 * pixels).sum())
    # pieces of the mask that the second opinion does not back (a floor tile, a patch of wallpaper)
    support = opinion if reference is None else reference >= threshold
    backed = np.bincount(components.ravel(), weights=support.ravel(), minlength=count)
    unbacked = [
        int(stats[i, cv2.CC_STAT_AREA])
        for i in range(1, count)
        if stats[i, cv2.CC_STAT_AREA] >= 16 and backed[i] < 0.5 * stats[i, cv2.CC_STAT_AREA]
    ]
    border = np.concatenate([hard[0], hard[-1], hard[:, 0], hard[:, -1]]).mean()
    figures = {
        "agreement": agreement,
        "unsure": unsure,
        "flecks": float(flecks),
        "unbacked": float(len(unbacked)),
        "unbacked_share": float(sum(unbacked) / pixels),
        "border": float(border),
        "area": area,
    }
    scores = {
        "the colour model disagrees (IoU {agreement:.2f})": float(np.clip((agreement - 0.8) / 0.15, 0, 1)),
        "unsure edges ({unsure:.0%} of the mask)": float(np.clip(1 - (unsure - 0.15) / 0.3, 0, 1)),
        "fragmented ({flecks:.0f} loose pieces)": float(np.clip(1 - (flecks - 4) / 10, 0, 1)),
        "{unbacked:.0f} pieces the second opinion does not back ({unbacked_share:.1%} of the mask)": float(
            np.clip(1 - figures["unbacked_share"] / 0.005, 0, 1) if unbacked else 1.0
        ),
        "touches the image border ({border:.0%})": float(np.clip(1 - (border - 0.05) / 0.25, 0, 1)),
        "implausible area ({area:.1%})": 1.0 if 0.003 <= area <= 0.9 else 0.3,
    }
    if plain_backdrop_model:
        busy = border_busyness(image)
        figures["busy"] = busy
        scores["busy background for the backdrop segmenter ({busy:.2f})"] = float(
            np.clip(1 - (busy - 0.06) / 0.05, 0, 1)  # measured: studio 0.03–0.045, wood 0.13+, tiles 0.28+
        )
    if reference is not None:
        figures["reference"] = _iou(hard, reference >= threshold)
        scores["another segmenter disagrees (IoU {reference:.2f})"] = float(
            np.clip((figures["reference"] - 0.8) / 0.15, 0, 1)
        )
    if views is not None and len(views) > 1:
        hards = [view >= threshold for view in views]
        figures["views"] = min(_iou(a, b) for i, a in enumerate(hards) for b in hards[i + 1 :])
        scores["the mirrored view disagrees (IoU {views:.2f})"] = float(
            np.clip((figures["views"] - VIEWS_LOW) / (VIEWS_HIGH - VIEWS_LOW), 0, 1)
        )
    confidence = min(scores.values())
    weak = [
        text.format(**figures) for text, score in sorted(scores.items(), key=lambda kv: kv[1]) if score < 0.8
    ]
    return MaskTrust(soft.astype(np.float32), round(confidence, 4), "; ".join(weak), figures)
