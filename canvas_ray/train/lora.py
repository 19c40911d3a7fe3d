"""LoRA fine-tuning of a diffusers inpainting UNet on product photos, data-parallel with Ray Train.

Objective (per example): encode the image with the VAE, add noise at a random timestep, and predict it
from ``cat([noisy_latents, mask, masked_image_latents])`` (the 9-channel inpainting input), where
``mask`` is the BACKGROUND mask (1 = repaint) and ``masked_image`` is the image with its background
zeroed: the product is given, the background is learned. The first ``random_mask_steps`` optimiser steps
use random rectangles as masks (as the inpainting fine-tuning recipes do). The loss can weight background
latents (``background_loss_weight``) against product latents (``product_loss_weight``).

Only LoRA weights train (peft ``LoraConfig`` on every UNet layer type); UNet, VAE and text encoder are
frozen. Gradients are all-reduced across workers after ``gradient_accumulation`` micro-steps. Mixed
precision (autocast) applies on GPU only. Every ``checkpoint_every`` steps and at the end, rank 0 writes a
``ray.train.Checkpoint`` (LoRA weights in diffusers format, optimizer, step) and validation PNGs; a new
run over the same output resumes from the latest checkpoint and continues the step count.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from canvas_ray.train.config import FinetuneConfig

log = logging.getLogger(__name__)
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
STATE_NAME = "state.json"


# ------------------------------------------------------------------------------------------- model parts


def load_base(config: FinetuneConfig, device: torch.device | str = "cpu") -> Any:
    """The diffusers inpainting pipeline of ``base_model``, frozen, on ``device`` (float32 weights)."""
    from diffusers import StableDiffusionInpaintPipeline

    kwargs: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
    if config.revision:
        kwargs["revision"] = config.revision
    pipe = StableDiffusionInpaintPipeline.from_pretrained(config.base_model, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False)
        part.to(device)
    return pipe


def add_lora(unet: torch.nn.Module, config: FinetuneConfig) -> list[torch.nn.Parameter]:
    """Add the LoRA adapter to every targeted layer; returns the trainable (LoRA) parameters."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    lora = LoraConfig(
        r=config.lora.rank,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        init_lora_weights="gaussian",
        target_modules=list(config.lora.target_modules),
    )
    unet.add_adapter(lora)  # type: ignore[operator]
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for param in params:
        param.requires_grad_(True)
        param.data = param.data.float()
    return params


def lora_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The raw peft state dict (NOT convert_state_dict_to_diffusers: that drops attention LoRA on reload)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def save_lora(unet: torch.nn.Module, folder: str | Path) -> Path:
    from diffusers import StableDiffusionInpaintPipeline

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionInpaintPipeline.save_lora_weights(str(folder), unet_lora_layers=lora_state_dict(unet))
    return folder / WEIGHTS_NAME


def load_lora_into(unet: torch.nn.Module, weights: str | Path) -> None:
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = {k.removeprefix("unet."): v for k, v in load_file(str(weights)).items()}
    set_peft_model_state_dict(unet, state)


# -------------------------------------------------------------------------------------------- objective


