"""The catalog job as a Ray Data plan.

```
catalog (driver: validate, resume anti-join) ─▶ fetch+decode (tasks) ─▶ Segment (actor pool)
  ─▶ Caption (actor pool) ─▶ thumbnails+Prompt (tasks) ─▶ Inpaint (actor pool)
  ─▶ Composite+Verify+write (tasks) ─▶ driver: progress, compaction, summary.json, index.html
```
Each model stage is ``map_batches(StageClass, compute=ActorPoolStrategy(...), num_gpus=..., batch_size=...)``
with resources from the config, so on a cluster each model lives in its own pool. Resume is an
anti-join on the manifest (items whose every requested output is ``ok`` under the same config
fingerprint are skipped): the job expands one item into many outputs, which Ray Data's row-level
CheckpointConfig cannot express, and the manifest is the record users read anyway.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from canvas_ray.config import CanvasConfig, ConfigError, Resources
from canvas_ray.io.catalog import TEXT_COLUMNS, read_catalog
from canvas_ray.io.images import encode_image, resize
from canvas_ray.io.outputs import OutputLayout, WriteOutputs, compact_manifest, read_manifest, write_bytes
from canvas_ray.stages.base import Batch, ensure_status
from canvas_ray.stages.caption import Caption
from canvas_ray.stages.composite import Composite
from canvas_ray.stages.decode import Decode, Fetch
from canvas_ray.stages.inpaint import Inpaint
from canvas_ray.stages.prompt import Prompt, output_id
from canvas_ray.stages.segment import Segment
from canvas_ray.styles import StyleBook

log = logging.getLogger(__name__)


@dataclass
class GenerateRequest:
    config: CanvasConfig
    catalog: str
    output: str
    limit: int | None = None
    overwrite: bool = False
    address: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    on_progress: Callable[[dict[str, int]], None] | None = None  # called after each finished block


# ---- cheap stages, run as Ray tasks (functions; constructors are cheap) ----


def fetch_decode(batch: Batch, config: CanvasConfig, storage_options: dict[str, Any]) -> Batch:
    return Decode(config)(Fetch(config, storage_options)(batch))


def thumbnails_and_prompt(
    batch: Batch,
    config: CanvasConfig,
    styles: StyleBook,
    fingerprint: str,
    root: str,
    storage_options: dict[str, Any],
) -> Batch:
    """Write review thumbnails (original, mask) per item, then expand items into outputs."""
    batch = ensure_status(batch)
    layout = OutputLayout(root, shard_width=config.output.shard_width)
    n = len(batch["status"])
    thumbs, masks = [""] * n, [""] * n
    for index in range(n):
        if batch["status"][index] != "ok":
            continue
        item_id = str(batch["item_id"][index])
        try:
            image, mask = batch["image"][index], batch["product_mask"][index]
            scale = 192 / max(image.shape[:2])
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            thumb = resize(np.ascontiguousarray(image[..., :3]), size)
            write_bytes(
                layout.uri(layout.thumb_rel(item_id, "image")),
                encode_image(thumb, "jpeg", 85),
                storage_options,
            )
            write_bytes(
                layout.uri(layout.thumb_rel(item_id, "mask")),
                encode_image(resize(mask, size), "png"),
                storage_options,
            )
            thumbs[index] = layout.thumb_rel(item_id, "image")
            masks[index] = layout.thumb_rel(item_id, "mask")
        except Exception as error:  # noqa: BLE001 - thumbnails are for review only
            log.warning("thumbnail for %s failed: %s", item_id, error)
    out = Prompt(config, styles, fingerprint=fingerprint)(batch)
    if not out:
        return out
    by_item = {str(batch["item_id"][i]): (thumbs[i], masks[i]) for i in range(n)}
    out["thumb_uri"] = np.array([by_item.get(str(i), ("", ""))[0] for i in out["item_id"]], dtype=object)
    out["mask_uri"] = np.array([by_item.get(str(i), ("", ""))[1] for i in out["item_id"]], dtype=object)
    return out


def composite_and_write(batch: Batch, config: CanvasConfig, styles: StyleBook, writer: WriteOutputs) -> Batch:
    return writer(Composite(config, styles)(batch))


# ---- the plan ----


def _pool(resources: Resources) -> dict[str, Any]:
    import ray.data

    max_size = max(resources.concurrency, resources.max_concurrency or resources.concurrency)
    return {
        "compute": ray.data.ActorPoolStrategy(min_size=resources.concurrency, max_size=max_size),
        "num_gpus": resources.num_gpus or None,
        "num_cpus": resources.num_cpus,
        "batch_size": resources.batch_size,
        "batch_format": "numpy",
    }


def _tasks(resources: Resources) -> dict[str, Any]:
    import ray.data

    return {
        "num_cpus": resources.num_cpus,
        "batch_size": resources.batch_size,
        "batch_format": "numpy",
        "compute": ray.data.TaskPoolStrategy(size=resources.concurrency)
        if resources.concurrency > 1
        else None,
    }


# Catalog columns the generation plan carries (engagement counts are for curation, not generation).
PLAN_COLUMNS = (*TEXT_COLUMNS, "status", "error")


def check_resources(config: CanvasConfig) -> None:
    """Actor pools hold their resources for the whole job; refuse plans that leave tasks no CPU to run on."""
    import ray

    available = ray.cluster_resources()
    cpus, gpus = float(available.get("CPU", 0)), float(available.get("GPU", 0))
    pools = {name: getattr(config, name).resources for name in ("segment", "caption", "inpaint")}
    held_cpu = sum(r.num_cpus * r.concurrency for r in pools.values())
    held_gpu = sum(r.num_gpus * r.concurrency for r in pools.values())
    if held_cpu > cpus - 0.25:
        detail = ", ".join(f"{n} {r.num_cpus}x{r.concurrency}" for n, r in pools.items())
        raise ConfigError(
            f"actor pools reserve {held_cpu:g} CPUs ({detail}) but the cluster has {cpus:g}; the "
            f"task stages need some left: lower resources.num_cpus or concurrency of a model stage"
        )
    if held_gpu > gpus:
        raise ConfigError(
            f"actor pools reserve {held_gpu:g} GPUs but the cluster has {gpus:g}: lower "
            f"resources.num_gpus/concurrency, or use a CPU config such as configs/local.yaml"
        )


def build_plan(table: pa.Table, request: GenerateRequest, styles: StyleBook, fingerprint: str, run_id: str):
    """The lazy Ray Dataset from catalog rows to written manifest rows."""
    import ray.data

    config = request.config
    table = table.select([c for c in PLAN_COLUMNS if c in table.column_names])
    rows_per_block = max(1, min(config.segment.resources.batch_size, 64))
    blocks = [table.slice(start, rows_per_block) for start in range(0, table.num_rows, rows_per_block)]
    ds: Any = ray.data.from_arrow(blocks)
    io_tasks: dict[str, Any] = {
        "batch_size": rows_per_block,
        "batch_format": "numpy",
        "num_cpus": 0.25,
        "compute": ray.data.TaskPoolStrategy(size=config.ray.io_concurrency),
    }
    ds = ds.map_batches(
        fetch_decode, fn_kwargs={"config": config, "storage_options": request.storage_options}, **io_tasks
    )
    ds = ds.map_batches(Segment, fn_constructor_kwargs={"config": config}, **_pool(config.segment.resources))
    ds = ds.map_batches(Caption, fn_constructor_kwargs={"config": config}, **_pool(config.caption.resources))
    ds = ds.map_batches(
        thumbnails_and_prompt,
        fn_kwargs={
            "config": config,
            "styles": styles,
            "fingerprint": fingerprint,
            "root": request.output,
            "storage_options": request.storage_options,
        },
        **io_tasks,
    )
    ds = ds.map_batches(
        Inpaint, fn_constructor_kwargs={"config": config, "styles": styles}, **_pool(config.inpaint.resources)
    )
    writer = WriteOutputs(
        request.output,
        run_id,
        fingerprint,
        config.output.format,
        config.output.quality,
        config.output.shard_width,
        request.storage_options,
    )
    ds = ds.map_batches(
        composite_and_write,
        fn_kwargs={"config": config, "styles": styles, "writer": writer},
        **_tasks(config.composite.resources),
    )
    return ds


def expected_outputs(table: pa.Table, config: CanvasConfig, styles: StyleBook) -> dict[str, list[str]]:
    """item_id → the output ids this request asks for (for resume and counting)."""
    out: dict[str, list[str]] = {}
    defaults = config.styles.default
    for row in table.select(["item_id", "style"]).to_pylist():
        requested = [s.strip() for s in (row["style"] or "").split("|") if s.strip()] or defaults
        keys = []
        for name in requested:
            try:
                keys.append(styles.resolve(name).key)
            except ValueError:
                keys.append("invalid-style")
        out[row["item_id"]] = [
            output_id(row["item_id"], key, aspect, variant)
            for key in keys
            for aspect in config.output.aspect_ratios
            for variant in range(config.output.variants)
        ]
    return out


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(
        address=address,
        ignore_reinit_error=True,
        log_to_driver=True,
        include_dashboard=False if address is None else None,
    )


def run_generate(request: GenerateRequest) -> dict[str, Any]:
    """Run the job end to end and return the summary (also written to OUTPUT/summary.json)."""
    import ray.data

    started = time.time()
    config = request.config
    styles = StyleBook.from_config(config)
    fingerprint = config.fingerprint()
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    options = request.storage_options
    catalog = read_catalog(request.catalog, options, request.limit)
    table = catalog.table
    layout = OutputLayout(request.output, config.output.format, config.output.shard_width)
    if request.overwrite:
        _remove_outputs(request.output, options)
    expected = expected_outputs(table, config, styles)
    previous = read_manifest(request.output, options)
    done_ok: set[str] = set()
    if previous.num_rows:
        for row in previous.select(["output_id", "status", "config_fingerprint"]).to_pylist():
            if row["status"] == "ok" and row["config_fingerprint"] == fingerprint:
                done_ok.add(row["output_id"])
    skip = [all(o in done_ok for o in expected[item]) for item in table.column("item_id").to_pylist()]
    todo = table.filter(pa.array([not s for s in skip]))
    skipped = table.num_rows - todo.num_rows
    total_outputs = sum(len(expected[i]) for i in todo.column("item_id").to_pylist())
    log.info(
        "catalog %s: %d items (%d already done, %d to process → %d outputs); config %s; output %s",
        request.catalog,
        table.num_rows,
        skipped,
        todo.num_rows,
        total_outputs,
        fingerprint,
        request.output,
    )

    processed = {"ok": 0, "rejected": 0, "error": 0}
    if todo.num_rows:
        _init_ray(request.address or config.ray.address)
        check_resources(config)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = False
        context.enable_progress_bars = request.progress
        ds = build_plan(todo, request, styles, fingerprint, run_id)
        bar = _progress(total_outputs, request.progress)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            statuses = batch["status"]
            ok = int(np.sum(statuses == "ok"))
            rejected = int(np.sum(statuses == "rejected"))
            processed["ok"] += ok
            processed["rejected"] += rejected
            processed["error"] += len(statuses) - ok - rejected
            if bar is not None:
                bar.update(len(statuses))
                bar.set_postfix(ok=processed["ok"], rejected=processed["rejected"], errors=processed["error"])
            if request.on_progress is not None:
                request.on_progress(dict(processed, total=total_outputs))
        if bar is not None:
            bar.close()
    manifest = compact_manifest(request.output, options)
    elapsed = time.time() - started
    summary = _summary(
        manifest,
        expected,
        request,
        fingerprint,
        run_id,
        elapsed,
        skipped,
        todo.num_rows,
        processed,
        catalog.problems,
    )
    write_bytes(layout.uri("summary.json"), json.dumps(summary, indent=2).encode(), options)
    from canvas_ray.report import write_review_pages

    write_review_pages(manifest, request.output, options, summary)
    _print_summary(summary)
    return summary


def _remove_outputs(root: str, options: dict[str, Any]) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(root, **options)
    for sub in ("images", "thumbs", "manifest", "_parts", "summary.json", "index.html", "review", "eval"):
        target = f"{path.rstrip('/')}/{sub}"
        if fs.exists(target):
            fs.rm(target, recursive=True)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="outputs", unit="img", file=sys.stderr, dynamic_ncols=True)


def _summary(
    manifest: pa.Table,
    expected: dict[str, list[str]],
    request: GenerateRequest,
    fingerprint: str,
    run_id: str,
    elapsed: float,
    skipped: int,
    processed_items: int,
    processed: dict[str, int],
    problems: list[str],
) -> dict[str, Any]:
    wanted = {o for outputs in expected.values() for o in outputs}
    rows = [r for r in manifest.to_pylist() if r["output_id"] in wanted or r["item_id"] in expected]
    ok = [r for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"] not in ("ok", "rejected")]
    rejected = [r for r in rows if r["status"] == "rejected"]
    stages = {}
    timings = (
        "fetch_s",
        "decode_s",
        "segment_s",
        "caption_s",
        "inpaint_s",
        "quality_s",
        "composite_s",
        "write_s",
    )
    for column in timings:
        values = [r[column] for r in ok if r[column] is not None]
        stages[column.removesuffix("_s")] = round(float(np.mean(values)), 4) if values else None
    reasons: dict[str, int] = {}
    for row in errors + rejected:
        reason = (row["error"] or "unknown").split(":")[0]
        reasons[reason] = reasons.get(reason, 0) + 1
    outputs_this_run = sum(processed.values())
    expansions = [r["expansion_ratio"] for r in ok if r.get("expansion_ratio") is not None]
    scores = [r["quality_score"] for r in ok if r.get("quality_score") is not None]
    return {
        "run_id": run_id,
        "catalog": request.catalog,
        "output": request.output,
        "config_fingerprint": fingerprint,
        "items": len(expected),
        "items_skipped_done": skipped,
        "items_processed": processed_items,
        "outputs_expected": len(wanted),
        "outputs": len(rows),
        "ok": len(ok),
        "errors": len(errors),
        "rejected": len(rejected),
        "errors_by_stage": reasons,
        "expansion_ratio_p50": round(float(np.median(expansions)), 4) if expansions else None,
        "expansion_ratio_max": round(float(np.max(expansions)), 4) if expansions else None,
        "quality_score_p50": round(float(np.median(scores)), 4) if scores else None,
        "product_preserved": sum(bool(r["product_preserved"]) for r in ok),
        "outputs_this_run": outputs_this_run,
        "seconds": round(elapsed, 3),
        "outputs_per_second": round(outputs_this_run / elapsed, 3) if elapsed > 0 else None,
        "items_per_second": round(processed_items / elapsed, 3) if elapsed > 0 else None,
        "mean_stage_seconds_per_output": stages,
        "catalog_problems": len(problems),
        "missing_outputs": sorted(wanted - {r["output_id"] for r in rows})[:50],
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
        f"  rejected {summary['rejected']}  errors {summary['errors']}"
        f"  product preserved {summary['product_preserved']}/{summary['ok']}"
    )
    if summary["expansion_ratio_p50"] is not None or summary["quality_score_p50"] is not None:
        print(
            f"expansion p50 {summary['expansion_ratio_p50']}  max {summary['expansion_ratio_max']}"
            f"  quality score p50 {summary['quality_score_p50']}"
            "  (details: canvas-ray evaluate OUTPUT)"
        )
    if summary["errors_by_stage"]:
        print(
            "errors by stage: "
            + ", ".join(f"{k} {v}" for k, v in summary["errors_by_stage"].items())
            + "  (reasons in the manifest's error column and index.html)"
        )
    print(f"time {summary['seconds']:.1f} s   {rate if rate is not None else 0:.2f} outputs/s")
    print(f"manifest  {summary['output'].rstrip('/')}/manifest/manifest.parquet")
    print(f"review    {summary['output'].rstrip('/')}/index.html")
    print(line)
