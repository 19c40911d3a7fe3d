"""A simulated GPU cluster on this machine: does configs/gpu.yaml keep every GPU busy?

``python -m benchmarks.cluster`` builds a Ray cluster of ``--nodes`` x ``--gpus`` logical GPUs
(``ray.cluster_utils.Cluster``: a CPU head for the driver and task steps, GPU worker nodes tagged
``gpu_node``), runs the catalog job with gpu.yaml's resources and pool sizes on a synthetic catalog of
small product photos, and reports, from the stages' own timings:

- when the first output is written (from the job's start, catalog preparation included);
- the share of time the inpaint pool's GPUs are busy in steady state (outputs/s between 10% and 90% of
  the job × the inpaint seconds each output cost, ÷ the pool's GPUs);
- each pool's busy share over the same window (a pool far below 1 is waiting on its input: where the
  pipeline starves);
- outputs per second against the ideal (GPUs ÷ seconds per image);
- the projected wall time and GPU-hours of a 10-million-item catalog at gpu.yaml's outputs per item.

The inpainter is the ``timed`` backend: it holds its GPU slot ``--seconds-per-image`` per image (presets
from published figures, see ``PRESETS``) and then paints a studio backdrop, so every CPU stage downstream
does its real work. Segment (backdrop) and Caption (metadata) are the weight-free backends, doing real
work on ``--size`` px images. Quick: ``--nodes 2 --gpus 4``; the default 8 x 8 = 64 GPUs needs ~64
actor processes (~10 GB of memory) and enough CPU for the task steps to keep up.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

# seconds per image on one GPU (25-30 steps, batch 1, fp16/bf16 + SDPA), from published diffusers
# figures: SD-1.5 inpainting at 512² on an A100 ~1 s; SDXL inpainting at 1024² with 30 steps ~4.5 s
PRESETS = {"sd15-512": 1.0, "sdxl-1024": 4.5}
GB = 2**30
TEN_MILLION = 10_000_000


def _catalog(folder: Path, items: int, size: int) -> Path:
    from canvas_ray.testing import png_bytes, product_image

    images = folder / "images"
    images.mkdir(parents=True)
    lines = []
    for i in range(items):
        path = images / f"p{i}.png"
        path.write_bytes(png_bytes(product_image(size, size, seed=i)))
        lines.append(json.dumps({"item_id": f"item-{i:06d}", "image_uri": str(path), "title": "mug"}))
    catalog = folder / "catalog.jsonl"
    catalog.write_text("\n".join(lines) + "\n")
    return catalog


def _config(seconds: float, block_rows: int | None) -> Any:
    from canvas_ray.config import REPO_ROOT, load_config
    from canvas_ray.testing import gpu_shape_overrides

    overrides = gpu_shape_overrides("timed")
    overrides.update(
        {
            "inpaint.options": {"seconds_per_image": seconds},
            "output.aspect_ratios": ["1:1"],
            "output.variants": 1,
            "output.manifest_part_rows": 16,
            "styles.default": ["studio white", "beach summer"],
        }
    )
    if block_rows:
        overrides["ray.block_rows"] = block_rows
    return load_config(REPO_ROOT / "configs" / "gpu.yaml", overrides)


def _outputs_per_item_of_gpu_yaml() -> int:
    from canvas_ray.config import REPO_ROOT, load_config

    real = load_config(REPO_ROOT / "configs" / "gpu.yaml", {"provenance.c2pa": "unsigned"})
    targets = len(real.output.profiles) or len(real.output.aspect_ratios)
    return len(real.styles.default) * targets * real.output.variants * max(1, real.quality.candidates)


def steady_window(samples: list[tuple[float, int]], total: int) -> tuple[float, float, int]:
    """(start, end, outputs) between the first sample at >= 10% of the outputs and the first at >= 90%."""
    low = next((t, n) for t, n in samples if n >= 0.1 * total)
    high = next((t, n) for t, n in samples if n >= 0.9 * total)
    return low[0], high[0], high[1] - low[1]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow.dataset as pads
    import ray
    from ray.cluster_utils import Cluster

    from canvas_ray.batch import GenerateRequest, run_generate
    from canvas_ray.cluster import plan_pools

    seconds = PRESETS.get(args.seconds_per_image) or float(args.seconds_per_image)
    gpus = args.nodes * args.gpus
    items = args.items or max(24, 6 * gpus)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": args.head_cpus, "num_gpus": 0, "memory": 16 * GB},
    )
    try:
        for _ in range(args.nodes):
            cluster.add_node(
                num_cpus=args.cpus_per_gpu * args.gpus + 4,
                num_gpus=args.gpus,
                resources={"gpu_node": args.gpus},
                memory=args.gpus * 20 * GB,
            )
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        config = _config(seconds, args.block_rows)
        sizing = plan_pools(config)
        with tempfile.TemporaryDirectory(prefix="canvas-cluster-") as tmp:
            catalog = _catalog(Path(tmp) / "catalog", items, args.size)
            output = Path(tmp) / "out"
            started = time.time()
            summary = run_generate(GenerateRequest(config, str(catalog), str(output), progress=False))
            wall = time.time() - started
            table = pads.dataset(output / "manifest", format="parquet", partitioning="hive").to_table()
            # when each output was delivered: its final image's write time (composite writes as it goes)
            written = sorted(p.stat().st_mtime for p in (output / "images").rglob("*") if p.is_file())
            samples = [(t, i + 1) for i, t in enumerate(written)]
        rows = table.to_pylist()
    finally:
        ray.shutdown()
        cluster.shutdown()
    total = len(rows)
    first_output = samples[0][0] - started if samples else None
    start, end, done = steady_window(samples, total)
    rate = done / (end - start) if end > start else float("nan")
    # seconds each stage spent per output: item-level stages (segment, caption) once per item
    item_rows = list({r["item_id"]: r for r in rows}.values())
    per_output = {
        stage: sum(float(r.get(f"{stage}_s") or 0.0) for r in (rows if stage == "inpaint" else item_rows))
        / max(1, total)
        for stage in ("segment", "caption", "inpaint")
    }
    inpaint_gpus = sizing.pools["inpaint"].max * config.inpaint.resources.num_gpus
    actors = {name: size.max for name, size in sizing.pools.items()}
    busy = {name: rate * per_output[name] / max(1, actors[name]) for name in actors}
    ideal = gpus / seconds
    per_item = _outputs_per_item_of_gpu_yaml()
    outputs_10m = TEN_MILLION * per_item
    # at the measured efficiency: every GPU-second of the cluster does (busy share of the inpaint pool)
    # of image work, and the inpaint pool holds inpaint_gpus of the gpus
    efficiency = busy["inpaint"] * inpaint_gpus / gpus
    hours = outputs_10m * seconds / (gpus * efficiency) / 3600 if efficiency > 0 else float("inf")
    return {
        "cluster": f"{args.nodes} nodes x {args.gpus} GPUs = {gpus} logical GPUs, {args.head_cpus}-CPU head",
        "seconds_per_image": seconds,
        "items": items,
        "outputs": total,
        "ok_or_review": summary["ok"] + summary["review"],
        "pools": {n: f"{s.min}..{s.max}" for n, s in sizing.pools.items()},
        "wall_s": round(wall, 1),
        "first_output_s": round(first_output, 1) if first_output is not None else None,
        "steady_outputs_per_s": round(rate, 3),
        "ideal_outputs_per_s": round(ideal, 3),
        "ratio_to_ideal": round(rate / ideal, 3),
        "gpu_busy_inpaint": round(busy["inpaint"], 3),
        "busy_by_pool": {n: round(v, 3) for n, v in busy.items()},
        "stage_s_per_output": {n: round(v, 4) for n, v in per_output.items()},
        "projection_10m_items": {
            "outputs_per_item": per_item,
            "wall_hours": round(hours, 1),
            "gpu_hours": round(hours * gpus, 0),
        },
    }


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import quiet

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--gpus", type=int, default=8, help="logical GPUs per worker node")
    parser.add_argument("--head-cpus", type=int, default=8)
    parser.add_argument("--cpus-per-gpu", type=int, default=3, help="logical CPUs per GPU on worker nodes")
    parser.add_argument(
        "--seconds-per-image", default="sd15-512", help=f"a number or a preset: {', '.join(PRESETS)}"
    )
    parser.add_argument("--items", type=int, default=None, help="catalog items (default 6 per GPU)")
    parser.add_argument("--size", type=int, default=96, help="px of the synthetic product photos")
    parser.add_argument("--block-rows", type=int, default=None)
    args = parser.parse_args(argv)
    quiet()
    result = run(args)
    print(json.dumps(result, indent=2))
    print(
        f"GPU pool busy {result['gpu_busy_inpaint']:.1%} in steady state; "
        f"{result['steady_outputs_per_s']} outputs/s = {result['ratio_to_ideal']:.2f} of the ideal "
        f"{result['ideal_outputs_per_s']}; first output after {result['first_output_s']} s; "
        f"10M items: {result['projection_10m_items']['wall_hours']} h, "
        f"{result['projection_10m_items']['gpu_hours']:.0f} GPU-h"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
