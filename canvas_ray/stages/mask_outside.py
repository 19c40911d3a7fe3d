"""Evidence outside the mask: a salient object that the product mask leaves out.

A salient-object model given two objects (two products, a product and a passer-by) sometimes masks one of
them cleanly and drops the other. The mask then holds one clean object, so nothing *inside* it
(:func:`~canvas_ray.stages.mask_trust.separate_objects`, fragmentation, the colour model seeded from it)
can tell. What can is the model's own soft output: the dropped object usually keeps a faint, compact blob
of low probability (about 1–5%) where the background around it stays near 0. :func:`outside_objects`
looks for such a blob: a region of ``soft >= OUTSIDE_SOFT`` outside a band around the mask, compact and
object-sized (at least ``OUTSIDE_MIN_SHARE`` of the mask's area). A plain or mildly textured backdrop
stays below ``OUTSIDE_SOFT``; busy clutter that the model half-believes in may not, and is then named
too (it is a second object of a kind). Thresholds were tuned on the tune sets of
``benchmarks.segmentation`` (``multi-tune``, ``busy``, ``clean``, ``ho-tune``), never on the sets it
reports on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

OUTSIDE_SOFT = 0.01  # soft-mask probability that marks a faint salient region outside the mask
OUTSIDE_BAND = 0.02  # a band this share of the image's short side around the mask is the mask's own edge
OUTSIDE_MIN_SHARE = 0.1  # a region under this share of the mask's area is a fleck, not an object
OUTSIDE_MIN_FILL = 0.3  # area / bounding-box area: thin streaks and lines along texture are no object
OUTSIDE_WORK_SIDE = 256  # the search runs at this short side (it only needs blobs, not edges)


@dataclass(frozen=True)
class Outside:
    """The largest salient region outside the mask: ``share`` its area over the mask's (0 when none),
    ``level`` its mean soft probability, ``beside`` whether it reaches the band around the mask (a part the
    mask may have cut off, or an object next to it) rather than lying apart (a second object)."""

    share: float
    level: float
    beside: bool = False


def outside_objects(soft: np.ndarray, hard: np.ndarray) -> Outside:
    """The largest compact, object-sized region of ``soft >= OUTSIDE_SOFT`` outside a band around ``hard``
    (see the module docstring); ``Outside(0, 0)`` when there is none or the mask is empty.

    Args:
        soft (np.ndarray): the segmenter's own soft mask (float HxW in [0, 1]), before any refinement.
        hard (np.ndarray): the product mask (bool HxW) whose outside is searched.
    """
    height, width = hard.shape
    pixels = int(hard.sum())
    if pixels == 0:
        return Outside(0.0, 0.0)
    # IS-Net's faint blobs are wide and smooth: a coarse grid finds them as well, cheaply
    scale = min(1.0, OUTSIDE_WORK_SIDE / min(height, width))
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    small_soft = cv2.resize(soft.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    small_hard = cv2.resize(hard.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
    band = max(1, round(OUTSIDE_BAND * min(size)))
    near = cv2.dilate(small_hard.astype(np.uint8), np.ones((2 * band + 1, 2 * band + 1), np.uint8)) > 0
    faint = ((small_soft >= OUTSIDE_SOFT) & ~near).astype(np.uint8)
    candidates = cv2.morphologyEx(faint, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(candidates, connectivity=8)
    mask_area = max(float(small_hard.sum()), 1.0)
    reach = cv2.dilate(near.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    best = Outside(0.0, 0.0)
    for i in range(1, count):
        area = float(stats[i, cv2.CC_STAT_AREA])
        fill = area / float(stats[i, cv2.CC_STAT_WIDTH] * stats[i, cv2.CC_STAT_HEIGHT])
        share = area / mask_area
        if share < OUTSIDE_MIN_SHARE or fill < OUTSIDE_MIN_FILL or share <= best.share:
            continue
        region = labels == i
        best = Outside(share, float(small_soft[region].mean()), bool((region & reach).any()))
    return best
