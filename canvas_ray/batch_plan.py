"""The Ray Data plan of the catalog job: the cheap steps as task functions, the model steps as actor
pools, and how each step is mapped (resources, batch sizes, memory, block sizes), all from the pipeline
spec (:mod:`canvas_ray.spec`). The driver is :mod:`canvas_ray.batch`; catalog preparation (ids, resume)
is :mod:`canvas_ray.batch_catalog`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from canvas_ray.cluster import Sizing, plan_pools
from canvas_ray.config import CanvasConfig
from canvas_ray.io.catalog import (
    TEXT_COLUMNS,
)
from canvas_ray.io.images import encode_image, resize
from canvas_ray.io.manifest_parts import write_staging_part
from canvas_ray.io.outputs import OutputLayout, WriteOutputs, write_bytes
from canvas_ray.logs import get_logger
from canvas_ray.provenance import ProvenanceContext
from canvas_ray.spec import PIPELINE, StageSpec, make_stage, stage_resources, step
from canvas_ray.stages.base import Batch, StageContext, ensure_status, run_in_chunks
from canvas_ray.stages.composite import Composite
from canvas_ray.stages.decode import Decode, Fetch
from canvas_ray.stages.prompt import Prompt
from canvas_ray.styles import StyleBook

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
    write_staging_part(table, run.root, run.run_id, run.storage_options)
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


def _pool_class(stage: str) -> type[PoolStage]:
    """``InpaintPool``: the pool class of a pool step of the spec, a module attribute so that Ray pickles
    it by reference and its dashboard names the operator ``MapBatches(InpaintPool)``."""
    name = stage.title().replace("_", "") + "Pool"
    cls = type(name, (PoolStage,), {"stage_name": stage, "__module__": __name__, "__qualname__": name})
    globals()[name] = cls
    return cls


# one pool class per pool step of the spec: adding a model stage to the spec adds its pool here
POOLS: dict[str, type[PoolStage]] = {s.name: _pool_class(s.name) for s in PIPELINE if s.kind == "pool"}


# ---- the plan ----


# Memory each task of a cheap step declares (MB), from the spec (``StageSpec.memory_mb``)
TASK_MEMORY_MB = {s.name: s.memory_mb for s in PIPELINE if s.kind == "task" and s.memory_mb}


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
    memory_mb = resources.memory_mb or (spec.memory_mb if spec.kind == "task" else None)
    if memory_mb:
        args["memory"] = memory_mb * 2**20
    if resources.custom:
        args["resources"] = dict(resources.custom)
    if spec.kind == "pool":
        size = sizing.pools[spec.name] if sizing and spec.name in sizing.pools else None
        low = size.min if size else resources.concurrency
        high = (
            size.max
            if size
            else max(low, resources.max_concurrency if isinstance(resources.max_concurrency, int) else low)
        )
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
        if spec.expands:  # one row became many: blocks of `expanded` rows for the next pool
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
