"""The whole pipeline in one process: the same stage classes the Ray drivers use, run one after another.

Used by ``canvas-ray generate-one``, by tests of the stages together, and as the single-process baseline
in ``benchmarks/engine.py``. The Ray Data plan (``canvas_ray.batch``) and the Serve app compose the very
same classes.
"""

from __future__ import annotations

from typing import Any

from canvas_ray.config import CanvasConfig
from canvas_ray.rows import Batch, OutputRecord, rows_batch
from canvas_ray.spec import in_process_stages, make_stage, model_stages
from canvas_ray.stages.base import StageContext, run_in_chunks
from canvas_ray.styles import StyleBook

# One requested output of one product image: the typed record of a finished row, the same one the manifest
# and the Serve response derive from (``image`` is set for delivered outputs only).
GeneratedImage = OutputRecord


def items_batch(items: list[dict[str, Any]]) -> Batch:
    """Catalog-like rows (dicts) → a batch; the uploaded bytes stay one object per row."""
    return rows_batch(items, arrays=("image_bytes", "style_image_bytes"))


class LocalPipeline:
    """All stages in this process. ``keep_intermediate`` keeps canvas/mask/background columns."""

    def __init__(self, config: CanvasConfig, keep_intermediate: bool = False):
        self.config = config
        self.styles = StyleBook.from_config(config)
        self.order = in_process_stages()  # from the one pipeline spec
        context = StageContext(styles=self.styles, keep_intermediate=keep_intermediate)
        self.stages = {name: make_stage(name, config, context) for name in self.order}
        self.chunks = {name: getattr(config, name).resources.batch_size for name in model_stages()}

    def __getattr__(self, name: str) -> Any:
        stages = self.__dict__.get("stages", {})
        if name in stages:
            return stages[name]
        raise AttributeError(name)

    def run_batch(self, batch: Batch) -> Batch:
        for name in self.order:
            if name == "fetch" and "image_uri" not in batch:
                continue  # rows that already carry their bytes
            if name in self.chunks:  # model stages see their configured batch size, as in the Ray plan
                batch = run_in_chunks(self.stages[name], batch, self.chunks[name])
            else:
                batch = self.stages[name](batch)
            if not batch:
                break
        return batch

    def generate(self, items: list[dict[str, Any]]) -> list[GeneratedImage]:
        return OutputRecord.from_batch(self.run_batch(items_batch(items)))
