"""The Ray Data job against a plain single-process loop over the same stage classes, in one run.

(a) ``canvas_ray.batch.run_generate`` (the catalog job: actor pools, streaming) and (b) a loop that feeds
``LocalPipeline.run_batch`` batches of the job's block size and writes with the same ``WriteOutputs``,
then compacts the manifest and writes the review pages like the job does. Both read the same synthetic
catalog (the sample products under new ids) and produce the same outputs.

    python -m benchmarks.engine                          # tiny neural models, 32 items
    python -m benchmarks.engine --config configs/weightfree.yaml --items 24
    python -m benchmarks.engine --actors 2               # caption + inpaint pools of 2 actors
    python -m benchmarks.engine --profile                # + Ray Data stats() and the loop's cProfile
    python -m benchmarks.engine --sweep                  # sizes x actors, plots into docs/img/

Prints items/s and outputs/s of both, the ratio ray/loop with and without ``ray.init``, and per-stage busy
time (the manifest's ``*_s`` columns summed; item-level stages counted once per item) with its share of
the wall time (shares above 100 % mean the stage ran in parallel).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

from benchmarks.common import (
    IMAGES,
    default_json,
    ensure_tiny_models,
    machine,
    quiet,
    synthetic_catalog,
    write_json,
)
from canvas_ray.config import REPO_ROOT, CanvasConfig, load_config

ITEM_STAGES = ("fetch_s", "decode_s", "segment_s", "caption_s")  # copied onto every output of an item
OUTPUT_STAGES = ("inpaint_s", "quality_s", "composite_s", "write_s")
POOLS = ("caption", "inpaint")


def configure(path: str, actors: int | None) -> CanvasConfig:
    """The config with ``actors`` actors in the caption and inpaint pools.

    Each actor's CPU reservation shrinks by the same factor, so the pools reserve what the config gives
    them in total (a 2-core machine cannot reserve more; the job refuses plans that starve task stages).
    """
    config = load_config(path)
    if actors is None:
        return config
    overrides: dict[str, Any] = {}
    for name in POOLS:
        res = getattr(config, name).resources
        overrides[f"{name}.resources"] = {
            **res.model_dump(),
            "concurrency": actors,
            "max_concurrency": None,
            "num_cpus": round(res.num_cpus * res.concurrency / actors, 4),
        }
    return load_config(path, overrides)


def stage_busy(manifest: pa.Table) -> dict[str, float]:
    """Seconds each stage was busy: item-level columns once per item, output-level columns per output."""
    rows = manifest.to_pylist()
    busy: dict[str, float] = {}
    first_row: dict[str, dict[str, Any]] = {}
    for row in rows:
        first_row.setdefault(row["item_id"], row)
    for column in ITEM_STAGES:
        busy[column] = sum(float(r[column] or 0.0) for r in first_row.values())
    for column in OUTPUT_STAGES:
        busy[column] = sum(float(r[column] or 0.0) for r in rows)
    return busy


def cpu_seconds(descendants: bool = True) -> float:
    """CPU time (user + system, all threads) of this process and every live descendant (Ray's included).

    Taken before and after a run, the difference is the CPU the run used on this machine (a descendant that
    exited in between is missed; Ray keeps its workers alive, so little is).
    """
    import psutil

    total = 0.0
    root = psutil.Process(os.getpid())
    processes = [root]
    if descendants:
        with contextlib.suppress(psutil.Error):
            processes += root.children(recursive=True)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def _figures(name: str, items: int, manifest: pa.Table, wall: float, **extra: Any) -> dict[str, Any]:
    statuses = manifest.column("status").to_pylist()
    busy = stage_busy(manifest)
    return {
        "driver": name,
        "items": items,
        "outputs": len(statuses),
        "ok": statuses.count("ok"),
        "wall_s": round(wall, 3),
        "items_per_s": round(items / wall, 4),
        "outputs_per_s": round(len(statuses) / wall, 4),
        "stage_busy_s": {k.removesuffix("_s"): round(v, 3) for k, v in busy.items()},
        "stage_share_of_wall": {k.removesuffix("_s"): round(v / wall, 4) for k, v in busy.items()},
        **extra,
    }


def run_loop(config: CanvasConfig, catalog: Path, output: Path, profile: bool = False) -> dict[str, Any]:
    """One process, no Ray: load the stages, then batch by batch through them and the writer."""
    from canvas_ray.batch import PLAN_COLUMNS
    from canvas_ray.io.catalog import read_catalog
    from canvas_ray.io.manifest import Manifest
    from canvas_ray.io.outputs import WriteOutputs
    from canvas_ray.pipeline import LocalPipeline, items_batch
    from canvas_ray.report import write_index

    profiler = cProfile.Profile() if profile else None
    cpu_before = cpu_seconds(descendants=False)  # an idle Ray from an earlier sweep point is not the loop's
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    pipeline = LocalPipeline(config)
    load_s = time.perf_counter() - started
    table = read_catalog(str(catalog)).table
    table = table.select([c for c in PLAN_COLUMNS if c in table.column_names])
    writer = WriteOutputs(
        str(output),
        "loop-" + uuid.uuid4().hex[:6],
        pipeline.prompt.fingerprint,
        config.output.format,
        config.output.quality,
        config.output.shard_width,
    )
    rows = table.to_pylist()
    step = config.ray.block_rows  # the job's block size
    for start in range(0, len(rows), step):
        out = pipeline.run_batch(items_batch(rows[start : start + step]))
        if out:
            writer(out)
    store = Manifest(str(output))
    store.compact("loop")
    write_index(store)
    manifest = store.read()
    wall = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
    cpu = cpu_seconds(descendants=False) - cpu_before
    figures = _figures(
        "loop",
        len(rows),
        manifest,
        wall,
        model_load_s=round(load_s, 3),
        cpu_s=round(cpu, 2),
        cores_busy=round(cpu / wall, 3),
    )
    if profiler is not None:
        figures["profile_top"] = _profile_text(profiler)
    return figures


def _profile_text(profiler: cProfile.Profile, top: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def init_ray(actor_threads: int | None = None) -> float:
    """Start a local Ray (all cores, no dashboard); seconds it took.

    ``actor_threads``: OMP_NUM_THREADS for Ray's workers (torch's intra-op threads). Ray sets it to the
    worker's whole CPUs, at least 1, unless the driver's environment sets it (this driver's torch is
    already initialised, so the loop baseline keeps its own thread count).
    """
    import ray

    if actor_threads:
        os.environ["OMP_NUM_THREADS"] = str(actor_threads)
    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    return time.perf_counter() - started


def run_ray(config: CanvasConfig, catalog: Path, output: Path, profile: bool = False) -> dict[str, Any]:
    """The catalog job on the already started Ray; with ``profile`` also Ray Data's per-operator stats."""
    import canvas_ray.batch as batch_module
    from canvas_ray.batch import GenerateRequest, run_generate
    from canvas_ray.io.manifest import read_manifest

    plans: list[Any] = []
    build_plan = batch_module.build_plan

    def capture(*args: Any, **kwargs: Any) -> Any:
        plans.append(build_plan(*args, **kwargs))
        return plans[-1]

    request = GenerateRequest(config=config, catalog=str(catalog), output=str(output), progress=False)
    patch = contextlib.nullcontext() if not profile else _patched(batch_module, "build_plan", capture)
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    with patch, contextlib.redirect_stdout(io.StringIO()):
        summary = run_generate(request)
    wall = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_before
    figures = _figures(
        "ray",
        int(summary["items"]),
        read_manifest(str(output)),
        wall,
        cpu_s=round(cpu, 2),
        cores_busy=round(cpu / wall, 3),
    )
    if profile and plans:
        figures["ray_data_stats"] = plans[-1].stats()
    return figures


