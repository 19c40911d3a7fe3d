"""What every tiny model is built from: small tokenizers over the project's prompt words (WordPiece for
BLIP, byte-level BPE for CLIP) and the quiet, forked-RNG context each builder runs in."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

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


def clip_tokenizer() -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    # stub says list[str]; the pairs go straight to tokenizers.BPE, which takes (a, b) tuples
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)  # type: ignore[arg-type]


def clip_text_kwargs(tokenizer: CLIPTokenizer) -> dict[str, Any]:
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
def quiet() -> Iterator[None]:
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
def isolated() -> Iterator[None]:
    """Seeding inside leaves the caller's global torch RNG state untouched; transformers stays quiet."""
    with torch.random.fork_rng(devices=[]), quiet():
        yield
