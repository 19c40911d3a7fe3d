"""The inpainting fast path on a CUDA GPU: a full-size SD-1.5-inpainting pipeline with random weights.

The pipeline is built from configs (no download): the SD-1.5 inpainting UNet (9 input channels,
block_out_channels 320/640/1280/1280, cross-attention 768, 8 heads), the SD VAE, a CLIP ViT-L/14 text
encoder and a tokenizer built locally (as ``canvas_ray.models.tiny`` does). At 512×512, 25 steps with
classifier-free guidance it measures images/s per GPU and the share of the GPU's dense bf16 FLOP ceiling
for a ladder of settings, each applied through the product's own ``apply_fast_path`` (the code behind
``inpaint.dtype / attention / channels_last / compile / vae_slicing / vae_tiling``):

    fp32 + plain attention (the baseline) → fp32 + SDPA → fp16 → bf16 → + channels_last
    → batch 4 and 8 (one resolution bucket per call, as the Inpaint stage batches) → + VAE slicing / tiling
    → + torch.compile of the UNet (``--compile``)

and the segmenter's and captioner's share of the GPU time per image (Segformer-b0-sized and BLIP-base-
sized models built from configs; the production checkpoints are larger, so the real shares are larger).

    python -m benchmarks.gpu                       # on a GPU node; exits 0 with a message elsewhere
    python -m benchmarks.gpu --compile --peak-tflops 989 --batches 1,4,8

FLOPs per image: 339 GMACs per UNet forward at 512² × 2 FLOP/MAC × 2 (CFG) × 25 steps, plus one VAE
encode (the masked image) and one decode ≈ 37.5 TFLOP (``flop_per_image``); the run also counts them
with ``torch.utils.flop_counter`` and uses the counted figure when it has one.
"""

from __future__ import annotations

import argparse
import gc
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.common import default_json, machine, quiet, write_json

# One UNet forward at 512x512 (64x64 latents), batch 1, SD-1.5 architecture (the usual published figure).
UNET_GMACS_512 = 339.0
# SD VAE at 512x512: the decoder (4x64x64 latents -> 3x512x512) and the encoder (the other way).
VAE_DECODE_GMACS_512 = 1240.0
VAE_ENCODE_GMACS_512 = 542.0

# Dense (no sparsity) bf16 tensor-core TFLOPS from NVIDIA's data sheets; the first name found in the
# device name wins, so specific names come before their prefixes.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100", 989.0),  # SXM
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
)
SKIP_MESSAGE = "no CUDA GPU: skipped (run on a GPU node)"


def flop_per_image(
    width: int = 512,
    height: int = 512,
    steps: int = 25,
    guidance: bool = True,
    strength: float = 1.0,
    unet_gmacs_512: float = UNET_GMACS_512,
    vae_decode_gmacs_512: float = VAE_DECODE_GMACS_512,
    vae_encode_gmacs_512: float = VAE_ENCODE_GMACS_512,
) -> float:
    """FLOPs to inpaint one image: UNet steps (×2 with classifier-free guidance) + one VAE encode + decode.

    Convolution cost scales with the pixel count; so does most of the attention cost at these sizes (the
    quadratic part is small next to the convolutions), so the 512² figures are scaled by area.
    """
    if width <= 0 or height <= 0 or steps <= 0 or not 0 < strength <= 1:
        raise ValueError("width, height and steps must be positive and strength in (0, 1]")
    area = (width * height) / (512 * 512)
    steps_run = max(1, min(int(steps * strength), steps))  # diffusers skips the first (1 - strength) steps
    unet = unet_gmacs_512 * area * (2 if guidance else 1) * steps_run
    vae = (vae_decode_gmacs_512 + vae_encode_gmacs_512) * area
    return 2.0 * (unet + vae) * 1e9


