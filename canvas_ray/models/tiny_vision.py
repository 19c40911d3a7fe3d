"""Tiny transformers models: the segmenter (Segformer), the captioner (BLIP) and the scorer (CLIP).
Built in memory here; saved by :mod:`canvas_ray.models.tiny`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from canvas_ray.models.tiny_common import _bert_vocab, clip_text_kwargs, clip_tokenizer, isolated

if TYPE_CHECKING:
    from transformers import (
        BlipForConditionalGeneration,
        BlipProcessor,
        CLIPModel,
        CLIPProcessor,
        SegformerForSemanticSegmentation,
        SegformerImageProcessorPil,
    )


def make_tiny_segmenter(seed: int = 0) -> tuple[SegformerForSemanticSegmentation, SegformerImageProcessorPil]:
    """In-memory Segformer (labels {0: background, 1: product}) and its 64x64 PIL image processor."""
    with isolated():
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
    with isolated():
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


def make_tiny_clip(seed: int = 0) -> tuple[CLIPModel, CLIPProcessor]:
    """In-memory CLIP dual encoder (32 px images, 2-layer towers) and its processor, for scoring."""
    with isolated():
        from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

        tokenizer = clip_tokenizer()
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        )
        processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
        text_config = {**clip_text_kwargs(tokenizer), "num_hidden_layers": 2, "projection_dim": 32}
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
