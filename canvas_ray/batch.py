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
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from canvas_ray.cluster import Sizing, attach, plan_pools, quiet_ray_data
from canvas_ray.config import CanvasConfig
from canvas_ray.io.catalog import (
    CATALOG_SCHEMA,
    TEXT_COLUMNS,
    CatalogFiles,
    catalog_dataset,
    id_bucket,
    list_catalog,
    read_catalog_rows,
    validate_ids,
)
from canvas_ray.io.images import encode_image, resize
from canvas_ray.io.manifest import DONE_STATUSES, Manifest, part_name, summarise
from canvas_ray.io.outputs import OutputLayout, WriteOutputs, join_uri, write_bytes
from canvas_ray.logs import get_logger
from canvas_ray.progress import ProgressFile, ProgressLine
from canvas_ray.provenance import ProvenanceContext
from canvas_ray.spec import PIPELINE, StageSpec, make_stage, stage_resources, step
from canvas_ray.stages.base import Batch, StageContext, ensure_status, run_in_chunks
from canvas_ray.stages.composite import Composite
from canvas_ray.stages.decode import Decode, Fetch
from canvas_ray.stages.prompt import DONE_SEPARATOR, Prompt
from canvas_ray.styles import StyleBook
from canvas_ray.watch import explain, is_stall, no_progress_timeout

log = get_logger(__name__)


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
    on_progress: Callable[[dict[str, int]], None] | None = None  # called after each finished part


@dataclass(frozen=True)
class RunContext:
    """What every stage of one run shares (shipped to workers with the plan)."""

    config: CanvasConfig
    styles: StyleBook
    fingerprint: str
    run_id: str
    root: str
    storage_options: dict[str, Any]

    def stage_context(self) -> StageContext:
        return StageContext(
            styles=self.styles, fingerprint=self.fingerprint, storage_options=self.storage_options
        )


# ---- cheap stages, run as Ray tasks (functions; constructors are cheap) ----


def fetch_decode(batch: Batch, run: RunContext) -> Batch:
    context = run.stage_context()
    return Decode(run.config, context)(Fetch(run.config, context)(batch))


def thumbnails_and_prompt(batch: Batch, run: RunContext) -> Batch:
    """Write review thumbnails (original, mask) per item, then expand items into outputs."""
    batch = ensure_status(batch)
    layout = OutputLayout(run.root, shard_width=run.config.output.shard_width)
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
                run.storage_options,
            )
            write_bytes(
                layout.uri(layout.thumb_rel(item_id, "mask")),
                encode_image(resize(mask, size), "png"),
                run.storage_options,
            )
            thumbs[index] = layout.thumb_rel(item_id, "image")
            masks[index] = layout.thumb_rel(item_id, "mask")
        except Exception as error:  # noqa: BLE001 - thumbnails are for review only
            log.warning("thumbnail for %s failed: %s", item_id, error)
    out = Prompt(run.config, run.stage_context())(batch)
    if not out:
        return out
    by_item = {str(batch["item_id"][i]): (thumbs[i], masks[i]) for i in range(n)}
    out["thumb_uri"] = np.array([by_item.get(str(i), ("", ""))[0] for i in out["item_id"]], dtype=object)
    out["mask_uri"] = np.array([by_item.get(str(i), ("", ""))[1] for i in out["item_id"]], dtype=object)
    return out


def composite_and_write(batch: Batch, run: RunContext) -> pa.Table:
    """Final images written; manifest rows out (written as parts by the next stage)."""
    config = run.config
    writer = WriteOutputs(
        run.root,
        run.run_id,
        run.fingerprint,
        config.output.format,
        config.output.quality,
        config.output.shard_width,
        run.storage_options,
        write_part=False,
        provenance=ProvenanceContext.from_config(config),
    )
    return writer.rows(Composite(config, run.stage_context())(batch))


def write_manifest_part(table: pa.Table, run: RunContext) -> pa.Table:
    """One staging part of the manifest per batch; the driver gets the statuses back for progress."""
    import pyarrow.parquet as pq

    if table.num_rows:
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, compression="zstd")
        name = part_name(table.column("output_id").to_pylist())
        write_bytes(
            join_uri(run.root, "manifest", "_staging", run.run_id, name),
            buffer.getvalue().to_pybytes(),
            run.storage_options,
        )
    return table.select(["status"])


CHEAP_STAGES: dict[str, Callable[..., Any]] = {
    "fetch_decode": fetch_decode,
    "thumbnails_and_prompt": thumbnails_and_prompt,
    "composite_and_write": composite_and_write,
    "write_manifest_part": write_manifest_part,
}


