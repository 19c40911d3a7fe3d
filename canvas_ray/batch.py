"""The catalog job as Ray Data plans; the driver holds no per-row state.

```
catalog files ─read tasks─▶ rows ─group by id bucket─▶ validate ids + resume check (vs the bucket's
  manifest file) ─▶ [materialised: counts for the bar] ─▶ fetch+decode (tasks) ─▶ Segment (actor pool)
  ─▶ Caption (actor pool) ─▶ thumbnails+Prompt (tasks) ─▶ Inpaint (actor pool) ─▶ Composite+write
  images (tasks) ─▶ manifest parts (tasks) ─▶ driver: progress ─▶ compaction per bucket (tasks) + review
  pages ─▶ summary.json + index.html (streamed over the manifest)
```
The stage order and how each stage runs (actor pool or task, resources from config) come from the one
pipeline spec in :mod:`canvas_ray.spec`.

**Resume without driver state.** Catalog rows are grouped by the hash bucket of their ``item_id`` — the
same bucket that partitions the manifest — so one hash shuffle of the catalog (metadata only) brings each
item next to the manifest rows it needs: duplicate ids are found there, each row's requested outputs are
expanded there, and outputs already done (``ok``/``review`` under the same config fingerprint) are looked
up in that bucket's file alone. Items with nothing left are dropped; the others carry ``done_outputs`` so
Prompt generates only what is missing. Ray Data's job-level ``CheckpointConfig`` does not fit: it skips
input rows by one id column, but one catalog row expands into many outputs, and a changed request or
config must redo exactly the outputs it changes.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
import warnings
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from canvas_ray.batch_catalog import (  # noqa: F401 - re-exported: the catalog job's public names
    expected_outputs,
    plan_block_rows,
    prepare_catalog,
    resume_group,
)
from canvas_ray.batch_plan import (  # noqa: F401 - re-exported
    PLAN_COLUMNS,
    POOLS,
    TASK_MEMORY_MB,
    GenerateRequest,
    PoolStage,
    RunContext,
    build_plan,
    check_resources,
    expanded_block_rows,
    manifest_part_rows,
)
from canvas_ray.cluster import attach, quiet_ray_data
from canvas_ray.io.catalog import (
    CATALOG_SCHEMA,
)
from canvas_ray.io.manifest import Manifest, summarise
from canvas_ray.io.outputs import join_uri, write_bytes
from canvas_ray.logs import get_logger
from canvas_ray.progress import ProgressFile, ProgressLine
from canvas_ray.styles import StyleBook
from canvas_ray.watch import explain, is_stall, no_progress_timeout

log = get_logger(__name__)

# ray.shuffle → Ray Data's ShuffleStrategy for the catalog's group-by-bucket and the manifest compaction
SHUFFLES = {"sort": "sort_shuffle_pull_based", "push": "sort_shuffle_push_based", "hash": "shuffle_v2"}


# ---- the driver ----


def run_generate(request: GenerateRequest) -> dict[str, Any]:
    """Run the job end to end and return the summary (also written to OUTPUT/summary.json)."""
    import ray.data
    from ray.data.context import ShuffleStrategy

    started = time.time()
    config = request.config
    styles = StyleBook.from_config(config)
    fingerprint = config.fingerprint()
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    options = request.storage_options
    if request.overwrite:
        _remove_outputs(request.output, options)
    attach(request.address, config.ray.address, timeout=config.ray.attach_timeout_s)
    quiet_ray_data(os.environ.get("CANVAS_RAY_RAY_LOGS", "0") == "1")
    sizing = check_resources(config)  # before any work: pools that cannot fit fail here, saying why
    # Ray Data's advice that a 1-block input cannot use every task slot is noise on small catalogs
    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks", category=UserWarning)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = False
    context.shuffle_strategy = ShuffleStrategy(SHUFFLES[config.ray.shuffle])
    terminal = request.progress and sys.stderr.isatty()
    context.enable_progress_bars = terminal
    context.enable_operator_progress_bars = terminal
    run = RunContext(config, styles, fingerprint, run_id, request.output, dict(options))
    manifest = Manifest(request.output, options)
    review = partial(_bucket_pages, request.output, dict(options))
    if manifest.pending_files():  # rows of a run that died before compaction
        manifest.compact(run_id + "-recovered", review)
    phase = time.time()
    todo, counts = prepare_catalog(request, run, manifest)
    timings = {"prepare_s": time.time() - phase}
    remaining = counts["outputs_expected"] - counts["outputs_done"]
    todo_items = counts["todo"]
    log.info(
        "catalog %s: %d items (%d already done, %d to process → %d outputs); config %s; output %s",
        request.catalog,
        counts["items"],
        counts["items"] - todo_items,
        todo_items,
        remaining,
        fingerprint,
        request.output,
    )
    processed = {"ok": 0, "review": 0, "rejected": 0, "error": 0}
    phase = time.time()
    status_file = ProgressFile(request.output, options, run_id, remaining)
    status_file.write("running", processed, force=True)
    if todo_items:
        context.target_max_block_size = config.ray.block_mb * 2**20
        progress = ProgressLine(remaining, request.progress, terminal)
        plan = build_plan(todo, run, sizing, remaining, plan_block_rows(config, todo_items))
        # Ray Data's no-progress guard ends a run in which no block moves (lost actors, nowhere to restart)
        plan.context.execution_no_progress_timeout_s = no_progress_timeout(config.ray.stall_timeout_s)
        try:
            for batch in plan.iter_batches(batch_size=None, batch_format="pyarrow"):
                for entry in pc.value_counts(batch.column("status")).to_pylist():
                    key = entry["values"] if entry["values"] in processed else "error"
                    processed[key] += entry["counts"]
                progress.update(processed)
                status_file.write("running", processed)
                if request.on_progress is not None:
                    request.on_progress(dict(processed, total=remaining))
        except Exception as exc:
            if not is_stall(exc):
                raise
            status_file.write("stalled", processed, force=True)
            raise explain(config.ray.stall_timeout_s) from exc
        progress.close(processed)
    timings["generate_s"], phase = time.time() - phase, time.time()
    manifest.compact(run_id, review)
    timings["compact_s"], phase = time.time() - phase, time.time()
    summary = _summary(
        manifest, counts, todo_items, processed, request, fingerprint, run_id, time.time() - started
    )
    from canvas_ray.report import write_index

    write_index(manifest, summary)
    timings["report_s"] = time.time() - phase
    summary["seconds"] = round(time.time() - started, 3)
    summary["phases_s"] = {k: round(v, 3) for k, v in timings.items()}
    write_bytes(join_uri(request.output, "summary.json"), json.dumps(summary, indent=2).encode(), options)
    status_file.write("finished", processed, force=True)
    _print_summary(summary)
    return summary


def _bucket_pages(root: str, options: dict[str, Any], bucket: int, table: pa.Table) -> None:
    from canvas_ray.report import write_bucket_pages

    write_bucket_pages(root, options, bucket, table)


def _remove_outputs(root: str, options: dict[str, Any]) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(root, **options)
    for sub in ("images", "thumbs", "manifest", "_parts", "summary.json", "index.html", "review", "eval"):
        target = f"{path.rstrip('/')}/{sub}"
        if fs.exists(target):
            fs.rm(target, recursive=True)


def _summary(
    manifest: Manifest,
    counts: dict[str, int],
    todo_items: int,
    processed: dict[str, int],
    request: GenerateRequest,
    fingerprint: str,
    run_id: str,
    elapsed: float,
) -> dict[str, Any]:
    totals = summarise(manifest)
    outputs_this_run = sum(processed.values())
    missing = counts["outputs_expected"] - counts["outputs_done"] - outputs_this_run
    if missing:
        log.error(
            "%d requested outputs have no manifest row: re-run the same command to finish them", missing
        )
    return {
        "run_id": run_id,
        "catalog": request.catalog,
        "output": request.output,
        "config_fingerprint": fingerprint,
        "items": counts["items"],
        "items_skipped_done": counts["items"] - todo_items,
        "items_processed": todo_items,
        "outputs_expected": counts["outputs_expected"],
        **totals,
        "outputs_this_run": outputs_this_run,
        "this_run": processed,
        "seconds": round(elapsed, 3),
        "outputs_per_second": round(outputs_this_run / elapsed, 3) if elapsed > 0 else None,
        "items_per_second": round(todo_items / elapsed, 3) if elapsed > 0 else None,
        "catalog_problems": counts["problems"],
        "missing_outputs": max(0, missing),
    }


def _print_summary(summary: dict[str, Any]) -> None:
    line = "─" * 64
    rate = summary["outputs_per_second"]
    print(line)
    print(f"canvas-ray generate  run {summary['run_id']}  config {summary['config_fingerprint']}")
    print(
        f"items {summary['items']}  (skipped, already done: {summary['items_skipped_done']}; "
        f"processed: {summary['items_processed']})"
    )
    print(
        f"outputs {summary['outputs']}/{summary['outputs_expected']}  ok {summary['ok']}"
        f"  review {summary['review']}  rejected {summary['rejected']}  errors {summary['errors']}"
        f"  product preserved {summary['product_preserved']}/{summary['ok']}"
    )
    if summary["review"]:
        print("review: outputs whose product mask we cannot vouch for; check them in index.html")
    if summary["expansion_ratio_p50"] is not None or summary["quality_score_p50"] is not None:
        print(
            f"expansion p50 {summary['expansion_ratio_p50']}  max {summary['expansion_ratio_max']}"
            f"  quality score p50 {summary['quality_score_p50']}"
            "  (details: canvas-ray evaluate OUTPUT)"
        )
    if summary["errors_by_stage"]:
        print(
            "not ok by stage: "
            + ", ".join(f"{k} {v}" for k, v in summary["errors_by_stage"].items())
            + "  (reasons in the manifest's error column and index.html)"
        )
    print(f"time {summary['seconds']:.1f} s   {rate if rate is not None else 0:.2f} outputs/s")
    print(f"manifest  {summary['output'].rstrip('/')}/manifest/  (canvas-ray manifest {summary['output']})")
    print(f"review    {summary['output'].rstrip('/')}/index.html")
    print(line)


__all__ = ["CATALOG_SCHEMA", "GenerateRequest", "build_plan", "expected_outputs", "run_generate"]
