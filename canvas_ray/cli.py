"""``canvas-ray`` command line: generate (catalog job), generate-one, serve, tiny-models, styles, config."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from canvas_ray.config import REPO_ROOT, ConfigError, load_config

log = logging.getLogger("canvas_ray")
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
    config = _config(args.config, overrides)
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


def cmd_serve(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from serve.app import build_app

    config = _config(args.config)
    host = args.host or config.serve.host
    port = args.port or config.serve.port
    ray.init(address=args.address or config.ray.address, ignore_reinit_error=True)
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


def cmd_config(args: argparse.Namespace) -> int:
    config = _config(args.config)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    print(f"# fingerprint: {config.fingerprint()}")
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
    gen.add_argument("--variants", type=int, help="variants per item, style and aspect")
    gen.add_argument("--overwrite", action="store_true", help="discard earlier results under --output")
    gen.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")
    gen.add_argument("--strict", action="store_true", help="exit 2 if any output is an error row")
    gen.set_defaults(func=cmd_generate)

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

    styles = sub.add_parser("styles", help="list presets or resolve a style")
    styles.add_argument("action", choices=["list", "show"])
    styles.add_argument("text", nargs="?", default="studio white")
    styles.add_argument("--config")
    styles.set_defaults(func=cmd_styles)

    srv = sub.add_parser("serve", help="run the online service (Ray Serve + FastAPI, web page at /)")
    srv.add_argument("--config", help=f"YAML config (default {DEFAULT_CONFIG.relative_to(REPO_ROOT)})")
    srv.add_argument("--host", help="bind address (default serve.host)")
    srv.add_argument("--port", type=int, help="port (default serve.port)")
    srv.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")
    srv.set_defaults(func=cmd_serve)

    show = sub.add_parser("config", help="print the effective config and its fingerprint")
    show.add_argument("--config")
    show.set_defaults(func=cmd_config)
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


if __name__ == "__main__":
    sys.exit(main())
