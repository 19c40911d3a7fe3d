"""``canvas-ray`` command line: generate (catalog job), generate-one, evaluate (a run's report), serve,
tiny-models, styles, config, curate and finetune (LoRA training)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from canvas_ray.config import REPO_ROOT, ConfigError, load_config
from canvas_ray.logs import get_logger
from canvas_ray.watch import JobStalledError

log = get_logger("canvas_ray")
DEFAULT_CONFIG = REPO_ROOT / "configs" / "local.yaml"


def _config(path: str | None, overrides: dict[str, Any] | None = None):
    if path is None and DEFAULT_CONFIG.is_file():
        path = str(DEFAULT_CONFIG)
    return load_config(path, overrides)


def cmd_generate_one(args: argparse.Namespace) -> int:
    from canvas_ray.io.images import encode_image
    from canvas_ray.pipeline import LocalPipeline

    overrides: dict[str, Any] = {"output.variants": args.variants}
    if args.aspect:
        overrides["output.aspect_ratios"] = args.aspect
    config = _config(args.config, overrides)
    image = Path(args.image)
    if not image.is_file():
        raise SystemExit(f"error: image not found: {image}")
    item = {
        "item_id": image.stem,
        "image_bytes": image.read_bytes(),
        "style": args.style,
        "title": args.title,
        "seed": args.seed,
    }
    results = LocalPipeline(config).generate([item])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    failed = 0
    for number, result in enumerate(results):
        target = (
            out
            if len(results) == 1
            else out.with_name(f"{out.stem}-{result.aspect.replace(':', 'x')}-v{result.variant}{out.suffix}")
        )
        if result.status != "ok" or result.image is None:
            failed += 1
            print(f"[{number}] error: {result.error}", file=sys.stderr)
            continue
        fmt = {".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}.get(target.suffix.lower(), "png")
        target.write_bytes(encode_image(result.image, fmt, quality=100 if fmt == "webp" else 95))
        print(
            json.dumps(
                {
                    "output": str(target),
                    "style": result.style,
                    "aspect": result.aspect,
                    "seed": result.seed,
                    "product_preserved": result.product_preserved,
                    "caption": result.caption,
                    "prompt": result.prompt,
                    "seconds": {k: round(v, 3) for k, v in result.timings.items()},
                }
            )
        )
    return 1 if failed else 0


def cmd_generate(args: argparse.Namespace) -> int:
    from canvas_ray.batch import GenerateRequest, run_generate

    overrides: dict[str, Any] = {}
    if args.variants:
        overrides["output.variants"] = args.variants
    if args.aspect:
        overrides["output.aspect_ratios"] = args.aspect
    if args.style:
        overrides["styles.default"] = args.style
    if args.profile:
        overrides["output.profiles"] = list(dict.fromkeys(args.profile))
    if args.c2pa_key or args.c2pa_cert:
        overrides.update(
            {"provenance.c2pa": "sign", "provenance.key": args.c2pa_key, "provenance.cert": args.c2pa_cert}
        )
    config = _config(args.config, overrides)
    _check_publishable(config, args.catalog, args.catalog_format)
    summary = run_generate(
        GenerateRequest(
            config=config,
            catalog=args.catalog,
            output=args.output,
            limit=args.limit,
            overwrite=args.overwrite,
            address=args.address,
        )
    )
    return 0 if summary.get("errors", 0) == 0 or not args.strict else 2


def _check_publishable(config: Any, catalog: str, catalog_format: str | None) -> None:
    """Fail before any work: outputs that could not be signed, a feed that cannot be read."""
    import fsspec

    from canvas_ray.io.feeds import FeedError, check_file
    from canvas_ray.provenance import ProvenanceError, check_signing

    try:
        signer = check_signing(config.provenance)
        if catalog_format:
            fs, path = fsspec.core.url_to_fs(catalog)
            check_file(fs, path, catalog, catalog_format)
    except (ProvenanceError, FeedError) as error:
        raise ConfigError(str(error)) from None
    c2pa = "signed by " + signer if signer != "unsigned" else "unsigned (opt-out)"
    log.info("provenance: IPTC XMP + C2PA %s", c2pa)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from canvas_ray.quality.evaluate import EvaluateRequest, EvaluationError, evaluate_run, format_summary

    try:
        result = evaluate_run(
            EvaluateRequest(
                output=args.output,
                out=args.out,
                expansion_threshold=args.expansion_threshold,
                reference=args.reference,
                feature_model=args.feature_model,
                top=args.top,
            )
        )
    except EvaluationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_summary(result.metrics))
    print(f"report  {result.report_uri}\nmetrics {result.metrics_uri}")
    return 0


def cmd_tiny_models(args: argparse.Namespace) -> int:
    from canvas_ray.models.tiny import build_tiny_models

    out = Path(args.dir).resolve()
    paths = build_tiny_models(out, seed=args.seed)
    # A randomly initialised segmenter cannot find products, so the runnable tiny config segments with the
    # weight-free backend; the tiny segmenter is there for `segment.backend: hf` tests and round trips.
    config = {
        "segment": {
            "backend": "backdrop",
            "resources": {"num_cpus": 0.5, "concurrency": 1, "batch_size": 4},
            "options": {},
        },
        "caption": {
            "backend": "hf",
            "model": str(paths["captioner"]),
            "max_new_tokens": 16,
            "resources": {"num_cpus": 0.25, "concurrency": 1, "batch_size": 8},
        },
        "inpaint": {
            "backend": "diffusers",
            "model": str(paths["inpainter"]),
            "resolution": 64,
            "steps": 4,
            "resources": {"num_cpus": 0.5, "concurrency": 1, "batch_size": 8},
        },
        "composite": {"resources": {"num_cpus": 0.25, "batch_size": 8}},
        "styles": {
            "file": str(REPO_ROOT / "configs" / "styles.yaml"),
            "default": ["studio white", "beach summer"],
        },
    }
    config_path = out / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    print(json.dumps({k: str(v) for k, v in paths.items()} | {"config": str(config_path)}, indent=2))
    return 0


def cmd_styles(args: argparse.Namespace) -> int:
    from canvas_ray.styles import StyleBook

    config = _config(args.config)
    book = StyleBook.from_config(config)
    if args.action == "list":
        for name, preset in book.presets.items():
            lora = f"  [lora {preset.lora} x{preset.lora_weight}]" if preset.lora else ""
            print(f"{name:28s} {preset.description}{lora}")
        return 0
    style = book.resolve(args.text)
    print(
        json.dumps(
            {
                "name": style.name,
                "key": style.key,
                "preset": style.preset,
                "prompt": style.prompt,
                "negative_prompt": style.negative_prompt,
                "backdrop": style.backdrop.model_dump(),
            },
            indent=2,
        )
    )
    return 0


def cmd_styles_add(args: argparse.Namespace) -> int:
    """Append or update one preset with a LoRA in a styles YAML; validated, then written atomically."""
    import os
    import tempfile

    from canvas_ray.styles import StyleBook

    target = Path(args.styles_file)
    data: dict[str, Any] = yaml.safe_load(target.read_text()) if target.is_file() else {}
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"styles file {target} must be a mapping with a styles: section")
    styles = data.setdefault("styles", {}) or {}
    data["styles"] = styles
    lora = Path(args.lora)
    if not lora.exists():
        raise ConfigError(f"--lora {lora} does not exist (a LoRA folder or .safetensors file)")
    existing = next((key for key in styles if str(key).lower() == args.name.lower()), None)
    preset = dict(styles.get(existing) or {}) if existing is not None else {}
    preset["prompt"] = args.prompt
    if args.negative_prompt is not None:
        preset["negative_prompt"] = args.negative_prompt
    preset["lora"] = str(lora.resolve())
    preset["lora_weight"] = args.weight
    if args.description is not None:
        preset["description"] = args.description
    preset.setdefault("description", f"fine-tuned LoRA style {args.name}")
    styles[existing if existing is not None else args.name] = preset
    target.parent.mkdir(parents=True, exist_ok=True)
    original = target.read_text() if target.is_file() else ""
    top_level = [line for line in original.splitlines() if line and not line[0].isspace() and line[0] != "#"]
    if existing is None and top_level and top_level[-1].strip() == "styles:":
        # a new preset under a trailing `styles:` section: append as text, keeping the file's comments
        entry = yaml.safe_dump({args.name: preset}, sort_keys=False, allow_unicode=True)
        text = original.rstrip("\n") + "\n" + "".join(f"  {line}\n" for line in entry.splitlines())
    else:
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if (yaml.safe_load(text) or {}) != data:
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        StyleBook.from_files([tmp])  # raises ConfigError naming the problem; the original stays untouched
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(json.dumps({"styles_file": str(target), "style": args.name, "lora": preset["lora"]}))
    return 0


def cmd_curate(args: argparse.Namespace) -> int:
    from canvas_ray.train.curate import CurateOptions, curate

    options = CurateOptions(
        top_share=args.top_share,
        min_impressions=args.min_impressions,
        confidence=args.confidence,
        near_distance=args.near_distance,
    )
    report = curate(args.catalog, args.output, options)
    print(json.dumps({"output": args.output, **report["counts"]}))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:

    from canvas_ray.train.config import load_finetune_config
    from canvas_ray.train.trainer import finetune

    overrides: dict[str, Any] = {}
    if args.steps:
        overrides["steps"] = args.steps
    if args.workers:
        overrides["scaling.num_workers"] = args.workers
    config = load_finetune_config(args.config, overrides)
    from canvas_ray.cluster import attach

    attach(args.address, None)
    summary = finetune(config, args.catalog, args.output)
    print(json.dumps({k: v for k, v in summary.items() if k != "metrics"}, default=str))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from serve.app import build_app

    config = _config(args.config)
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


def cmd_manifest(args: argparse.Namespace) -> int:
    """Counts of an output root's manifest (streamed), or one consolidated file with ``--export``."""
    from canvas_ray.io.manifest import Manifest, export, summarise

    manifest = Manifest(args.output)
    if manifest.buckets() is None and not manifest.pending_files():
        print(f"no manifest under {args.output} (run `canvas-ray generate` first)", file=sys.stderr)
        return 1
    if args.compact or manifest.pending_files():
        manifest.compact("cli")
    if args.export:
        rows = export(manifest, args.export)
        print(f"{rows} rows written to {args.export}")
        return 0
    totals = summarise(manifest)
    print(
        json.dumps(
            {
                "output": args.output,
                "buckets": manifest.buckets(),
                "files": len(manifest.files()),
                **{
                    k: totals[k] for k in ("outputs", "ok", "review", "rejected", "errors", "errors_by_stage")
                },
            },
            indent=2,
        )
    )
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


