"""Tiny, randomly initialised stand-ins for the real checkpoints, for tests and offline smoke runs.

Every builder writes a folder that the production loaders read with ``from_pretrained`` and no hub access:

* segmenter: ``AutoModelForSemanticSegmentation`` + ``AutoImageProcessor`` (Segformer: background/product)
* captioner: ``AutoModelForImageTextToText`` + ``AutoProcessor`` (BLIP captioning, small WordPiece vocab)
* inpainter: ``diffusers.AutoPipelineForInpainting`` (Stable Diffusion inpainting, 9-channel UNet)
* clip: ``CLIPModel`` + ``CLIPProcessor`` (image-text scoring)
* ip_adapter: an IP-Adapter for the inpainter (``pipe.load_ip_adapter``: CLIP image encoder + weights)

``make_tiny_*`` return the same objects in memory. Weights come from ``torch.manual_seed(seed)`` inside a
forked RNG (the caller's RNG state is untouched), so a seed always gives the same weights. The outputs are
noise: these models only exercise shapes, batching, I/O and loading paths. The set is about 9.5 MB on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import StableDiffusionInpaintPipeline
    from transformers import (
        BlipForConditionalGeneration,
        BlipProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
        SegformerForSemanticSegmentation,
        SegformerImageProcessorPil,
    )

__all__ = [
    "TINY_KINDS",
    "build_tiny_captioner",
    "build_tiny_clip",
    "build_tiny_inpainter",
    "build_tiny_ip_adapter",
    "build_tiny_models",
    "build_tiny_segmenter",
    "is_complete",
    "make_tiny_captioner",
    "make_tiny_clip",
    "make_tiny_inpainter",
    "make_tiny_ip_adapter",
    "make_tiny_segmenter",
]

TINY_KINDS: tuple[str, ...] = ("segmenter", "captioner", "inpainter", "clip", "ip_adapter")
MARKER_FILE = "tiny_model.json"
_FORMAT_VERSION = 1

# Words every tiny tokenizer knows whole: the caption / diffusion prompt vocabulary of the project.
_WORD_TEXT = """
a an the of on in at to with and or for from by as is are be this that it its his her their our your
photo photograph picture image shot product products item object packshot studio professional photography
background backdrop scene setting surface table desk counter shelf floor wall stand pedestal podium plinth
describe detail details two parts part what shape material colour color colours colors behind front
lighting light lights soft natural warm cool bright dark shadow shadows sunlight daylight glow ambient
high quality sharp focus clean minimal minimalist modern simple elegant luxury premium vintage rustic
white black grey gray red green blue yellow orange pink purple brown beige gold silver cream pastel
wooden wood marble stone concrete glass metal ceramic leather fabric paper plastic linen velvet cotton
bottle jar box bag shoe shoes watch cup mug bowl plate vase lamp chair phone camera book candle perfume
sneaker headphones speaker laptop wallet ring necklace bracelet jewelry cosmetic cream lotion soap toy
kitchen bathroom bedroom living room garden beach forest mountain waterfall ocean sea sky sunset sunrise
city street cafe office outdoor indoor nature flowers flower leaves leaf plants plant tree grass sand water
rock rocks snow ice fire smoke mist fog bokeh blurred blurry gradient texture pattern flat lay top view
close up closeup side angle center centered small large big tall round square long short little
text watermark logo extra duplicate people person hands hand distorted deformed low jpeg artifacts
oversaturated noise noisy cropped ugly bad worst lowres signature frame border
there sitting standing lying placed next near under over inside outside against surrounded
one three four many some several pair set group
new old shiny matte glossy reflective transparent bright colorful vibrant muted neutral
"""
_WORDS = _WORD_TEXT.split()
_PUNCT = [".", ",", ":", ";", "!", "?", "-", "'", '"', "(", ")", "/", "&"]
_SUFFIXES = ["##s", "##es", "##ed", "##ing", "##ly", "##er", "##y"]
_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
_CLIP_BOS, _CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
_CLIP_VOCAB_SIZE = 1000
# The tiny inpainting UNet (diffusers' get_dummy_components sizes, 9 input channels); the IP-Adapter
# weights of build_tiny_ip_adapter are shaped for it.
_TINY_UNET: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "sample_size": 32,
    "in_channels": 9,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
}
# Where build_tiny_ip_adapter puts its files: the layout of h94/IP-Adapter, so the same three arguments
# of `pipe.load_ip_adapter` (and of `inpaint.ip_adapter`) load either.
TINY_IP_ADAPTER_SUBFOLDER = "models"
TINY_IP_ADAPTER_WEIGHT = "ip-adapter_tiny.safetensors"
TINY_IP_ADAPTER_ENCODER = "image_encoder"


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _bert_vocab() -> dict[str, int]:
    """WordPiece vocab: specials ([DEC] is BLIP's decoder bos), punctuation, letters, digits, words."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    tokens = _unique(_BERT_SPECIALS + _PUNCT + letters + digits + _WORDS + _SUFFIXES)
    return {token: i for i, token in enumerate(tokens)}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: every byte maps to one printable unicode character."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, [chr(c) for c in chars], strict=True))


def _clip_vocab_and_merges(size: int = _CLIP_VOCAB_SIZE) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocab of exactly ``size`` tokens: 256 bytes, 256 word-final bytes, whole-word merges."""
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    seen = set(tokens)
    merges: list[tuple[str, str]] = []
    budget = size - 2 - len(tokens)
    for word in _WORDS:
        if not word.isalpha() or len(word) < 2:
            continue
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        steps: list[tuple[str, str]] = []
        left = parts[0]
        for right in parts[1:]:
            steps.append((left, right))
            left = left + right
        new = [(a, b) for a, b in steps if a + b not in seen]
        if len(new) > budget:
            break
        for a, b in new:
            merges.append((a, b))
            tokens.append(a + b)
            seen.add(a + b)
        budget -= len(new)
    # pad to the fixed size with word-final pairs so the embedding table size never depends on the word list
    pad = iter((a, b + "</w>") for a in "abcdefghijklmnopqrstuvwxyz" for b in "abcdefghijklmnopqrstuvwxyz")
    while len(tokens) < size - 2:
        a, b = next(pad)
        if a + b not in seen:
            merges.append((a, b))
            tokens.append(a + b)
            seen.add(a + b)
    tokens += [_CLIP_BOS, _CLIP_EOS]
    return {token: i for i, token in enumerate(tokens)}, merges


def _clip_tokenizer() -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    # stub says list[str]; the pairs go straight to tokenizers.BPE, which takes (a, b) tuples
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)  # type: ignore[arg-type]


def _clip_text_kwargs(tokenizer: CLIPTokenizer) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "max_position_embeddings": 77,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "layer_norm_eps": 1e-5,
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Mute transformers' info/warnings and progress bars while building (restored afterwards).

    This hides the one-off "requires torchvision ... falling back to ...Pil" notices that importing diffusers'
    Stable Diffusion modules triggers, and the "Writing model shards" bars of ``save_pretrained``.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _isolated() -> Iterator[None]:
    """Seeding inside leaves the caller's global torch RNG state untouched; transformers stays quiet."""
    with torch.random.fork_rng(devices=[]), _quiet():
        yield


def make_tiny_segmenter(seed: int = 0) -> tuple[SegformerForSemanticSegmentation, SegformerImageProcessorPil]:
    """In-memory Segformer (labels {0: background, 1: product}) and its 64x64 PIL image processor."""
    with _isolated():
        from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessorPil

        config = SegformerConfig(
            num_channels=3,
            num_encoder_blocks=2,
            depths=[1, 1],
            sr_ratios=[2, 1],
            hidden_sizes=[16, 32],
            patch_sizes=[7, 3],
            strides=[4, 2],
            num_attention_heads=[1, 2],
            mlp_ratios=[2, 2],
            decoder_hidden_size=32,
            id2label={0: "background", 1: "product"},
            label2id={"background": 0, "product": 1},
        )
        torch.manual_seed(seed)
        model = SegformerForSemanticSegmentation(config).eval()
        processor = SegformerImageProcessorPil(size={"height": 64, "width": 64}, do_reduce_labels=False)
    return model, processor


def make_tiny_captioner(seed: int = 0) -> tuple[BlipForConditionalGeneration, BlipProcessor]:
    """In-memory BLIP captioner (32 px images, 2+2 layers) and its processor with a small WordPiece vocab."""
    with _isolated():
        from transformers import (
            BertTokenizer,
            BlipConfig,
            BlipForConditionalGeneration,
            BlipImageProcessorPil,
            BlipProcessor,
        )

        vocab = _bert_vocab()
        tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, bos_token="[DEC]", model_max_length=128)
        image_processor = BlipImageProcessorPil(size={"height": 32, "width": 32})
        processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
        text_config = {
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 37,
            "projection_dim": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 128,
            # BLIP's generate() swaps the prompt's [CLS] for bos ([DEC]) and stops on sep ([SEP])
            "bos_token_id": vocab["[DEC]"],
            "eos_token_id": vocab["[SEP]"],
            "sep_token_id": vocab["[SEP]"],
            "pad_token_id": vocab["[PAD]"],
        }
        vision_config = {
            "hidden_size": 32,
            "intermediate_size": 37,
            "projection_dim": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
            "initializer_range": 0.02,
        }
        config = BlipConfig(
            text_config=text_config, vision_config=vision_config, projection_dim=32, image_text_hidden_size=32
        )
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config).eval()
        model.generation_config.max_new_tokens = 20
    return model, processor


