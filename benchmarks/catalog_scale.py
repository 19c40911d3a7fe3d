"""Catalog scale: driver memory and engine overhead from ten thousand to a million items.

For each N (default 10k, 100k, 1M) a synthetic Parquet catalog is written whose images do not exist, so
every output is a cheap error row and what is measured is the engine itself. Each job runs in a fresh
subprocess (its own local Ray), whose own peak RSS is the **driver** peak (``ru_maxrss``).

- ``run``: the first run over the catalog (6 outputs per item: 3 styles × 2 aspects): wall time, driver
  peak RSS, items/s of engine overhead.
- ``resume``: a re-run over a *finished* catalog. A finished manifest is written directly (every
  requested output ``ok`` under the job's config fingerprint, bucketed like a real run's), because
  finishing a million real items takes hours on two cores; the resume then has nothing to do.
- ``one_more``: one new item appended to the finished catalog, then the job again: the cost of a 1-row
  change.

    python -m benchmarks.catalog_scale                    # 10k, 100k, 1M
    python -m benchmarks.catalog_scale --sizes 10000 100000 --skip-run-above 100000

Goals: driver peak RSS at 1M ≤ 1.3 × at 10k; ≥ 1,000 items/s of engine overhead; a resume of a finished
1M catalog in under 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine, write_json
from canvas_ray.config import REPO_ROOT

CONFIG = REPO_ROOT / "configs" / "weightfree.yaml"
OVERRIDES = {
    "output.aspect_ratios": ["1:1", "4:5"],
    "styles.default": ["studio white", "marble countertop", "minimalist pastel"],
}
RSS_GOAL, RATE_GOAL, RESUME_GOAL_S = 1.3, 1000.0, 120.0


def write_catalog(path: Path, items: int, start: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [f"sku-{i:08d}" for i in range(start, start + items)]
    table = pa.table(
        {
            "item_id": ids,
            "image_uri": [f"images/{i}.png" for i in ids],  # absent: a fast, clear error row each
            "title": [f"product {i}" for i in range(start, start + items)],
            "category": ["home"] * items,
        }
    )
    pq.write_table(table, path, row_group_size=50_000)


def finish_manifest(catalog: Path, output: Path) -> int:
    """Write the manifest a finished run would leave: every requested output ok (bucketed)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from canvas_ray.config import load_config
    from canvas_ray.io.catalog import id_bucket
    from canvas_ray.io.manifest import Manifest, bucket_dir
    from canvas_ray.schema import MANIFEST_SCHEMA
    from canvas_ray.stages.base import StageContext
    from canvas_ray.stages.prompt import Prompt
    from canvas_ray.styles import StyleBook

    config = load_config(CONFIG, OVERRIDES)
    fingerprint = config.fingerprint()
    prompt = Prompt(config, StageContext(styles=StyleBook.from_config(config), fingerprint=fingerprint))
    ids = pq.read_table(catalog, columns=["item_id"]).column("item_id").to_pylist()
    per_item = prompt.output_ids({"item_id": np.array(["x"], dtype=object)}, 0)
    manifest = Manifest(str(output))
    buckets = manifest.ensure(len(ids) * len(per_item))
    by_bucket: dict[int, list[str]] = {}
    for item in ids:
        by_bucket.setdefault(id_bucket(item, buckets), []).append(item)
    rows = 0
    for bucket, items in by_bucket.items():
        outputs, owners = [], []
        for item in items:
            for output_id in prompt.output_ids({"item_id": np.array([item], dtype=object)}, 0):
                outputs.append(output_id)
                owners.append(item)
        n = len(outputs)
        columns: dict[str, Any] = {f.name: pa.nulls(n, f.type) for f in MANIFEST_SCHEMA}
        columns.update(
            output_id=pa.array(outputs),
            item_id=pa.array(owners),
            status=pa.array(["ok"] * n),
            error=pa.array([""] * n),
            config_fingerprint=pa.array([fingerprint] * n),
            run_id=pa.array(["finished"] * n),
            finished_at=pa.array(np.full(n, 1.0)),
            product_preserved=pa.array(np.ones(n, bool)),
        )
        table = pa.table(columns, schema=MANIFEST_SCHEMA)
        folder = output / "manifest" / bucket_dir(bucket)
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / "part-finished.parquet", compression="zstd")
        rows += n
    return rows


