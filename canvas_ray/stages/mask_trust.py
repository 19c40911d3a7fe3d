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
  ``backdrop`` segmenter, whose model assumes a plain backdrop) how busy the image border is, and whether the
  mask holds several separate objects (:func:`separate_objects`: which one is the product? not scored when
  the catalog names it with a ``product_box``), and whether the segmenter's own soft output holds a salient
  object that the mask leaves out (:func:`~canvas_ray.stages.mask_outside.outside_objects`, likewise not
  scored with a ``product_box``). ``mask_flags`` names the weak ones in words ('' when all
  are fine).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from canvas_ray.stages.backdrop_mask import grabcut_from_labels
from canvas_ray.stages.mask_outside import outside_objects

ROI_PAD = 24
UNSURE_LOW, UNSURE_HIGH = 0.1, 0.9
CLAIM_LOW = 0.25  # unsure pixels the colour model may claim as product
# IoU between test-time views scored 0 at VIEWS_LOW, 1 at VIEWS_HIGH (tuned on ho-tune: the views of right
# masks agreed at IoU ≥ 0.976; review below 0.92)
VIEWS_LOW, VIEWS_HIGH = 0.85, 0.97


# Several separate objects (a car and a passer-by, two unrelated products): which one is the product?
OBJECT_MIN_PART = 0.02  # components below this share of the mask are flecks, not parts
OBJECT_NEAR = 0.25  # parts closer than this share of the smaller part's size (bbox long side) are one group
OBJECT_TWIN_AREA = 0.5  # parts of at least this share of each other's area ...
OBJECT_TWIN_SHAPE = 0.15  # ... whose log Hu moments differ by at most this, in the same colours, are twins
# (a pair of earrings or shoes): one group
OBJECT_SET_GAP = 0.5  # parts in the same colours (OBJECT_ACCESSORY_PALETTE) this close are one set
OBJECT_MIN_SHARE = 0.1  # a group under this share of the largest group's area is not an object
OBJECT_TWIN_PALETTE = 0.5  # "the same colours" of twins: palette overlap (see palette_overlap) at least this
OBJECT_ACCESSORY = 0.5  # a group under this share of the largest, in its colours, is an accessory of it
OBJECT_ACCESSORY_PALETTE = (
    0.8  # "in its colours": palette overlap at least this (tuned on ho-tune, multi-tune)
)
MAX_PARTS = 8


@dataclass(frozen=True)
class Objects:
    """The mask's separate salient objects: ``count`` groups of parts (parts of one product, such as a pair
    of earrings, a set of jars, a cable and its plug, count once); ``alike`` the least palette overlap
    between the largest group and another counted group (1 when there is only one)."""

    count: int
    alike: float


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
    # seeded GrabCut: the opinion (and so the confidence and a refined mask) never depends on what ran
    # before in this thread
    product = grabcut_from_labels(np.ascontiguousarray(image[y0:y1, x0:x1, :3]), labels, iterations)
    if product is None:
        return hard
    out = np.zeros_like(hard)
    out[y0:y1, x0:x1] = product
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


HUES = 24  # hue sectors of the palette (15 degrees each); low-chroma pixels fall in 3 grey bins by lightness
CHROMA = 8.0  # Lab chroma below which a pixel is grey


