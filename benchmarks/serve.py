"""The Serve app against the same stages called in-process, and ``@serve.batch`` on against off.

1. Latency: p50/p95 of ``POST /v1/backgrounds`` (one image back, ``Accept: image/png``), one request at a
   time, against the same request through ``LocalPipeline`` in this process (decode → stages → PNG
   encode), with the same torch thread count as a replica (1). Overhead = p50(HTTP) − p50(in-process),
   measured ``--runs`` times (default 3), the two alternating request by request (so a slower spell of
   the machine hits both), and reported as the median of the runs, so that one noisy run can neither
   pass nor fail it; goal <= 5 ms. Measured on the app without batching (``serve.max_batch_size: 1``),
   whose stages do not wait for a batch to fill, for each ``serve.colocate`` in one run (``--colocate``):
   ``split`` (a deployment per model stage: three hand-offs, the graph of before), ``chained`` (two),
   ``models`` (one), ``ingress`` (none), and the ratio of each to ``split``. Beside it, the serving layer
   outside the models: the same difference with the time inside the model stages taken out of both
   sides (a replica's ``.inside`` timings, the in-process model stages' ``*_s`` columns), so that the
   models running faster or slower in one process than in the other does not hide or add overhead.
   Where the time goes comes from the service's own ``Server-Timing`` header: the HTTP proxy (latency −
   the ingress's total), waiting for a slot, parsing, each stage as the ingress sees it, the hand-off to
   each model deployment (its round trip − the time inside the stage) and the PNG encode.
2. Throughput at concurrency 16: requests/s with ``@serve.batch`` on (``max_batch_size`` 16) and off
   (``max_batch_size`` 1). Goal: the gain on/off >= 0.9 × the in-process ceiling (the same stages run
   on 16 requests as one batch in this process, against one at a time), since batching cannot gain
   more than the stages themselves do on this hardware.

    python -m benchmarks.serve                                    # tiny neural models (configs/tiny.yaml)
    python -m benchmarks.serve --colocate chained ingress --runs 5
    python -m benchmarks.serve --requests 32 --latency-requests 20 --config configs/weightfree.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import time
from typing import Any

import numpy as np

from benchmarks.common import default_json, ensure_tiny_models, machine, percentile, quiet, write_json
from canvas_ray.config import REPO_ROOT, CanvasConfig, load_config
from canvas_ray.config_serve import Colocate
from canvas_ray.testing import product_png
from serve.outcomes import parse_server_timing

OVERHEAD_GOAL_MS = 5.0
BATCH_GAIN_SHARE_GOAL = 0.9  # of the in-process batching ceiling
SMALL = {"num_cpus": 0.1, "concurrency": 1, "batch_size": 16}


def bench_config(path: str, max_batch_size: int, wait_s: float, colocate: str | None = None) -> CanvasConfig:
    overrides: dict[str, Any] = {f"{s}.resources": dict(SMALL) for s in ("segment", "caption", "inpaint")}
    overrides["composite.resources"] = dict(SMALL)
    overrides["serve.max_batch_size"] = max_batch_size
    overrides["serve.batch_wait_timeout_s"] = wait_s
    if colocate:
        overrides["serve.colocate"] = colocate
    return load_config(path, overrides)


FIELDS = {"style": "studio white", "n": "1", "aspect_ratios": "1:1", "seed": "7"}


class InProcess:
    """The request the ingress builds, through ``LocalPipeline`` in this process, then the PNG encode,
    with the torch thread count of a replica (1)."""

    def __init__(self, config: CanvasConfig, image: bytes):
        from canvas_ray.pipeline import LocalPipeline
        from serve.app import serve_limits_config

        self.config = config
        self.pipeline = LocalPipeline(serve_limits_config(config))
        self.item = {
            "item_id": "upload-bench",
            "style": FIELDS["style"],
            "variants": 1,
            "aspect_ratios": FIELDS["aspect_ratios"],
            "seed": int(FIELDS["seed"]),
            "title": "",
            "image_bytes": image,
        }

    def one_thread(self) -> Any:
        import contextlib

        import torch

        @contextlib.contextmanager
        def scope() -> Any:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # what a replica with a fractional CPU gets (OMP_NUM_THREADS=1)
            try:
                yield
            finally:
                torch.set_num_threads(threads)

        return scope()

    def once(self) -> tuple[float, float, float]:
        """Seconds of one request, the part of it spent inside the stages (their ``*_s`` columns), and
        the part inside the model stages (what a Serve replica's ``.inside`` timing counts)."""
        from canvas_ray.io.images import encode_image
        from canvas_ray.pipeline import items_batch
        from canvas_ray.schema import TIMING_COLUMNS
        from canvas_ray.spec import model_stages, timing_columns

        started = time.perf_counter()
        out = self.pipeline.run_batch(items_batch([dict(self.item)]))
        if list(out["status"]) != ["ok"]:
            raise RuntimeError(f"in-process request failed: {list(out['error'])}")
        encode_image(out["result"][0], "png", self.config.output.quality)
        seconds = time.perf_counter() - started
        model = [c for name in model_stages() for c in timing_columns(name) if c in out]
        stage_s = sum(float(out[c][0]) for c in TIMING_COLUMNS if c in out)
        return seconds, stage_s, sum(float(out[c][0]) for c in model)

    def batched(self, batch: int) -> float:
        """Seconds per request when ``batch`` requests go through the stages as one batch: the most that
        batching model calls can gain in this process, whatever the serving layer does."""
        from canvas_ray.io.images import encode_image
        from canvas_ray.pipeline import items_batch

        items = [dict(self.item, item_id=f"upload-bench-{i}", seed=i) for i in range(batch)]
        with self.one_thread():
            self.pipeline.run_batch(items_batch(items[:2]))  # warm the batched code paths
            started = time.perf_counter()
            out = self.pipeline.run_batch(items_batch(items))
            for result in out["result"]:
                encode_image(result, "png", self.config.output.quality)
        return (time.perf_counter() - started) / batch


def _post(client: Any, path: str, image: bytes) -> Any:
    files = [(k, (None, v)) for k, v in FIELDS.items()] + [("image", ("p.png", image, "image/png"))]
    return client.post(path, files=files, headers={"Accept": "image/png"})


def round_trips(base: str, app: str, requests: int, deployment: str, prefix: str = "") -> dict[str, float]:
    """The serving layer alone: p50 of ``GET /healthz`` (proxy + ingress, no stage) and of a deployment
    handle call from the driver (``ping``; the ingress makes one such hop per model deployment)."""
    import httpx
    from ray import serve as ray_serve

    health, handle_calls = [], []
    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(requests):
            started = time.perf_counter()
            client.get(f"{prefix}/healthz").raise_for_status()
            health.append(time.perf_counter() - started)
    handle = ray_serve.get_deployment_handle(deployment, app_name=app)
    handle.ping.remote().result()
    for _ in range(requests):
        started = time.perf_counter()
        handle.ping.remote().result()
        handle_calls.append(time.perf_counter() - started)
    return {
        "healthz_p50_ms": round(1000 * percentile(health, 50), 2),
        "handle_call_p50_ms": round(1000 * percentile(handle_calls, 50), 2),
    }


def interleaved_latency(
    local: InProcess, base: str, prefixes: dict[str, str], image: bytes, requests: int, warmup: int
) -> dict[str, Any]:
    """One request in this process, then the same over HTTP to each app (``prefixes``: mode → route
    prefix, in an order that turns by one each time), ``requests`` times after ``warmup`` rounds: the
    seconds of each, the in-process stage seconds, and each HTTP answer's ``Server-Timing`` (ms)."""
    import httpx

    out: dict[str, Any] = {"local": [], "stage_s": [], "model_s": [], "http": {m: [] for m in prefixes}}
    out["timings"] = {m: [] for m in prefixes}
    modes = list(prefixes)
    with httpx.Client(base_url=base, timeout=120) as client, local.one_thread():
        for index in range(warmup + requests):
            seconds, stage_s, model_s = local.once()
            measured = index >= warmup
            if measured:
                out["local"].append(seconds)
                out["stage_s"].append(stage_s)
                out["model_s"].append(model_s)
            turn = index % len(modes)
            for mode in modes[turn:] + modes[:turn]:
                started = time.perf_counter()
                response = _post(client, f"{prefixes[mode]}/v1/backgrounds", image)
                elapsed = time.perf_counter() - started
                if response.status_code != 200 or response.headers["content-type"] != "image/png":
                    raise RuntimeError(f"{mode}: HTTP {response.status_code}: {response.text[:300]}")
                if measured:
                    out["http"][mode].append(elapsed)
                    out["timings"][mode].append(
                        parse_server_timing(response.headers.get("server-timing", ""))
                    )
    return out


def http_latency(base: str, image: bytes, requests: int, warmup: int) -> list[float]:
    """Seconds per request over HTTP alone."""
    import httpx

    times = []
    with httpx.Client(base_url=base, timeout=120) as client:
        for index in range(warmup + requests):
            started = time.perf_counter()
            response = _post(client, "/v1/backgrounds", image)
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
            if index >= warmup:
                times.append(time.perf_counter() - started)
    return times


def breakdown(times: list[float], timings: list[dict[str, float]]) -> dict[str, float]:
    """Medians (ms) of where an HTTP request's time went, from the service's ``Server-Timing``."""
    from canvas_ray.spec import model_stages

    rows: dict[str, list[float]] = {}
    for latency, timing in zip(times, timings, strict=True):
        parts = {"http_proxy_and_client": 1000 * latency - timing.get("total", 0.0)}
        for name, ms in timing.items():
            if name == "total" or name.endswith(".inside"):
                continue
            if name + ".inside" in timing or name in model_stages():  # a model deployment (or a chain)
                inside = timing.get(name + ".inside", 0.0)
                parts[f"{name}_inside"] = inside
                parts[f"{name}_handoff"] = ms - inside
            else:
                parts[name] = ms
        for name, ms in parts.items():
            rows.setdefault(name, []).append(ms)
    return {name: round(percentile(values, 50), 2) for name, values in rows.items()}


async def _throughput(base: str, images: list[bytes], requests: int, concurrency: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:

        async def worker() -> None:
            for index in counter:
                started = time.perf_counter()
                response = await _post(client, "/v1/backgrounds", images[index % len(images)])
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {
        "requests": requests,
        "concurrency": concurrency,
        "wall_s": round(wall, 3),
        "requests_per_s": round(requests / wall, 4),
        "latency_p50_ms": round(1000 * percentile(latencies, 50), 2),
        "latency_p95_ms": round(1000 * percentile(latencies, 95), 2),
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
    }


def summary(times: list[float]) -> dict[str, float]:
    return {
        "n": len(times),
        "p50_ms": round(1000 * percentile(times, 50), 2),
        "p95_ms": round(1000 * percentile(times, 95), 2),
        "mean_ms": round(1000 * sum(times) / len(times), 2),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def deploy(serve: Any, config: CanvasConfig, name: str, base: str, prefix: str = "") -> float:
    """Deploy the app at ``prefix`` (``""``: the root) and wait for its /readyz; seconds it took."""
    import httpx

    from serve.app import build_app

    started = time.perf_counter()
    serve.run(build_app(config), name=name, route_prefix=prefix or "/")
    with httpx.Client(base_url=base, timeout=30) as client:
        while client.get(f"{prefix}/readyz").status_code != 200:
            time.sleep(0.2)
    return time.perf_counter() - started


def model_deployments(colocate: Colocate) -> list[str]:
    """The model deployments of a ``serve.colocate`` mode, in pipeline order (none for ``ingress``)."""
    from serve.deployments import INGRESS, stage_homes

    return [home for home in dict.fromkeys(stage_homes(colocate).values()) if home != INGRESS]


def inpaint_batch_sizes(app: str, colocate: Colocate) -> list[int]:
    """Requests per call of the inpaint stage, in whichever replica runs it."""
    from ray import serve as ray_serve

    from serve.deployments import stage_homes

    handle = ray_serve.get_deployment_handle(stage_homes(colocate)["inpaint"], app_name=app)
    return list(handle.batch_sizes.remote("inpaint").result())


def throughput(
    serve: Any, config: CanvasConfig, name: str, base: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Requests/s at --concurrency, and how many requests each inpaint call carried."""
    images = [product_png(args.size, args.size, seed) for seed in range(args.concurrency)]
    asyncio.run(_throughput(base, images, args.concurrency, args.concurrency))  # warm every code path
    colocate = config.serve.colocate
    before = len(inpaint_batch_sizes(name, colocate))
    figures = asyncio.run(_throughput(base, images, args.requests, args.concurrency))
    sizes = inpaint_batch_sizes(name, colocate)[before:]
    return {
        "max_batch_size": config.serve.max_batch_size,
        "batch_wait_timeout_s": config.serve.batch_wait_timeout_s,
        **figures,
        "inpaint_requests_per_call_mean": round(float(np.mean(sizes)), 2) if sizes else None,
        "inpaint_requests_per_call_max": int(max(sizes)) if sizes else None,
    }


def outside_models_ms(pooled: dict[str, Any], mode: str) -> float:
    """Median (HTTP latency − time inside the model stages) − median (in-process latency − the same), ms."""
    inside = [sum(v for k, v in t.items() if k.endswith(".inside")) / 1000 for t in pooled["timings"][mode]]
    http = np.subtract(pooled["http"][mode], inside)
    local = np.subtract(pooled["local"], pooled["model_s"])
    return round(1000 * float(np.median(http) - np.median(local)), 2)


def colocation_latency(
    serve: Any,
    local: InProcess,
    modes: list[Colocate],
    base: str,
    image: bytes,
    args: argparse.Namespace,
    wait: float,
) -> dict[str, dict[str, Any]]:
    """Deploy the app without batching once per ``serve.colocate`` mode (side by side, one route prefix
    each) and measure ``--runs`` interleaved runs: per mode, each run's p50s and overhead (against the
    same run's in-process p50), their median, where the HTTP time went, and the serving floor."""
    prefixes: dict[str, str] = {mode: f"/{mode}" for mode in modes}
    deploy_s = {
        m: deploy(serve, bench_config(args.config, 1, wait, m), f"bench-{m}", base, p)
        for m, p in prefixes.items()
    }
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    pooled: dict[str, Any] = {"local": [], "stage_s": [], "model_s": [], "http": {m: [] for m in modes}}
    pooled["timings"] = {m: [] for m in modes}
    floors: dict[str, dict[str, float] | None] = {}
    try:
        for run in range(args.runs):
            warmup = args.warmup if run == 0 else 1
            measured = interleaved_latency(local, base, prefixes, image, args.latency_requests, warmup)
            inproc_p50 = 1000 * percentile(measured["local"], 50)
            pooled["local"] += measured["local"]
            pooled["stage_s"] += measured["stage_s"]
            pooled["model_s"] += measured["model_s"]
            for mode in modes:
                http_p50 = 1000 * percentile(measured["http"][mode], 50)
                runs[mode].append(
                    {
                        "in_process_p50_ms": round(inproc_p50, 2),
                        "http_p50_ms": round(http_p50, 2),
                        "overhead_p50_ms": round(http_p50 - inproc_p50, 2),
                    }
                )
                pooled["http"][mode] += measured["http"][mode]
                pooled["timings"][mode] += measured["timings"][mode]
        for mode in modes:
            deployments = model_deployments(mode)
            floors[mode] = (
                round_trips(base, f"bench-{mode}", args.latency_requests, deployments[0], prefixes[mode])
                if deployments
                else None
            )
    finally:
        for mode in modes:
            serve.delete(f"bench-{mode}")
    in_process = summary(pooled["local"])
    in_process["stage_time_p50_ms"] = round(1000 * percentile(pooled["stage_s"], 50), 2)
    figures: dict[str, dict[str, Any]] = {}
    for mode in modes:
        where = breakdown(pooled["http"][mode], pooled["timings"][mode])
        figures[mode] = {
            "model_deployments": (deployments := model_deployments(mode)),
            "hand_offs": len(deployments),
            "runs": runs[mode],
            "overhead_p50_ms": round(float(np.median([r["overhead_p50_ms"] for r in runs[mode]])), 2),
            # the same request in this process and over HTTP, back to back: the median of the differences
            "paired_overhead_ms": round(
                1000 * float(np.median(np.subtract(pooled["http"][mode], pooled["local"]))), 2
            ),
            # the same, with the time inside the model stages taken out of both sides (in a replica, from
            # its .inside timings; here, from the model stages' *_s columns): the serving layer alone,
            # whatever the models' speed in one process or the other
            "outside_models_ms": outside_models_ms(pooled, mode),
            "hand_off_ms": round(sum(ms for part, ms in where.items() if part.endswith("_handoff")), 2),
            "where_the_time_goes_ms": where,
            "serving_floor": floors[mode],
            "deploy_s": round(deploy_s[mode], 2),
            "in_process": in_process,
            "http": summary(pooled["http"][mode]),
        }
    return figures


def main(argv: list[str] | None = None) -> int:
    from canvas_ray.spec import COLOCATE

    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "tiny.yaml"))
    parser.add_argument("--colocate", nargs="+", choices=COLOCATE, default=list(COLOCATE))
    parser.add_argument("--latency-requests", type=int, default=15, help="request pairs per run")
    parser.add_argument("--runs", type=int, default=3, help="paired in-process/HTTP latency runs per mode")
    parser.add_argument("--requests", type=int, default=48, help="requests per throughput run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16, help="max_batch_size with batching on")
    parser.add_argument("--wait", type=float, default=None, help="batch_wait_timeout_s (default: config's)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=160, help="product photo side in pixels")
    parser.add_argument("--json", default=None, help="figures file (default benchmarks/results/serve.json)")
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3 (the overhead is the median of the runs)")
    quiet()
    base_config = load_config(args.config)
    ensure_tiny_models(base_config)
    shipped = base_config.serve.colocate
    modes = list(dict.fromkeys([m for m in COLOCATE if m in args.colocate] + [shipped]))
    wait = args.wait if args.wait is not None else base_config.serve.batch_wait_timeout_s
    info = machine()
    print(f"serve benchmark: config {args.config}, {info['cpus']} CPUs, load average {info['load_avg_1m']}")

    off_config = bench_config(args.config, 1, wait)
    on_config = bench_config(args.config, args.batch_size, wait)
    image = product_png(args.size, args.size)
    local = InProcess(off_config, image)

    import ray
    from ray import serve

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the driver's deploy/delete INFO lines
    base = f"http://127.0.0.1:{port}"
    try:
        print(
            f"latency, @serve.batch off (max_batch_size 1), serve.colocate {' '.join(modes)} ...", flush=True
        )
        modes_figures = colocation_latency(serve, local, modes, base, image, args, wait)
        print(f"throughput, serve.colocate {shipped}, @serve.batch off and on ...", flush=True)
        deploy(serve, off_config, "bench-off", base)
        off = throughput(serve, off_config, "bench-off", base, args)
        serve.delete("bench-off")
        deploy(serve, on_config, "bench-on", base)
        on_latency = http_latency(base, image, args.latency_requests, args.warmup)
        on = throughput(serve, on_config, "bench-on", base, args)
        serve.delete("bench-on")
        on_by_mode: dict[str, dict[str, Any]] = {shipped: on}
        for other in (m for m in modes if m != shipped):  # the other modes, batching on
            print(f"throughput, serve.colocate {other}, @serve.batch on ...", flush=True)
            other_config = bench_config(args.config, args.batch_size, wait, other)
            deploy(serve, other_config, f"bench-on-{other}", base)
            on_by_mode[other] = throughput(serve, other_config, f"bench-on-{other}", base, args)
            serve.delete(f"bench-on-{other}")
    finally:
        serve.shutdown()
        ray.shutdown()
    print("in-process batching ceiling ...", flush=True)
    batched_s = local.batched(args.batch_size)

    ours = modes_figures[shipped]
    overhead = ours["overhead_p50_ms"]
    inprocess = ours["in_process"]
    ceiling = (inprocess["mean_ms"] / 1000) / batched_s
    gain = on["requests_per_s"] / off["requests_per_s"]
    share = gain / ceiling
    split = modes_figures.get("split")
    print("-" * 78)
    print(
        f"{'serve.colocate':16}{'hand-offs':>10}{'overhead ms':>13}{'vs split':>10}{'paired ms':>11}"
        f"{'outside models':>16}{'vs split':>10}{'hand-off ms':>13}{'req/s on':>10}   runs"
    )
    for mode, fig in modes_figures.items():
        ratio = f"{fig['overhead_p50_ms'] / split['overhead_p50_ms']:.2f}" if split else "-"
        outside = f"{fig['outside_models_ms'] / split['outside_models_ms']:.2f}" if split else "-"
        listed = ", ".join(f"{r['overhead_p50_ms']:+.1f}" for r in fig["runs"])
        mark = " (config)" if mode == shipped else ""
        print(
            f"{mode + mark:16}{fig['hand_offs']:>10}{fig['overhead_p50_ms']:13.1f}{ratio:>10}"
            f"{fig['paired_overhead_ms']:11.1f}{fig['outside_models_ms']:16.1f}{outside:>10}{fig['hand_off_ms']:13.1f}"
            f"{on_by_mode[mode]['requests_per_s']:10.2f}   {listed}"
        )
    print(f"{'latency, one request at a time':40}{'p50 ms':>10}{'p95 ms':>10}")
    rows = (
        ("in-process (LocalPipeline)", inprocess),
        (f"HTTP, batching off ({shipped})", ours["http"]),
        (f"HTTP, batching on (waits {wait:g} s/stage)", summary(on_latency)),
    )
    for label, fig in rows:
        print(f"{label:40}{fig['p50_ms']:10.1f}{fig['p95_ms']:10.1f}")
    listed = ", ".join(f"{r['overhead_p50_ms']:+.1f}" for r in ours["runs"])
    versus = (
        f"; split {split['overhead_p50_ms']:.1f} ms, ratio {overhead / split['overhead_p50_ms']:.2f}"
        if split
        else ""
    )
    print(
        f"HTTP overhead at p50 (serve.colocate {shipped}): {overhead:.1f} ms, "
        f"median of {len(ours['runs'])} runs "
        f"({listed}){versus}  (goal <= {OVERHEAD_GOAL_MS:g} ms)"
    )
    outside = ours["outside_models_ms"]
    if split:
        versus = (
            f"; split {split['outside_models_ms']:.1f} ms, ratio {outside / split['outside_models_ms']:.2f}"
        )
    print(f"serving layer outside the models (serve.colocate {shipped}): {outside:.1f} ms{versus}")
    print(f"  where an HTTP request's time goes ({shipped}; medians, ms, from the Server-Timing header):")
    for name, ms in ours["where_the_time_goes_ms"].items():
        print(f"    {name:36}{ms:10.2f}")
    floor = next((f["serving_floor"] for f in modes_figures.values() if f["serving_floor"]), None)
    if floor:
        print(
            f"  serving floor: GET /healthz p50 {floor['healthz_p50_ms']:.1f} ms; one deployment handle call "
            f"p50 {floor['handle_call_p50_ms']:.1f} ms"
        )
    print(
        f"{'throughput at concurrency ' + str(args.concurrency):40}{'req/s':>10}{'p50 ms':>10}{'p95 ms':>10}"
    )
    for label, t in (("batching off", off), (f"batching on ({args.batch_size})", on)):
        print(f"{label:40}{t['requests_per_s']:10.2f}{t['latency_p50_ms']:10.0f}{t['latency_p95_ms']:10.0f}")
    print(
        f"inpaint requests per model call: off {off['inpaint_requests_per_call_mean']}, "
        f"on {on['inpaint_requests_per_call_mean']} (max {on['inpaint_requests_per_call_max']})"
    )
    print(
        f"batching gain on/off: {gain:.2f}x = {share:.2f} of the in-process ceiling {ceiling:.2f}x "
        f"({args.batch_size} requests as one batch: {1000 * batched_s:.0f} ms each vs "
        f"{inprocess['mean_ms']:.0f} ms alone)   (goal >= {BATCH_GAIN_SHARE_GOAL:g} of the ceiling)"
    )
    record = {
        "benchmark": "serve",
        "config": args.config,
        "machine": info,
        "image_px": args.size,
        "colocate": shipped,
        "colocations": {m: {**f, "throughput_batching_on": on_by_mode[m]} for m, f in modes_figures.items()},
        "in_process": inprocess,
        "http_batching_off": ours["http"],
        "http_batching_on": summary(on_latency),
        "runs": ours["runs"],
        "overhead_p50_ms": overhead,
        "overhead_vs_split": round(overhead / split["overhead_p50_ms"], 3) if split else None,
        "outside_models_ms": outside,
        "outside_models_vs_split": round(outside / split["outside_models_ms"], 3) if split else None,
        "overhead_goal_ms": OVERHEAD_GOAL_MS,
        "overhead_goal_met": overhead <= OVERHEAD_GOAL_MS,
        "where_the_time_goes_ms": ours["where_the_time_goes_ms"],
        "serving_floor": floor,
        "throughput_batching_off": off,
        "throughput_batching_on": on,
        "in_process_batched_ms_per_request": round(1000 * batched_s, 2),
        "in_process_batching_ceiling": round(ceiling, 3),
        "batching_gain": round(gain, 3),
        "batching_gain_share_of_ceiling": round(share, 3),
        "batching_gain_share_goal": BATCH_GAIN_SHARE_GOAL,
        "batching_gain_goal_met": share >= BATCH_GAIN_SHARE_GOAL,
    }
    write_json(args.json or default_json("serve"), record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