@contextlib.contextmanager
def _patched(module: Any, name: str, value: Any) -> Any:
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def compare(
    config: CanvasConfig,
    items: int,
    workdir: Path,
    ray_init_s: float | None,
    profile: bool = False,
    loop: dict[str, Any] | None = None,
    actor_threads: int | None = None,
) -> tuple[dict[str, Any], float]:
    """Loop, then (Ray started if needed) the job, on one fresh catalog of ``items`` items.

    ``loop``: figures of an earlier loop run on a catalog of this size (the loop has no actors, so an
    actor sweep measures it once).
    """
    case = workdir / f"n{items}-{uuid.uuid4().hex[:6]}"
    catalog = synthetic_catalog(case / "catalog", items)
    if loop is None:
        loop = run_loop(config, catalog, case / "loop-out", profile)
    if ray_init_s is None:
        ray_init_s = init_ray(actor_threads)
    ray_figures = run_ray(config, catalog, case / "ray-out", profile)
    result = {
        "items": items,
        "actors": {name: getattr(config, name).resources.concurrency for name in POOLS},
        "loop": loop,
        "ray": ray_figures,
        "ray_init_s": round(ray_init_s, 3),
        "ratio_ray_over_loop": round(loop["wall_s"] / ray_figures["wall_s"], 4),
        "ratio_ray_over_loop_incl_init": round(loop["wall_s"] / (ray_figures["wall_s"] + ray_init_s), 4),
        "same_outputs": loop["outputs"] == ray_figures["outputs"] and loop["ok"] == ray_figures["ok"],
    }
    return result, ray_init_s


