"""The Ray Data plan of the catalog job, an adapter of the pipeline spec (:mod:`canvas_ray.spec`): each cheap
step becomes a task function running the step's stages (sinks included), each model step an actor pool
class holding its stage, and the spec and config say how each is mapped (resources, batch sizes, memory,
block sizes). The driver is :mod:`canvas_ray.batch`; catalog preparation (ids, resume)
is :mod:`canvas_ray.batch_catalog`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from canvas_ray.cluster import Sizing, plan_pools
from canvas_ray.config import CanvasConfig
from canvas_ray.io.catalog import TEXT_COLUMNS
from canvas_ray.logs import get_logger
from canvas_ray.rows import Batch
from canvas_ray.spec import PIPELINE, StageSpec, make_stage, stage_resources, step
from canvas_ray.stages.base import StageContext, run_in_chunks
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
            styles=self.styles,
            fingerprint=self.fingerprint,
            storage_options=self.storage_options,
            output_root=self.root,
            run_id=self.run_id,
        )


# ---- cheap steps, run as Ray tasks ----


def run_task_step(name: str, batch: Any, run: RunContext) -> Any:
    """One cheap step of the spec in a Ray task: its stages in turn, sinks included (constructors are
    cheap; built in the task, as the run's config and output root say)."""
    context = run.stage_context()
    for stage in step(name).stages:
        batch = make_stage(stage, run.config, context)(batch)
    return batch


def _task_function(spec: StageSpec) -> Callable[..., Any]:
    """``composite_and_write(batch, run)``: the task function of a cheap step of the spec, a module
    attribute named after the step, so that Ray pickles it by reference and its dashboard names the
    operator ``MapBatches(composite_and_write)``."""

    def task(batch: Any, run: RunContext) -> Any:
        return run_task_step(spec.name, batch, run)

    task.__name__ = task.__qualname__ = spec.name
    task.__module__ = __name__
    globals()[spec.name] = task
    return task


# one task function per cheap step of the spec: adding a step to the spec adds its function here
TASKS: dict[str, Callable[..., Any]] = {s.name: _task_function(s) for s in PIPELINE if s.kind == "task"}


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
        self.chunk = stage_resources(spec, run.config).batch_size  # a pool step is chunked (spec)

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
    over small slices) unless it says otherwise (the manifest step: a part's rows)."""
    if spec.kind == "pool" or not spec.whole_blocks:
        return stage_resources(spec, config).batch_size
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
    arriving = item_rows  # rows per block reaching the next pool
    for index, spec in enumerate(PIPELINE):
        args = _map_args(spec, config, sizing)
        if spec.sinks == ("manifest_part",) and outputs is not None:
            args["batch_size"] = manifest_part_rows(config, outputs)  # parts sized to the job
        if spec.kind == "pool":
            if arriving:
                args["batch_size"] = max(args["batch_size"], arriving)
            ds = ds.map_batches(POOLS[spec.name], fn_constructor_kwargs={"run": run}, **args)
            continue
        ds = ds.map_batches(TASKS[spec.name], fn_kwargs={"run": run}, **args)
        if spec.expands:  # one row became many: blocks for the next pool, two per actor over the job
            following = next(s for s in PIPELINE[index + 1 :] if s.kind == "pool")
            actors = sizing.pools[following.name].max if sizing and following.name in sizing.pools else 1
            arriving = expanded_block_rows(config, outputs, actors, following.name)
            ds = ds.repartition(target_num_rows_per_block=arriving)
    return ds


def expanded_block_rows(config: CanvasConfig, outputs: int | None, actors: int, pool: str = "inpaint") -> int:
    """Rows per block after Prompt's expansion: enough blocks that every actor of the next pool
    (``inpaint``) gets work (two per actor over the job), never below its batch, never above
    ``ray.block_rows`` (cheap error rows ride in big blocks; image blocks are also capped in bytes by
    ``ray.block_mb``)."""
    batch = stage_resources(step(pool), config).batch_size
    if outputs is None:
        return max(batch, config.ray.block_rows)
    wanted = -(-outputs // max(1, 2 * actors))
    return max(batch, min(config.ray.block_rows, wanted))
