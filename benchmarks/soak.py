"""A bounded soak of the online service: many requests at high concurrency, with load shedding on.

Starts Serve on 127.0.0.1 with configs/weightfree.yaml (default bounds: ``serve.max_inflight`` 8,
``max_queued`` 16), sends ``--requests`` (default 1,000) at ``--concurrency`` (default 32), and samples
the resident memory of every Ray process of this local cluster once a second.

Each of the ``--concurrency`` clients sends its next request as soon as the last one is answered, after
waiting ``Retry-After`` when it was shed (503/429), as a well-behaved client does.

Reports: counts by status code (goal: no 5xx other than the intended 503 / 504), p50/p95 of the admitted
requests, and memory flatness = mean RSS of the last quarter ÷ mean RSS of the first quarter (goal ≤ 1.1).

    python -m benchmarks.soak
    python -m benchmarks.soak --requests 300 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections import Counter
from typing import Any

from benchmarks.common import default_json, machine, percentile, quiet, write_json
from canvas_ray.config import REPO_ROOT, load_config
from canvas_ray.testing import product_png

FLAT_GOAL = 1.1


class RayMemory(threading.Thread):
    """Summed RSS of this process's descendants (the local Ray cluster and its Serve replicas), 1 Hz."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        import psutil

        self.root = psutil.Process()
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.wait(1.0):
            total = 0
            for process in self.root.children(recursive=True):
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    continue
            self.samples.append((time.time(), total))


async def soak(base: str, requests: int, concurrency: int) -> list[tuple[int, float]]:
    import httpx

    image = product_png(160, 160, seed=5)
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=300) as client:

        async def one(index: int) -> tuple[int, float]:
            async with limit:
                started = time.perf_counter()
                files: dict[str, Any] = {
                    "image": ("p.png", image, "image/png"),
                    "style": (None, "studio white"),
                    "seed": (None, str(index)),
                }
                try:
                    response = await client.post("/v1/backgrounds", files=files)
                    code = response.status_code
                except httpx.HTTPError:
                    code = 599  # transport failure: counted as a server error
                seconds = time.perf_counter() - started
                if code in (429, 503):  # a well-behaved client waits as told before its next request
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                return code, seconds

        return await asyncio.gather(*(one(i) for i in range(requests)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", default=default_json("soak"))
    args = parser.parse_args(argv)
    quiet()
    import ray
    from ray import serve

    from benchmarks.serve import free_port
    from serve.app import build_app

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        build_app(load_config(REPO_ROOT / "configs" / "weightfree.yaml")), name="soak", route_prefix="/"
    )
    memory = RayMemory()
    memory.start()
    started = time.perf_counter()
    results = asyncio.run(soak(f"http://127.0.0.1:{port}", args.requests, args.concurrency))
    wall = time.perf_counter() - started
    memory.stop.set()
    memory.join()
    serve.shutdown()
    ray.shutdown()
    codes = Counter(code for code, _ in results)
    admitted = sorted(seconds for code, seconds in results if code == 200)
    rss = [value for _, value in memory.samples]
    quarter = max(1, len(rss) // 4)
    flat = (sum(rss[-quarter:]) / quarter) / (sum(rss[:quarter]) / quarter) if rss else None
    server_errors = sum(count for code, count in codes.items() if code >= 500 and code not in (503, 504))
    record = {
        "machine": machine(),
        "requests": args.requests,
        "concurrency": args.concurrency,
        "wall_s": round(wall, 1),
        "codes": {str(code): count for code, count in sorted(codes.items())},
        "server_errors_other_than_503_504": server_errors,
        "admitted_p50_s": round(percentile(admitted, 50), 3) if admitted else None,
        "admitted_p95_s": round(percentile(admitted, 95), 3) if admitted else None,
        "memory_last_over_first_quarter": round(flat, 3) if flat else None,
        "memory_samples": len(rss),
    }
    print(
        f"{args.requests} requests at concurrency {args.concurrency} in {wall:.0f} s: "
        f"codes {record['codes']}; "
        f"admitted p50 {record['admitted_p50_s']} s, p95 {record['admitted_p95_s']} s; "
        f"memory last/first quarter {record['memory_last_over_first_quarter']} (goal ≤ {FLAT_GOAL}); "
        f"5xx other than 503/504: {server_errors} (goal 0)"
    )
    write_json(args.json, record)
    return record


if __name__ == "__main__":
    main()
