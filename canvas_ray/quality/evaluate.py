"""Evaluation of a finished run: ``OUTPUT/eval/metrics.json``, PNG plots and ``OUTPUT/eval/report.html``.

Reads the manifest (and ``summary.json`` when present) and measures what a reviewer asks of a run: how
many outputs are usable, whether the products stayed untouched, how much the inpainter grew products
(object expansion), how the candidate scores are distributed, how each style and category fares, and how
fast the run went. Optional reference-set metrics (FID, KID) compare the ok outputs with a reference image
set in the feature space of a transformers vision model. The report links the output images relatively,
it never copies them, so the folder can be moved or served as is.
"""

from __future__ import annotations

import io
import json
import logging
import math
import posixpath
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import quote

import fsspec
import numpy as np
import pyarrow as pa

from canvas_ray.io.manifest import read_manifest
from canvas_ray.io.outputs import join_uri, write_bytes
from canvas_ray.report import CSS, escape
from canvas_ray.stages.base import ERROR, OK, REJECTED, REVIEW, describe

log = logging.getLogger(__name__)

SCORE_COLUMNS = ("quality_score", "clip_score", "seam_energy", "color_harmony", "exposure")
LOWER_IS_BETTER = frozenset({"seam_energy", "expansion_ratio"})
STAGE_COLUMNS = (
    "fetch_s",
    "decode_s",
    "segment_s",
    "caption_s",
    "inpaint_s",
    "composite_s",
    "quality_s",
    "write_s",
)
GENERATED = (OK, REJECTED)  # rows whose expansion and attempts describe a generated image
PLOTS = ("expansion.png", "scores.png", "styles.png", "stages.png")
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
_COLORS = {OK: "#137333", REJECTED: "#b06000", ERROR: "#b3261e", "accent": "#1a73e8", "muted": "#9aa0a6"}


class EvaluationError(ValueError):
    """A run that cannot be evaluated as asked, with the reason."""


@dataclass
class Distribution:
    """Summary statistics of one column (``None`` everywhere when no row has a value)."""

    n: int
    mean: float | None = None
    min: float | None = None
    p10: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None


@dataclass
class ExpansionStats:
    """Object expansion over the generated (ok and rejected) rows; ratio = grown area / product area."""

    threshold: float
    ratio: Distribution
    px: Distribution
    above_threshold: int
    share_above_threshold: float | None
    attempts: dict[str, int]  # generations used → outputs


@dataclass
class GroupStats:
    """One row of the per-style or per-category table."""

    name: str
    n: int
    ok: int
    ok_rate: float
    preserved_rate: float | None  # preserved / ok
    mean_quality: float | None
    mean_expansion: float | None
    mean_seam: float | None


@dataclass
class ReasonCount:
    """A failure reason (numbers masked so that similar reasons group) and how often it occurred."""

    status: str
    stage: str
    reason: str
    count: int
    example: str


@dataclass
class Throughput:
    outputs_per_second: float | None
    seconds: float | None
    source: str | None  # "summary.json" (the last run) or "finished_at" (span of the manifest's rows)
    stage_mean_s: dict[str, float | None]  # per ok output


@dataclass
class ReferenceMetrics:
    """FID and KID between ok outputs and a reference set; ``reason`` says why they are null."""

    fid: float | None = None
    kid: float | None = None
    kid_std: float | None = None
    generated_images: int = 0
    reference_images: int = 0
    reference: str | None = None
    feature_model: str | None = None
    reason: str | None = "not configured: pass --reference and --feature-model"


@dataclass
class RunMetrics:
    """Everything ``metrics.json`` holds. Rates are shares in [0, 1]; ``None`` when undefined."""

    output: str
    outputs: int
    items: int
    status_counts: dict[str, int]
    ok: int
    rejected: int
    errors: int
    preserved: int
    preservation_rate_ok: float | None
    preservation_rate_all: float | None
    rejection_rate: float | None
    error_rate: float | None
    top_reasons: list[ReasonCount]
    expansion: ExpansionStats
    scores: dict[str, Distribution]
    by_style: list[GroupStats]
    by_category: list[GroupStats]
    throughput: Throughput
    reference: ReferenceMetrics
    config_fingerprints: list[str]
    evaluated_at: float = field(default_factory=time.time)
    # mask trust: `review` rows (mask_confidence below segment.min_confidence) are generated, never ok
    review: int = 0
    review_rate: float | None = None
    mask_confidence: Distribution = field(default_factory=lambda: Distribution(n=0))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


