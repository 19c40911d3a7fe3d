"""The fine-tuning drivers: a catalog to a trained LoRA, data-parallel with Ray Train, or in-process.

``finetune`` prepares examples (:mod:`canvas_ray.train.data`), trains with ``TorchTrainer`` over a Ray
Dataset (:mod:`canvas_ray.train.loop`) and exports the latest checkpoint (``Result.checkpoint``) to
``output/lora``. Runs over the same output share one Ray Train run name and storage path, so a new run
resumes from the last one's latest checkpoint and continues its step count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from canvas_ray.train.config import FinetuneConfig
from canvas_ray.train.loop import STATE_NAME, LocalSession, RaySession, run_training
from canvas_ray.train.lora import export_lora, lora_meta

RUN_NAME = "lora"  # one Ray Train run per output folder: reruns resume from its checkpoints


def train_in_process(
    config: FinetuneConfig,
    examples: list[dict[str, Any]],
    output: str | Path,
    noise_seed: int | None = None,
) -> list[dict[str, Any]]:
    """Train in this process (no Ray); same loop, checkpoints under ``output/checkpoints``."""
    from canvas_ray.train.data import data_fingerprint

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    session = LocalSession(config, examples, out)
    history = run_training(config, session, out, noise_seed=noise_seed)
    latest = session.latest_checkpoint()
    if latest is not None:
        ids, captions = [str(e["item_id"]) for e in examples], [str(e["caption"]) for e in examples]
        fingerprint = data_fingerprint(ids, captions)
        export_lora(latest, out, lora_meta(config, fingerprint, config.steps, len(examples)))
    return history


def _ray_train_loop(loop_config: dict[str, Any]) -> None:
    config = FinetuneConfig.model_validate(loop_config["config"])
    output = Path(loop_config["output"]) if loop_config.get("output") else None
    run_training(config, RaySession(config.batch_size), output)


def train_with_ray(
    config: FinetuneConfig,
    dataset: Any,
    output: str | Path,
    fingerprint: str,
    examples: int,
) -> dict[str, Any]:
    """Data-parallel training with ``TorchTrainer`` over the Ray Dataset ``dataset`` (columns of data.py)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    out = Path(output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config={"config": config.model_dump(mode="json"), "output": str(out)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=RUN_NAME,
            storage_path=str(out / "ray"),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=3),
        ),
        datasets={"train": dataset},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training reported no checkpoint under {out / 'ray'}")
    with result.checkpoint.as_directory() as folder:
        latest = Path(folder)
        step = int(json.loads((latest / STATE_NAME).read_text())["step"])
        lora = export_lora(latest, out, lora_meta(config, fingerprint, step, examples))
    checkpoint = result.checkpoint.path
    return {"lora": str(lora), "step": step, "checkpoint": checkpoint, "metrics": result.metrics}


def finetune(
    config: FinetuneConfig, catalog: str, output: str | Path, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Catalog (ideally a curated one) → examples → Ray Train → ``output/lora``."""
    import ray

    from canvas_ray.io.catalog import read_catalog
    from canvas_ray.train.data import data_fingerprint, prepare_dataset, prepare_examples

    table = read_catalog(catalog, storage_options, limit=config.data.limit).table
    rows = [r for r in table.to_pylist() if r["status"] == "ok"]
    if config.data.use_ray_data:
        dataset = prepare_dataset(rows, config).materialize()
        meta = dataset.select_columns(["item_id", "caption"]).take_all()
        ids, captions = [str(m["item_id"]) for m in meta], [str(m["caption"]) for m in meta]
    else:
        examples = prepare_examples(rows, config)
        ids, captions = [str(e["item_id"]) for e in examples], [str(e["caption"]) for e in examples]
        dataset = ray.data.from_items(examples)
    if len(ids) < config.scaling.num_workers:
        raise ValueError(f"{len(ids)} usable examples for {config.scaling.num_workers} workers")
    fingerprint = data_fingerprint(ids, captions)
    summary = train_with_ray(config, dataset, output, fingerprint, len(ids))
    summary["examples"] = len(ids)
    return summary
