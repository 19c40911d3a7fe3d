"""A busy-scene segmentation test set with ground-truth masks, drawn deterministically (no downloads).

Separate from ``examples/catalog``, but drawn with its toolkit (``examples/make_catalog.py``: supersampled
product layers, wood/tile/wallpaper backgrounds, contact and drop shadows). Product kinds cover where masks
go wrong: thin parts (watch strap, lamp stem, chair legs, plant), holes (mug handle, headphones, key ring),
several separate parts (earrings, salt and pepper), colours close to the background, and cast shadows.
Backgrounds: wood, tiles, foliage, fabric, marble and studio sweeps.

``busy_scenes()`` yields :class:`Scene` (image, mask, kind, background); ``clean_scenes()`` the same
products on plain studio sweeps (for the flag rate on clean photos).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np

REPO = Path(__file__).resolve().parents[1]
N_BUSY = 48
BACKGROUNDS = ("wood", "tiles", "foliage", "fabric", "marble", "sweep")


@dataclass(frozen=True)
class Scene:
    name: str
    image: np.ndarray  # HxWx3 uint8
    mask: np.ndarray  # HxW bool, ground truth
    kind: str  # thin | hole | multi | close-colour | shadow | solid
    background: str


@cache
def _kit() -> ModuleType:
    path = REPO / "examples" / "make_catalog.py"
    spec = importlib.util.spec_from_file_location("canvas_ray_make_catalog", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --- new products (canvas 480x600) ---------------------------------------------------------------------


def draw_chair(c) -> None:
    """Thin parts: a bistro chair with four 6 px legs and a spindle back."""
    k = _kit()
    wood = k.C("#6b4a2e")
    c.paint(c.rrect(150, 330, 330, 356, 6), c.cyl(wood, 240, 90, amb=0.5, spec=0.2))
    for x0, x1 in ((160, 150), (320, 330), (190, 186), (290, 294)):
        c.paint(c.lines([(x0, 356), (x1, 575)], 6), wood * 0.9)
    c.paint(c.lines([(156, 470), (324, 470)], 4), wood * 0.8)
    for x in (160, 320):
        c.paint(c.lines([(x, 330), (x + (4 if x < 240 else -4), 120)], 7), wood)
    c.paint(c.rrect(150, 110, 330, 134, 10), c.cyl(wood, 240, 90, amb=0.5, spec=0.25))
    for x in range(190, 300, 27):
        c.paint(c.lines([(x, 134), (x, 330)], 4), wood * 1.1)


def draw_keyring(c) -> None:
    """Holes: a key ring with two keys and a round fob with a hole."""
    k = _kit()
    steel = k.C("#b8bcc4")
    c.paint(c.ring(240, 190, 62, 62, 7), c.conic(steel, 240, 190))
    c.paint(c.ring(240, 300, 58, 58, 26), c.conic(k.C("#c0392b"), 240, 300, 0.6, 1.0))
    for dx, ang in ((-40, -12), (40, 14)):
        a = math.radians(ang)
        bx, by = 240 + dx, 250
        tip = (bx + math.sin(a) * 260, by + math.cos(a) * 260)
        c.paint(c.ring(bx, by + 10, 30, 30, 12), c.conic(steel, bx, by + 10))
        c.paint(c.lines([(bx, by + 40), tip], 16), c.conic(steel, bx, by, 0.6, 1.0))


def draw_earrings(c) -> None:
    """Several separate parts: a pair of drop earrings, a gap between them."""
    k = _kit()
    gold = k.C("#d4af37")
    for cx in (160, 320):
        c.paint(c.ring(cx, 150, 14, 14, 4), c.conic(gold, cx, 150))
        c.paint(c.lines([(cx, 164), (cx, 250)], 3), gold)
        c.paint(c.ellipse(cx, 330, 48, 80), c.sphere(k.C("#1f7a8c"), cx, 330, 48, 80, spec=0.8))
        c.paint(c.ring(cx, 330, 52, 84, 6), c.conic(gold, cx, 330))


def draw_shakers(c) -> None:
    """Several separate parts: salt and pepper shakers with a gap."""
    k = _kit()
    for cx, body in ((170, k.C("#f2f0ea")), (310, k.C("#2b2b2b"))):
        c.paint(c.rrect(cx - 50, 260, cx + 50, 540, 26), c.cyl(body, cx, 50, amb=0.5, spec=0.5))
        c.paint(c.rrect(cx - 46, 200, cx + 46, 266, 30), c.cyl(k.C("#c0c3c8"), cx, 46, amb=0.45, spec=0.9))


def draw_vase_like(colour: np.ndarray) -> Callable:
    """Colours close to the background: a vase painted in (almost) the background's own colour."""

    def draw(c) -> None:
        hw = 60 + 40 * np.sin(np.clip((c.Y - 160) / 380, 0, 1) * np.pi)
        body = (np.abs(c.X - 240) <= hw) & (c.Y >= 160) & (c.Y < 540)
        c.paint(body | c.ellipse(240, 540, 60, 10), c.cyl(colour, 240, hw, amb=0.7, spec=0.35, rim=0.05))
        c.paint(c.ellipse(240, 160, 60, 9), colour * 0.6, cover=False)

    return draw


