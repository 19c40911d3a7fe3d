"""The training loop every worker runs, and where it runs (a Ray Train worker or this process).

Data parallelism is Ray Train's: ``ray.train.torch.prepare_model`` wraps the UNet in DDP (gradients are
averaged across workers on the last micro-step of each ``gradient_accumulation`` window) and
``ray.train.torch.get_device`` says where the worker's tensors live. The learning rate follows
``diffusers.optimization.get_scheduler(config.lr_scheduler)`` with ``lr_warmup_steps`` of warm-up. Mixed
precision (autocast) applies on GPU only. Every ``checkpoint_every`` steps and at the end, rank 0 reports
a ``ray.train.Checkpoint`` (LoRA weights, optimizer and scheduler state, step) and writes validation PNGs;
a run resumes from the latest checkpoint (``ray.train.get_checkpoint()``) and continues the step count.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from canvas_ray.logs import get_logger
from canvas_ray.train.config import FinetuneConfig
from canvas_ray.train.lora import WEIGHTS_NAME, add_lora, load_base, load_lora_into, save_lora
from canvas_ray.train.objective import Objective

log = get_logger(__name__)
STATE_NAME = "state.json"


class Session(Protocol):
    """Where the loop runs: its rank among ``world`` workers, its device, data, reports and checkpoints."""

    rank: int
    world: int
    device: torch.device

    def batches(self) -> Iterator[dict[str, Any]]: ...

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None: ...

    def resume_from(self) -> contextlib.AbstractContextManager[str | None]: ...


class LocalSession:
    """This process alone (rank 0 of 1); checkpoints are copied to ``output/checkpoints/step-NNNNNNNN``."""

    rank, world = 0, 1

    def __init__(self, config: FinetuneConfig, examples: list[dict[str, Any]], output: Path):
        self.examples, self.batch_size, self.seed, self.output = (
            examples,
            config.batch_size,
            config.seed,
            output,
        )
        use_gpu = config.scaling.use_gpu and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")

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

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if checkpoint_dir:
            target = self.output / "checkpoints" / f"step-{metrics['step']:08d}"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(checkpoint_dir, target)

    def latest_checkpoint(self) -> Path | None:
        """The highest step under ``output/checkpoints`` (zero-padded names sort by step)."""
        return max((self.output / "checkpoints").glob("step-*"), default=None)

    @contextlib.contextmanager
    def resume_from(self) -> Iterator[str | None]:
        latest = self.latest_checkpoint()
        yield str(latest) if latest else None


class RaySession:
    """A Ray Train worker: its dataset shard, DDP through ``prepare_model``, reports with checkpoints."""

    def __init__(self, batch_size: int):
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.shard = ray.train.get_dataset_shard("train")
        self.batch_size = batch_size

    def batches(self) -> Iterator[dict[str, Any]]:
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

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)  # DDP when world > 1

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    @contextlib.contextmanager
    def resume_from(self) -> Iterator[str | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()  # the latest of this run name under its storage path
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield folder


def validation_images(
    pipe: Any,
    unet: torch.nn.Module,
    config: FinetuneConfig,
    samples: list[dict[str, Any]],
    folder: Path,
    step: int,
) -> list[Path]:
    """One image per sample, generated by ``pipe`` with the LoRA as trained so far."""
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


def _mean_over_workers(value: float, world: int) -> float:
    """The mean of a logged figure over the workers (a metric, not a gradient: DDP averages those)."""
    if world == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    total = torch.tensor([value])
    torch.distributed.all_reduce(total)
    return float(total) / world


def _save_checkpoint(unet: torch.nn.Module, optimizer: Any, scheduler: Any, step: int, loss: float) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="canvas-lora-ckpt-"))
    save_lora(unet, folder / "lora")
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    (folder / STATE_NAME).write_text(json.dumps({"step": step, "loss": loss}))
    return folder


def optimizer_and_scheduler(params: Any, config: FinetuneConfig) -> tuple[Any, Any]:
    """AdamW over the LoRA parameters and the configured learning-rate schedule (warm-up included)."""
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=config.steps,
    )
    return optimizer, scheduler


def _restore(
    folder: Path, unet: torch.nn.Module, optimizer: Any, scheduler: Any, device: torch.device
) -> int:
    load_lora_into(unet, folder / "lora" / WEIGHTS_NAME)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device))
    if (folder / "scheduler.pt").is_file():
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt"))
    step = int(json.loads((folder / STATE_NAME).read_text())["step"])
    log.info("resumed from %s at step %d", folder, step)
    return step


def run_training(
    config: FinetuneConfig,
    session: Session,
    output: Path | None,
    noise_seed: int | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """The loop every worker runs. ``noise_seed`` fixes noise and timesteps each step (overfit tests)."""

    device = session.device
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny CPU workers on shared cores: OpenMP spinning costs more than it saves
    torch.manual_seed(config.seed)
    pipe = load_base(config, device)
    unet = pipe.unet  # the pipeline keeps the bare UNet: validation and saving use it
    params = add_lora(unet, config)  # same seed on every worker → identical initial LoRA weights
    unet.train()
    optimizer, scheduler = optimizer_and_scheduler(params, config)
    start = 0
    with session.resume_from() as resume:
        if resume:
            start = _restore(Path(resume), unet, optimizer, scheduler, device)
    model = session.prepare(unet)
    objective = Objective(pipe, model, config, device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision)
    use_amp = device.type == "cuda" and amp_dtype is not None
    scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None
    generator = torch.Generator("cpu").manual_seed(config.seed * 1000 + session.rank + 7919 * start)
    batches = session.batches()
    validation: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    for step in range(start + 1, config.steps + 1):
        lr = scheduler.get_last_lr()[0]
        began = time.perf_counter()
        total = 0.0
        for micro in range(config.gradient_accumulation):
            batch = next(batches)
            if len(validation) < 1:
                validation.append({k: batch[k][0] for k in ("image", "mask", "caption")})
            if noise_seed is not None:
                generator.manual_seed(noise_seed)
            last = micro == config.gradient_accumulation - 1
            no_sync = getattr(model, "no_sync", None)  # DDP: all-reduce on the window's last backward only
            with contextlib.ExitStack() as stack:
                if no_sync is not None and not last:
                    stack.enter_context(no_sync())
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
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = _mean_over_workers(total / config.gradient_accumulation, session.world)
        metrics = {"step": step, "loss": loss_value, "lr": lr, "seconds": time.perf_counter() - began}
        history.append(metrics)
        if on_step:
            on_step(metrics)
        checkpoint_dir = None
        if session.rank == 0 and output is not None:
            with (output / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps(metrics) + "\n")
        if (step % config.checkpoint_every == 0 or step == config.steps) and session.rank == 0:
            checkpoint_dir = _save_checkpoint(unet, optimizer, scheduler, step, loss_value)
            if output is not None:
                images = validation_images(pipe, unet, config, validation, output / "validation", step)
                for path in images:
                    shutil.copy(path, checkpoint_dir / path.name)
        session.report(metrics, str(checkpoint_dir) if checkpoint_dir else None)
        if checkpoint_dir:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return history