# ---- numbers -------------------------------------------------------------------------------------------


def _rows(manifest: pa.Table) -> list[dict[str, Any]]:
    """The manifest as dicts, without the columns evaluation never reads (prompts, captions: the bulk)."""
    skip = {"prompt", "negative_prompt", "caption", "title", "image_uri", "mask_uri", "placement"}
    return manifest.select([name for name in manifest.column_names if name not in skip]).to_pylist()


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _values(rows: Iterable[dict[str, Any]], column: str) -> list[float]:
    return [v for v in (_number(row.get(column)) for row in rows) if v is not None]


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def distribution(values: Sequence[float]) -> Distribution:
    if not values:
        return Distribution(n=0)
    array = np.asarray(values, dtype=np.float64)
    p10, p50, p90, p99 = (float(v) for v in np.percentile(array, [10, 50, 90, 99]))
    return Distribution(
        n=len(array),
        mean=float(array.mean()),
        min=float(array.min()),
        p10=p10,
        p50=p50,
        p90=p90,
        p99=p99,
        max=float(array.max()),
    )


def _reasons(rows: list[dict[str, Any]], limit: int = 10) -> list[ReasonCount]:
    counts: Counter[tuple[str, str, str]] = Counter()
    examples: dict[tuple[str, str, str], str] = {}
    for row in rows:
        text = (row.get("error") or "").strip() or "unknown"
        stage = text.split(":", 1)[0].strip() if ":" in text else "unknown"
        key = (str(row["status"]), stage, _NUMBER_RE.sub("#", text)[:200])
        counts[key] += 1
        examples.setdefault(key, text[:500])
    return [
        ReasonCount(status=key[0], stage=key[1], reason=key[2], count=count, example=examples[key])
        for key, count in counts.most_common(limit)
    ]


def _groups(rows: list[dict[str, Any]], column: str) -> list[GroupStats]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row.get(column) or "(none)"), []).append(row)
    table = []
    for name, members in groups.items():
        ok = [r for r in members if r["status"] == OK]
        table.append(
            GroupStats(
                name=name,
                n=len(members),
                ok=len(ok),
                ok_rate=len(ok) / len(members),
                preserved_rate=_rate(sum(r.get("product_preserved") is True for r in ok), len(ok)),
                mean_quality=_mean(_values(ok, "quality_score")),
                mean_expansion=_mean(
                    _values((r for r in members if r["status"] in GENERATED), "expansion_ratio")
                ),
                mean_seam=_mean(_values(ok, "seam_energy")),
            )
        )
    return sorted(table, key=lambda g: (-g.n, g.name))


def _throughput(rows: list[dict[str, Any]], summary: dict[str, Any] | None) -> Throughput:
    ok = [r for r in rows if r["status"] == OK]
    stages = {column.removesuffix("_s"): _mean(_values(ok, column)) for column in STAGE_COLUMNS}
    summary = summary or {}
    rate = _number(summary.get("outputs_per_second"))
    if rate is not None:
        return Throughput(rate, _number(summary.get("seconds")), "summary.json", stages)
    finished = sorted(_values(rows, "finished_at"))
    span = finished[-1] - finished[0] if len(finished) > 1 else 0.0
    if span > 0:  # outputs finished after the first one, over the time they took
        return Throughput((len(finished) - 1) / span, span, "finished_at", stages)
    return Throughput(None, None, None, stages)


