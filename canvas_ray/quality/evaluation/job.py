"""The evaluation job: stream a run's manifest, write ``metrics.json``, the plots and ``report.html``.

Each step (metrics, reference features, plots, report) streams the manifest on its own
(:meth:`~canvas_ray.io.manifest.Manifest.scan`, only the columns it needs), so memory is bounded
whatever the manifest's size.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field, replace
from typing import Any

import fsspec

from canvas_ray.io.manifest import Manifest
from canvas_ray.io.outputs import join_uri, write_bytes
from canvas_ray.quality.evaluation.html import fmt, render_report
from canvas_ray.quality.evaluation.metrics import RunMetrics, compute_metrics
from canvas_ray.quality.evaluation.plots import render_plots
from canvas_ray.quality.evaluation.reference import reference_metrics


class EvaluationError(ValueError):
    """A run that cannot be evaluated as asked, with the reason."""


@dataclass
class EvaluateRequest:
    """What ``canvas-ray evaluate`` asks for.

    Args:
        output (`str`): the run's output root (any fsspec URI).
        out (`str`, *optional*): where eval files go; default ``OUTPUT/eval``.
        expansion_threshold (`float`, defaults to 0.15): the guard's threshold, for the share above it.
        reference (`str`, *optional*): a reference image folder or catalog, for FID and KID.
        feature_model (`str`, *optional*): a transformers vision model (hub id or folder) for the features.
        top (`int`, defaults to 12): best and worst ok outputs shown in the report.
        device (`str`, defaults to "auto"): where the feature model runs.
    """

    output: str
    out: str | None = None
    expansion_threshold: float = 0.15
    reference: str | None = None
    feature_model: str | None = None
    top: int = 12
    storage_options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.expansion_threshold < 0:
            raise EvaluationError(f"--expansion-threshold must be >= 0, got {self.expansion_threshold}")
        if self.top < 0:
            raise EvaluationError(f"--top must be >= 0, got {self.top}")
        if bool(self.reference) != bool(self.feature_model):
            raise EvaluationError("--reference and --feature-model go together (FID/KID need both)")

    @property
    def out_dir(self) -> str:
        return (self.out or join_uri(self.output, "eval")).rstrip("/")


@dataclass
class EvaluationResult:
    metrics: RunMetrics
    out_dir: str
    report_uri: str
    metrics_uri: str
    plot_uris: list[str]


def read_summary(output: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """``OUTPUT/summary.json`` as written by the batch job, or ``None`` when absent or unreadable."""
    try:
        with fsspec.open(join_uri(output, "summary.json"), "rb", **dict(storage_options or {})) as handle:
            summary = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def relative_prefix(output: str, out_dir: str, storage_options: dict[str, Any] | None = None) -> str:
    """How ``out_dir`` reaches files under ``output``: a relative path on one filesystem, else the URI."""
    options = dict(storage_options or {})
    output_fs, output_path = fsspec.core.url_to_fs(output, **options)
    out_fs, out_path = fsspec.core.url_to_fs(out_dir, **options)
    if output_fs.protocol != out_fs.protocol:
        return output.rstrip("/") + "/"
    relative = posixpath.relpath(output_path, out_path)
    return "" if relative == "." else relative + "/"


def evaluate_run(request: EvaluateRequest) -> EvaluationResult:
    """Evaluate ``request.output``: metrics.json, the plots and report.html under ``request.out_dir``."""
    options = dict(request.storage_options)
    manifest = Manifest(request.output, options)  # streamed by each step below, never loaded whole
    metrics = compute_metrics(
        manifest, request.output, read_summary(request.output, options), request.expansion_threshold
    )
    if metrics.outputs == 0:
        raise EvaluationError(
            f"no manifest under {request.output.rstrip('/')}/manifest: run canvas-ray generate first"
        )
    if request.reference and request.feature_model:
        metrics = replace(
            metrics,
            reference=reference_metrics(
                manifest, request.output, request.reference, request.feature_model, options, request.device
            ),
        )
    out_dir = request.out_dir
    plot_uris = []
    for name, data in render_plots(manifest, metrics).items():
        plot_uris.append(join_uri(out_dir, name))
        write_bytes(plot_uris[-1], data, options)
    metrics_uri, report_uri = join_uri(out_dir, "metrics.json"), join_uri(out_dir, "report.html")
    write_bytes(metrics_uri, json.dumps(metrics.to_dict(), indent=2, allow_nan=False).encode(), options)
    prefix = relative_prefix(request.output, out_dir, options)
    write_bytes(report_uri, render_report(manifest, metrics, prefix, request.top).encode(), options)
    return EvaluationResult(metrics, out_dir, report_uri, metrics_uri, plot_uris)


def format_summary(metrics: RunMetrics) -> str:
    """The short table ``canvas-ray evaluate`` prints."""
    expansion = metrics.expansion
    ratio = expansion.ratio
    lines = [
        f"canvas-ray evaluate  {metrics.output}",
        f"outputs {metrics.outputs} (items {metrics.items})  ok {metrics.ok}  rejected {metrics.rejected}"
        f"  errors {metrics.errors}",
        f"mask review {metrics.review}  mask confidence p10 {fmt(metrics.mask_confidence.p10)}  "
        f"p50 {fmt(metrics.mask_confidence.p50)}",
        f"product preserved {metrics.preserved}/{metrics.ok} ok "
        f"({fmt(metrics.preservation_rate_ok, 'pct')}), {fmt(metrics.preservation_rate_all, 'pct')} of all",
        f"expansion  p50 {fmt(ratio.p50)}  p90 {fmt(ratio.p90)}  max {fmt(ratio.max)}  "
        f"above {expansion.threshold:g}: {fmt(expansion.share_above_threshold, 'pct')} "
        f"({expansion.above_threshold})",
        f"{'figure':<15}{'n':>6}{'mean':>8}{'p10':>8}{'p50':>8}{'p90':>8}",
    ]
    for name, d in metrics.scores.items():
        lines.append(f"{name:<15}{d.n:>6}" + "".join(f"{fmt(v):>8}" for v in (d.mean, d.p10, d.p50, d.p90)))
    throughput = metrics.throughput
    lines.append(
        f"throughput {fmt(throughput.outputs_per_second, 'rate')} ({throughput.source or 'unknown'})"
    )
    reference = metrics.reference
    if reference.fid is not None:
        lines.append(
            f"FID {reference.fid:.3f}  KID {reference.kid:.4f} ± {reference.kid_std:.4f}  "
            f"({reference.generated_images} vs {reference.reference_images} images)"
        )
    else:
        lines.append(f"FID/KID: {reference.reason}")
    for reason in metrics.top_reasons[:5]:
        lines.append(f"  {reason.count:>4} × {reason.status}: {reason.example[:100]}")
    return "\n".join(lines)