def random_rectangles(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` masks of 1s in one random rectangle each (a quarter to three quarters of each side)."""
    masks = torch.zeros(count, 1, size, size)
    for i in range(count):
        h, w = (int(v) for v in torch.randint(size // 4, 3 * size // 4 + 1, (2,), generator=generator))
        y = int(torch.randint(0, size - h + 1, (1,), generator=generator))
        x = int(torch.randint(0, size - w + 1, (1,), generator=generator))
        masks[i, 0, y : y + h, x : x + w] = 1.0
    return masks


class Objective:
    """The inpainting noise-prediction loss of one batch (see the module docstring)."""

    def __init__(self, pipe: Any, unet: torch.nn.Module, config: FinetuneConfig, device: torch.device):
        from diffusers import DDPMScheduler

        self.pipe, self.unet, self.config, self.device = pipe, unet, config, device
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.scaling = float(pipe.vae.config.scaling_factor)
        self._prompt_cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self._prompt_cache]
        if missing:
            tok = self.pipe.tokenizer
            ids = tok(
                missing,
                padding="max_length",
                max_length=tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            states = self.pipe.text_encoder(ids)[0]
            for caption, state in zip(missing, states, strict=True):
                self._prompt_cache[caption] = state
        return torch.stack([self._prompt_cache[c] for c in captions])

    def loss(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        captions: list[str],
        generator: torch.Generator,
        random_mask: bool = False,
    ) -> torch.Tensor:
        device = self.device
        pixels = torch.from_numpy(np.asarray(images, np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).to(device)
        if random_mask:
            repaint = random_rectangles(len(pixels), pixels.shape[-1], generator).to(device)
        else:  # background = 1 (repaint), product = 0 (kept)
            repaint = torch.from_numpy((np.asarray(masks) < 128).astype(np.float32))[:, None].to(device)
        masked = pixels * (repaint < 0.5)
        with torch.no_grad():
            vae = self.pipe.vae
            latents = vae.encode(pixels).latent_dist.mean * self.scaling
            masked_latents = vae.encode(masked).latent_dist.mean * self.scaling
            hidden = self.encode_prompts(captions)
        latent_mask = torch.nn.functional.interpolate(repaint, size=latents.shape[-2:], mode="nearest")
        noise = torch.randn(latents.shape, generator=generator).to(device)
        steps = self.scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (len(latents),), generator=generator).to(device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        model_input = torch.cat([noisy, latent_mask, masked_latents], dim=1)
        pred = self.unet(model_input, timesteps, encoder_hidden_states=hidden).sample
        weight = self.config.background_loss_weight * latent_mask + self.config.product_loss_weight * (
            1.0 - latent_mask
        )
        error = (pred.float() - target.float()) ** 2
        return (error * weight).mean() / weight.mean().clamp_min(1e-8)


# ------------------------------------------------------------------------------------------ train loop


class _Session:
    """Where the loop runs: Ray Train workers or this process (rank 0 of 1)."""

    rank = 0
    world = 1

    def batches(self) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        raise NotImplementedError

    def latest_checkpoint(self) -> str | None:
        return None


class _LocalSession(_Session):
    def __init__(self, examples: list[dict[str, Any]], batch_size: int, seed: int, output: Path):
        self.examples, self.batch_size, self.seed, self.output = examples, batch_size, seed, output

    def batches(self) -> Iterator[dict[str, Any]]:
        rng = random.Random(self.seed)
        while True:
            order = list(range(len(self.examples)))
            rng.shuffle(order)
            for start in range(0, len(order), self.batch_size):
                chosen = [self.examples[i] for i in order[start : start + self.batch_size]]
                yield {k: np.stack([c[k] for c in chosen]) for k in ("image", "mask")} | {
                    "caption": [c["caption"] for c in chosen]
                }

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if checkpoint_dir:
            target = self.output / "checkpoints" / f"step-{metrics['step']:08d}"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(checkpoint_dir, target)

    def latest_checkpoint(self) -> str | None:
        found = latest_checkpoint_dir(self.output)
        return str(found) if found else None


class _RaySession(_Session):
    def __init__(self, batch_size: int, resume_path: str | None):
        import ray.train

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.shard = ray.train.get_dataset_shard("train")
        self.batch_size = batch_size
        self.resume_path = resume_path

    def batches(self) -> Iterator[dict[str, Any]]:
        epoch = 0
        while True:
            seen = 0
            for batch in self.shard.iter_batches(batch_size=self.batch_size, batch_format="numpy"):
                seen += 1
                yield {
                    "image": batch["image"],
                    "mask": batch["mask"],
                    "caption": [str(c) for c in batch["caption"]],
                }
            if not seen:
                raise RuntimeError(f"worker {self.rank} got no training examples (fewer than workers?)")
            epoch += 1

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def latest_checkpoint(self) -> str | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            return str(checkpoint.path)  # local storage; remote checkpoints are not resumed here
        return self.resume_path


def latest_checkpoint_dir(output: Path) -> Path | None:
    """The highest-step checkpoint under ``output`` (in-process ``checkpoints/`` or Ray's ``ray/``)."""
    best: tuple[int, Path] | None = None
    for state in output.glob("**/" + STATE_NAME):
        try:
            step = int(json.loads(state.read_text())["step"])
        except (ValueError, KeyError, OSError):
            continue
        if best is None or step > best[0]:
            best = (step, state.parent)
    return best[1] if best else None


def _device(config: FinetuneConfig) -> torch.device:
    if config.scaling.use_gpu and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device(f"cuda:{local}" if torch.cuda.device_count() > 1 else "cuda")
    return torch.device("cpu")


def _validation_images(
    pipe: Any,
    unet: torch.nn.Module,
    config: FinetuneConfig,
    samples: list[dict[str, Any]],
    folder: Path,
    step: int,
) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    unet.eval()
    prompts = config.validation_prompts or [s["caption"] for s in samples]
    for i, sample in enumerate(samples):
        prompt = prompts[i % len(prompts)]
        repaint = Image.fromarray(np.where(np.asarray(sample["mask"]) < 128, 255, 0).astype(np.uint8))
        generator = torch.Generator("cpu").manual_seed(config.seed + i)
        with torch.no_grad():
            result = pipe(
                prompt=prompt,
                image=Image.fromarray(np.asarray(sample["image"])),
                mask_image=repaint,
                height=config.resolution,
                width=config.resolution,
                num_inference_steps=config.validation_steps,
                generator=generator,
                output_type="pil",
            ).images[0]
        path = folder / f"step-{step:08d}-{i}.png"
        result.save(path)
        paths.append(path)
    unet.train()
    return paths


def run_training(
    config: FinetuneConfig,
    session: _Session,
    output: Path | None,
    noise_seed: int | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """The loop every worker runs. ``noise_seed`` fixes noise and timesteps each step (overfit tests)."""
    device = _device(config)
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny CPU workers on shared cores: OpenMP spinning costs more than it saves
    torch.manual_seed(config.seed)
    pipe = load_base(config, device)
    unet = pipe.unet
    params = add_lora(unet, config)  # same seed on every worker → identical initial LoRA weights
    unet.train()
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    objective = Objective(pipe, unet, config, device)
    start = 0
    resume = session.latest_checkpoint()
    if resume:
        folder = Path(resume)
        load_lora_into(unet, folder / "lora" / WEIGHTS_NAME)
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device))
        start = int(json.loads((folder / STATE_NAME).read_text())["step"])
        log.info("resumed from %s at step %d", folder, start)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision)
    use_amp = device.type == "cuda" and amp_dtype is not None
    scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None
    generator = torch.Generator("cpu").manual_seed(config.seed * 1000 + session.rank + 7919 * start)
    batches = session.batches()
    validation: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    distributed = (
        session.world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    )
    for step in range(start + 1, config.steps + 1):
        warmup = min(1.0, step / config.lr_warmup_steps) if config.lr_warmup_steps else 1.0
        lr = config.learning_rate * warmup
        for group in optimizer.param_groups:
            group["lr"] = lr
        began = time.perf_counter()
        total = 0.0
        for _ in range(config.gradient_accumulation):
            batch = next(batches)
            if len(validation) < 1:
                validation.append({k: batch[k][0] for k in ("image", "mask", "caption")})
            if noise_seed is not None:
                generator.manual_seed(noise_seed)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
                loss = objective.loss(
                    batch["image"],
                    batch["mask"],
                    batch["caption"],
                    generator,
                    step <= config.random_mask_steps,
                )
            scaled = loss / config.gradient_accumulation
            (scaler.scale(scaled) if scaler else scaled).backward()
            total += float(loss.detach())
        if scaler:
            scaler.unscale_(optimizer)
        if distributed:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= session.world
            offset = 0
            for param, grad in zip(params, grads, strict=True):
                n = param.numel()
                param.grad = flat[offset : offset + n].view_as(grad).clone()
                offset += n
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = total / config.gradient_accumulation
        if distributed:
            mean = torch.tensor([loss_value])
            torch.distributed.all_reduce(mean)
            loss_value = float(mean) / session.world
        metrics = {"step": step, "loss": loss_value, "lr": lr, "seconds": time.perf_counter() - began}
        history.append(metrics)
        if on_step:
            on_step(metrics)
        checkpoint_dir = None
        if session.rank == 0 and output is not None:
            with (output / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps(metrics) + "\n")
        if (step % config.checkpoint_every == 0 or step == config.steps) and session.rank == 0:
            checkpoint_dir = tempfile.mkdtemp(prefix="canvas-lora-ckpt-")
            save_lora(unet, Path(checkpoint_dir) / "lora")
            torch.save(optimizer.state_dict(), Path(checkpoint_dir) / "optimizer.pt")
            (Path(checkpoint_dir) / STATE_NAME).write_text(json.dumps({"step": step, "loss": loss_value}))
            if output is not None:
                images = _validation_images(pipe, unet, config, validation, output / "validation", step)
                for path in images:
                    shutil.copy(path, Path(checkpoint_dir) / path.name)
        session.report(metrics, checkpoint_dir)
        if checkpoint_dir:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return history


def _ray_train_loop(loop_config: dict[str, Any]) -> None:
    config = FinetuneConfig.model_validate(loop_config["config"])
    output = Path(loop_config["output"]) if loop_config.get("output") else None
    session = _RaySession(config.batch_size, loop_config.get("resume"))
    run_training(config, session, output)


# ------------------------------------------------------------------------------------------------ drivers


def _lora_meta(config: FinetuneConfig, fingerprint: str, steps: int, examples: int) -> dict[str, Any]:
    return {
        "base_model": config.base_model,
        "revision": config.revision,
        "rank": config.lora.rank,
        "alpha": config.lora.alpha,
        "target_modules": list(config.lora.target_modules),
        "data_fingerprint": fingerprint,
        "examples": examples,
        "steps": steps,
        "resolution": config.resolution,
        "weight_name": WEIGHTS_NAME,
    }


def _export(checkpoint: Path, output: Path, meta: dict[str, Any]) -> Path:
    lora = output / "lora"
    lora.mkdir(parents=True, exist_ok=True)
    shutil.copy(checkpoint / "lora" / WEIGHTS_NAME, lora / (WEIGHTS_NAME + ".tmp"))
    os.replace(lora / (WEIGHTS_NAME + ".tmp"), lora / WEIGHTS_NAME)
    (lora / "canvas_lora.json").write_text(json.dumps(meta, indent=2))
    return lora


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
    session = _LocalSession(examples, config.batch_size, config.seed, out)
    history = run_training(config, session, out, noise_seed=noise_seed)
    latest = latest_checkpoint_dir(out)
    if latest is not None:
        ids, captions = [str(e["item_id"]) for e in examples], [str(e["caption"]) for e in examples]
        fingerprint = data_fingerprint(ids, captions)
        _export(latest, out, _lora_meta(config, fingerprint, config.steps, len(examples)))
    return history


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
    resume = latest_checkpoint_dir(out)
    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "output": str(out),
            "resume": str(resume) if resume else None,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=f"lora-{int(time.time() * 1000)}",
            storage_path=str(out / "ray"),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=3),
        ),
        datasets={"train": dataset},
    )
    result = trainer.fit()
    latest = latest_checkpoint_dir(out)
    if latest is None:
        raise RuntimeError(f"training wrote no checkpoint under {out}")
    step = int(json.loads((latest / STATE_NAME).read_text())["step"])
    lora = _export(latest, out, _lora_meta(config, fingerprint, step, examples))
    return {"lora": str(lora), "step": step, "checkpoint": str(latest), "metrics": result.metrics}


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