def compute_metrics(
    manifest: pa.Table,
    output: str,
    summary: dict[str, Any] | None = None,
    expansion_threshold: float = 0.15,
    reference: ReferenceMetrics | None = None,
) -> RunMetrics:
    """Counts, rates, distributions, per-group tables and throughput of one manifest.

    Scores and stage times are taken over ok rows (what ships); expansion and attempts over ok and
    rejected rows (everything that was generated and measured). Null and NaN values are skipped.
    """
    rows = _rows(manifest)
    statuses = Counter(str(r["status"]) for r in rows)
    ok = [r for r in rows if r["status"] == OK]
    generated = [r for r in rows if r["status"] in GENERATED]
    preserved = sum(r.get("product_preserved") is True for r in ok)
    ratios = _values(generated, "expansion_ratio")
    above = sum(v > expansion_threshold for v in ratios)
    attempts = Counter(int(v) for v in _values(generated, "attempts"))
    return RunMetrics(
        output=output,
        outputs=len(rows),
        items=len({r["item_id"] for r in rows}),
        status_counts=dict(statuses.most_common()),
        ok=len(ok),
        rejected=statuses[REJECTED],
        errors=statuses[ERROR],
        preserved=preserved,
        preservation_rate_ok=_rate(preserved, len(ok)),
        preservation_rate_all=_rate(preserved, len(rows)),
        rejection_rate=_rate(statuses[REJECTED], len(rows)),
        error_rate=_rate(statuses[ERROR], len(rows)),
        top_reasons=_reasons([r for r in rows if r["status"] != OK]),
        expansion=ExpansionStats(
            threshold=expansion_threshold,
            ratio=distribution(ratios),
            px=distribution(_values(generated, "expansion_px")),
            above_threshold=above,
            share_above_threshold=_rate(above, len(ratios)),
            attempts={str(k): attempts[k] for k in sorted(attempts)},
        ),
        scores={column: distribution(_values(ok, column)) for column in SCORE_COLUMNS},
        by_style=_groups(rows, "style"),
        by_category=_groups(rows, "category"),
        throughput=_throughput(rows, summary),
        reference=reference or ReferenceMetrics(),
        config_fingerprints=sorted(
            {str(r["config_fingerprint"]) for r in rows if r.get("config_fingerprint")}
        ),
        review=statuses[REVIEW],
        review_rate=_rate(statuses[REVIEW], len(rows)),
        mask_confidence=distribution(_values(rows, "mask_confidence")),
    )


