"""What every benchmark shares: the synthetic catalog, machine facts, the JSON record, small statistics."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from canvas_ray.config import REPO_ROOT, CanvasConfig

RESULTS = REPO_ROOT / "benchmarks" / "results"
IMAGES = REPO_ROOT / "docs" / "img"
SAMPLE_CATALOG = REPO_ROOT / "examples" / "catalog" / "catalog.jsonl"


def quiet() -> None:
    """Hide library chatter (weight-loading bars, CLIP truncation notices, Ray Data INFO lines)."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
    except ImportError:
        pass
    with contextlib.suppress(ImportError, AttributeError):
        import ray.data  # configures its loggers on import; quieten them afterwards

        # advice lines (e.g. "set memory=..." for actor pools) would interleave with the figures
        ray.data.DataContext.get_current().issue_detectors_config.detectors = []
    for name in ("ray", "ray.data", "ray.serve", "canvas_ray"):
        logging.getLogger(name).setLevel(logging.WARNING)


def default_json(name: str) -> Path:
    return RESULTS / f"{name}.json"


def machine() -> dict[str, Any]:
    """Facts a reader needs to compare figures: CPUs, memory, load, versions, GPU (if any)."""
    import psutil
    import ray
    import torch

    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "ray": ray.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def write_json(path: str | Path, record: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=_plain) + "\n")
    print(f"figures written to {path}")
    return path


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def ensure_tiny_models(config: CanvasConfig) -> None:
    """Build the tiny random models a config points at (``.tiny-models``) if they are missing."""
    from canvas_ray.models.tiny import build_tiny_models

    for stage in (config.segment, config.caption, config.inpaint):
        model = stage.model
        if not model or Path(model).exists():
            continue
        folder = Path(model)
        if folder.parent.name != ".tiny-models":
            raise SystemExit(f"model folder {model} does not exist (and is not a tiny-model folder)")
        print(f"building tiny models into {folder.parent} ...")
        build_tiny_models(folder.parent)


def synthetic_catalog(folder: Path, items: int, source: Path = SAMPLE_CATALOG) -> Path:
    """``items`` rows cycling over the sample catalog's products, each under a new item_id and image file.

    Every row gets its own image file (a copy), so fetch and decode do real work per item; the products,
    their sizes and metadata repeat the 12 sample products.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    lines = []
    for index in range(items):
        row = dict(rows[index % len(rows)])
        image = source.parent / row["image_uri"]
        name = f"bench-{index:05d}{image.suffix}"
        shutil.copyfile(image, folder / "images" / name)
        row.update(item_id=f"bench-{index:05d}", image_uri=f"images/{name}", style="")
        lines.append(json.dumps(row))
    catalog = folder / "catalog.jsonl"
    catalog.write_text("\n".join(lines) + "\n")
    return catalog


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def fmt_ratio(value: float | None, goal: str) -> str:
    return "n/a" if value is None else f"{value:.2f}  (goal {goal})"
