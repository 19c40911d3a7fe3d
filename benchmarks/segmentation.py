"""Segmentation quality and mask trust per segmenter config, on three sets with ground truth.

    python -m benchmarks.segmentation                       # all sets, all configs
    python -m benchmarks.segmentation --sets busy --limit 12 --configs onnx+refine

Sets: ``busy`` (48 busy-scene photos from benchmarks/scenes.py: thin parts, holes, several parts, colours
close to the background, cast shadows on wood, tiles, foliage, fabric, marble and sweeps), ``clean`` (the
same products on plain studio sweeps) and ``sample`` (examples/catalog, 12 items). Configs: ``backdrop``
(configs/weightfree.yaml), ``onnx`` (IS-Net, no refinement) and ``onnx+refine`` (configs/local.yaml: IS-Net
+ GrabCut refinement). Per config and set it prints mean and min IoU (mask ≥ 128 vs truth), the share
flagged (``mask_confidence`` < ``segment.min_confidence``, or a segment error), the share wrong-but-ok
(IoU < 0.85 and not flagged: the goal is 0) and seconds per image (the Segment stage, batch of one, after
the model is loaded). IS-Net runs with ``ceil(num_cpus)`` onnxruntime threads (``--threads`` overrides).
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
CONFIGS = {
    "backdrop": (REPO / "configs" / "weightfree.yaml", {}),
    "onnx": (REPO / "configs" / "local.yaml", {"segment.refine": "none"}),
    "onnx+refine": (REPO / "configs" / "local.yaml", {}),
}


@dataclass
class Row:
    config: str
    set: str
    images: int
    mean_iou: float
    min_iou: float
    flagged: float
    wrong: float
    wrong_but_ok: float
    s_per_image: float
    worst: str


def sample_set() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    from PIL import Image

    from canvas_ray.io.images import decode_image

    folder = REPO / "examples" / "catalog"
    for path in sorted((folder / "images").iterdir()):
        truth = np.asarray(Image.open(folder / "masks" / f"{path.stem}.png").convert("L")) >= 128
        yield path.stem, decode_image(path.read_bytes()), truth


def load_set(name: str, limit: int | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from benchmarks.scenes import busy_scenes, clean_scenes

    if name == "sample":
        items = list(sample_set())
    else:
        scenes = busy_scenes() if name == "busy" else clean_scenes()
        items = [(s.name, s.image, s.mask) for s in scenes]
    return items[:limit] if limit else items


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def measure(config_name: str, config: CanvasConfig, set_name: str, items, verbose: bool = False) -> Row:
    stage = Segment(config)
    ious, flagged, wrong, wrong_ok, seconds = [], 0, 0, 0, 0.0
    for name, image, truth in items:
        column = np.empty(1, dtype=object)
        column[0] = image
        start = time.perf_counter()
        batch = stage({"item_id": np.array([name], dtype=object), "image": column})
        seconds += time.perf_counter() - start
        ok = batch["status"][0] == "ok"
        mask = batch["product_mask"][0]
        score = iou(mask >= 128, truth) if ok and mask.shape == truth.shape else 0.0
        low = (not ok) or float(batch["mask_confidence"][0]) < config.segment.min_confidence
        ious.append((score, name))
        flagged += low
        wrong += score < WRONG_IOU
        wrong_ok += score < WRONG_IOU and not low
        if verbose:
            print(
                f"  {config_name:12} {name:28} IoU {score:.3f}  conf {float(batch['mask_confidence'][0]):.2f}"
                f"  {'FLAG' if low else 'ok  '} {batch['mask_flags'][0] or batch['error'][0]}"
            )
    n = len(items)
    scores = [s for s, _ in ious]
    return Row(
        config=config_name,
        set=set_name,
        images=n,
        mean_iou=round(float(np.mean(scores)), 4),
        min_iou=round(float(np.min(scores)), 4),
        flagged=round(flagged / n, 4),
        wrong=round(wrong / n, 4),
        wrong_but_ok=round(wrong_ok / n, 4),
        s_per_image=round(seconds / n, 3),
        worst=min(ious)[1],
    )


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sets", nargs="+", default=["busy", "clean", "sample"], choices=["busy", "clean", "sample"]
    )
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--limit", type=int, help="first N images of each set")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default ceil(num_cpus))")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per image")
    args = parser.parse_args(argv)
    sets = {name: load_set(name, args.limit) for name in args.sets}
    rows = []
    header = (
        f"{'config':12} {'set':6} {'n':>3} {'mean IoU':>8} {'min IoU':>8} {'flagged':>8} "
        f"{'wrong':>6} {'wrong-but-ok':>12} {'s/image':>8}  worst"
    )
    print(header)
    for config_name in args.configs:
        path, overrides = CONFIGS[config_name]
        if args.threads and config_name.startswith("onnx"):
            overrides = {**overrides, "segment.options.threads": args.threads}
        config = load_config(path, overrides)
        for set_name, items in sets.items():
            row = measure(config_name, config, set_name, items, args.verbose)
            rows.append(row)
            print(
                f"{row.config:12} {row.set:6} {row.images:>3} {row.mean_iou:>8.3f} {row.min_iou:>8.3f} "
                f"{row.flagged:>8.1%} {row.wrong:>6.1%} {row.wrong_but_ok:>12.1%} {row.s_per_image:>8.2f}  "
                f"{row.worst}",
                flush=True,
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