# ---- reference-set metrics (FID, KID) ------------------------------------------------------------------


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def trace_sqrt_product(a: np.ndarray, b: np.ndarray) -> float:
    """tr(sqrt(a·b)) for covariance matrices: scipy's ``sqrtm`` when installed, else eigen-decompositions.

    Without scipy: a·b has the eigenvalues of the symmetric PSD matrix sqrt(a)·b·sqrt(a), so the trace is
    the sum of the square roots of that matrix's eigenvalues.
    """
    try:
        from scipy import linalg
    except ImportError:
        root = _psd_sqrt(a)
        return float(np.sqrt(np.clip(np.linalg.eigvalsh(root @ b @ root), 0, None)).sum())
    product = linalg.sqrtm(a @ b)
    if not np.isfinite(product).all():  # singular product: nudge both (as pytorch-fid does)
        offset = np.eye(len(a)) * 1e-6
        product = linalg.sqrtm((a + offset) @ (b + offset))
    return float(np.real(np.trace(product)))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = images): FID on features."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least 2 feature vectors per set")
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    diff = a.mean(0) - b.mean(0)
    value = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt_product(cov_a, cov_b)
    return max(float(value), 0.0)  # a squared distance; below 0 only by rounding


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: unbiased MMD² with the kernel (x·y/d + 1)³, averaged over random subsets; (mean, std)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = min(len(a), len(b), subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 feature vectors per set")
    dim = a.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for index in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        k_xx = (x @ x.T / dim + 1) ** 3
        k_yy = (y @ y.T / dim + 1) ** 3
        k_xy = (x @ y.T / dim + 1) ** 3
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        values[index] = within - 2 * k_xy.mean()
    return float(values.mean()), float(values.std())


class ImageFeatures:
    """A transformers vision model as a feature extractor.

    Dual encoders (CLIP and kin) give ``get_image_features`` (the projected image embedding); any other
    ``AutoModel`` gives its pooled output (or the mean of its last hidden state).
    """

    def __init__(self, model: str, device: str = "auto"):
        from transformers import AutoImageProcessor, AutoModel

        from canvas_ray.models.loading import resolve_device

        self.device = resolve_device(device)
        self.model = AutoModel.from_pretrained(model).to(self.device).eval()
        self.processor = AutoImageProcessor.from_pretrained(model)

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        import torch
        from PIL import Image

        inputs = self.processor(images=[Image.fromarray(i) for i in images], return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.model.dtype)
        with torch.inference_mode():
            if hasattr(self.model, "get_image_features"):
                output = self.model.get_image_features(pixel_values=pixel_values)
                features = output if isinstance(output, torch.Tensor) else output.pooler_output
            else:
                output = self.model(pixel_values=pixel_values)
                features = getattr(output, "pooler_output", None)
                if features is None:
                    hidden = output.last_hidden_state
                    features = hidden.flatten(2).mean(-1) if hidden.ndim == 4 else hidden.mean(1)
        return features.flatten(1).float().cpu().numpy()


def _embed(
    uris: list[str],
    features: Callable[[list[np.ndarray]], np.ndarray],
    storage_options: dict[str, Any],
    batch_size: int = 16,
) -> np.ndarray:
    """Features of every readable image (unreadable ones are logged and skipped)."""
    from canvas_ray.io.images import ImageError, decode_image, rgb

    chunks, batch = [], []
    for number, uri in enumerate(uris, start=1):
        try:
            with fsspec.open(uri, "rb", **storage_options) as handle:
                batch.append(rgb(decode_image(handle.read())))
        except (OSError, ImageError) as error:
            log.warning("evaluate: skipping %s (%s)", uri, describe(error))
        if batch and (len(batch) == batch_size or number == len(uris)):
            chunks.append(features(batch))
            batch = []
    return np.concatenate(chunks) if chunks else np.zeros((0, 0))


def reference_metrics(
    manifest: pa.Table,
    output: str,
    reference: str,
    feature_model: str,
    storage_options: dict[str, Any] | None = None,
    device: str = "auto",
) -> ReferenceMetrics:
    """FID and KID of the ok outputs against a reference folder or catalog (its ok rows' images)."""
    from canvas_ray.io.catalog import read_catalog

    options = dict(storage_options or {})
    result = ReferenceMetrics(reference=reference, feature_model=feature_model, reason=None)
    try:
        catalog = read_catalog(reference, options).table
        reference_uris = [
            uri
            for uri, status in zip(
                catalog["image_uri"].to_pylist(), catalog["status"].to_pylist(), strict=True
            )
            if status == OK
        ]
        generated_uris = [
            join_uri(output, row["output_uri"])
            for row in _rows(manifest)
            if row["status"] == OK and row.get("output_uri")
        ]
        extractor = ImageFeatures(feature_model, device)
        generated = _embed(generated_uris, extractor, options)
        references = _embed(reference_uris, extractor, options)
    except (OSError, ValueError) as error:
        log.warning("evaluate: reference metrics failed: %s", describe(error))
        return replace(result, reason=f"failed: {describe(error)}")
    result = replace(result, generated_images=len(generated), reference_images=len(references))
    if len(generated) < 2 or len(references) < 2:
        return replace(result, reason="needs at least 2 readable images on each side")
    kid, kid_std = kernel_inception_distance(generated, references)
    return replace(result, fid=frechet_distance(generated, references), kid=kid, kid_std=kid_std)


# ---- plots ---------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def _no_data(axis: Any, text: str) -> None:
    axis.text(0.5, 0.5, text, ha="center", va="center", color=_COLORS["muted"], transform=axis.transAxes)
    axis.set_xticks([])
    axis.set_yticks([])


def _expansion_plot(rows: list[dict[str, Any]], threshold: float) -> bytes:
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    figure = _figure(6, 3.2)
    axis = figure.add_subplot()
    series = {
        status: _values((r for r in rows if r["status"] == status), "expansion_ratio") for status in GENERATED
    }
    if not any(series.values()):
        _no_data(axis, "no expansion measurements in this manifest")
    else:
        top = max(max(v for values in series.values() for v in values), threshold) * 1.1 or 1.0
        axis.hist(
            [series[OK], series[REJECTED]],
            bins=np.linspace(0, top, 31),
            stacked=True,
            color=[_COLORS[OK], _COLORS[REJECTED]],
            label=[f"ok ({len(series[OK])})", f"rejected ({len(series[REJECTED])})"],
        )
        axis.axvline(threshold, color=_COLORS[ERROR], linestyle="--", label=f"threshold {threshold:.0%}")
        axis.xaxis.set_major_formatter(PercentFormatter(1.0))
        axis.set_xlabel("expansion ratio (grown area / product area; lower is better)")
        axis.set_ylabel("outputs")
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(frameon=False)
    axis.set_title("Object expansion")
    return _png(figure)


def _scores_plot(rows: list[dict[str, Any]]) -> bytes:
    from matplotlib.ticker import MaxNLocator

    ok = [r for r in rows if r["status"] == OK]
    figure = _figure(13, 2.8)
    for index, column in enumerate(SCORE_COLUMNS, start=1):
        axis = figure.add_subplot(1, len(SCORE_COLUMNS), index)
        values = _values(ok, column)
        better = "lower" if column in LOWER_IS_BETTER else "higher"
        axis.set_title(f"{column.replace('_', ' ')} ({better} is better)", fontsize=9)
        if not values:
            _no_data(axis, "no CLIP model configured" if column == "clip_score" else "no data")
            continue
        axis.hist(values, bins=np.linspace(0, 1, 21), color=_COLORS["accent"])
        axis.axvline(float(np.median(values)), color="#222", linewidth=1, label="median")
        axis.set_xlim(0, 1)
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.tick_params(labelsize=8)
    return _png(figure)


def _styles_plot(groups: list[GroupStats]) -> bytes:
    figure = _figure(6, 1.4 + 0.35 * max(len(groups), 2))
    axis = figure.add_subplot()
    if not groups:
        _no_data(axis, "no outputs")
        return _png(figure)
    positions = np.arange(len(groups))
    quality = [g.mean_quality or 0.0 for g in groups]
    axis.barh(positions - 0.2, [g.ok_rate for g in groups], height=0.4, color=_COLORS[OK], label="ok rate")
    axis.barh(positions + 0.2, quality, height=0.4, color=_COLORS["accent"], label="mean quality (ok)")
    axis.set_yticks(positions, [g.name[:32] for g in groups], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_title("Per style")
    figure.legend(frameon=False, loc="outside lower center", ncols=2, fontsize=8)
    return _png(figure)


def _stages_plot(stage_mean_s: dict[str, float | None]) -> bytes:
    stages = [(name, value) for name, value in stage_mean_s.items() if value is not None]
    figure = _figure(6, 1.2 + 0.3 * max(len(stages), 2))
    axis = figure.add_subplot()
    if not stages:
        _no_data(axis, "no stage timings in this manifest")
    else:
        total = sum(value for _, value in stages) or 1.0
        names = [name for name, _ in stages]
        seconds = [value for _, value in stages]
        bars = axis.barh(names, seconds, color=_COLORS["accent"])
        axis.bar_label(bars, labels=[f"{s:.3g} s ({s / total:.0%})" for s in seconds], fontsize=8, padding=3)
        axis.invert_yaxis()
        axis.set_xlim(0, max(seconds) * 1.35 or 1.0)
        axis.set_xlabel("mean seconds per ok output")
    axis.set_title("Where the time goes")
    return _png(figure)


def render_plots(manifest: pa.Table, metrics: RunMetrics) -> dict[str, bytes]:
    """File name → PNG bytes for every plot in :data:`PLOTS` (a panel says so when it has no data)."""
    rows = _rows(manifest)
    return {
        "expansion.png": _expansion_plot(rows, metrics.expansion.threshold),
        "scores.png": _scores_plot(rows),
        "styles.png": _styles_plot(metrics.by_style),
        "stages.png": _stages_plot(metrics.throughput.stage_mean_s),
    }


# ---- report --------------------------------------------------------------------------------------------

_EVAL_CSS = """
h2{font-size:16px;margin:24px 0 8px} .cards{display:flex;gap:10px;flex-wrap:wrap;margin:12px 0}
.card{background:#fff;border:1px solid #e3e3e3;border-radius:8px;padding:10px 14px;min-width:120px}
.card .value{font-size:22px;font-weight:600} .card .label{color:#666;font-size:12px}
.card.good .value{color:#137333} .card.warn .value{color:#b06000} .card.bad .value{color:#b3261e}
.plots img{max-width:100%;background:#fff;border:1px solid #e3e3e3;border-radius:8px;margin:0 0 10px}
.plots{display:flex;gap:10px;flex-wrap:wrap;align-items:flex-start}
.sheet{display:flex;gap:10px;flex-wrap:wrap} td.num{text-align:right;font-variant-numeric:tabular-nums}
td img{max-width:64px;max-height:64px} .note{color:#666}
.rejected{color:#b06000;font-weight:600}
"""


def _fmt(value: float | None, kind: str = "num") -> str:
    if value is None:
        return "—"
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "rate":
        return f"{value:.3g}/s"
    return f"{value:.3f}"


def _src(prefix: str, uri: str) -> str:
    return escape(quote(prefix + uri, safe="/:"))


def _card(label: str, value: str, tone: str = "") -> str:
    return (
        f'<div class="card {tone}"><div class="value">{escape(value)}</div>'
        f'<div class="label">{escape(label)}</div></div>'
    )


def _tone(rate: float | None, good: float, bad: float) -> str:
    """good/warn/bad colour of a rate; ``good < bad`` means lower is better."""
    if rate is None:
        return ""
    if good < bad:
        return "good" if rate <= good else "bad" if rate >= bad else "warn"
    return "good" if rate >= good else "bad" if rate <= bad else "warn"


def _cards(metrics: RunMetrics) -> str:
    throughput = metrics.throughput
    rate = _fmt(throughput.outputs_per_second, "rate")
    cards = [
        _card("outputs", f"{metrics.outputs} ({metrics.items} items)"),
        _card("ok", str(metrics.ok), _tone(_rate(metrics.ok, metrics.outputs), 0.98, 0.8)),
        _card(
            "product preserved (of ok)",
            _fmt(metrics.preservation_rate_ok, "pct"),
            _tone(metrics.preservation_rate_ok, 1.0, 0.999),
        ),
        _card("rejected", _fmt(metrics.rejection_rate, "pct"), _tone(metrics.rejection_rate, 0.02, 0.1)),
        _card("errors", _fmt(metrics.error_rate, "pct"), _tone(metrics.error_rate, 0.0, 0.05)),
        _card("mask review", _fmt(metrics.review_rate, "pct"), _tone(metrics.review_rate, 0.05, 0.2)),
        _card("median expansion", _fmt(metrics.expansion.ratio.p50, "pct")),
        _card("median quality", _fmt(metrics.scores["quality_score"].p50)),
        _card(f"throughput ({throughput.source or 'unknown'})", rate),
    ]
    reference = metrics.reference
    if reference.fid is not None:
        cards.append(
            _card(
                f"FID ({reference.generated_images} vs {reference.reference_images} images)",
                f"{reference.fid:.3f}",
            )
        )
        cards.append(_card("KID", f"{reference.kid:.4f} ± {reference.kid_std:.4f}"))
    return f'<div class="cards">{"".join(cards)}</div>'


def _group_table(title: str, groups: list[GroupStats], table_id: str) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "name",
            "outputs",
            "ok",
            "ok rate",
            "preserved",
            "mean quality",
            "mean expansion",
            "mean seam",
        )
    )
    body = "".join(
        f"<tr><td>{escape(g.name)}</td><td class='num'>{g.n}</td><td class='num'>{g.ok}</td>"
        f"<td class='num'>{_fmt(g.ok_rate, 'pct')}</td><td class='num'>{_fmt(g.preserved_rate, 'pct')}</td>"
        f"<td class='num'>{_fmt(g.mean_quality)}</td><td class='num'>{_fmt(g.mean_expansion, 'pct')}</td>"
        f"<td class='num'>{_fmt(g.mean_seam)}</td></tr>"
        for g in groups
    )
    return f"<h2>{escape(title)}</h2><table id='{table_id}'><tr>{head}</tr>{body}</table>"