# ---- model stages in actor pools ----


class PoolStage:
    """A model stage in an actor pool. Ray Data hands it whole blocks (blocks of big images are capped
    in bytes by Ray Data; blocks of error rows are just small), and the stage runs its model on ``ok`` rows
    ``resources.batch_size`` at a time: the model sees its configured batch, and cheap rows cost no
    per-batch round trip."""

    stage_name = ""

    def __init__(self, run: RunContext):
        spec = step(self.stage_name)
        self.stage = make_stage(spec.stages[0], run.config, run.stage_context())
        self.chunk = stage_resources(spec, run.config).batch_size

    def __call__(self, batch: Batch) -> Batch:
        return run_in_chunks(self.stage, batch, self.chunk)


class SegmentPool(PoolStage):
    stage_name = "segment"


class CaptionPool(PoolStage):
    stage_name = "caption"


class InpaintPool(PoolStage):
    stage_name = "inpaint"


POOLS: dict[str, type[PoolStage]] = {cls.stage_name: cls for cls in (SegmentPool, CaptionPool, InpaintPool)}


# ---- the plan ----


# Memory each task of a cheap step declares to Ray's scheduler (MB), unless its resources name one: a
# cluster schedules by declared memory, so a step that holds a batch of decoded images must say so.
TASK_MEMORY_MB = {
    "fetch_decode": 768,
    "thumbnails_and_prompt": 768,
    "composite_and_write": 1024,
    "write_manifest_part": 256,
}


def _rows_per_call(spec: StageSpec, config: CanvasConfig) -> int | None:
    """Rows handed to one call of a step: a model step's batch (Ray Data requires one for GPU pools); a
    cheap step, one whole block (``None``: no merging of planned blocks, and no per-call set-up repeated
    over small slices); the manifest step, a part's rows."""
    if spec.kind == "pool":
        return stage_resources(spec, config).batch_size
    if spec.name == "write_manifest_part":
        return config.output.manifest_part_rows
    return None


def _map_args(spec: StageSpec, config: CanvasConfig, sizing: Sizing | None = None) -> dict[str, Any]:
    import ray.data

    resources = stage_resources(spec, config)
    args: dict[str, Any] = {
        "num_cpus": resources.num_cpus,
        "batch_format": spec.batch_format,
        # Ray Data needs a batch size for GPU pools; every step gets its own (see _rows_per_call)
        "batch_size": _rows_per_call(spec, config),
    }
    memory_mb = resources.memory_mb or (TASK_MEMORY_MB.get(spec.name) if spec.kind == "task" else None)
    if memory_mb:
        args["memory"] = memory_mb * 2**20
    if resources.custom:
        args["resources"] = dict(resources.custom)
    if spec.kind == "pool":
        size = sizing.pools[spec.name] if sizing and spec.name in sizing.pools else None
        low = size.min if size else resources.concurrency
        high = size.max if size else max(low, resources.max_concurrency if isinstance(
            resources.max_concurrency, int) else low)
        start = size.initial if size else high
        args["compute"] = ray.data.ActorPoolStrategy(min_size=low, max_size=high, initial_size=start)
        if resources.num_gpus:
            args["num_gpus"] = resources.num_gpus
    elif resources.concurrency > 1:
        args["compute"] = ray.data.TaskPoolStrategy(size=resources.concurrency)
    return args


def check_resources(config: CanvasConfig) -> Sizing:
    """The pools' sizes on the attached cluster; a :class:`ConfigError` saying what to change when their
    minimums do not fit it (GPUs, CPUs and custom resources, node by node)."""
    sizing = plan_pools(config)
    for note in sizing.notes:
        log.info("pool %s", note)
    return sizing


# Columns the generation plan carries from the catalog (engagement counts are for curation).
PLAN_COLUMNS = (*TEXT_COLUMNS, "status", "error", "done_outputs")