def sd_scheduler() -> Any:
    """The PNDM scheduler of the SD 1.5 inpainting checkpoints (shared by the tiny and full-size builds)."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )


def make_tiny_inpainter(seed: int = 0) -> StableDiffusionInpaintPipeline:
    """In-memory Stable Diffusion inpainting pipeline, diffusers test-sized, no safety checker."""
    with _isolated():
        from diffusers import (
            AutoencoderKL,
            StableDiffusionInpaintPipeline,
            UNet2DConditionModel,
        )
        from transformers import CLIPTextConfig, CLIPTextModel

        tokenizer = _clip_tokenizer()
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**_TINY_UNET)
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            block_out_channels=[32, 64],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
            latent_channels=4,
            sample_size=64,
        )
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(num_hidden_layers=5, **_clip_text_kwargs(tokenizer)))
        scheduler = sd_scheduler()
        # mypy loses diffusers' nn.Module methods on these classes (a typing gap, not a runtime one)
        pipe = StableDiffusionInpaintPipeline(
            vae=vae.eval(),  # type: ignore[attr-defined]
            text_encoder=text_encoder.eval(),
            tokenizer=tokenizer,
            unet=unet.eval(),  # type: ignore[attr-defined]
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    return pipe


def make_tiny_clip(seed: int = 0) -> tuple[CLIPModel, CLIPProcessor]:
    """In-memory CLIP dual encoder (32 px images, 2-layer towers) and its processor, for scoring."""
    with _isolated():
        from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

        tokenizer = _clip_tokenizer()
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        )
        processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
        text_config = {**_clip_text_kwargs(tokenizer), "num_hidden_layers": 2, "projection_dim": 32}
        vision_config = {
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
            "projection_dim": 32,
        }
        config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=32)
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    return model, processor


def make_tiny_ip_adapter(seed: int = 0) -> tuple[CLIPVisionModelWithProjection, dict[str, torch.Tensor]]:
    """In-memory IP-Adapter for :func:`make_tiny_inpainter`: a 32 px CLIP image encoder (projection 32) and
    the adapter's original-format state dict (``image_proj.*``: embeds → 4 tokens of the UNet's
    cross-attention width; ``ip_adapter.{1,3,5,...}.to_{k,v}_ip.weight``: one pair per cross-attention
    layer, numbered in the order diffusers' ``_convert_ip_adapter_attn_to_diffusers`` walks them)."""
    with _isolated():
        from diffusers import UNet2DConditionModel
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        vision = CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            projection_dim=32,
        )
        torch.manual_seed(seed)
        encoder = CLIPVisionModelWithProjection(vision).eval()
        with torch.device("meta"):  # only the layer names and widths are needed
            unet = UNet2DConditionModel(**_TINY_UNET)
        widths = list(_TINY_UNET["block_out_channels"])
        cross = int(_TINY_UNET["cross_attention_dim"])
        tokens = 4
        torch.manual_seed(seed + 1)
        proj = torch.nn.Linear(vision.projection_dim, tokens * cross)
        norm = torch.nn.LayerNorm(cross)
        state: dict[str, torch.Tensor] = {
            "image_proj.proj.weight": proj.weight,
            "image_proj.proj.bias": proj.bias,
            "image_proj.norm.weight": norm.weight,
            "image_proj.norm.bias": norm.bias,
        }
        key_id = 1
        for name in unet.attn_processors:  # type: ignore[attr-defined]  # (mypy loses ModelMixin)
            if name.endswith("attn1.processor"):
                continue
            if name.startswith("mid_block"):
                hidden = widths[-1]
            elif name.startswith("up_blocks"):
                hidden = list(reversed(widths))[int(name[len("up_blocks.")])]
            else:
                hidden = widths[int(name[len("down_blocks.")])]
            for part in ("to_k_ip", "to_v_ip"):
                layer = torch.nn.Linear(cross, hidden, bias=False)
                state[f"ip_adapter.{key_id}.{part}.weight"] = layer.weight
            key_id += 2
        state = {key: value.detach().contiguous() for key, value in state.items()}
    return encoder, state


