"""The Serve app against the same stages called in-process, and ``@serve.batch`` on against off.

1. Latency: p50/p95 of ``POST /v1/backgrounds`` (one image back, ``Accept: image/png``), one request at a
   time, against the same request through ``LocalPipeline`` in this process (decode → stages → PNG
   encode), with the same torch thread count as a replica (1). Overhead = p50(HTTP) − p50(in-process);
   goal <= 5 ms. Measured on the app without batching (``serve.max_batch_size: 1``), whose stages do not
   wait for a batch to fill; the batched app's single-request latency (which waits up to
   ``batch_wait_timeout_s`` per model stage) is reported beside it.
2. Throughput at concurrency 16: requests/s with ``@serve.batch`` on (``max_batch_size`` 16) and off
   (``max_batch_size`` 1); goal on/off >= 3. On CPU the gain comes from batched model forwards (one
   diffusers call for many images) — measured, not assumed.

    python -m benchmarks.serve                                    # tiny neural models (configs/tiny.yaml)
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
from canvas_ray.testing import product_png

OVERHEAD_GOAL_MS = 5.0
BATCH_GAIN_GOAL = 3.0
SMALL = {"num_cpus": 0.1, "concurrency": 1, "batch_size": 16}


def bench_config(path: str, max_batch_size: int, wait_s: float) -> CanvasConfig:
    overrides: dict[str, Any] = {f"{s}.resources": dict(SMALL) for s in ("segment", "caption", "inpaint")}
    overrides["composite.resources"] = dict(SMALL)
    overrides["serve.max_batch_size"] = max_batch_size
    overrides["serve.batch_wait_timeout_s"] = wait_s
    return load_config(path, overrides)


FIELDS = {"style": "studio white", "n": "1", "aspect_ratios": "1:1", "seed": "7"}


def handoff_cost(pipeline: Any, item: dict[str, Any], repeats: int = 5) -> dict[str, float]:
    """What the ingress's three handle calls move for one request, pickled and unpickled here.

    The ingress sends each model deployment a batch and gets one back (decode → Segment → Caption →
    prompt → Inpaint); Ray pickles both into its object store and out again. Six hand-offs per request.
    """
    import pickle

    from canvas_ray.pipeline import items_batch

    moved: list[Any] = []
    batch = pipeline.decode(items_batch([dict(item)]))
    for stage in (pipeline.segment, pipeline.caption, pipeline.inpaint):
        if stage is pipeline.inpaint:
            batch = pipeline.prompt(batch)
        moved.append(batch)
        batch = stage(batch)
        moved.append(batch)
    started = time.perf_counter()
    size = 0
    for _ in range(repeats):
        for payload in moved:
            data = pickle.dumps(payload, protocol=5)
            pickle.loads(data)
            size = size + len(data)
    return {
        "handoffs": len(moved),
        "ms": round(1000 * (time.perf_counter() - started) / repeats, 2),
        "mb": round(size / repeats / 2**20, 3),
    }


def in_process_latency(
    config: CanvasConfig, image: bytes, requests: int, warmup: int, batch: int
) -> dict[str, Any]:
    """Seconds per request through LocalPipeline: the same item the ingress builds, then the PNG encode.

    Also the seconds per request when ``batch`` such requests go through the stages as one batch: the most
    that batching model calls can gain in this process, whatever the serving layer does; the time spent
    inside the stages (their ``*_s`` columns) per request; and what the hand-offs between deployments cost.
    """
    import torch

    from canvas_ray.io.images import encode_image
    from canvas_ray.pipeline import TIMING_COLUMNS, LocalPipeline, items_batch
    from serve.app import serve_limits_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a replica with a fractional CPU gets (Ray sets OMP_NUM_THREADS=1)
    try:
        pipeline = LocalPipeline(serve_limits_config(config))
        item = {
            "item_id": "upload-bench",
            "style": FIELDS["style"],
            "variants": 1,
            "aspect_ratios": FIELDS["aspect_ratios"],
            "seed": int(FIELDS["seed"]),
            "title": "",
            "image_bytes": image,
        }
        times, stage_s = [], []
        for index in range(warmup + requests):
            started = time.perf_counter()
            out = pipeline.run_batch(items_batch([dict(item)]))
            if list(out["status"]) != ["ok"]:
                raise RuntimeError(f"in-process request failed: {list(out['error'])}")
            encode_image(out["result"][0], "png", config.output.quality)
            if index >= warmup:
                times.append(time.perf_counter() - started)
                stage_s.append(sum(float(out[c][0]) for c in TIMING_COLUMNS if c in out))
        items = [dict(item, item_id=f"upload-bench-{i}", seed=i) for i in range(batch)]
        started = time.perf_counter()
        out = pipeline.run_batch(items_batch(items))
        for result in out["result"]:
            encode_image(result, "png", config.output.quality)
        batched = (time.perf_counter() - started) / batch
        return {
            "times": times,
            "batched_s": batched,
            "stage_s": stage_s,
            "handoff": handoff_cost(pipeline, item),
        }
    finally:
        torch.set_num_threads(threads)


def _post(client: Any, path: str, image: bytes) -> Any:
    files = [(k, (None, v)) for k, v in FIELDS.items()] + [("image", ("p.png", image, "image/png"))]
    return client.post(path, files=files, headers={"Accept": "image/png"})


def round_trips(base: str, app: str, requests: int) -> dict[str, float]:
    """The serving layer alone: p50 of ``GET /healthz`` (proxy + ingress, no stage) and of a deployment
    handle call from the driver (``ping``; the ingress makes three such hops per request)."""
    import httpx
    from ray import serve as ray_serve

    health, handle_calls = [], []
    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(requests):
            started = time.perf_counter()
            client.get("/healthz").raise_for_status()
            health.append(time.perf_counter() - started)
    handle = ray_serve.get_deployment_handle("SegmentDeployment", app_name=app)
    handle.ping.remote().result()
    for _ in range(requests):
        started = time.perf_counter()
        handle.ping.remote().result()
        handle_calls.append(time.perf_counter() - started)
    return {
        "healthz_p50_ms": round(1000 * percentile(health, 50), 2),
        "handle_call_p50_ms": round(1000 * percentile(handle_calls, 50), 2),
    }


def http_latency(base: str, image: bytes, requests: int, warmup: int) -> list[float]:
    import httpx

    times = []
    with httpx.Client(base_url=base, timeout=120) as client:
        for index in range(warmup + requests):
            started = time.perf_counter()
            response = _post(client, "/v1/backgrounds", image)
            elapsed = time.perf_counter() - started
            if response.status_code != 200 or response.headers["content-type"] != "image/png":
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
            if index >= warmup:
                times.append(elapsed)
    return times


def service_stage_times(base: str, image: bytes, requests: int) -> list[float]:
    """Seconds spent inside the stages per request, as the service reports them (JSON ``timings``)."""
    import httpx

    out = []
    with httpx.Client(base_url=base, timeout=120) as client:
        for _ in range(requests):
            files = [(k, (None, v)) for k, v in FIELDS.items()] + [("image", ("p.png", image, "image/png"))]
            response = client.post("/v1/backgrounds", files=files)
            response.raise_for_status()
            out.append(sum(response.json()["images"][0]["timings"].values()))
    return out


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


def measure_app(
    serve: Any, config: CanvasConfig, name: str, base: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Deploy, wait for /readyz, sequential latency, then throughput at --concurrency; delete."""
    import httpx

    from serve.app import build_app

    started = time.perf_counter()
    serve.run(build_app(config), name=name, route_prefix="/")
    with httpx.Client(base_url=base, timeout=30) as client:
        while client.get("/readyz").status_code != 200:
            time.sleep(0.2)
    deploy_s = time.perf_counter() - started
    image = product_png(args.size, args.size)
    latency = summary(http_latency(base, image, args.latency_requests, args.warmup))
    floor = round_trips(base, name, args.latency_requests)
    floor["stage_time_p50_ms"] = round(
        1000 * percentile(service_stage_times(base, image, max(5, args.latency_requests // 2)), 50), 2
    )
    images = [product_png(args.size, args.size, seed) for seed in range(args.concurrency)]
    asyncio.run(_throughput(base, images, args.concurrency, args.concurrency))  # warm every code path
    throughput = asyncio.run(_throughput(base, images, args.requests, args.concurrency))
    from ray import serve as ray_serve

    sizes = ray_serve.get_deployment_handle("InpaintDeployment", app_name=name).batch_sizes.remote().result()
    serve.delete(name)
    return {
        "max_batch_size": config.serve.max_batch_size,
        "batch_wait_timeout_s": config.serve.batch_wait_timeout_s,
        "deploy_s": round(deploy_s, 2),
        "latency": latency,
        "serving_floor": floor,
        "throughput": throughput,
        "inpaint_requests_per_call_mean": round(float(np.mean(sizes)), 2) if sizes else None,
        "inpaint_requests_per_call_max": int(max(sizes)) if sizes else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "tiny.yaml"))
    parser.add_argument(
        "--latency-requests", type=int, default=20, help="sequential requests per latency run"
    )
    parser.add_argument("--requests", type=int, default=48, help="requests per throughput run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16, help="max_batch_size with batching on")
    parser.add_argument("--wait", type=float, default=None, help="batch_wait_timeout_s (default: config's)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=160, help="product photo side in pixels")
    parser.add_argument("--json", default=None, help="figures file (default benchmarks/results/serve.json)")
    args = parser.parse_args(argv)
    quiet()
    base_config = load_config(args.config)
    ensure_tiny_models(base_config)
    wait = args.wait if args.wait is not None else base_config.serve.batch_wait_timeout_s
    info = machine()
    print(f"serve benchmark: config {args.config}, {info['cpus']} CPUs, load average {info['load_avg_1m']}")

    off_config = bench_config(args.config, 1, wait)
    on_config = bench_config(args.config, args.batch_size, wait)
    print("in-process latency (LocalPipeline, 1 torch thread) ...", flush=True)
    image = product_png(args.size, args.size)
    measured = in_process_latency(off_config, image, args.latency_requests, args.warmup, args.batch_size)
    batched_s, handoff = measured["batched_s"], measured["handoff"]
    inprocess = summary(measured["times"])
    inprocess["stage_time_p50_ms"] = round(1000 * percentile(measured["stage_s"], 50), 2)
    inprocess_gain = (inprocess["mean_ms"] / 1000) / batched_s

    import ray
    from ray import serve

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the driver's deploy/delete INFO lines
    base = f"http://127.0.0.1:{port}"
    try:
        print("Serve, @serve.batch off (max_batch_size 1) ...", flush=True)
        off = measure_app(serve, off_config, "bench-off", base, args)
        print(f"Serve, @serve.batch on (max_batch_size {args.batch_size}) ...", flush=True)
        on = measure_app(serve, on_config, "bench-on", base, args)
    finally:
        serve.shutdown()
        ray.shutdown()

    overhead = off["latency"]["p50_ms"] - inprocess["p50_ms"]
    gain = on["throughput"]["requests_per_s"] / off["throughput"]["requests_per_s"]
    print("-" * 78)
    print(f"{'latency, one request at a time':40}{'p50 ms':>10}{'p95 ms':>10}")
    rows = (
        ("in-process (LocalPipeline)", inprocess),
        ("HTTP, batching off", off["latency"]),
        (f"HTTP, batching on (waits {wait:g} s/stage)", on["latency"]),
    )
    for label, fig in rows:
        print(f"{label:40}{fig['p50_ms']:10.1f}{fig['p95_ms']:10.1f}")
    print(f"HTTP overhead at p50: {overhead:.1f} ms   (goal <= {OVERHEAD_GOAL_MS:g} ms)")
    floor = off["serving_floor"]
    print(
        f"  serving floor: GET /healthz p50 {floor['healthz_p50_ms']:.1f} ms; one deployment handle call "
        f"p50 {floor['handle_call_p50_ms']:.1f} ms (a request makes 3)"
    )
    print(
        f"  time inside the stages, p50: service {floor['stage_time_p50_ms']:.1f} ms, "
        f"in-process {inprocess['stage_time_p50_ms']:.1f} ms"
    )
    inside = floor["stage_time_p50_ms"] - inprocess["stage_time_p50_ms"]
    floor_ms = floor["healthz_p50_ms"] + 3 * floor["handle_call_p50_ms"]
    print(
        f"  → overhead {overhead:.0f} ms = {inside:.0f} ms more inside the stages in the replicas + "
        f"{overhead - inside:.0f} ms outside them (serving floor: {floor_ms:.0f} ms)"
    )
    print(
        f"  the {handoff['handoffs']:.0f} batches a request hands between ingress and model deployments: "
        f"{handoff['mb']:.2f} MB, {handoff['ms']:.1f} ms to pickle and unpickle in one process"
    )
    print(
        f"{'throughput at concurrency ' + str(args.concurrency):40}{'req/s':>10}{'p50 ms':>10}{'p95 ms':>10}"
    )
    modes: tuple[tuple[str, dict[str, Any]], ...] = (
        ("batching off", off),
        (f"batching on ({args.batch_size})", on),
    )
    for label, app in modes:
        t = app["throughput"]
        print(f"{label:40}{t['requests_per_s']:10.2f}{t['latency_p50_ms']:10.0f}{t['latency_p95_ms']:10.0f}")
    print(
        f"inpaint requests per model call: off {off['inpaint_requests_per_call_mean']}, "
        f"on {on['inpaint_requests_per_call_mean']} (max {on['inpaint_requests_per_call_max']})"
    )
    print(f"batching gain on/off: {gain:.2f}x   (goal >= {BATCH_GAIN_GOAL:g}x)")
    print(
        f"  in-process ceiling: {args.batch_size} requests as one batch take "
        f"{1000 * batched_s:.0f} ms each vs {inprocess['mean_ms']:.0f} ms alone → "
        f"at most {inprocess_gain:.2f}x from batching the stages on this CPU"
    )
    record = {
        "benchmark": "serve",
        "config": args.config,
        "machine": info,
        "image_px": args.size,
        "in_process": inprocess,
        "in_process_batched_ms_per_request": round(1000 * batched_s, 2),
        "in_process_batching_ceiling": round(inprocess_gain, 3),
        "handoff_serialization": handoff,
        "batching_off": off,
        "batching_on": on,
        "overhead_p50_ms": round(overhead, 2),
        "overhead_inside_stages_ms": round(inside, 2),
        "overhead_outside_stages_ms": round(overhead - inside, 2),
        "serving_floor_ms": round(floor_ms, 2),
        "overhead_goal_ms": OVERHEAD_GOAL_MS,
        "overhead_goal_met": overhead <= OVERHEAD_GOAL_MS,
        "batching_gain": round(gain, 3),
        "batching_gain_goal": BATCH_GAIN_GOAL,
        "batching_gain_goal_met": gain >= BATCH_GAIN_GOAL,
    }
    write_json(args.json or default_json("serve"), record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