def manifest_part_rows(config: CanvasConfig, outputs: int) -> int:
    """Rows per manifest part: ``output.manifest_part_rows`` for big jobs, fewer for small ones so that
    progress (counted from written parts) moves and a crash redoes little (at least a composite batch)."""
    composite = config.composite.resources.batch_size
    return max(1, min(config.output.manifest_part_rows, max(composite, -(-outputs // 32))))


def build_plan(
    ds: Any,
    run: RunContext,
    sizing: Sizing | None = None,
    outputs: int | None = None,
    item_rows: int | None = None,
) -> Any:
    """The lazy Ray Dataset from (remaining) catalog rows to the statuses of written manifest parts.

    Blocks: catalog rows come in blocks of ``item_rows`` (:func:`plan_block_rows`); Prompt's output is cut
    into blocks of :func:`expanded_block_rows` (a streaming repartition Ray Data fuses into the task): Ray
    Data bundles small blocks up to a batch but never splits a big one, so without it Prompt's expansion
    (one item → styles × aspects × variants outputs) would hand one inpaint actor a whole block while the
    others wait. Each pool takes the blocks that reach it whole (its ``map_batches`` batch is that block
    size) and runs its model on the ``ok`` rows ``resources.batch_size`` at a time (:class:`PoolStage`):
    cheap error rows cost no per-batch call, and no pool waits for more rows than one block."""
    config = run.config
    expanded = expanded_block_rows(config, outputs, sizing.pools["inpaint"].max if sizing else 1)
    for spec in PIPELINE:
        args = _map_args(spec, config, sizing)
        if spec.name == "write_manifest_part" and outputs is not None:
            args["batch_size"] = manifest_part_rows(config, outputs)
        if spec.kind == "pool":
            arriving = expanded if spec.name == "inpaint" else item_rows
            if arriving:
                args["batch_size"] = max(args["batch_size"], arriving)
            ds = ds.map_batches(POOLS[spec.name], fn_constructor_kwargs={"run": run}, **args)
            continue
        ds = ds.map_batches(CHEAP_STAGES[spec.name], fn_kwargs={"run": run}, **args)
        if spec.name == "thumbnails_and_prompt":
            ds = ds.repartition(target_num_rows_per_block=expanded)
    return ds


def expanded_block_rows(config: CanvasConfig, outputs: int | None, inpaint_actors: int) -> int:
    """Rows per block after Prompt's expansion: enough blocks that every inpaint actor gets work (two
    per actor over the job), never below the inpaint batch, never above ``ray.block_rows`` (cheap error
    rows ride in big blocks; image blocks are also capped in bytes by ``ray.block_mb``)."""
    batch = config.inpaint.resources.batch_size
    if outputs is None:
        return max(batch, config.ray.block_rows)
    wanted = -(-outputs // max(1, 2 * inpaint_actors))
    return max(batch, min(config.ray.block_rows, wanted))


# ---- catalog preparation: duplicates and resume, grouped by id bucket ----


def expected_outputs(table: pa.Table, config: CanvasConfig, styles: StyleBook) -> dict[str, list[str]]:
    """item_id → the output ids these (small, in-memory) catalog rows ask for."""
    prompt = Prompt(config, StageContext(styles=styles, fingerprint="-"))
    batch = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
    return {str(batch["item_id"][i]): prompt.output_ids(batch, i) for i in range(table.num_rows)}


def _with_bucket(table: pa.Table, buckets: int) -> pa.Table:
    assigned = [id_bucket(i, buckets) for i in table.column("item_id").to_pylist()]
    return table.append_column("_bucket", pa.array(assigned, pa.int64()))


def resume_group(group: pa.Table, run: RunContext, resume: bool) -> pa.Table:
    """One id bucket of the catalog: resolve duplicate ids, expand each row's outputs, mark what is done.

    Adds ``n_expected``, ``n_done``, ``done_outputs`` (ids joined by newlines) and ``todo``.
    """
    bucket = int(group.column("_bucket")[0].as_py())
    table, _ = validate_ids(group.drop_columns(["_bucket"]))
    done: set[str] = set()
    if resume:
        rows = Manifest(run.root, run.storage_options).read_bucket(
            bucket, ["output_id", "status", "config_fingerprint"]
        )
        if rows.num_rows:
            keep = pc.and_(
                pc.is_in(rows.column("status"), pa.array(DONE_STATUSES)),
                pc.equal(rows.column("config_fingerprint"), run.fingerprint),
            )
            done = set(rows.filter(keep).column("output_id").to_pylist())
    prompt = Prompt(run.config, run.stage_context())
    batch = {
        c: table.column(c).to_numpy(zero_copy_only=False)
        for c in ("item_id", "style", "profile")
        if c in table.column_names
    }
    n = table.num_rows
    expected, finished, done_text = np.zeros(n, np.int64), np.zeros(n, np.int64), [""] * n
    for i in range(n):
        ids = prompt.output_ids(batch, i)
        expected[i] = len(ids)
        kept = [o for o in ids if o in done] if done else []
        finished[i] = len(kept)
        done_text[i] = DONE_SEPARATOR.join(kept)
    table = table.append_column("n_expected", pa.array(expected))
    table = table.append_column("n_done", pa.array(finished))
    table = table.append_column("done_outputs", pa.array(done_text, pa.string()))
    problems = pc.starts_with(table.column("error"), "catalog:")
    table = table.append_column("n_problems", pc.cast(problems, pa.int64()))
    table = table.append_column("n_todo", pa.array((finished < expected).astype(np.int64)))
    return table.append_column("todo", pa.array(finished < expected))


MIN_BLOCKS = 16  # enough blocks that the model pools work on different blocks at the same time


def plan_block_rows(config: CanvasConfig, todo_items: int) -> int:
    """Rows per block: ``ray.block_rows`` for big catalogs (cheap rows cost little per block), fewer for
    small ones so that Segment, Caption and Inpaint overlap on different blocks instead of taking turns
    on one (never below the smallest model batch)."""
    smallest_batch = min(stage_resources(s, config).batch_size for s in PIPELINE if s.kind == "pool")
    return max(1, min(config.ray.block_rows, max(smallest_batch, -(-todo_items // MIN_BLOCKS))))


def _estimate_rows(listing: CatalogFiles, options: dict[str, Any], config: CanvasConfig) -> int:
    """Rough manifest size of a new output root (sizes its buckets): rows × outputs per row."""
    import fsspec
    import pyarrow.parquet as pq

    targets = len(config.output.profiles) or len(config.output.aspect_ratios)
    per_item = len(config.styles.default) * targets * config.output.variants
    if listing.images is not None:
        return listing.images.num_rows * per_item
    rows = 0
    for uri in listing.files:
        fs, path = fsspec.core.url_to_fs(uri, **options)
        if path.lower().endswith((".parquet", ".pq")):
            with fs.open(path, "rb") as handle:
                rows += pq.ParquetFile(handle).metadata.num_rows
        else:
            rows += int(fs.size(path) or 0) // 120  # bytes per JSON/CSV catalog row, roughly
    return rows * per_item


def prepare_catalog(
    request: GenerateRequest, run: RunContext, manifest: Manifest
) -> tuple[Any, dict[str, int]]:
    """The materialised catalog rows still to do, and counts (items, expected/done outputs, problems)."""
    import ray.data
    from ray.data.expressions import col

    options = request.storage_options
    listing = list_catalog(request.catalog, options)
    # sized for the whole catalog (also on a --limit trial run into the same output root)
    buckets = manifest.ensure(
        _estimate_rows(listing, options, run.config), run.config.output.manifest_bucket_rows
    )
    ds: Any
    if request.limit is not None:  # a trial run: the first rows, read here
        ds = ray.data.from_arrow(read_catalog_rows(listing, options, request.limit))
    else:
        ds = catalog_dataset(listing, options)
    ds = ds.map_batches(_with_bucket, fn_kwargs={"buckets": buckets}, batch_format="pyarrow", batch_size=None)
    resume = not request.overwrite and bool(manifest.bucket_files())
    partitions = max(1, min(buckets, 2 * int(ray.cluster_resources().get("CPU", 1)) * 4))
    prepared = (
        ds.groupby("_bucket", num_partitions=partitions)
        .map_groups(resume_group, fn_kwargs={"run": run, "resume": resume}, batch_format="pyarrow")
        .materialize()
    )
    from ray.data.aggregate import Count, Sum

    stats = prepared.aggregate(Count(), Sum("n_expected"), Sum("n_done"), Sum("n_problems"), Sum("n_todo"))
    counts = {
        "items": int(stats["count()"] or 0),
        "outputs_expected": int(stats["sum(n_expected)"] or 0),
        "outputs_done": int(stats["sum(n_done)"] or 0),
        "problems": int(stats["sum(n_problems)"] or 0),
        "todo": int(stats["sum(n_todo)"] or 0),
    }
    block_rows = plan_block_rows(run.config, counts["todo"])
    # filtered, projected and cut into blocks here, before any actor pool holds CPUs (these ops ask
    # for a whole CPU each; inside the generation plan they could wait for ever behind the pools)
    columns = [c for c in PLAN_COLUMNS if c in prepared.columns()]
    todo = (
        prepared.filter(expr=col("todo"))
        .select_columns(columns)
        .repartition(target_num_rows_per_block=block_rows)
        .materialize()
        if counts["todo"]
        else prepared.limit(0)
    )
    return todo, counts


# ---- the driver ----


def run_generate(request: GenerateRequest) -> dict[str, Any]:
    """Run the job end to end and return the summary (also written to OUTPUT/summary.json)."""
    import ray.data

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