# --- backgrounds (float32 HxWx3 in [0, 1]) ---------------------------------------------------------------


def _foliage(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    import cv2

    k = _kit()
    img = (
        np.zeros((h, w, 3), np.float32)
        + k.C("#24401f") * (0.6 + 0.5 * k.value_noise(h, w, 40, rng, 3))[..., None]
    )
    for _ in range(160):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        length, ang = rng.uniform(30, 90), rng.uniform(0, 180)
        colour = k.C(["#2f6b2a", "#4c8a34", "#6fa84a", "#1d4d22", "#8fbf5a"][rng.integers(5)]).tolist()
        cv2.ellipse(
            img, (int(x), int(y)), (int(length), int(length * 0.35)), ang, 0, 360, colour, -1, cv2.LINE_AA
        )
    return cv2.GaussianBlur(img, (0, 0), 1.2)


def _fabric(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    k = _kit()
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    weave = 0.5 + 0.25 * np.sin(x * 1.3) * np.sin(y * 1.3) + 0.25 * np.sin((x + y) * 0.09)
    stripes = (np.floor(x / 46) % 2).astype(np.float32)
    base = k.C("#8a3b3b") * (1 - stripes[..., None]) + k.C("#d9c8a9") * stripes[..., None]
    folds = k.value_noise(h, w, (80, 160), rng, 2)
    return base * (0.75 + 0.25 * weave[..., None]) * (0.8 + 0.35 * folds[..., None])


def _marble(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    k = _kit()
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    n = k.value_noise(h, w, 60, rng, 5)
    veins = np.abs(np.sin((x * 0.6 + y * 0.8) / 40 + n * 9))
    v = np.clip(1 - veins, 0, 1) ** 6
    return k.C("#eeebe6") * (1 - 0.55 * v[..., None]) * (0.94 + 0.08 * n[..., None])


def background(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    k = _kit()
    if kind == "wood":
        return k.wood(h, w, rng, k.C("#c79a6b"), k.C("#7a4e2d"), plank=int(rng.integers(40, 110)))
    if kind == "tiles":
        palette = [k.C(c) for c in ("#e9e4d8", "#8fb5a4", "#6f9d8b", "#f2efe7", "#c9a27a", "#3d5a80")]
        return k.tiles(h, w, rng, int(rng.integers(36, 70)), 3, palette, k.C("#cfc8b8"))
    if kind == "foliage":
        return _foliage(h, w, rng)
    if kind == "fabric":
        return _fabric(h, w, rng)
    if kind == "marble":
        return _marble(h, w, rng)
    top, bottom = (
        k.C(c)
        for c in [("#f3efe8", "#d9d2c5"), ("#dfe9f2", "#a9bccc"), ("#e8e4dc", "#8a8478")][rng.integers(3)]
    )
    return k.bg_sweep(w, h, top, bottom, 0.72 * h, 0.2 * h)


# --- the sets ------------------------------------------------------------------------------------------


def _products() -> list[tuple[str, str, tuple[int, int], Callable]]:
    """(name, kind, (w, h), draw)."""
    k = _kit()
    catalog = {item["draw"].__name__: item["size"] for item in k.ITEMS}

    def old(name: str) -> tuple[int, int]:
        return catalog[name]

    return [
        ("watch", "thin", old("draw_watch"), k.draw_watch),
        ("lamp", "thin", old("draw_lamp"), k.draw_lamp),
        ("plant", "thin", old("draw_plant"), k.draw_plant),
        ("chair", "thin", (480, 600), draw_chair),
        ("mug", "hole", old("draw_mug"), k.draw_mug),
        ("headphones", "hole", old("draw_headphones"), k.draw_headphones),
        ("keyring", "hole", (480, 600), draw_keyring),
        ("earrings", "multi", (480, 600), draw_earrings),
        ("shakers", "multi", (480, 600), draw_shakers),
        ("vase", "close-colour", (480, 600), None),  # drawn in the background's colour
        ("backpack", "shadow", old("draw_backpack"), k.draw_backpack),
        ("sneaker", "shadow", old("draw_sneaker"), k.draw_sneaker),
    ]


def _render(name, kind, size, draw, bg_kind: str, seed: int, clean: bool = False) -> Scene:
    k = _kit()
    rng = np.random.default_rng(seed)
    w, h = size
    bg = background(bg_kind, h, w, rng)
    if draw is None:  # close colour: the vase takes the background's median colour, slightly shifted
        draw = draw_vase_like(np.clip(np.median(bg.reshape(-1, 3), 0) * rng.uniform(0.9, 1.12), 0.05, 0.95))
    canvas = k.Canvas(w, h, seed)
    draw(canvas)
    prem, alpha = canvas.resolve()
    if rng.random() < 0.5:  # mirror for variety (product and truth together)
        prem, alpha, bg = prem[:, ::-1], alpha[:, ::-1], bg[:, ::-1]
    prem, alpha, bg = (np.ascontiguousarray(a) for a in (prem, alpha, bg))
    if clean:
        bg = k.contact_shadow(bg, alpha, 0.4)
    elif kind == "shadow" or rng.random() < 0.4:  # a hard cast shadow, as from a window or a spot
        dx, dy = int(rng.integers(-40, 40)), int(rng.integers(10, 40))
        bg = k.drop_shadow(bg, alpha, float(rng.uniform(0.45, 0.7)), dx, dy, float(rng.uniform(2, 8)))
    else:
        bg = k.contact_shadow(bg, alpha, 0.55)
    bg = k.grain(bg, rng, 1.5 / 255)
    out = bg * (1 - alpha[..., None]) + prem
    image = np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)
    return Scene(f"{name}-{bg_kind}-{seed}", image, alpha >= 0.5, "solid" if clean else kind, bg_kind)


def busy_scenes(n: int = N_BUSY) -> Iterator[Scene]:
    """``n`` busy-scene photos: every product on several backgrounds (fixed seeds)."""
    products = _products()
    busy = list(BACKGROUNDS)
    for i in range(n):
        name, kind, size, draw = products[i % len(products)]
        bg_kind = busy[(i + i // len(products)) % len(busy)]
        yield _render(name, kind, size, draw, bg_kind, seed=5000 + i)


def clean_scenes() -> Iterator[Scene]:
    """Each product once on a plain studio sweep with a soft contact shadow."""
    for i, (name, kind, size, draw) in enumerate(_products()):
        yield _render(name, kind, size, draw, "sweep", seed=9000 + i, clean=True)


def main() -> None:
    import argparse

    from PIL import Image

    parser = argparse.ArgumentParser(description="write the busy-scene set as PNG images + masks")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "busy-scenes")
    args = parser.parse_args()
    for folder in ("images", "masks"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
    for scene in [*busy_scenes(), *clean_scenes()]:
        Image.fromarray(scene.image).save(args.out / "images" / f"{scene.name}.png")
        Image.fromarray(scene.mask.astype(np.uint8) * 255).save(args.out / "masks" / f"{scene.name}.png")
        print(scene.name, scene.kind, scene.image.shape)


if __name__ == "__main__":
    main()
