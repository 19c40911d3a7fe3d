"""Segmentation quality and mask trust per segmenter config, on sets tuned on and sets never tuned on.

    python -m benchmarks.segmentation                       # every set, configs/local.yaml as shipped
    python -m benchmarks.segmentation --sets ho-test sample --limit 24 --configs onnx+refine local -v

Sets. Tuned on: ``busy`` (48 busy scenes from benchmarks/scenes.py), ``clean`` (its products on plain
sweeps), ``ho-tune`` (the tune split of benchmarks/heldout_scenes.py) and ``multi-tune`` (its scenes of two
separate salient objects, tune seeds; the several-objects signal was tuned there). Never tuned on:
``ho-test`` (the held-out generator's test seeds: other products, backgrounds and light), ``ho-clean`` (its
products on plain sweeps, test seeds), ``multi`` (two separate objects, test seeds: every one should be
flagged, so there ``flagged`` is the share caught; the truth is both objects), ``sample``
(examples/catalog, 12 items with masks) and ``photos`` (real photographs that installed packages ship:
scikit-image's coffee, rocket, motorcycle, astronaut, chelsea; no masks ship with them, so only the flag
columns are measured there).

Configs: ``backdrop`` (configs/weightfree.yaml), ``onnx`` (IS-Net alone), ``onnx+refine`` (IS-Net + GrabCut
refinement: configs/local.yaml before issue 20) and ``local`` (configs/local.yaml: IS-Net on the image and its
mirror, fused, their disagreement scored, GrabCut refinement).

Columns per config and set: mean and min IoU (mask ≥ 128 vs truth); ``flagged`` (``mask_confidence`` <
``segment.min_confidence``, or a segment error: the outputs go to review); ``wrong`` (IoU < 0.85);
``wrong-but-ok`` (wrong and not flagged: the goal is 0); ``repaired`` (the mask was grown along a cut part,
see ``mask_flags``); ``false-rej`` (the expansion guard, as configured for a diffusion generator, rejects an
output whose mask has IoU ≥ 0.95: the product, cut out with its own mask, is put on a new background that
cannot have grown it and measured by :class:`~canvas_ray.quality.expansion.ExpansionMeter`;
``(old)`` is the same measured as before issue 20: no control, no hull), seconds per image (wall) and CPU
seconds per image (all threads; comparable when other work shares the machine) of the Segment stage, batch
of one, after the model is loaded. IS-Net runs with ``ceil(num_cpus)`` onnxruntime
threads (``--threads`` overrides).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from canvas_ray.config import CanvasConfig, load_config
from canvas_ray.stages.segment import Segment

REPO = Path(__file__).resolve().parents[1]
WRONG_IOU = 0.85
RIGHT_IOU = 0.95  # a rejection of a mask at least this good is a false rejection
CONFIGS = {
    "backdrop": (REPO / "configs" / "weightfree.yaml", {}),
    "onnx": (REPO / "configs" / "local.yaml", {"segment.refine": "none", "segment.options.tta": "none"}),
    "onnx+refine": (REPO / "configs" / "local.yaml", {"segment.options.tta": "none"}),  # before issue 20
    "local": (REPO / "configs" / "local.yaml", {}),  # as shipped: IS-Net, mirrored view (tta), GrabCut
}
TUNED = ("busy", "clean", "ho-tune", "multi-tune")
HELD_OUT = ("ho-test", "ho-clean", "multi", "sample", "photos")
SETS = (*TUNED, *HELD_OUT)
PHOTOS = ("coffee", "rocket", "stereo_motorcycle", "astronaut", "chelsea")

Item = tuple[str, np.ndarray, np.ndarray | None]  # name, image, truth (None: no mask ships)


@dataclass
class Row:
    config: str
    set: str
    images: int
    mean_iou: float | None
    min_iou: float | None
    flagged: float
    wrong: float | None
    wrong_but_ok: float | None
    repaired: float
    false_rejection: float | None
    false_rejection_old: float | None
    s_per_image: float
    cpu_s_per_image: float
    worst: str


def sample_set() -> Iterator[Item]:
    from PIL import Image

    from canvas_ray.io.images import decode_image

    folder = REPO / "examples" / "catalog"
    for path in sorted((folder / "images").iterdir()):
        truth = np.asarray(Image.open(folder / "masks" / f"{path.stem}.png").convert("L")) >= 128
        yield path.stem, decode_image(path.read_bytes()), truth


def photo_set() -> Iterator[Item]:
    """Real photographs shipped inside scikit-image (no download); no ground-truth masks ship with them."""
    try:
        from skimage import data
    except ImportError:
        print("  (photos: scikit-image is not installed; pip install scikit-image)")
        return
    for name in PHOTOS:
        image = getattr(data, name)()
        image = np.asarray(image[0] if isinstance(image, tuple) else image)  # the motorcycle's left view
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        yield name, np.ascontiguousarray(image[..., :3]), None


def load_set(name: str, limit: int | None) -> list[Item]:
    from benchmarks.heldout_scenes import heldout_clean, heldout_multi, heldout_scenes
    from benchmarks.scenes import busy_scenes, clean_scenes

    n = limit or 24
    items: list[Item]
    if name == "sample":
        items = list(sample_set())
    elif name == "photos":
        items = list(photo_set())
    elif name in ("busy", "clean"):
        scenes = busy_scenes() if name == "busy" else clean_scenes()
        items = [(s.name, s.image, s.mask) for s in scenes]
    elif name in ("multi", "multi-tune"):
        items = [
            (s.name, s.image, s.mask)
            for s in heldout_multi(limit or 12, "tune" if name == "multi-tune" else "test")
        ]
    elif name == "ho-clean":
        items = [(s.name, s.image, s.mask) for s in heldout_clean("test")]
    else:
        split = "tune" if name == "ho-tune" else "test"
        items = [(s.name, s.image, s.mask) for s in heldout_scenes(n, split)]
    return items[:limit] if limit else items


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def new_background(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A generated-looking background the product was not on: a lit wall and floor with soft texture."""
    import cv2

    rng = np.random.default_rng(seed)
    height, width = shape[:2]
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    wall, floor = rng.uniform(60, 235, 3), rng.uniform(40, 220, 3)
    horizon = rng.uniform(0.55, 0.8)
    base = np.where(t < horizon, wall * (0.85 + 0.2 * t), floor * (0.8 + 0.2 * t)) * np.ones((1, width, 1))
    texture = cv2.resize(rng.random((height // 24 + 2, width // 24 + 2)), (width, height))[..., None]
    return np.clip(base * (0.9 + 0.2 * texture), 0, 255).astype(np.uint8)


class GuardProbe:
    """The expansion guard on an output that did not grow: the product (cut out by its own mask) on a new
    background, as a diffusion generator that kept the product would return it."""

    def __init__(self, config: CanvasConfig):
        from canvas_ray.quality.expansion import ExpansionMeter
        from canvas_ray.stages.segment import build_segmenter

        self.meter = ExpansionMeter(config, build_segmenter)
        self.threshold = config.quality.expansion.threshold

    def rejects(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[bool, bool]:
        """(rejected by the guard, rejected by the guard without the control)."""
        hard = mask >= 128
        generated = np.where(hard[..., None], image[..., :3], new_background(image.shape, seed))
        now = self.meter.measure([generated], [mask], [image[..., :3]])[0]
        old = self.meter.measure([generated], [mask])[0]  # without the control and hull
        return now.ratio > self.threshold, old.ratio > self.threshold


def measure(
    config_name: str, config: CanvasConfig, set_name: str, items: list[Item], verbose: bool = False
) -> Row:
    stage = Segment(config)
    probe = GuardProbe(config)
    ious: list[tuple[float, str]] = []
    flagged = wrong = wrong_ok = repaired = false_rej = false_rej_old = right = 0
    seconds = cpu = 0.0
    for number, (name, image, truth) in enumerate(items):
        column = np.empty(1, dtype=object)
        column[0] = image
        start, start_cpu = time.perf_counter(), time.process_time()
        batch = stage({"item_id": np.array([name], dtype=object), "image": column})
        seconds += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        ok = batch["status"][0] == "ok"
        mask = batch["product_mask"][0]
        flags = str(batch["mask_flags"][0])
        low = (not ok) or float(batch["mask_confidence"][0]) < config.segment.min_confidence
        flagged += low
        repaired += "repaired" in flags
        score = None
        rejected = rejected_old = False
        if ok:
            rejected, rejected_old = probe.rejects(image, mask, seed=number)
        if truth is not None:
            score = iou(mask >= 128, truth) if ok and mask.shape == truth.shape else 0.0
            ious.append((score, name))
            wrong += score < WRONG_IOU
            wrong_ok += score < WRONG_IOU and not low
            if score >= RIGHT_IOU:
                right += 1
                false_rej += rejected
                false_rej_old += rejected_old
        if verbose:
            shown = "  n/a" if score is None else f"{score:.3f}"
            print(
                f"  {config_name:12} {name:30} IoU {shown}  conf {float(batch['mask_confidence'][0]):.2f}"
                f"  {'FLAG' if low else 'ok  '}{' REJ' if rejected else ''}{' rej0' if rejected_old else ''}"
                f" {flags or batch['error'][0]}",
                flush=True,
            )
    n = len(items)
    scores = [s for s, _ in ious]
    measured = bool(scores)
    return Row(
        config=config_name,
        set=set_name,
        images=n,
        mean_iou=round(float(np.mean(scores)), 4) if measured else None,
        min_iou=round(float(np.min(scores)), 4) if measured else None,
        flagged=round(flagged / n, 4),
        wrong=round(wrong / n, 4) if measured else None,
        wrong_but_ok=round(wrong_ok / n, 4) if measured else None,
        repaired=round(repaired / n, 4),
        false_rejection=round(false_rej / right, 4) if right else None,
        false_rejection_old=round(false_rej_old / right, 4) if right else None,
        s_per_image=round(seconds / n, 3),
        cpu_s_per_image=round(cpu / n, 3),
        worst=min(ious)[1] if measured else "",
    )


def _cell(value: float | None, width: int, percent: bool = True) -> str:
    if value is None:
        return f"{'n/a':>{width}}"
    return f"{value:>{width}.1%}" if percent else f"{value:>{width}.3f}"


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--configs", nargs="+", default=["local"], choices=list(CONFIGS))
    parser.add_argument("--limit", type=int, help="first N images of each set (generated sets: N scenes)")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default ceil(num_cpus))")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. segment.min_confidence=0.7 (YAML value)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per image")
    args = parser.parse_args(argv)
    import yaml

    extra = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        extra[key] = yaml.safe_load(value)
    sets = {name: load_set(name, args.limit) for name in args.sets}
    rows = []
    header = (
        f"{'config':12} {'set':8} {'n':>3} {'mean IoU':>8} {'min IoU':>8} {'flagged':>8} {'wrong':>6} "
        f"{'wrong-but-ok':>12} {'repaired':>8} {'false-rej':>9} {'(old)':>6} {'s/image':>8} {'cpu s':>6}"
        "  worst"
    )
    for config_name in args.configs:
        path, overrides = CONFIGS[config_name]
        overrides = {**overrides, **extra}
        config = load_config(path, overrides)
        if args.threads and config.segment.backend == "onnx":  # `local` too (it was left at 1 thread)
            config = load_config(path, {**overrides, "segment.options.threads": args.threads})
        for group, names in (("tuned on", TUNED), ("never tuned on", HELD_OUT)):
            chosen = [name for name in names if name in sets and sets[name]]
            if not chosen:
                continue
            print(f"-- {group}")
            print(header)
            for set_name in chosen:
                row = measure(config_name, config, set_name, sets[set_name], args.verbose)
                rows.append(row)
                print(
                    f"{row.config:12} {row.set:8} {row.images:>3} {_cell(row.mean_iou, 8, False)} "
                    f"{_cell(row.min_iou, 8, False)} {_cell(row.flagged, 8)} {_cell(row.wrong, 6)} "
                    f"{_cell(row.wrong_but_ok, 12)} {_cell(row.repaired, 8)} {_cell(row.false_rejection, 9)} "
                    f"{_cell(row.false_rejection_old, 6)} {row.s_per_image:>8.2f} {row.cpu_s_per_image:>6.2f}"
                    f"  {row.worst}",
                    flush=True,
                )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