def print_result(result: dict[str, Any], ray_init_s: float) -> None:
    loop, ray_ = result["loop"], result["ray"]
    print("-" * 78)
    print(f"{result['items']} items, {ray_['outputs']} outputs; pools {result['actors']}")
    print(f"{'':8}{'wall s':>9}{'items/s':>10}{'outputs/s':>11}{'ok':>6}")
    for name, fig in (("loop", loop), ("ray", ray_)):
        print(
            f"{name:8}{fig['wall_s']:9.2f}{fig['items_per_s']:10.3f}{fig['outputs_per_s']:11.3f}{fig['ok']:6d}"
        )
    print(
        f"ray.init {ray_init_s:.2f} s (not in the ray wall time); "
        f"loop model load {loop['model_load_s']:.2f} s (in the loop wall time)"
    )
    print(
        f"ratio ray/loop (throughput): {result['ratio_ray_over_loop']:.2f} excluding ray.init, "
        f"{result['ratio_ray_over_loop_incl_init']:.2f} including it   (goal >= 1.0)"
    )
    print(
        f"CPU used (all processes): loop {loop['cpu_s']:.1f} s = {loop['cores_busy']:.2f} cores busy on "
        f"average; ray {ray_['cpu_s']:.1f} s = {ray_['cores_busy']:.2f} cores of {os.cpu_count()}"
    )
    if not result["same_outputs"]:
        print("WARNING: the two drivers produced different output counts")
    print(f"{'stage busy s (share of wall)':30}{'loop':>18}{'ray':>18}")
    for stage in loop["stage_busy_s"]:
        cells = [
            f"{fig['stage_busy_s'][stage]:9.2f} ({100 * fig['stage_share_of_wall'][stage]:4.0f}%)"
            for fig in (loop, ray_)
        ]
        print(f"{stage:30}{cells[0]:>18}{cells[1]:>18}")


