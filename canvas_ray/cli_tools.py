"""``canvas-ray`` commands around generation: ``styles`` (list, show, add a LoRA style), ``tiny-models``,
``curate`` and ``finetune`` (LoRA training). Hooked into :mod:`canvas_ray.cli` by :func:`add_tool_parsers`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from canvas_ray.cli_base import cli_config, given
from canvas_ray.config import REPO_ROOT


def cmd_tiny_models(args: argparse.Namespace) -> int:
    """Build the tiny random models into ``DIR`` and write ``DIR/tiny.yaml``: the shipped
    ``configs/tiny.yaml`` pointed at them (:func:`canvas_ray.models.tiny.tiny_config`)."""
    from canvas_ray.models.tiny import build_tiny_models, tiny_config

    out = Path(args.dir).resolve()
    paths = build_tiny_models(out, seed=args.seed)
    config_path = out / "tiny.yaml"
    header = "# configs/tiny.yaml with the models built here (canvas-ray tiny-models)\n"
    config_path.write_text(header + yaml.safe_dump(tiny_config(paths), sort_keys=False))
    print(json.dumps({k: str(v) for k, v in paths.items()} | {"config": str(config_path)}, indent=2))
    return 0


def cmd_styles(args: argparse.Namespace) -> int:
    from canvas_ray.styles import StyleBook

    config = cli_config(args.config)
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
    from canvas_ray.style_files import add_lora_style

    preset = add_lora_style(
        args.styles_file,
        args.name,
        args.lora,
        args.prompt,
        weight=args.weight,
        negative_prompt=args.negative_prompt,
        description=args.description,
    )
    target = str(Path(args.styles_file))
    print(json.dumps({"styles_file": target, "style": args.name, "lora": preset["lora"]}))
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
    from canvas_ray.cluster import attach
    from canvas_ray.train.config import load_finetune_config
    from canvas_ray.train.trainer import finetune

    overrides: dict[str, Any] = given(args, {"steps": "steps", "workers": "scaling.num_workers"})
    config = load_finetune_config(args.config, overrides)
    attach(args.address, None)
    summary = finetune(config, args.catalog, args.output)
    print(json.dumps({k: v for k, v in summary.items() if k != "metrics"}, default=str))
    return 0


def add_tool_parsers(sub: Any) -> None:
    """The ``tiny-models``, ``styles``, ``curate`` and ``finetune`` subcommands."""
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