def _palette(lab: np.ndarray) -> np.ndarray:
    """Colour bins of some pixels (Nx3, OpenCV's 8-bit Lab): the hue sector for coloured pixels, which a
    side light or shade does not change; dark, mid or light grey for the others."""
    lab = lab.astype(np.float32)
    a, b = lab[:, 1] - 128, lab[:, 2] - 128
    hue = ((np.arctan2(b, a) + np.pi) / (2 * np.pi) * HUES).astype(np.int64) % HUES
    grey = HUES + np.minimum(lab[:, 0] * 3 // 256, 2).astype(np.int64)
    return np.where(np.hypot(a, b) >= CHROMA, hue, grey)


def palette_overlap(lab_a: np.ndarray, lab_b: np.ndarray) -> float:
    """How much two parts share their colours: the larger of the share of A's pixels whose colour bin (or
    a neighbouring hue) holds at least 2% of B's pixels, and the same from B to A. Parts of one product
    share a material (a tie bar and the cufflinks' rims, two earrings); a person and a bottle do not."""

    def share(x: np.ndarray, y: np.ndarray) -> float:
        counts = np.bincount(_palette(y), minlength=HUES + 3)
        common = counts >= 0.02 * len(y)
        hues = common[:HUES]
        common[:HUES] = hues | np.roll(hues, 1) | np.roll(hues, -1)
        return float(common[_palette(x)].mean())

    return max(share(lab_a, lab_b), share(lab_b, lab_a))


def _shape(part: np.ndarray) -> np.ndarray:
    """The first four Hu moments of a part, log-scaled: equal for a part and its mirror image or a scaled,
    turned copy (the other earring, the other shoe)."""
    hu = cv2.HuMoments(cv2.moments(part.astype(np.uint8), binaryImage=True)).ravel()[:4]
    return np.asarray(-np.sign(hu) * np.log10(np.abs(hu) + 1e-30))


def separate_objects(image: np.ndarray, hard: np.ndarray) -> Objects:
    """Count the separate salient objects of a hard mask (see :class:`Objects`).

    Parts (connected components of at least ``OBJECT_MIN_PART`` of the mask) join one group when they are
    close (a gap under ``OBJECT_NEAR`` of the smaller one's size: a cable and its plug, a set of jars),
    twins (half the area or more, the same shape and colours: a pair of earrings or shoes) or a matching
    set (the same colours, a gap under ``OBJECT_SET_GAP``: a ring beside its matching bar). Groups beside the
    largest one, of at least ``OBJECT_MIN_SHARE`` of its area, are other objects unless they are a small
    accessory in the same colours (under ``OBJECT_ACCESSORY`` of its area, palette overlap at least
    ``OBJECT_ACCESSORY_PALETTE``: the tie bar of a cufflink set)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(hard.astype(np.uint8), connectivity=8)
    total = max(int(hard.sum()), 1)
    order = sorted(range(1, count), key=lambda i: -int(stats[i, cv2.CC_STAT_AREA]))[:MAX_PARTS]
    parts = [i for i in order if stats[i, cv2.CC_STAT_AREA] >= OBJECT_MIN_PART * total]
    if len(parts) < 2:
        return Objects(1, 1.0)
    area = {i: int(stats[i, cv2.CC_STAT_AREA]) for i in parts}
    size = {i: max(int(stats[i, cv2.CC_STAT_WIDTH]), int(stats[i, cv2.CC_STAT_HEIGHT])) for i in parts}
    shape = {i: _shape(labels == i) for i in parts}
    lab = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2LAB)
    group = {i: i for i in parts}

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    for number, a in enumerate(parts[:-1]):
        distance = cv2.distanceTransform((labels != a).astype(np.uint8), cv2.DIST_L2, 3)
        for b in parts[number + 1 :]:
            gap = float(distance[labels == b].min()) / min(size[a], size[b])
            if gap > OBJECT_NEAR:
                colours = palette_overlap(lab[labels == a], lab[labels == b])
                twins = (
                    area[b] >= OBJECT_TWIN_AREA * area[a]
                    and float(np.abs(shape[a] - shape[b]).max()) <= OBJECT_TWIN_SHAPE
                    and colours >= OBJECT_TWIN_PALETTE
                )
                matching = gap <= OBJECT_SET_GAP and colours >= OBJECT_ACCESSORY_PALETTE
                if not (twins or matching):
                    continue
            group[root(b)] = root(a)
    members: dict[int, list[int]] = {}
    for i in parts:
        members.setdefault(root(i), []).append(i)
    group_area = {g: sum(area[i] for i in ids) for g, ids in members.items()}
    groups = sorted(members, key=lambda g: -group_area[g])
    largest = groups[0]
    others = [g for g in groups[1:] if group_area[g] >= OBJECT_MIN_SHARE * group_area[largest]]
    if not others:
        return Objects(1, 1.0)
    first = lab[np.isin(labels, members[largest])]
    objects, least = 1, 1.0
    for g in others:
        overlap = palette_overlap(first, lab[np.isin(labels, members[g])])
        least = min(least, overlap)
        accessory = (
            group_area[g] < OBJECT_ACCESSORY * group_area[largest] and overlap >= OBJECT_ACCESSORY_PALETTE
        )
        objects += not accessory
    return Objects(objects, least)


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
    one_object: bool = False,
) -> MaskTrust:
    """Refine (optional) and score one mask.

    Args:
        plain_backdrop_model (bool, default False): the segmenter assumes a plain backdrop (``backdrop``).
        reference (np.ndarray | None, default None): another segmenter's soft mask of the same image; its
            disagreement lowers the confidence.
        views (list[np.ndarray] | None, default None): the segmenter's soft masks of augmented views of
            the image (test-time augmentation: the image and its mirror), ``soft`` being their fusion; the
            least IoU between two of them lowers the confidence.
        one_object (bool, default False): the mask is known to hold one object (the catalog named it
            with a ``product_box``): several separate objects are not scored.
    """
    raw = soft
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
    if not one_object:
        objects = separate_objects(image, hard)
        figures["objects"], figures["objects_alike"] = float(objects.count), objects.alike
        scores["several separate objects ({objects:.0f}): name the product with product_box"] = (
            1.0 if objects.count < 2 else 0.3
        )
        if not plain_backdrop_model:  # the backdrop segmenter's soft mask is hard with a 1 px ramp
            outside = outside_objects(raw, hard)
            figures["outside"], figures["outside_level"] = outside.share, outside.level
            what = (
                "a salient region just outside the mask ({outside:.0%} of its area: a part it left out, "
                "or a second object)"
                if outside.beside
                else "a second object outside the mask ({outside:.0%} of its area)"
            )
            scores[f"{what}: name the product with product_box"] = 1.0 if outside.share == 0 else 0.3
    confidence = min(scores.values())
    weak = [
        text.format(**figures) for text, score in sorted(scores.items(), key=lambda kv: kv[1]) if score < 0.8
    ]
    return MaskTrust(soft.astype(np.float32), round(confidence, 4), "; ".join(weak), figures)
