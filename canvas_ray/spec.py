"""The one pipeline spec: stage order, how each step runs, what it runs, its resources and its columns.

```
fetch_decode ─▶ segment ─▶ caption ─▶ thumbnails_and_prompt ─▶ inpaint ─▶ composite_and_write
  (tasks)       (pool)      (pool)          (tasks)             (pool)        (tasks)
  fetch,decode                          [thumbnails],prompt                composite,[write]
  ─▶ write_manifest_part
        (tasks)
      [manifest_part]
```
A *step* is what the Ray Data plan maps (``map_batches``): model steps are actor pools holding one stage
class each; cheap steps are tasks running one or more stage classes in turn. Each step names the stage
classes it runs (``stages``; :func:`make_stage` builds any of them), among them the *sinks* in brackets,
which write files under the run's output root (:mod:`canvas_ray.stages.sinks`). Each step also declares
its special cases: whether its stage runs a model in chunks of its configured batch (pool steps, every
driver), whether it takes whole blocks, whether it expands rows, which of its error rows are the caller's
bad input (:func:`input_error_stages`), and what memory a task declares.

The drivers are adapters that decide only *how* a step runs: the batch plan (:mod:`canvas_ray.batch_plan`)
maps every step (pools as actor pools, the rest as tasks, sinks included); the in-process drivers
(:class:`canvas_ray.pipeline.LocalPipeline`, Serve's ingress and its model deployments, training data
prep) run :func:`in_process_stages` (no sinks: they hand images back) with :func:`model_batch` chunks.
Resources always come from the config (:func:`stage_resources`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from canvas_ray.config import CanvasConfig, Resources
from canvas_ray.config_serve import Colocate
from canvas_ray.stages.base import StageContext

StageName = Literal[
    "fetch",
    "decode",
    "segment",
    "caption",
    "thumbnails",
    "prompt",
    "inpaint",
    "composite",
    "write",
    "manifest_part",
]

# Stages that write files under the run's output root; in-process drivers hand images back instead.
SINKS: tuple[StageName, ...] = ("thumbnails", "write", "manifest_part")


@dataclass(frozen=True)
class StageSpec:
    """One step of the plan.

    Args:
        name: the step's name (a model stage's config section for pools).
        kind: ``pool`` (an actor pool holding a model) or ``task`` (stateless, cheap).
        stages: the stage classes the step runs, in order (names known to :func:`make_stage`).
        resources: where its resources come from: a config section with ``resources``, ``io`` or
            ``manifest``.
        batch_format: what ``map_batches`` hands the step.
        memory_mb: memory one task of a cheap step declares to Ray's scheduler unless its resources name
            one (a cluster schedules by declared memory; a step holding decoded images must say so).
        expands: the step turns one row into many (Prompt: item → styles × aspects × variants), so a
            driver cuts its output into blocks again before the next pool.
        whole_blocks: a cheap step takes each block whole (no per-call set-up over small slices); False:
            its resources' ``batch_size`` rows per call (the manifest step: one part per call).
        input_errors: the ``error_stage`` labels of the step's error rows that mean a bad input (a
            missing or refused image, a bad ``product_box``, style or profile, a non-compliant output),
            not a failure of ours: Serve answers them 422, the others 500.
    """

    name: str
    kind: Literal["pool", "task"]
    stages: tuple[StageName, ...]
    resources: str
    batch_format: str = "numpy"
    memory_mb: int | None = None
    expands: bool = False
    whole_blocks: bool = True
    input_errors: tuple[str, ...] = ()

    @property
    def chunked(self) -> bool:
        """The step's stage runs a model on its ``ok`` rows ``resources.batch_size`` at a time, whatever
        the driver hands it (a block, a Serve batch, a LocalPipeline batch)."""
        return self.kind == "pool"

    @property
    def sinks(self) -> tuple[StageName, ...]:
        return tuple(name for name in self.stages if name in SINKS)

    @property
    def requires(self) -> tuple[str, ...]:
        """Columns the step reads: what its stages require and an earlier stage of it does not make."""
        made: set[str] = set()
        needed: list[str] = []
        for name in self.stages:
            cls = _STAGE_CLASSES().get(name)
            if cls is None:
                continue
            needed += [c for c in cls.requires if c not in made and c not in needed]
            made.update(cls.produces)
        return tuple(needed)

    @property
    def produces(self) -> tuple[str, ...]:
        """Columns the step adds (declared by its stage classes, ``requires`` / ``produces``)."""
        cls_map = _STAGE_CLASSES()
        return tuple(dict.fromkeys(c for n in self.stages if n in cls_map for c in cls_map[n].produces))


PIPELINE: tuple[StageSpec, ...] = (
    # name, kind, stages (sinks included), config section of its resources, special cases
    StageSpec(
        "fetch_decode", "task", ("fetch", "decode"), "io", memory_mb=768, input_errors=("fetch", "decode")
    ),
    StageSpec("segment", "pool", ("segment",), "segment", input_errors=("segment",)),
    StageSpec("caption", "pool", ("caption",), "caption"),
    StageSpec(
        "thumbnails_and_prompt", "task", ("thumbnails", "prompt"), "io", memory_mb=768, expands=True,
        input_errors=("prompt", "profile"),
    ),
    StageSpec("inpaint", "pool", ("inpaint",), "inpaint"),
    StageSpec(
        "composite_and_write", "task", ("composite", "write"), "composite", memory_mb=1024,
        input_errors=("compliance",),
    ),
    StageSpec(
        "write_manifest_part", "task", ("manifest_part",), "manifest", batch_format="pyarrow", memory_mb=256,
        whole_blocks=False,
    ),
)  # fmt: skip


def step(name: str) -> StageSpec:
    for spec in PIPELINE:
        if spec.name == name:
            return spec
    raise KeyError(f"no pipeline step {name!r}; steps: {[s.name for s in PIPELINE]}")


def stage_resources(spec: StageSpec, config: CanvasConfig) -> Resources:
    """The step's Ray resources, from the config."""
    if spec.resources == "io":
        return Resources(
            num_cpus=0.25, concurrency=config.ray.io_concurrency, batch_size=config.ray.block_rows
        )
    if spec.resources == "manifest":
        return Resources(num_cpus=0.25, concurrency=1, batch_size=config.output.manifest_part_rows)
    return getattr(config, spec.resources).resources


