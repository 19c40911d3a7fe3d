"""``canvas-ray`` commands of the cluster and the online service: ``serve``, ``jobs`` (a client of the HTTP
jobs API) and ``cluster plan``. Hooked into :mod:`canvas_ray.cli` by :func:`add_service_parsers`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from canvas_ray.cli_base import DEFAULT_CONFIG, cli_config
from canvas_ray.config import REPO_ROOT, ConfigError
from canvas_ray.logs import get_logger

log = get_logger("canvas_ray")


def cmd_serve(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from serve.app import build_app

    config = cli_config(args.config)
    host = args.host or config.serve.host
    port = args.port or config.serve.port
    from canvas_ray.cluster import attach

    attach(args.address, config.ray.address, timeout=config.ray.attach_timeout_s)
    serve.start(http_options={"host": host, "port": port})
    log.info("canvas-ray serving on http://%s:%d/ (API docs at /docs)", host, port)
    try:
        serve.run(build_app(config), name="canvas-ray", route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    """``canvas-ray jobs submit|status|cancel|list``: a client of the HTTP jobs API (serve/jobs.py)."""
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.api.rstrip("/"), headers=headers, timeout=60, trust_env=False) as client:
        if args.action == "submit":
            body: dict[str, Any] = {"catalog": args.catalog}
            for key, value in (
                ("styles", args.style),
                ("profiles", args.profile),
                ("aspect_ratios", args.aspect),
                ("variants", args.variants),
                ("output", args.output),
                ("webhook_url", args.webhook),
                ("limit", args.limit),
            ):
                if value is not None:
                    body[key] = value
            response = client.post("/v1/jobs", json=body)
        elif args.action == "list":
            response = client.get("/v1/jobs")
        elif not args.job_id:
            print(f"canvas-ray jobs {args.action} needs a job id", file=sys.stderr)
            return 2
        elif args.action == "status":
            response = client.get(f"/v1/jobs/{args.job_id}")
            while args.wait and response.status_code == 200:
                if response.json()["state"] in ("SUCCEEDED", "FAILED", "STOPPED"):
                    break
                time.sleep(2)
                response = client.get(f"/v1/jobs/{args.job_id}")
        else:
            response = client.delete(f"/v1/jobs/{args.job_id}")
    print(json.dumps(response.json(), indent=2))
    if response.status_code >= 400:
        return 1
    if args.action == "status" and response.json().get("state") == "FAILED":
        return 3
    return 0


def cmd_cluster_plan(args: argparse.Namespace) -> int:
    """Pool sizes of a config on the cluster (attached as `generate` would), or why they do not fit."""
    import ray

    from canvas_ray.cluster import attach, describe, live_nodes, plan_pools, pool_resources

    config = cli_config(args.config)
    attach(args.address, config.ray.address, timeout=config.ray.attach_timeout_s)
    try:
        nodes = live_nodes()
        gpus = sum(n.resources.get("GPU", 0.0) for n in nodes)
        cpus = sum(n.resources.get("CPU", 0.0) for n in nodes)
        print(f"cluster: {len(nodes)} node(s), {cpus:g} CPUs, {gpus:g} GPUs")
        try:
            sizing = plan_pools(config)
        except ConfigError as error:
            print(f"does not fit: {error}")
            return 2
        print(describe(sizing, pool_resources(config)))
        held = sum(size.max * pool_resources(config)[name].num_gpus for name, size in sizing.pools.items())
        print(f"GPUs held at the pools' maximum: {held:g} of {gpus:g}")
    finally:
        ray.shutdown()
    return 0


def add_service_parsers(sub: Any) -> None:
    """The ``serve``, ``jobs`` and ``cluster`` subcommands."""
    srv = sub.add_parser("serve", help="run the online service (Ray Serve + FastAPI, web page at /)")
    srv.add_argument("--config", help=f"YAML config (default {DEFAULT_CONFIG.relative_to(REPO_ROOT)})")
    srv.add_argument("--host", help="bind address (default serve.host)")
    srv.add_argument("--port", type=int, help="port (default serve.port)")
    srv.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")
    srv.set_defaults(func=cmd_serve)

    jobs = sub.add_parser("jobs", help="catalog jobs over the HTTP API: submit, status, cancel, list")
    jobs.add_argument("action", choices=["submit", "status", "cancel", "list"])
    jobs.add_argument("job_id", nargs="?", help="the job id (status, cancel)")
    jobs.add_argument("--api", default=os.environ.get("CANVAS_RAY_API", "http://127.0.0.1:8000"))
    jobs.add_argument("--api-key", default=os.environ.get("CANVAS_RAY_API_KEY"), help="or CANVAS_RAY_API_KEY")
    jobs.add_argument("--catalog", help="catalog URI (submit; under an allowed prefix of the server)")
    jobs.add_argument("--style", action="append", help="style preset (repeatable)")
    jobs.add_argument("--profile", action="append", help="output profile (repeatable)")
    jobs.add_argument("--aspect", action="append", help="aspect ratio W:H (repeatable)")
    jobs.add_argument("--variants", type=int)
    jobs.add_argument("--limit", type=int, help="only the first N catalog rows")
    jobs.add_argument("--output", help="output folder name under the server's jobs root")
    jobs.add_argument("--webhook", help="URL POSTed (signed) when the job ends")
    jobs.add_argument("--wait", action="store_true", help="status: poll until the job has ended")
    jobs.set_defaults(func=cmd_jobs)

    clu = sub.add_parser("cluster", help="pool sizes of a config on a Ray cluster: `cluster plan`")
    clu.add_argument("action", choices=["plan"])
    clu.add_argument("--config")
    clu.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, a live local one, or new)")
    clu.set_defaults(func=cmd_cluster_plan)