def _job(catalog: str, output: str) -> dict[str, Any]:
    """Runs in a subprocess: one job, its summary and the driver's own peak RSS."""
    from benchmarks.common import quiet

    quiet()
    import ray

    from canvas_ray.batch import GenerateRequest, run_generate
    from canvas_ray.config import load_config

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    config = load_config(CONFIG, OVERRIDES)
    started = time.perf_counter()
    summary = run_generate(GenerateRequest(config, catalog, output, progress=False))
    wall = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ray.shutdown()
    keys = ("items", "outputs_expected", "outputs", "ok", "errors", "outputs_this_run", "items_processed")
    return {"wall_s": round(wall, 2), "driver_peak_mb": round(peak_mb, 1), **{k: summary[k] for k in keys}}


def run_job(catalog: Path, output: Path) -> dict[str, Any]:
    code = (
        "import json, sys; from benchmarks.catalog_scale import _job; "
        f"print('RESULT ' + json.dumps(_job({str(catalog)!r}, {str(output)!r})))"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"job failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")


def _report(label: str, n: int, job: dict[str, Any], extra: str) -> None:
    print(
        f"  {label:<7} {n:>9,} items: {job['wall_s']:8.1f} s"
        f"  driver {job['driver_peak_mb']:7.1f} MB  {extra}",
        flush=True,
    )


def measure(n: int, folder: Path, with_run: bool) -> dict[str, Any]:
    figures: dict[str, Any] = {"items": n}
    catalog_dir = folder / f"catalog-{n}"
    catalog_dir.mkdir(parents=True)
    write_catalog(catalog_dir / "part-0.parquet", n)
    if with_run:
        run = run_job(catalog_dir, folder / f"run-{n}")
        run["overhead_items_per_s"] = round(n / run["wall_s"], 1)
        figures["run"] = run
        _report("run", n, run, f"{run['overhead_items_per_s']:8.1f} items/s")
    finished = folder / f"finished-{n}"
    figures["manifest_rows"] = finish_manifest(catalog_dir / "part-0.parquet", finished)
    figures["resume"] = resume = run_job(catalog_dir, finished)
    _report("resume", n, resume, f"processed {resume['items_processed']}")
    write_catalog(catalog_dir / "part-1.parquet", 1, start=n)  # a second catalog file with one new item
    figures["one_more"] = one = run_job(catalog_dir, finished)
    _report("+1 item", n, one, f"processed {one['items_processed']}")
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument(
        "--skip-run-above", type=int, default=None, help="measure only resume and +1 above this size"
    )
    parser.add_argument(
        "--json", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "catalog_scale.json"
    )
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"machine": machine(), "sizes": []}
    with tempfile.TemporaryDirectory(prefix="canvas-scale-") as tmp:
        for n in args.sizes:
            print(f"N = {n:,}", flush=True)
            with_run = args.skip_run_above is None or n <= args.skip_run_above
            results["sizes"].append(measure(n, Path(tmp), with_run))
    sizes = results["sizes"]
    small, large = sizes[0], sizes[-1]
    ratios = {
        "resume_driver_rss_ratio": round(
            large["resume"]["driver_peak_mb"] / small["resume"]["driver_peak_mb"], 3
        ),
        "largest_resume_s": large["resume"]["wall_s"],
        "largest_one_more_s": large["one_more"]["wall_s"],
    }
    runs = [s for s in sizes if "run" in s]
    if len(runs) > 1:
        ratios["run_driver_rss_ratio"] = round(
            runs[-1]["run"]["driver_peak_mb"] / runs[0]["run"]["driver_peak_mb"], 3
        )
    if runs:
        ratios["overhead_items_per_s"] = runs[-1]["run"]["overhead_items_per_s"]
    results["ratios"] = ratios
    print("ratios:", json.dumps(ratios))
    print(
        f"goals: driver RSS ratio ≤ {RSS_GOAL}, overhead ≥ {RATE_GOAL:.0f} items/s, "
        f"resume of the largest < {RESUME_GOAL_S:.0f} s"
    )
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
