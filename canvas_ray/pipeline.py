"""The whole pipeline in one process: the same stage classes the Ray drivers use, run one after another.

Used by ``canvas-ray generate-one``, by tests of the stages together, and as the single-process baseline
in ``benchmarks/engine.py``. The Ray Data plan (``canvas_ray.batch``) and the Serve app compose the very
same classes.
"""

from __future__ import annotations

from typing import Any

from canvas_ray.config import CanvasConfig
from canvas_ray.records import OutputRecord
from canvas_ray.rows import Batch, rows_batch
from canvas_ray.spec import StageName, in_process_stages, make_stage, model_batch
from canvas_ray.stages.base import StageContext, run_in_chunks
from canvas_ray.styles import StyleBook

# One requested output of one product image: the typed record of a finished row, the same one the manifest
# and the Serve response derive from (``image`` is set for delivered outputs only).
GeneratedImage = OutputRecord


def items_batch(items: list[dict[str, Any]]) -> Batch:
    """Catalog-like rows (dicts) → a batch; the uploaded bytes stay one object per row."""
    return rows_batch(items, arrays=("image_bytes", "style_image_bytes"))


class InProcess:
    """The spec's in-process stages (no sinks) up to ``until``, run one after another in this process,
    model stages in chunks of their configured batch (:func:`canvas_ray.spec.model_batch`), as in the Ray
    plan. What ``LocalPipeline`` and training data prep run."""

    def __init__(self, config: CanvasConfig, context: StageContext, until: StageName | None = None):
        self.order = in_process_stages(until)  # from the one pipeline spec
        self.stages = {name: make_stage(name, config, context) for name in self.order}
        self.chunks = {name: model_batch(name, config) for name in self.order}

    def __call__(self, batch: Batch) -> Batch:
        for name in self.order:
            chunk = self.chunks[name]
            batch = run_in_chunks(self.stages[name], batch, chunk) if chunk else self.stages[name](batch)
            if not batch:
                break
        return batch


class LocalPipeline:
    """All stages in this process. ``keep_intermediate`` keeps canvas/mask/background columns."""

    def __init__(self, config: CanvasConfig, keep_intermediate: bool = False):
        self.config = config
        self.styles = StyleBook.from_config(config)
        self.runner = InProcess(config, StageContext(styles=self.styles, keep_intermediate=keep_intermediate))
        self.order, self.stages = self.runner.order, self.runner.stages

    def __getattr__(self, name: str) -> Any:
        stages = self.__dict__.get("stages", {})
        if name in stages:
            return stages[name]
        raise AttributeError(name)

    def run_batch(self, batch: Batch) -> Batch:
        return self.runner(batch)

    def generate(self, items: list[dict[str, Any]]) -> list[GeneratedImage]:
        return OutputRecord.from_batch(self.run_batch(items_batch(items)))
