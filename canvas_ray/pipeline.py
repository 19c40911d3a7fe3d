"""The whole pipeline in one process: the same stage classes the Ray drivers use, run one after another.

Used by ``canvas-ray generate-one``, by tests of the stages together, and as the single-process baseline
in ``benchmarks/engine.py``. The Ray Data plan (``canvas_ray.batch``) and the Serve app compose the very
same classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from canvas_ray.config import CanvasConfig
from canvas_ray.schema import QUALITY_COLUMNS, TIMING_COLUMNS
from canvas_ray.spec import in_process_stages, make_stage, model_stages
from canvas_ray.stages.base import Batch, StageContext, rows_batch, run_in_chunks
from canvas_ray.styles import StyleBook


@dataclass
class GeneratedImage:
    """One requested output of one product image."""

    output_id: str
    status: str
    error: str
    image: np.ndarray | None
    style: str
    aspect: str
    variant: int
    seed: int
    prompt: str
    caption: str
    product_preserved: bool
    max_product_diff: int
    timings: dict[str, float]
    quality: dict[str, float | None]


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
        out = self.run_batch(items_batch(items))
        results = []
        for i in range(len(out.get("status", []))):
            ok = out["status"][i] in ("ok", "review")  # review: generated, kept for a person to check
            results.append(
                GeneratedImage(
                    output_id=str(out["output_id"][i]),
                    status=str(out["status"][i]),
                    error=str(out["error"][i]),
                    image=out["result"][i] if ok else None,
                    style=str(out["style"][i]),
                    aspect=str(out["aspect"][i]),
                    variant=int(out["variant"][i]),
                    seed=int(out["seed"][i]),
                    prompt=str(out["prompt"][i]),
                    caption=str(out["caption"][i]) if "caption" in out else "",
                    product_preserved=bool(out["product_preserved"][i]),
                    max_product_diff=int(out["max_product_diff"][i]),
                    timings={c: float(out[c][i]) for c in TIMING_COLUMNS if c in out},
                    quality={c: _number(out[c][i]) if c in out else None for c in QUALITY_COLUMNS},
                )
            )
        return results


def _number(value: object) -> float | None:
    number = float(value)  # type: ignore[arg-type]
    return None if number != number else number