def peak_tflops_for(device_name: str) -> float | None:
    """Dense bf16 TFLOPS of a GPU from its name (``torch.cuda.get_device_name``), None if not listed."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def fraction_of_peak(images_per_s: float, flops_per_image: float, peak_tflops: float | None) -> float | None:
    if not peak_tflops:
        return None
    return images_per_s * flops_per_image / (peak_tflops * 1e12)


# ----------------------------------------------------------------------------------------------- models


def build_sd15_inpaint(device: Any, tiny: bool = False) -> Any:
    """An SD-1.5-inpainting-architecture pipeline with random weights, fp32, on ``device``.

    ``tiny`` gives the diffusers-test-sized pipeline instead (for a CPU smoke run of this script).
    """
    import torch

    if tiny:
        from canvas_ray.models.tiny import make_tiny_inpainter

        tiny_pipe: Any = make_tiny_inpainter()
        tiny_pipe.to(device)
        tiny_pipe.set_progress_bar_config(disable=True)
        return tiny_pipe
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from canvas_ray.models.tiny import _clip_tokenizer
    from canvas_ray.models.tiny_diffusion import inpaint_pipeline

    tokenizer = _clip_tokenizer()  # built locally: no hub; ids fit the full-size embedding table
    with torch.device(device):  # initialise the weights where they will run (seconds, not minutes)
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=9,
            out_channels=4,
            down_block_types=(
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=768,
            attention_head_dim=8,
            norm_num_groups=32,
            downsample_padding=1,
            flip_sin_to_cos=True,
            freq_shift=0,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=512,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                projection_dim=768,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    pipe = inpaint_pipeline(vae, text_encoder, tokenizer, unet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_segmenter(device: Any, dtype: Any, tiny: bool = False) -> Any:
    """Segformer-b0-sized (SegformerConfig's defaults are MiT-b0), 2 labels, random weights."""
    if tiny:
        from canvas_ray.models.tiny import make_tiny_segmenter

        tiny_model: Any = make_tiny_segmenter()[0]
        return tiny_model.to(device=device, dtype=dtype).eval()
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config: Any = SegformerConfig
    model: Any = SegformerForSemanticSegmentation
    return model(config(num_labels=2)).to(device=device, dtype=dtype).eval()


def build_captioner(device: Any, dtype: Any, tiny: bool = False) -> Any:
    """BLIP-base-sized captioner (ViT-B/16 at 384 px + BERT-base decoder; BlipConfig's defaults)."""
    if tiny:
        from canvas_ray.models.tiny import make_tiny_captioner

        tiny_model: Any = make_tiny_captioner()[0]
        return tiny_model.to(device=device, dtype=dtype).eval()
    from transformers import BlipConfig, BlipForConditionalGeneration

    model: Any = BlipForConditionalGeneration
    return model(BlipConfig()).to(device=device, dtype=dtype).eval()


# ------------------------------------------------------------------------------------------------ timing


@dataclass
class Variant:
    name: str
    dtype: str = "bfloat16"
    attention: str = "sdpa"  # sdpa | math (diffusers' plain AttnProcessor)
    channels_last: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    compile: bool = False
    batch: int = 1


def ladder(batches: list[int], compile_unet: bool) -> list[Variant]:
    """The settings in the order they are applied (channels_last and compile stick, so they come last)."""
    big = max(batches)
    steps = [
        Variant("fp32, plain attention (baseline)", dtype="float32", attention="math"),
        Variant("fp32 + SDPA", dtype="float32"),
        Variant("fp16 + SDPA", dtype="float16"),
        Variant("bf16 + SDPA", dtype="bfloat16"),
        Variant("bf16 + SDPA + channels_last", channels_last=True),
    ]
    steps += [Variant(f"  … batch {b}", channels_last=True, batch=b) for b in batches if b > 1]
    steps += [
        Variant(f"  … batch {big} + VAE slicing", channels_last=True, vae_slicing=True, batch=big),
        Variant(f"  … batch {big} + VAE tiling", channels_last=True, vae_tiling=True, batch=big),
    ]
    if compile_unet:
        steps += [
            Variant(f"  … + torch.compile, batch {b}", channels_last=True, compile=True, batch=b)
            for b in batches
        ]
    return steps


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def _apply(pipe: Any, variant: Variant, device: Any, compile_mode: str) -> None:
    """Put ``pipe`` in the variant's state with the product's ``apply_fast_path`` (plus the undo steps)."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor

    from canvas_ray.config import InpaintConfig
    from canvas_ray.models.loading import apply_fast_path

    pipe.to(dtype=getattr(torch, variant.dtype))
    if variant.attention == "math":
        pipe.unet.set_attn_processor(AttnProcessor())
        pipe.vae.set_attn_processor(AttnProcessor())
    pipe.vae.disable_slicing()
    pipe.vae.disable_tiling()
    spec = InpaintConfig(
        backend="diffusers",
        dtype=variant.dtype,
        attention="default" if variant.attention == "math" else "sdpa",
        channels_last=variant.channels_last,
        vae_slicing=variant.vae_slicing,
        vae_tiling=variant.vae_tiling,
        compile=variant.compile and not getattr(pipe.unet, "_compiled_call_impl", None),
        compile_mode=compile_mode,  # type: ignore[arg-type]
    )
    apply_fast_path(pipe, spec, device)
    if variant.attention != "math":  # the VAE's attention too (apply_fast_path covers the UNet)
        from diffusers.models.attention_processor import AttnProcessor2_0

        if any(type(p) is AttnProcessor for p in pipe.vae.attn_processors.values()):
            pipe.vae.set_attn_processor(AttnProcessor2_0())


def _inputs(batch: int, size: int, steps: int, seed: int = 0) -> dict[str, Any]:
    import numpy as np
    import torch
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    mask_array = np.full((size, size), 255, np.uint8)
    mask_array[size // 4 : 3 * size // 4, size // 3 : 2 * size // 3] = 0  # the product stays
    mask = Image.fromarray(mask_array)
    return {
        "prompt": ["on a polished white marble countertop, soft window light"] * batch,
        "negative_prompt": ["text, watermark, blurry"] * batch,
        "image": [image] * batch,
        "mask_image": [mask] * batch,
        "width": size,
        "height": size,
        "num_inference_steps": steps,
        "guidance_scale": 7.5,
        "generator": [torch.Generator().manual_seed(seed + i) for i in range(batch)],
        "output_type": "np",
    }


def time_calls(call: Any, device: Any, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        call()
    _sync(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - started)
    return times


def count_flops(pipe: Any, size: int, steps: int, device: Any) -> float | None:
    """FLOPs of one image, counted by torch: UNet forward (CFG batch 2) × steps + VAE encode + decode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    dtype = pipe.unet.dtype
    latent = size // 8
    try:
        with torch.no_grad():
            sample = torch.randn(2, 9, latent, latent, device=device, dtype=dtype)
            text = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, device=device, dtype=dtype)
            t = torch.tensor([500], device=device)
            with FlopCounterMode(display=False) as unet_counter:
                pipe.unet(sample, t, encoder_hidden_states=text)
            pixels = torch.randn(1, 3, size, size, device=device, dtype=dtype)
            with FlopCounterMode(display=False) as vae_counter:
                latents = pipe.vae.encode(pixels).latent_dist.mode()
                pipe.vae.decode(latents)
        return float(unet_counter.get_total_flops() * steps + vae_counter.get_total_flops())
    except Exception as error:  # noqa: BLE001 - the analytic figure stands in
        print(f"(flop counting failed: {error}; using the analytic figure)")
        return None