def cmd_config(args: argparse.Namespace) -> int:
    config = _config(args.config)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    print(f"# fingerprint: {config.fingerprint()}")
    return 0


def cmd_cluster_plan(args: argparse.Namespace) -> int:
    """Pool sizes of a config on the cluster (attached as `generate` would), or why they do not fit."""
    import ray

    from canvas_ray.cluster import attach, describe, live_nodes, plan_pools, pool_resources

    config = _config(args.config)
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
        held = sum(
            size.max * pool_resources(config)[name].num_gpus for name, size in sizing.pools.items()
        )
        print(f"GPUs held at the pools' maximum: {held:g} of {gpus:g}")
    finally:
        ray.shutdown()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="canvas-ray", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="run the catalog job on Ray (local cluster or RAY_ADDRESS)")
    gen.add_argument("--config", help=f"YAML config (default {DEFAULT_CONFIG.relative_to(REPO_ROOT)})")
    gen.add_argument(
        "--catalog", required=True, help="Parquet/JSONL/CSV file or image folder (any fsspec URI)"
    )
    gen.add_argument("--output", required=True, help="output root (any fsspec URI)")
    gen.add_argument("--limit", type=int, help="only the first N catalog rows")
    gen.add_argument("--style", action="append", help="style preset or description (repeatable)")
    gen.add_argument("--aspect", action="append", help="aspect ratio W:H (repeatable)")
    gen.add_argument(
        "--profile",
        action="append",
        help="output profile from configs/profiles.yaml, e.g. amazon-main (repeatable; replaces the "
        "default aspect ratios)",
    )
    gen.add_argument("--variants", type=int, help="variants per item, style and aspect")
    gen.add_argument("--overwrite", action="store_true", help="discard earlier results under --output")
    gen.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")
    gen.add_argument("--strict", action="store_true", help="exit 2 if any output is an error row")
    gen.add_argument(
        "--catalog-format",
        choices=["merchant-tsv", "merchant-xml", "shopify-csv"],
        help="the catalog is this merchant feed (recognised from the file otherwise; a mismatch is an error)",
    )
    gen.add_argument("--c2pa-key", help="PEM private key signing C2PA manifests (sets provenance.c2pa: sign)")
    gen.add_argument("--c2pa-cert", help="PEM certificate chain of that key, leaf first")
    gen.set_defaults(func=cmd_generate)

    ev = sub.add_parser("evaluate", help="metrics, plots and an HTML report of a finished run")
    ev.add_argument("output", help="the run's output root (any fsspec URI)")
    ev.add_argument("--out", help="folder for metrics.json, plots and report.html (default OUTPUT/eval)")
    ev.add_argument(
        "--expansion-threshold", type=float, default=0.15, help="object-expansion threshold (default 0.15)"
    )
    ev.add_argument("--reference", help="reference image folder or catalog, for FID and KID")
    ev.add_argument("--feature-model", help="transformers vision model (hub id or folder) for FID/KID")
    ev.add_argument("--top", type=int, default=12, help="best and worst ok outputs shown (default 12)")
    ev.set_defaults(func=cmd_evaluate)

    one = sub.add_parser("generate-one", help="one image, in this process (no Ray)")
    one.add_argument("image")
    one.add_argument("--style", required=True, help="style preset name or a plain description")
    one.add_argument("--out", required=True, help="output file (.png, .jpg, .webp)")
    one.add_argument("--config")
    one.add_argument("--aspect", action="append", help="aspect ratio W:H (repeatable)")
    one.add_argument("--seed", type=int, help="fixed seed (default: derived from the image name and style)")
    one.add_argument("--variants", type=int, default=1)
    one.add_argument("--title", help="product title to use in the caption")
    one.set_defaults(func=cmd_generate_one)

    tiny = sub.add_parser("tiny-models", help="build tiny random models and a config that uses them")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_tiny_models)

    styles = sub.add_parser("styles", help="list presets, resolve a style, or add a LoRA style")
    styles_sub = styles.add_subparsers(dest="action", required=True)
    for action, text_help in (("list", None), ("show", "style preset name or description")):
        act = styles_sub.add_parser(action)
        if text_help:
            act.add_argument("text", nargs="?", default="studio white", help=text_help)
        act.add_argument("--config")
        act.set_defaults(func=cmd_styles)
    add = styles_sub.add_parser("add", help="append or update a preset with a fine-tuned LoRA")
    add.add_argument("name")
    add.add_argument("--lora", required=True, help="LoRA folder (pytorch_lora_weights.safetensors) or file")
    add.add_argument("--prompt", required=True, help="scene prompt of the style")
    add.add_argument("--weight", type=float, default=0.8, help="adapter scale (default 0.8)")
    add.add_argument("--negative-prompt")
    add.add_argument("--description")
    add.add_argument("--styles-file", default=str(REPO_ROOT / "configs" / "styles.yaml"))
    add.set_defaults(func=cmd_styles_add)

    cur = sub.add_parser("curate", help="pick top-engaging, de-duplicated catalog images for fine-tuning")
    cur.add_argument("--catalog", required=True)
    cur.add_argument("--output", required=True, help="folder for curated.parquet/jsonl and report.json/md")
    cur.add_argument("--top-share", type=float, default=0.5, help="share of each category kept")
    cur.add_argument("--min-impressions", type=int, default=100)
    cur.add_argument("--confidence", type=float, default=0.95, help="of the Wilson lower bound")
    cur.add_argument("--near-distance", type=int, default=6, help="max dHash distance of near duplicates")
    cur.set_defaults(func=cmd_curate)

    fin = sub.add_parser("finetune", help="train a background LoRA with Ray Train")
    fin.add_argument("--config", required=True, help="finetune YAML (configs/finetune.yaml)")
    fin.add_argument("--catalog", required=True, help="catalog, e.g. curated.parquet from `curate`")
    fin.add_argument("--output", required=True, help="run folder; a rerun resumes from its checkpoints")
    fin.add_argument("--steps", type=int, help="override steps")
    fin.add_argument("--workers", type=int, help="override scaling.num_workers")
    fin.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")
    fin.set_defaults(func=cmd_finetune)

    srv = sub.add_parser("serve", help="run the online service (Ray Serve + FastAPI, web page at /)")
    srv.add_argument("--config", help=f"YAML config (default {DEFAULT_CONFIG.relative_to(REPO_ROOT)})")
    srv.add_argument("--host", help="bind address (default serve.host)")
    srv.add_argument("--port", type=int, help="port (default serve.port)")
    srv.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")
    srv.set_defaults(func=cmd_serve)

    man = sub.add_parser("manifest", help="counts of a run's manifest, or export it as one Parquet file")
    man.add_argument("output", help="the job's output root (local path or fsspec URI)")
    man.add_argument("--export", metavar="FILE", help="write every row to one Parquet file (streamed)")
    man.add_argument("--compact", action="store_true", help="fold staging parts of a killed run first")
    man.set_defaults(func=cmd_manifest)

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

    show = sub.add_parser("config", help="print the effective config and its fingerprint")
    show.add_argument("--config")
    show.set_defaults(func=cmd_config)

    from canvas_ray.models.fetch import add_models_parser  # `models fetch|list` (segmentation models)

    add_models_parser(sub)
    from canvas_ray.publish import add_publish_parsers  # `verify` and `feed`

    add_publish_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except JobStalledError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