def plot_sweep(by_size: list[dict[str, Any]], by_actors: list[dict[str, Any]], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    if by_size:
        fig, ax = plt.subplots(figsize=(6, 4))
        sizes = [r["items"] for r in by_size]
        ax.plot(sizes, [r["ray"]["items_per_s"] for r in by_size], "o-", label="Ray Data job")
        ax.plot(sizes, [r["loop"]["items_per_s"] for r in by_size], "s--", label="single-process loop")
        ax.set(xlabel="catalog items", ylabel="items / s", title="Throughput vs catalog size")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths.append(folder / "engine_throughput_vs_size.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    if by_actors:
        fig, ax = plt.subplots(figsize=(6, 4))
        actors = [r["actors"]["inpaint"] for r in by_actors]
        ax.plot(actors, [r["ray"]["items_per_s"] for r in by_actors], "o-", label="Ray Data job")
        loop_rate = sum(r["loop"]["items_per_s"] for r in by_actors) / len(by_actors)
        ax.axhline(loop_rate, linestyle="--", color="gray", label="single-process loop (mean)")
        ax.set(
            xlabel="actors per model pool (caption, inpaint)",
            ylabel="items / s",
            title=f"Throughput vs actors ({by_actors[0]['items']} items, {os.cpu_count()} CPUs)",
        )
        ax.set_xticks(actors)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths.append(folder / "engine_throughput_vs_actors.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    for path in paths:
        print(f"plot written to {path}")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "tiny.yaml"))
    parser.add_argument("--items", type=int, default=32, help="catalog size (default 32)")
    parser.add_argument("--actors", type=int, default=None, help="actors in the caption and inpaint pools")
    parser.add_argument(
        "--actor-threads", type=int, default=None, help="torch threads per Ray worker (OMP_NUM_THREADS)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="print Ray Data stats() and the loop's cProfile"
    )
    parser.add_argument("--sweep", action="store_true", help="several sizes and actor counts, with plots")
    parser.add_argument("--sizes", default="8,16,32", help="catalog sizes for --sweep")
    parser.add_argument("--actor-counts", default="1,2,3", help="actor counts for --sweep (at --items)")
    parser.add_argument("--plots", default=str(IMAGES), help="folder for the --sweep plots")
    parser.add_argument("--json", default=None, help="figures file (default benchmarks/results/engine.json)")
    parser.add_argument("--workdir", default=None, help="where catalogs and outputs go (default: a temp dir)")
    args = parser.parse_args(argv)
    quiet()

    base = load_config(args.config)
    ensure_tiny_models(base)
    record: dict[str, Any] = {
        "benchmark": "engine",
        "config": args.config,
        "actor_threads": args.actor_threads,
        "machine": machine(),
    }
    print(
        f"engine benchmark: config {args.config}, {os.cpu_count()} CPUs, "
        f"load average {record['machine']['load_avg_1m']}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-engine-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        ray_init_s: float | None = None
        if not args.sweep:
            result, ray_init_s = compare(
                configure(args.config, args.actors),
                args.items,
                workdir,
                None,
                args.profile,
                actor_threads=args.actor_threads,
            )
            print_result(result, ray_init_s)
            if args.profile:
                print("=" * 30, "Ray Data stats()", "=" * 30)
                print(result["ray"].get("ray_data_stats", "(none)"))
                print("=" * 30, "loop cProfile (top by own time, then cumulative)", "=" * 30)
                print(result["loop"].get("profile_top", "(none)"))
            record.update(result)
            record["goal_ray_over_loop_ge_1"] = result["ratio_ray_over_loop"] >= 1.0
        else:
            by_size, by_actors = [], []
            for size in [int(s) for s in args.sizes.split(",") if s]:
                result, ray_init_s = compare(
                    configure(args.config, args.actors),
                    size,
                    workdir,
                    ray_init_s,
                    actor_threads=args.actor_threads,
                )
                print_result(result, ray_init_s)
                by_size.append(result)
            loops = {r["items"]: r["loop"] for r in by_size}
            for count in [int(s) for s in args.actor_counts.split(",") if s]:
                result, ray_init_s = compare(
                    configure(args.config, count), args.items, workdir, ray_init_s, loop=loops.get(args.items)
                )
                loops[args.items] = result["loop"]
                print_result(result, ray_init_s)
                by_actors.append(result)
            record.update(by_size=by_size, by_actors=by_actors, ray_init_s=round(ray_init_s or 0.0, 3))
            record["plots"] = [
                str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p)
                for p in plot_sweep(by_size, by_actors, Path(args.plots))
            ]
        import ray

        ray.shutdown()
    write_json(args.json or default_json("engine" if not args.sweep else "engine_sweep"), record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