def _scores_table(metrics: RunMetrics) -> str:
    rows = [("expansion_ratio", metrics.expansion.ratio), *metrics.scores.items()]
    body = "".join(
        f"<tr><td>{escape(name)}{' ↓' if name in LOWER_IS_BETTER else ''}</td><td class='num'>{d.n}</td>"
        + "".join(f"<td class='num'>{_fmt(v)}</td>" for v in (d.mean, d.p10, d.p50, d.p90, d.max))
        + "</tr>"
        for name, d in rows
    )
    head = "".join(
        f"<th>{h}</th>" for h in ("figure (↓ lower is better)", "n", "mean", "p10", "p50", "p90", "max")
    )
    return f"<table id='distributions'><tr>{head}</tr>{body}</table>"


def _figure_html(row: dict[str, Any], prefix: str) -> str:
    scores = " · ".join(
        f"{label} {_fmt(_number(row.get(column)))}"
        for label, column in (("quality", "quality_score"), ("clip", "clip_score"), ("seam", "seam_energy"))
        if _number(row.get(column)) is not None
    )
    expansion = _number(row.get("expansion_ratio"))
    details = f"{escape(row['item_id'])} · {escape(row.get('style'))} · {escape(row.get('aspect'))}"
    return (
        f'<figure><a href="{_src(prefix, row["output_uri"])}"><img src="{_src(prefix, row["output_uri"])}" '
        f'alt="{escape(row["output_id"])}"></a><figcaption><b>{escape(scores)}</b>'
        f"{'' if expansion is None else f' · expansion {expansion:.1%}'}<br>{details}</figcaption></figure>"
    )