def model_stages() -> tuple[StageName, ...]:
    """The stages that hold a model (one actor pool or Serve deployment each), in pipeline order."""
    return tuple(s.stages[0] for s in PIPELINE if s.kind == "pool")


COLOCATE: tuple[Colocate, ...] = get_args(Colocate)


def serve_groups(colocate: Colocate = "chained") -> tuple[tuple[StageName, ...], ...]:
    """The stages an online driver runs together in one replica, per ``serve.colocate``; a request makes
    one hand-off per group (none for ``ingress``):

    - ``split``: each model stage alone, ``(("segment",), ("caption",), ("inpaint",))``: three hand-offs,
      every model scaled on its own;
    - ``chained`` (the default): consecutive pool steps with nothing between them share a replica,
      ``(("segment", "caption"), ("inpaint",))``: two hand-offs;
    - ``models`` and ``ingress``: one group from the first model stage to the last, the cheap stages
      between them included, ``(("segment", "caption", "prompt", "inpaint"),)``: one model deployment
      (``models``), or none at all (``ingress``: the ingress replicas hold the models).
    """
    if colocate not in COLOCATE:
        raise ValueError(f"serve.colocate must be one of {COLOCATE}, not {colocate!r}")
    models = model_stages()
    if colocate == "split":
        return tuple((name,) for name in models)
    if colocate in ("models", "ingress"):
        names = in_process_stages()
        return (names[names.index(models[0]) : names.index(models[-1]) + 1],)
    groups: list[list[StageName]] = []
    previous_was_pool = False
    for spec in PIPELINE:
        if spec.kind == "pool":
            if previous_was_pool:
                groups[-1].append(spec.stages[0])
            else:
                groups.append([spec.stages[0]])
        previous_was_pool = spec.kind == "pool"
    return tuple(tuple(group) for group in groups)


def in_process_stages(until: StageName | None = None) -> tuple[StageName, ...]:
    """Every stage in pipeline order but the sinks (what an in-process driver runs), up to and including
    ``until`` (training prep runs them up to ``caption``)."""
    names = tuple(name for s in PIPELINE for name in s.stages if name not in SINKS)
    return names[: names.index(until) + 1] if until else names


def model_batch(name: StageName, config: CanvasConfig) -> int | None:
    """Rows per model call of a stage that runs in a pool step (its configured ``batch_size``), else None."""
    for spec in PIPELINE:
        if spec.chunked and name in spec.stages:
            return stage_resources(spec, config).batch_size
    return None


def runs_per_item(name: StageName) -> bool:
    """Whether ``name`` runs before the step that turns one row into many (:attr:`StageSpec.expands`):
    its columns, timing included, hold one value per item, copied onto each of the item's outputs."""
    step_of = next(i for i, s in enumerate(PIPELINE) if name in s.stages)
    return any(s.expands for s in PIPELINE[step_of + 1 :])


def input_error_stages() -> tuple[str, ...]:
    """Every ``error_stage`` label that means a bad input (:attr:`StageSpec.input_errors`)."""
    return tuple(dict.fromkeys(label for s in PIPELINE for label in s.input_errors))


def timing_columns(name: StageName) -> tuple[str, ...]:
    """The ``*_s`` columns a stage records: its own seconds per row, measured inside the stage."""
    return tuple(c for c in _STAGE_CLASSES()[name].produces if c.endswith("_s"))


def _STAGE_CLASSES() -> dict[str, type[Any]]:  # noqa: N802 - a lazy constant
    from canvas_ray.stages.caption import Caption
    from canvas_ray.stages.composite import Composite
    from canvas_ray.stages.decode import Decode, Fetch
    from canvas_ray.stages.inpaint import Inpaint
    from canvas_ray.stages.prompt import Prompt
    from canvas_ray.stages.segment import Segment
    from canvas_ray.stages.sinks import ImageWriter, ManifestPartWriter, ThumbnailWriter

    return {
        "fetch": Fetch,
        "decode": Decode,
        "segment": Segment,
        "caption": Caption,
        "thumbnails": ThumbnailWriter,
        "prompt": Prompt,
        "inpaint": Inpaint,
        "composite": Composite,
        "write": ImageWriter,
        "manifest_part": ManifestPartWriter,
    }


def make_stage(name: StageName, config: CanvasConfig, context: StageContext | None = None) -> Any:
    """Build one stage class by name in this process; every stage takes ``(config, context)``."""
    return _STAGE_CLASSES()[name](config, context or StageContext())
