"""Catalog preparation for the catalog job: duplicate ids and resume, grouped by id bucket (the bucket
that partitions the manifest; see :mod:`canvas_ray.batch`), and the block sizes of the generation plan."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from canvas_ray.batch_plan import PLAN_COLUMNS, GenerateRequest, RunContext
from canvas_ray.config import CanvasConfig
from canvas_ray.io.catalog import (
    CatalogFiles,
    catalog_dataset,
    id_bucket,
    list_catalog,
    read_catalog_rows,
    validate_ids,
)
from canvas_ray.io.manifest import DONE_STATUSES, Manifest
from canvas_ray.logs import get_logger
from canvas_ray.spec import PIPELINE, stage_resources
from canvas_ray.stages.base import StageContext
from canvas_ray.stages.prompt import DONE_SEPARATOR, Prompt
from canvas_ray.styles import StyleBook

log = get_logger(__name__)


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