def _contact_sheets(rows: list[dict[str, Any]], prefix: str, top: int) -> str:
    scored = sorted(
        (
            r
            for r in rows
            if r["status"] == OK and r.get("output_uri") and _number(r.get("quality_score")) is not None
        ),
        key=lambda r: (-(_number(r["quality_score"]) or 0.0), str(r["output_id"])),
    )
    if not scored:
        return "<h2>Best and worst outputs</h2><p class='note'>No ok output has a quality score.</p>"
    best = scored[:top]
    worst = scored[top:][::-1][:top]
    sections = [f"<h2>Best {len(best)} by quality score</h2><div class='sheet' id='best'>"]
    sections += [_figure_html(r, prefix) for r in best]
    sections.append("</div>")
    if worst:
        sections.append(f"<h2>Worst {len(worst)} by quality score</h2><div class='sheet' id='worst'>")
        sections += [_figure_html(r, prefix) for r in worst]
        sections.append("</div>")
    return "".join(sections)


def _thumb(row: dict[str, Any], prefix: str) -> str:
    uri = row.get("thumb_uri")
    return f'<img src="{_src(prefix, uri)}" alt="original {escape(row["item_id"])}">' if uri else ""


def _issues(rows: list[dict[str, Any]], metrics: RunMetrics, prefix: str, limit: int = 500) -> str:
    failed = [r for r in rows if r["status"] != OK]
    if not failed:
        return "<h2>Rejected and errors</h2><p class='note'>None: every output is ok.</p>"
    reasons = "".join(
        f"<tr><td class='{escape(r.status)}'>{escape(r.status)}</td><td>{escape(r.stage)}</td>"
        f"<td>{escape(r.reason)}</td>"
        f"<td class='num'>{r.count}</td></tr>"
        for r in metrics.top_reasons
    )
    listed = "".join(
        f"<tr><td class='{escape(r['status'])}'>{escape(r['status'])}</td>"
        f"<td>{_thumb(r, prefix)}</td>"
        f"<td>{escape(r['item_id'])}</td><td>{escape(r.get('style'))}</td><td>{escape(r.get('aspect'))}</td>"
        f"<td class='num'>{_fmt(_number(r.get('expansion_ratio')), 'pct')}</td>"
        f"<td>{escape(r.get('error'))}</td></tr>"
        for r in failed[:limit]
    )
    more = (
        f"<p class='note'>… and {len(failed) - limit} more (see the manifest).</p>"
        if len(failed) > limit
        else ""
    )
    return (
        f"<h2>Rejected and errors ({len(failed)})</h2><h3>Top reasons</h3>"
        f"<table id='reasons'><tr><th>status</th><th>stage</th><th>reason</th><th>count</th></tr>"
        f"{reasons}</table><h3>Every row</h3>"
        f"<table id='issues'><tr><th>status</th><th>original</th><th>item</th><th>style</th><th>aspect</th>"
        f"<th>expansion</th><th>reason</th></tr>{listed}</table>{more}"
    )


