"""``canvas-ray`` command line: generate (catalog job), generate-one, evaluate (a run's report), manifest,
config; serve, jobs and cluster plan (:mod:`canvas_ray.cli_service`); tiny-models, styles, curate and
finetune (LoRA training, :mod:`canvas_ray.cli_tools`); models (:mod:`canvas_ray.models.fetch`); verify
and feed (:mod:`canvas_ray.publish`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from canvas_ray.cli_base import DEFAULT_CONFIG, cli_config, given
from canvas_ray.cli_service import add_service_parsers, cmd_cluster_plan, cmd_jobs, cmd_serve
from canvas_ray.cli_tools import (
    add_tool_parsers,
    cmd_curate,
    cmd_finetune,
    cmd_styles,
    cmd_styles_add,
    cmd_tiny_models,
)
from canvas_ray.config import REPO_ROOT, ConfigError
from canvas_ray.logs import get_logger
from canvas_ray.watch import JobStalledError

__all__ = [
    "DEFAULT_CONFIG",
    "build_parser",
    "cmd_cluster_plan",
    "cmd_config",
    "cmd_curate",
    "cmd_evaluate",
    "cmd_finetune",
    "cmd_generate",
    "cmd_generate_one",
    "cmd_jobs",
    "cmd_manifest",
    "cmd_serve",
    "cmd_styles",
    "cmd_styles_add",
    "cmd_tiny_models",
    "main",
]

log = get_logger("canvas_ray")


def cmd_generate_one(args: argparse.Namespace) -> int:
    from canvas_ray.io.images import delivery_quality, encode_image
    from canvas_ray.pipeline import LocalPipeline

    overrides = {"output.variants": args.variants, **given(args, {"aspect": "output.aspect_ratios"})}
    config = cli_config(args.config, overrides)
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
        target.write_bytes(encode_image(result.image, fmt, delivery_quality(fmt, config.output.quality)))
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

    overrides = given(
        args, {"variants": "output.variants", "aspect": "output.aspect_ratios", "style": "styles.default"}
    )
    if args.profile:
        overrides["output.profiles"] = list(dict.fromkeys(args.profile))
    if args.c2pa_key or args.c2pa_cert:
        overrides.update(
            {"provenance.c2pa": "sign", "provenance.key": args.c2pa_key, "provenance.cert": args.c2pa_cert}
        )
    config = cli_config(args.config, overrides)
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


def cmd_config(args: argparse.Namespace) -> int:
    config = cli_config(args.config)
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

    add_tool_parsers(sub)
    add_service_parsers(sub)

    man = sub.add_parser("manifest", help="counts of a run's manifest, or export it as one Parquet file")
    man.add_argument("output", help="the job's output root (local path or fsspec URI)")
    man.add_argument("--export", metavar="FILE", help="write every row to one Parquet file (streamed)")
    man.add_argument("--compact", action="store_true", help="fold staging parts of a killed run first")
    man.set_defaults(func=cmd_manifest)

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