def run_variant(pipe: Any, variant: Variant, args: argparse.Namespace, device: Any) -> dict[str, Any]:
    import torch

    _apply(pipe, variant, device, args.compile_mode)
    inputs = _inputs(variant.batch, args.resolution, args.steps)

    def call() -> Any:
        inputs["generator"] = [torch.Generator().manual_seed(i) for i in range(variant.batch)]
        with torch.inference_mode():
            return pipe(**inputs)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    warmup = args.warmup + (2 if variant.compile else 0)  # compile: trace + autotune on the first calls
    started = time.perf_counter()
    times = time_calls(call, device, warmup, args.repeats)
    seconds = sum(times)
    images = variant.batch * len(times)
    return {
        **asdict(variant),
        "seconds_per_image": round(seconds / images, 4),
        "images_per_s": round(images / seconds, 4),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if device.type == "cuda"
        else None,
        "first_call_s": round(time.perf_counter() - started - seconds, 2),
    }


def stage_shares(args: argparse.Namespace, device: Any, inpaint_s_per_image: float) -> dict[str, Any]:
    """Seconds per image of the segmenter and captioner (bf16, batch 8) next to the inpainter's."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    batch = 8
    segmenter = build_segmenter(device, dtype, tiny=args.cpu_smoke)
    seg_size = 64 if args.cpu_smoke else 512
    pixels = torch.randn(batch, 3, seg_size, seg_size, device=device, dtype=dtype)

    def segment() -> Any:
        with torch.inference_mode():
            logits = segmenter(pixel_values=pixels).logits
            return F.interpolate(logits.float(), size=(seg_size, seg_size), mode="bilinear").softmax(1)

    seg_times = time_calls(segment, device, args.warmup, args.repeats)
    segmenter = None  # free it before the captioner loads
    captioner = build_captioner(device, dtype, tiny=args.cpu_smoke)
    cap_size = captioner.config.vision_config.image_size
    cap_pixels = torch.randn(batch, 3, cap_size, cap_size, device=device, dtype=dtype)
    tokens = 8 if args.cpu_smoke else args.caption_tokens

    def caption() -> Any:
        with torch.inference_mode():
            return captioner.generate(pixel_values=cap_pixels, max_new_tokens=tokens, min_new_tokens=tokens)

    cap_times = time_calls(caption, device, args.warmup, args.repeats)
    captioner = None
    gc.collect()
    segment_s = sum(seg_times) / (batch * len(seg_times))
    caption_s = sum(cap_times) / (batch * len(cap_times))
    total = segment_s + caption_s + inpaint_s_per_image
    return {
        "batch": batch,
        "caption_tokens": tokens,
        "segment_s_per_image": round(segment_s, 5),
        "caption_s_per_image": round(caption_s, 5),
        "inpaint_s_per_image": round(inpaint_s_per_image, 5),
        "share": {
            "segment": round(segment_s / total, 4),
            "caption": round(caption_s / total, 4),
            "inpaint": round(inpaint_s_per_image / total, 4),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batches", default="1,4,8", help="batch sizes of one resolution bucket")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the UNet (minutes)")
    parser.add_argument(
        "--compile-mode",
        default="max-autotune-no-cudagraphs",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 TFLOPS of this GPU")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--caption-tokens", type=int, default=30, help="tokens generated per caption")
    parser.add_argument("--json", default=None, help="figures file (default benchmarks/results/gpu.json)")
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="run the whole script on CPU with tiny models (for testing it)",
    )
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print(SKIP_MESSAGE)
        return 0
    quiet()
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # random weights: NaNs in the image cast
    device = torch.device("cuda" if not args.cpu_smoke else "cpu")
    if args.cpu_smoke:
        args.resolution, args.steps = 64, 2
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (smoke run)"
    peak = args.peak_tflops or peak_tflops_for(name)
    batches = sorted({int(b) for b in args.batches.split(",") if b})
    print(f"gpu benchmark: {name}, peak bf16 {peak or 'unknown (pass --peak-tflops)'} TFLOPS")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes per bucket: let cuDNN pick its fastest kernels

    started = time.perf_counter()
    pipe = build_sd15_inpaint(device, tiny=args.cpu_smoke)
    build_s = time.perf_counter() - started
    analytic = flop_per_image(args.resolution, args.resolution, args.steps)
    counted = count_flops(pipe, args.resolution, args.steps, device)
    flops = counted or analytic
    print(
        f"pipeline built in {build_s:.1f} s; FLOP per image: analytic {analytic / 1e12:.2f} T, counted "
        + (f"{counted / 1e12:.2f} T" if counted else "n/a")
    )
    results: list[dict[str, Any]] = []
    header = f"{'setting':42}{'batch':>6}{'s/img':>8}{'img/s':>8}{'speedup':>9}{'% peak':>8}{'mem GB':>8}"
    print(header)
    for variant in ladder(batches, args.compile):
        result = run_variant(pipe, variant, args, device)
        baseline = results[0]["images_per_s"] if results else result["images_per_s"]
        result["speedup_vs_baseline"] = round(result["images_per_s"] / baseline, 3)
        share = fraction_of_peak(result["images_per_s"], flops, peak)
        result["fraction_of_bf16_peak"] = round(share, 4) if share is not None else None
        results.append(result)
        pct = f"{100 * share:.1f}" if share is not None else "n/a"
        mem = f"{result['peak_memory_gb']:.1f}" if result["peak_memory_gb"] is not None else "n/a"
        print(
            f"{variant.name:42}{variant.batch:6d}{result['seconds_per_image']:8.3f}{result['images_per_s']:8.2f}"
            f"{result['speedup_vs_baseline']:8.2f}x{pct:>8}{mem:>8}",
            flush=True,
        )
    best = max(results, key=lambda r: r["images_per_s"])
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    shares = stage_shares(args, device, best["seconds_per_image"])
    print(
        f"best: {best['name'].strip(' …')} at batch {best['batch']}: "
        f"{best['images_per_s']:.2f} images/s per GPU, "
        f"{best['speedup_vs_baseline']:.1f}x the fp32 baseline"
    )
    print(
        "GPU time per image: segment {segment_s_per_image:.4f} s, caption {caption_s_per_image:.4f} s, "
        "inpaint {inpaint_s_per_image:.4f} s".format(**shares)
        + f"  → shares {shares['share']}"
    )
    record = {
        "benchmark": "gpu",
        "machine": machine(),
        "device": name,
        "peak_bf16_tflops": peak,
        "resolution": args.resolution,
        "steps": args.steps,
        "guidance": True,
        "flop_per_image_analytic": analytic,
        "flop_per_image_counted": counted,
        "pipeline_build_s": round(build_s, 2),
        "variants": results,
        "best": best,
        "stage_shares": shares,
        "cpu_smoke": args.cpu_smoke,
    }
    write_json(args.json or default_json("gpu" if not args.cpu_smoke else "gpu_cpu_smoke"), record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