def is_complete(folder: Path, kind: str, seed: int | None = None) -> bool:
    """Whether ``folder`` holds a finished tiny ``kind`` model (built with ``seed`` when one is given)."""
    marker = Path(folder) / MARKER_FILE
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if info.get("kind") != kind or info.get("version") != _FORMAT_VERSION:
        return False
    if seed is not None and info.get("seed") != seed:
        return False
    return all((Path(folder) / name).is_file() for name in info.get("files", []))


def _atomic_build(out_dir: Path, kind: str, seed: int, save: Callable[[Path], None]) -> Path:
    """Save into a sibling temp folder, mark it complete, then move it to ``out_dir`` (replacing it)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with _quiet():
            save(tmp)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        info = {"kind": kind, "seed": seed, "version": _FORMAT_VERSION, "files": files}
        (tmp / MARKER_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir, ignore_errors=True)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not is_complete(out_dir, kind, seed):  # lost a race to another builder: fine if it finished
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _save_all(*parts: Any) -> Callable[[Path], None]:
    def save(folder: Path) -> None:
        for part in parts:
            part.save_pretrained(folder)

    return save


def build_tiny_segmenter(out_dir: Path, seed: int = 0) -> Path:
    """Save :func:`make_tiny_segmenter` (model + image processor) to ``out_dir``."""
    return _atomic_build(out_dir, "segmenter", seed, _save_all(*make_tiny_segmenter(seed)))


def build_tiny_captioner(out_dir: Path, seed: int = 0) -> Path:
    """Save :func:`make_tiny_captioner` (model + BlipProcessor) to ``out_dir``."""
    return _atomic_build(out_dir, "captioner", seed, _save_all(*make_tiny_captioner(seed)))


def build_tiny_inpainter(out_dir: Path, seed: int = 0) -> Path:
    """Save :func:`make_tiny_inpainter` (diffusers pipeline folder with model_index.json) to ``out_dir``."""
    return _atomic_build(out_dir, "inpainter", seed, _save_all(make_tiny_inpainter(seed)))


def build_tiny_clip(out_dir: Path, seed: int = 0) -> Path:
    """Save :func:`make_tiny_clip` (model + CLIPProcessor) to ``out_dir``."""
    return _atomic_build(out_dir, "clip", seed, _save_all(*make_tiny_clip(seed)))


def build_tiny_ip_adapter(out_dir: Path, seed: int = 0) -> Path:
    """Save :func:`make_tiny_ip_adapter` in the layout of ``h94/IP-Adapter``.

    ``models/ip-adapter_tiny.safetensors`` and ``models/image_encoder/`` load into the tiny inpainter with
    stock ``pipe.load_ip_adapter(out_dir, subfolder="models", weight_name="ip-adapter_tiny.safetensors",
    image_encoder_folder="image_encoder")``. No image processor is saved: diffusers never reads one from
    the adapter folder; it sizes a ``CLIPImageProcessor`` from ``image_encoder.config.image_size`` when
    the pipeline has none (``canvas_ray.models.loading.load_ip_adapter`` also replaces a mismatched one).
    """
    from safetensors.torch import save_file

    encoder, state = make_tiny_ip_adapter(seed)

    def save(folder: Path) -> None:
        models = folder / TINY_IP_ADAPTER_SUBFOLDER
        encoder.save_pretrained(models / TINY_IP_ADAPTER_ENCODER)
        save_file(state, str(models / TINY_IP_ADAPTER_WEIGHT))

    return _atomic_build(out_dir, "ip_adapter", seed, save)


_BUILDERS: dict[str, Callable[[Path, int], Path]] = {
    "segmenter": build_tiny_segmenter,
    "captioner": build_tiny_captioner,
    "inpainter": build_tiny_inpainter,
    "clip": build_tiny_clip,
    "ip_adapter": build_tiny_ip_adapter,
}


def build_tiny_models(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Build every kind into ``out_dir/<kind>`` (``TINY_KINDS``); complete folders are reused.

    A folder counts as complete when its ``tiny_model.json`` marker names the same kind, seed and format
    version and every file it lists is present; anything else is rebuilt from scratch.
    """
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    for kind in TINY_KINDS:
        folder = out_dir / kind
        paths[kind] = folder if is_complete(folder, kind, seed) else _BUILDERS[kind](folder, seed)
    return paths
