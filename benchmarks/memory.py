"""Peak resident memory of the catalog job for N and 10·N items: streaming keeps it flat.

Each size runs in a fresh subprocess (its own local Ray), so peaks do not mix. A background thread samples
every ~100 ms the resident memory of the driver and all its descendants (GCS, raylet, Ray workers and
actors) and keeps the peak of the sum. RSS counts shared pages (Ray's object store, shared libraries) once
per process that touched them; ``--pss`` also records the proportional set size (each shared page split
among its users) once a second — reading it walks every process's page tables, which costs enough CPU on
a 2-core machine to slow the job it measures, so it is off by default.

    python -m benchmarks.memory              # N = 24 and 240 items, configs/weightfree.yaml, 1 output each
    python -m benchmarks.memory --n 12 --config configs/tiny.yaml

Goal: peak(10·N) / peak(N) <= 1.15. The figures also give the growth above the idle cluster (peak minus
the memory right after ``ray.init``), which is where a whole-catalog materialisation would show.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import default_json, ensure_tiny_models, machine, quiet, synthetic_catalog, write_json
from canvas_ray.config import REPO_ROOT, CanvasConfig, load_config

GOAL = 1.15


class MemorySampler:
    """Samples the summed RSS (and PSS) of this process and its descendants in a background thread."""

    def __init__(self, interval_s: float = 0.1, pss: bool = False, pss_every_s: float = 1.0):
        import psutil

        self.root = psutil.Process(os.getpid())
        self.interval_s = interval_s
        self.pss = pss
        self.pss_every = max(1, round(pss_every_s / interval_s))
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_processes = 0
        self.samples = 0
        self.last_rss = 0
        self.by_kind_at_peak: dict[str, int] = {}
        self.processes_at_peak: list[tuple[str, int]] = []  # (process title, RSS) at the peak
        self.series: list[tuple[float, int]] = []  # (seconds since start, summed RSS), about once a second
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self.started = 0.0
        self.stopped = 0.0

    def __enter__(self) -> MemorySampler:
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.stopped = time.perf_counter()

    def sample(self) -> tuple[int, int]:
        import psutil

        rss = pss = 0
        kinds: dict[str, int] = {}
        titles: list[tuple[str, int]] = []
        processes = [self.root]
        with contextlib.suppress(psutil.Error):
            processes += self.root.children(recursive=True)
        with_pss = self.pss and self.samples % self.pss_every == 0
        for process in processes:
            try:
                if with_pss:
                    info = process.memory_full_info()
                    pss += getattr(info, "pss", info.uss)
                else:
                    info = process.memory_info()
                rss += info.rss
                kind, title = _kind(process)
                kinds[kind] = kinds.get(kind, 0) + info.rss
                titles.append((title, info.rss))
            except psutil.Error:  # gone between listing and reading
                continue
        if self.samples % max(1, round(1.0 / self.interval_s)) == 0:
            self.series.append((time.perf_counter() - self.started, rss))
        self.samples += 1
        self.last_rss = rss
        if rss > self.peak_rss:
            self.peak_rss, self.by_kind_at_peak, self.peak_processes = rss, kinds, len(processes)
            self.processes_at_peak = sorted(titles, key=lambda t: -t[1])
        self.peak_pss = max(self.peak_pss, pss)
        return rss, pss

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.perf_counter()
            self.sample()
            self._stop.wait(max(0.0, self.interval_s - (time.perf_counter() - began)))

    @property
    def mean_interval_s(self) -> float:
        return (self.stopped - self.started) / max(1, self.samples)


def _kind(process: Any) -> tuple[str, str]:
    """(driver / gcs / raylet / ray worker / other, a title) from the process name and command line.

    Ray workers set their title to what they run (``ray::MapWorker(MapBatches(Inpaint))``, ``ray::IDLE``).
    """
    import psutil

    if process.pid == os.getpid():
        return "driver", "driver"
    try:
        name = process.name()
        argv = process.cmdline()
    except psutil.Error:
        return "other", "?"
    command = " ".join(argv[:3])
    title = (argv[0] if argv else name)[:70]
    if "gcs_server" in name or "gcs_server" in command:
        return "gcs", "gcs_server"
    if "raylet" in name or "raylet" in command:
        return "raylet", "raylet"
    if title.startswith("ray::") or "default_worker.py" in command:
        return "ray worker", title
    return "other", title.rsplit("/", 1)[-1]


def memory_config(path: str, all_outputs: bool) -> CanvasConfig:
    """The config, by default cut to one output per item (first default style, first aspect ratio).

    Streaming is about blocks in flight, not about how many outputs an item expands into; one output per
    item keeps the 10·N run to a few minutes on 2 cores. ``all_outputs`` keeps the config's expansion.
    """
    config = load_config(path)
    if all_outputs:
        return config
    return load_config(
        path,
        {
            "output.aspect_ratios": config.output.aspect_ratios[:1],
            "output.variants": 1,
            "styles.default": config.styles.default[:1],
        },
    )


def child(
    config_path: str, items: int, result_path: Path, interval_s: float, pss: bool, all_outputs: bool
) -> None:
    """One size in this process: catalog, Ray, the job, the peak memory; figures to ``result_path``."""
    import ray

    from canvas_ray.batch import GenerateRequest, run_generate

    quiet()
    config = memory_config(config_path, all_outputs)
    with tempfile.TemporaryDirectory(prefix=f"bench-memory-{items}-") as tmp:
        catalog = synthetic_catalog(Path(tmp) / "catalog", items)
        with MemorySampler(interval_s, pss=pss) as sampler:
            before = sampler.sample()[0]
            started = time.perf_counter()
            ray.init(
                num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False
            )
            time.sleep(3.0)  # let the prestarted workers settle: this is the idle cluster
            idle = sampler.sample()[0]
            job_started = time.perf_counter()
            request = GenerateRequest(
                config=config, catalog=str(catalog), output=f"{tmp}/out", progress=False
            )
            with contextlib.redirect_stdout(io.StringIO()):
                summary = run_generate(request)
            job_s = time.perf_counter() - job_started
            ray.shutdown()
    mb = 1 / 2**20
    record = {
        "items": items,
        "outputs": summary["outputs"],
        "ok": summary["ok"],
        "job_s": round(job_s, 2),
        "total_s": round(time.perf_counter() - started, 2),
        "peak_rss_mb": round(sampler.peak_rss * mb, 1),
        "peak_pss_mb": round(sampler.peak_pss * mb, 1) if sampler.pss else None,
        "driver_before_ray_mb": round(before * mb, 1),
        "idle_cluster_rss_mb": round(idle * mb, 1),
        "growth_over_idle_mb": round((sampler.peak_rss - idle) * mb, 1),
        "peak_rss_by_kind_mb": {k: round(v * mb, 1) for k, v in sorted(sampler.by_kind_at_peak.items())},
        "processes_at_peak": sampler.peak_processes,
        "peak_rss_by_process_mb": [[t, round(r * mb, 1)] for t, r in sampler.processes_at_peak],
        "rss_series_mb": [[round(t, 1), round(r * mb, 1)] for t, r in sampler.series],
        "samples": sampler.samples,
        "mean_sample_interval_s": round(sampler.mean_interval_s, 3),
    }
    result_path.write_text(json.dumps(record))


def quarter_peaks(series: list[list[float]]) -> list[float]:
    """The highest summed RSS in each quarter of a run: flat quarters mean memory does not grow with time."""
    if not series:
        return []
    end = series[-1][0] or 1.0
    peaks = [0.0] * 4
    for seconds, rss in series:
        quarter = min(3, int(4 * seconds / end))
        peaks[quarter] = max(peaks[quarter], rss)
    return peaks


def run_size(config_path: str, items: int, interval_s: float, pss: bool, all_outputs: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-memory-result-") as tmp:
        result = Path(tmp) / "result.json"
        command = [
            sys.executable,
            "-m",
            "benchmarks.memory",
            "--child",
            "--config",
            config_path,
            "--n",
            str(items),
            "--interval",
            str(interval_s),
            "--result",
            str(result),
            *(["--pss"] if pss else []),
            *(["--all-outputs"] if all_outputs else []),
        ]
        print(f"  {items} items in a fresh process ...", flush=True)
        completed = subprocess.run(command, cwd=REPO_ROOT, check=False)
        if completed.returncode != 0 or not result.is_file():
            raise SystemExit(f"the {items}-item run failed (exit {completed.returncode})")
        record: dict[str, Any] = json.loads(result.read_text())
        return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "weightfree.yaml"))
    parser.add_argument(
        "--n", type=int, default=24, help="the small catalog; the large one is 10x (default 24)"
    )
    parser.add_argument("--factor", type=int, default=10, help="large catalog = factor x n (default 10)")
    parser.add_argument("--interval", type=float, default=0.1, help="sampling interval in seconds")
    parser.add_argument("--pss", action="store_true", help="also sample PSS (once a second; costs CPU)")
    parser.add_argument(
        "--all-outputs", action="store_true", help="every style x aspect x variant of the config (slower)"
    )
    parser.add_argument("--json", default=None, help="figures file (default benchmarks/results/memory.json)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.config, args.n, Path(args.result), args.interval, args.pss, args.all_outputs)
        return 0
    quiet()
    ensure_tiny_models(load_config(args.config))
    info = machine()
    print(f"memory benchmark: config {args.config}, {info['cpus']} CPUs, load average {info['load_avg_1m']}")
    small = run_size(args.config, args.n, args.interval, args.pss, args.all_outputs)
    large = run_size(args.config, args.factor * args.n, args.interval, args.pss, args.all_outputs)
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    pss_ratio = (
        large["peak_pss_mb"] / small["peak_pss_mb"] if small["peak_pss_mb"] and large["peak_pss_mb"] else None
    )
    print("-" * 78)
    print(
        f"{'items':>7}{'outputs':>9}{'job s':>8}{'peak RSS MB':>13}{'peak PSS MB':>13}"
        f"{'idle MB':>9}{'growth MB':>11}"
    )
    for fig in (small, large):
        pss = f"{fig['peak_pss_mb']:.0f}" if fig["peak_pss_mb"] is not None else "n/a"
        print(
            f"{fig['items']:7d}{fig['outputs']:9d}{fig['job_s']:8.1f}{fig['peak_rss_mb']:13.0f}{pss:>13}"
            f"{fig['idle_cluster_rss_mb']:9.0f}{fig['growth_over_idle_mb']:11.0f}"
        )
    for fig in (small, large):
        fig["rss_quarter_peaks_mb"] = quarter_peaks(fig["rss_series_mb"])
        quarters = " / ".join(f"{q:.0f}" for q in fig["rss_quarter_peaks_mb"])
        print(f"{fig['items']}-item run, highest RSS MB in each quarter of its time: {quarters}")
    for fig in (small, large):
        print(f"at the {fig['items']}-item peak ({fig['processes_at_peak']} processes), RSS MB by process:")
        for title, rss in fig["peak_rss_by_process_mb"]:
            print(f"    {rss:8.0f}  {title}")
    print(
        f"ratio peak({args.factor}N) / peak(N): RSS {ratio:.3f}"
        + (f", PSS {pss_ratio:.3f}" if pss_ratio else "")
    )
    print(f"goal <= {GOAL}: {'met' if ratio <= GOAL else 'NOT met'}")
    record = {
        "benchmark": "memory",
        "config": args.config,
        "outputs_per_item": "config" if args.all_outputs else 1,
        "machine": info,
        "small": small,
        "large": large,
        "ratio_rss": round(ratio, 4),
        "ratio_pss": round(pss_ratio, 4) if pss_ratio else None,
        "goal": GOAL,
        "goal_met": ratio <= GOAL,
    }
    write_json(args.json or default_json("memory"), record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
