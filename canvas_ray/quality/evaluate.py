"""Evaluation of a finished run: ``OUTPUT/eval/metrics.json``, PNG plots and ``OUTPUT/eval/report.html``.

The public entry points, re-exported from :mod:`canvas_ray.quality.evaluation` (metrics, reference-set
features, plots, HTML and the job live there, one concern per module).
"""

from __future__ import annotations

from canvas_ray.quality.evaluation.html import render_report
from canvas_ray.quality.evaluation.job import (
    EvaluateRequest,
    EvaluationError,
    EvaluationResult,
    evaluate_run,
    format_summary,
    read_summary,
    relative_prefix,
)
from canvas_ray.quality.evaluation.metrics import RunMetrics, compute_metrics
from canvas_ray.quality.evaluation.plots import PLOTS, render_plots
from canvas_ray.quality.evaluation.reference import (
    ImageFeatures,
    frechet_distance,
    kernel_inception_distance,
    reference_metrics,
    trace_sqrt_product,
)

__all__ = [
    "PLOTS",
    "EvaluateRequest",
    "EvaluationError",
    "EvaluationResult",
    "ImageFeatures",
    "RunMetrics",
    "compute_metrics",
    "evaluate_run",
    "format_summary",
    "frechet_distance",
    "kernel_inception_distance",
    "read_summary",
    "reference_metrics",
    "relative_prefix",
    "render_plots",
    "render_report",
    "trace_sqrt_product",
]
