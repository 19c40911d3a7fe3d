"""The inpainter's GPU fast path, switched by config: each knob validated, then applied on the tiny pipeline.

Everything runs on CPU: channels_last, SDPA processors and VAE slicing/tiling apply there as they do on a
GPU; ``compile`` is checked by recording the ``torch.compile`` call (an inductor build of even the tiny
UNet takes minutes on a shared 2-core runner); offload must refuse a CPU device with a clear message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from canvas_ray.compose import model_size
from canvas_ray.config import ConfigError, InpaintConfig, config_from_dict
from canvas_ray.models.loading import apply_fast_path, load_inpainter
from canvas_ray.models.tiny import build_tiny_inpainter, make_tiny_inpainter
from canvas_ray.stages.inpaint import DiffusersInpainter
from canvas_ray.styles import StyleBook

# tiny models on a shared 2-core runner: one intra-op thread (see tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST_KEYS = ("channels_last", "compile", "compile_mode", "attention", "vae_slicing", "vae_tiling", "offload")


@pytest.fixture(scope="module")
def inpainter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_inpainter(tmp_path_factory.mktemp("tiny-fast") / "inpainter")


def spec(model: Path | None = None, **fields: Any) -> InpaintConfig:
    base: dict[str, Any] = {"backend": "diffusers", "resolution": 64, "steps": 2, "device": "cpu"}
    if model is not None:
        base["model"] = str(model)
    return InpaintConfig(**{**base, **fields})


def conv_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]


# ------------------------------------------------------------------------------------------ validation


def test_defaults_change_nothing_and_stay_out_of_the_fingerprint() -> None:
    config = config_from_dict({})
    assert not config.inpaint.channels_last and not config.inpaint.compile
    assert config.inpaint.attention == "sdpa" and config.inpaint.offload == "none"
    speed = config_from_dict(
        {
            "inpaint": {
                "channels_last": True,
                "compile": True,
                "compile_mode": "max-autotune",
                "attention": "default",
                "vae_slicing": True,
                "offload": "model",
            }
        }
    )
    assert speed.fingerprint() == config.fingerprint()  # how fast, not what is drawn
    assert config_from_dict({"inpaint": {"vae_tiling": True}}).fingerprint() != config.fingerprint()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("attention", "flash", "inpaint.attention"),
        ("compile_mode", "fast", "inpaint.compile_mode"),
        ("offload", "disk", "inpaint.offload"),
        ("channels_last", "sometimes", "inpaint.channels_last"),
    ],
)
def test_bad_values_name_the_key(field: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"inpaint": {field: value}})


def test_offload_refuses_a_cpu_device_in_the_config() -> None:
    with pytest.raises(ConfigError, match=r"offload=model .*device=cpu"):
        config_from_dict({"inpaint": {"offload": "model", "device": "cpu"}})


def test_offload_on_cpu_is_a_clear_error_at_load_time() -> None:
    pipe: Any = make_tiny_inpainter()
    for mode in ("model", "sequential"):
        with pytest.raises(ValueError, match=rf"inpaint.offload={mode} needs a CUDA GPU.*offload: none"):
            apply_fast_path(pipe, spec(offload=mode, device="auto"), torch.device("cpu"))


# ------------------------------------------------------------------------------------------ application


def test_channels_last_slicing_tiling_applied_and_outputs_unchanged(inpainter_dir: Path) -> None:
    plain = load_inpainter(spec(inpainter_dir)).model
    fast = load_inpainter(
        spec(inpainter_dir, channels_last=True, vae_slicing=True, vae_tiling=True, attention="sdpa")
    ).model
    for weight in conv_weights(fast.unet) + conv_weights(fast.vae):
        assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(plain.unet))
    assert fast.vae.use_slicing and fast.vae.use_tiling
    assert not plain.vae.use_slicing and not plain.vae.use_tiling

    from PIL import Image

    image = Image.fromarray(np.full((64, 64, 3), 200, np.uint8))
    mask = Image.fromarray(np.full((64, 64), 255, np.uint8))

    def run(pipe: Any) -> np.ndarray:
        return pipe(
            prompt=["a wooden table", "a marble counter"],
            image=[image, image],
            mask_image=[mask, mask],
            width=64,
            height=64,
            num_inference_steps=2,
            generator=[torch.Generator().manual_seed(s) for s in (1, 2)],
            output_type="np",
        ).images

    np.testing.assert_allclose(run(fast), run(plain), atol=1e-4)  # same model, another memory layout


def test_sdpa_replaces_plain_processors_only() -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    pipe: Any = make_tiny_inpainter()
    pipe.unet.set_attn_processor(AttnProcessor())
    apply_fast_path(pipe, spec(attention="default"), torch.device("cpu"))
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor}  # kept as loaded
    apply_fast_path(pipe, spec(attention="sdpa"), torch.device("cpu"))
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}

    class Special(AttnProcessor2_0):  # e.g. an IP-Adapter processor: must survive the switch
        pass

    processors = dict(pipe.unet.attn_processors)
    first = next(iter(processors))
    processors = {name: Special() if name == first else AttnProcessor() for name in processors}
    pipe.unet.set_attn_processor(processors)
    apply_fast_path(pipe, spec(attention="sdpa"), torch.device("cpu"))
    after = pipe.unet.attn_processors
    assert type(after[first]) is Special
    assert {type(p) for n, p in after.items() if n != first} == {AttnProcessor2_0}


def test_compile_wires_torch_compile_on_the_unet(
    inpainter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_compile(fn: Any = None, **kwargs: Any) -> Any:
        calls.append({"fn": fn, **kwargs})
        return fn  # run eagerly: the wiring is under test, not inductor

    monkeypatch.setattr(torch, "compile", fake_compile)
    pipe: Any = load_inpainter(spec(inpainter_dir, compile=True, compile_mode="reduce-overhead")).model
    assert len(calls) == 1 and calls[0]["mode"] == "reduce-overhead"
    assert getattr(calls[0]["fn"], "__self__", None) is pipe.unet  # the UNet's own call, compiled in place
    assert getattr(pipe.unet, "_compiled_call_impl", None) is not None
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"  # still the UNet: LoRA loading finds its layers

    calls.clear()
    load_inpainter(spec(inpainter_dir))
    assert calls == []


# ---------------------------------------------------------------------------------------------- batching


class SizeRecorder:
    """Wraps the pipeline's ``__call__``: records width/height and every image's size per call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def wrap(self, call: Any) -> Any:
        def recorded(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls.append(
                {
                    "size": (kwargs["width"], kwargs["height"]),
                    "images": {image.size for image in kwargs["image"]},
                    "masks": {mask.size for mask in kwargs["mask_image"]},
                    "rows": len(kwargs["prompt"]),
                }
            )
            return call(pipe, *args, **kwargs)

        return recorded


def test_a_batch_never_mixes_resolutions_in_one_pipe_call(
    inpainter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_from_dict(
        {
            "inpaint": {
                **spec(inpainter_dir, channels_last=True, vae_slicing=True).model_dump(exclude_none=True),
                "loras": [],
            }
        }
    )
    styles = StyleBook.from_config(config)
    inpainter = DiffusersInpainter(config.inpaint, styles)
    recorder = SizeRecorder()
    monkeypatch.setattr(type(inpainter.pipe), "__call__", recorder.wrap(type(inpainter.pipe).__call__))

    shapes = [(64, 64), (80, 64), (64, 112), (64, 64), (112, 64), (80, 64), (64, 112)]  # (h, w), interleaved
    rows = []
    for index, (height, width) in enumerate(shapes):
        mask = np.zeros((height, width), np.uint8)
        mask[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = 255
        rows.append(
            {
                "canvas": np.full((height, width, 3), 180, np.uint8),
                "canvas_mask": mask,
                "style": "studio white",
                "seed": index,
                "prompt": "a plain studio backdrop",
                "negative_prompt": "text",
            }
        )
    backgrounds = inpainter.backgrounds(rows)

    expected = {model_size((w, h), 64) for h, w in shapes}
    assert len(expected) == 4
    assert sorted(call["size"] for call in recorder.calls) == sorted(expected)  # one call per resolution
    for call in recorder.calls:
        assert call["images"] == {call["size"]} and call["masks"] == {call["size"]}
    assert sum(call["rows"] for call in recorder.calls) == len(rows)
    assert [b.shape[:2] for b in backgrounds] == shapes  # back at each row's canvas size, in order


def test_gpu_config_turns_the_fast_path_on() -> None:
    from canvas_ray.config import REPO_ROOT, load_config

    inpaint = load_config(REPO_ROOT / "configs" / "gpu.yaml").inpaint
    assert inpaint.dtype == "bfloat16" and inpaint.channels_last and inpaint.attention == "sdpa"
    assert inpaint.offload == "none" and not inpaint.compile  # compile is opt-in (commented in the file)