def render_report(manifest: pa.Table, metrics: RunMetrics, prefix: str, top: int = 12) -> str:
    """``report.html``: cards, plots (``PLOTS`` beside it), tables, best/worst contact sheets, failures.

    ``prefix`` is the relative path from the report's folder to the output root (e.g. ``"../"``).
    """
    rows = _rows(manifest)
    reference = metrics.reference
    reference_line = (
        f"FID {reference.fid:.3f}, KID {reference.kid:.4f} ± {reference.kid_std:.4f} "
        f"({reference.generated_images} outputs vs {reference.reference_images} reference images, "
        f"features from {reference.feature_model})"
        if reference.fid is not None and reference.kid is not None and reference.kid_std is not None
        else f"FID / KID: {reference.reason}"
    )
    expansion = metrics.expansion
    attempts = ", ".join(f"{k}: {v}" for k, v in expansion.attempts.items()) or "—"
    fingerprints = ", ".join(metrics.config_fingerprints) or "—"
    evaluated = time.strftime("%Y-%m-%d %H:%M", time.localtime(metrics.evaluated_at))
    plots = "".join(f'<img src="{escape(name)}" alt="{escape(name[:-4])} plot">' for name in PLOTS)
    body = [
        "<h1>canvas-ray evaluation</h1>",
        f"<div class='meta'>{escape(metrics.output)} · config {escape(fingerprints)} · "
        f"evaluated {escape(evaluated)}</div>",
        _cards(metrics),
        f"<p class='note'>Expansion above the {expansion.threshold:.0%} threshold: "
        f"{expansion.above_threshold} of {expansion.ratio.n} generated "
        f"({_fmt(expansion.share_above_threshold, 'pct')}). Attempts → outputs: {escape(attempts)}. "
        f"{escape(reference_line)}.</p>",
        f"<h2>Distributions</h2><div class='plots' id='plots'>{plots}</div>",
        _scores_table(metrics),
        _group_table("By style", metrics.by_style, "by-style"),
        _group_table("By category", metrics.by_category, "by-category"),
        _contact_sheets(rows, prefix, top),
        _issues(rows, metrics, prefix),
    ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>canvas-ray evaluation</title>"
        f"<style>{CSS}{_EVAL_CSS}</style></head><body>{''.join(body)}</body></html>"
    )


# ---- the job -------------------------------------------------------------------------------------------


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
    manifest = read_manifest(request.output, options)
    if manifest.num_rows == 0:
        raise EvaluationError(
            f"no manifest under {request.output.rstrip('/')}/manifest: run canvas-ray generate first"
        )
    reference = (
        reference_metrics(
            manifest, request.output, request.reference, request.feature_model, options, request.device
        )
        if request.reference and request.feature_model
        else None
    )
    metrics = compute_metrics(
        manifest,
        request.output,
        read_summary(request.output, options),
        request.expansion_threshold,
        reference,
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
        f"mask review {metrics.review}  mask confidence p10 {_fmt(metrics.mask_confidence.p10)}  "
        f"p50 {_fmt(metrics.mask_confidence.p50)}",
        f"product preserved {metrics.preserved}/{metrics.ok} ok "
        f"({_fmt(metrics.preservation_rate_ok, 'pct')}), {_fmt(metrics.preservation_rate_all, 'pct')} of all",
        f"expansion  p50 {_fmt(ratio.p50)}  p90 {_fmt(ratio.p90)}  max {_fmt(ratio.max)}  "
        f"above {expansion.threshold:g}: {_fmt(expansion.share_above_threshold, 'pct')} "
        f"({expansion.above_threshold})",
        f"{'figure':<15}{'n':>6}{'mean':>8}{'p10':>8}{'p50':>8}{'p90':>8}",
    ]
    for name, d in metrics.scores.items():
        lines.append(f"{name:<15}{d.n:>6}" + "".join(f"{_fmt(v):>8}" for v in (d.mean, d.p10, d.p50, d.p90)))
    throughput = metrics.throughput
    lines.append(
        f"throughput {_fmt(throughput.outputs_per_second, 'rate')} ({throughput.source or 'unknown'})"
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
