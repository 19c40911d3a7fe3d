"""A second product-scene generator, independent of ``benchmarks/scenes.py`` and ``examples/make_catalog.py``.

Nothing is shared with the first generator: its own renderer (shapes drawn with OpenCV at 3x and area-
downsampled, so edges are anti-aliased and the truth is the coverage), its own products, backgrounds and
light. Products are the shapes the first set never had: a watch whose strap leaves the dial above *and*
below, bottles with narrow necks, cables, handles (bag, kettle, scissors), see-through and reflective parts
(a wine glass, a chrome kettle that mirrors the room), several parts (cufflinks, a set of jars), sunglasses
with dark lenses, a necklace with a fine chain. Backgrounds: brick, concrete, bokeh, knit, terrazzo, a
desk with clutter, low-key dark cloth. Light: a coloured cast, a side light that darkens half the frame,
window-blind stripes falling across product and background alike.

Each scene comes from a seed, so sets are split by seed: ``split="tune"`` (seeds 70000+) for tuning and
``split="test"`` (seeds 80000+) for reporting. ``clean`` puts the products on plain, evenly lit sweeps.

    python -m benchmarks.heldout_scenes --out out/heldout   # write PNGs + masks to look at
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SS = 3  # supersampling
Draw = Callable[["Layer", np.random.Generator], None]


@dataclass(frozen=True)
class HeldoutScene:
    name: str
    image: np.ndarray  # HxWx3 uint8
    mask: np.ndarray  # HxW bool, ground truth (coverage >= 0.5)
    kind: str
    background: str


class Layer:
    """A premultiplied RGBA product layer painted part by part (later parts cover earlier ones)."""

    def __init__(self, width: int, height: int):
        self.w, self.h = width, height
        self.rgb = np.zeros((height, width, 3), np.float32)
        self.alpha = np.zeros((height, width), np.float32)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.x, self.y = xx, yy

    def shape(self, painter: Callable[[np.ndarray], None]) -> np.ndarray:
        """Coverage in [0, 1] of what ``painter`` draws (255) on a supersampled uint8 canvas."""
        big = np.zeros((self.h * SS, self.w * SS), np.uint8)
        painter(big)
        return cv2.resize(big, (self.w, self.h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0

    def poly(self, points, thickness: float = 0, closed: bool = False) -> np.ndarray:
        pts = (np.asarray(points, np.float64) * SS).round().astype(np.int32).reshape(-1, 1, 2)

        def painter(big: np.ndarray) -> None:
            if thickness > 0:
                cv2.polylines(big, [pts], closed, 255, max(1, int(round(thickness * SS))), cv2.LINE_8)
            else:
                cv2.fillPoly(big, [pts], 255)

        return self.shape(painter)

    def ellipse(self, cx, cy, rx, ry, angle: float = 0, thickness: float = 0) -> np.ndarray:
        def painter(big: np.ndarray) -> None:
            t = -1 if thickness <= 0 else max(1, int(round(thickness * SS)))
            centre = (int(cx * SS), int(cy * SS))
            cv2.ellipse(big, centre, (int(rx * SS), int(ry * SS)), angle, 0, 360, 255, t)

        return self.shape(painter)

    def box(self, x0, y0, x1, y1, radius: float = 0) -> np.ndarray:
        def painter(big: np.ndarray) -> None:
            r = int(radius * SS)
            a, b, c, d = (int(v * SS) for v in (x0, y0, x1, y1))
            cv2.rectangle(big, (a + r, b), (c - r, d), 255, -1)
            cv2.rectangle(big, (a, b + r), (c, d - r), 255, -1)
            for px, py in ((a + r, b + r), (c - r, b + r), (a + r, d - r), (c - r, d - r)):
                if r:
                    cv2.circle(big, (px, py), r, 255, -1)

        return self.shape(painter)

    def lit(self, colour, cx: float, half_width: float, gloss: float = 0.3, light: float = -0.35):
        """A cylinder-like shading across x around ``cx``: darker edges, one highlight."""
        u = np.clip((self.x - cx) / max(half_width, 1.0), -1, 1)
        diffuse = 0.55 + 0.45 * np.sqrt(np.clip(1 - u * u, 0, 1))
        highlight = gloss * np.exp(-(((u - light) / 0.18) ** 2))
        return np.clip(np.asarray(colour, np.float32) * diffuse[..., None] + highlight[..., None], 0, 1)

    def paint(self, coverage: np.ndarray, colour, opacity: float = 1.0) -> None:
        a = np.clip(coverage * opacity, 0, 1)
        col = np.broadcast_to(np.asarray(colour, np.float32), self.rgb.shape)
        self.rgb = (self.rgb * (1 - a[..., None]) + col * a[..., None]).astype(np.float32)
        self.alpha = (self.alpha * (1 - a) + a).astype(np.float32)

    def cut(self, coverage: np.ndarray) -> None:
        """Remove product where ``coverage`` (a real hole)."""
        self.rgb *= (1 - coverage)[..., None]
        self.alpha *= 1 - coverage


def hexc(code: str) -> np.ndarray:
    code = code.lstrip("#")
    return np.array([int(code[i : i + 2], 16) / 255 for i in (0, 2, 4)], np.float32)


# --- products (each draws into a Layer of its own size) ------------------------------------------------


def watch_two_straps(layer: Layer, rng: np.random.Generator) -> None:
    """A dial with the strap leaving it above and below: both halves are the product."""
    w, h = layer.w, layer.h
    cx, cy = w / 2 + rng.uniform(-20, 20), h / 2 + rng.uniform(-20, 20)
    strap = hexc(["#2d2a26", "#6e3b1f", "#1f3b5a", "#8a8f96", "#b85c38"][rng.integers(5)])
    half = rng.uniform(26, 36)
    for y0, y1 in ((25, cy - 40), (cy + 40, h - 25)):
        layer.paint(layer.box(cx - half, y0, cx + half, y1, 10), layer.lit(strap, cx, half, 0.15))
    for y in np.arange(cy + 90, h - 60, 28):  # holes of the lower strap
        layer.paint(layer.ellipse(cx, y, 4, 4), strap * 0.35)
    r = rng.uniform(78, 96)
    steel = hexc(["#c9ccd0", "#d4b06a", "#3a3a3a"][rng.integers(3)])
    layer.paint(layer.ellipse(cx, cy, r, r), layer.lit(steel, cx, r, 0.5))
    face = hexc(["#f4f1ea", "#10243e", "#1c1c1c", "#2f5d50"][rng.integers(4)])
    layer.paint(layer.ellipse(cx, cy, r * 0.82, r * 0.82), face)
    for k in range(12):
        a = k * math.pi / 6
        p = (cx + math.sin(a) * r * 0.7, cy - math.cos(a) * r * 0.7)
        layer.paint(layer.ellipse(p[0], p[1], 3, 3), 1 - face)
    layer.paint(layer.poly([(cx, cy), (cx + r * 0.5, cy - r * 0.2)], 4), 1 - face)


def bottle(layer: Layer, rng: np.random.Generator) -> None:
    """A bottle with a long narrow neck and a small cap."""
    w, h = layer.w, layer.h
    cx = w / 2 + rng.uniform(-15, 15)
    body_w = rng.uniform(60, 90)
    neck_w = rng.uniform(9, 15)
    shoulder = h * rng.uniform(0.42, 0.5)
    neck_top = h * rng.uniform(0.1, 0.16)
    glass = hexc(["#2e5e3a", "#5a2a1a", "#e8e2d0", "#1d4e89", "#7a1f2b"][rng.integers(5)])
    outline = [
        (cx - neck_w, neck_top),
        (cx + neck_w, neck_top),
        (cx + neck_w, shoulder - 50),
        (cx + body_w, shoulder),
        (cx + body_w, h - 30),
        (cx - body_w, h - 30),
        (cx - body_w, shoulder),
        (cx - neck_w, shoulder - 50),
    ]
    layer.paint(layer.poly(outline), layer.lit(glass, cx, body_w, 0.45))
    layer.paint(layer.box(cx - body_w * 0.8, h * 0.6, cx + body_w * 0.8, h * 0.78, 4), hexc("#f3ead8"))
    layer.paint(layer.box(cx - neck_w - 2, neck_top - 22, cx + neck_w + 2, neck_top + 4, 3), hexc("#b08d3c"))


def cable(layer: Layer, rng: np.random.Generator) -> None:
    """Earphones: two buds and a long thin wandering cable ending in a plug."""
    w, h = layer.w, layer.h
    colour = hexc(["#f2f2f2", "#1a1a1a", "#d64545", "#3b7dd8"][rng.integers(4)])
    points = [(w * 0.35, h * 0.2), (w * 0.65, h * 0.22)]
    y = h * 0.32
    x = w / 2
    path = [(x, y)]
    for _ in range(7):
        x = float(np.clip(x + rng.uniform(-90, 90), 40, w - 40))
        y = min(h - 70, y + rng.uniform(25, 60))
        path.append((x, y))
    for bud in points:
        layer.paint(layer.poly([bud, path[0]], 3), colour)
        layer.paint(layer.ellipse(bud[0], bud[1], 20, 24), layer.lit(colour, bud[0], 20, 0.4))
    curve = np.array(path)
    t = np.linspace(0, 1, 80)
    smooth = np.stack([np.interp(t, np.linspace(0, 1, len(curve)), curve[:, i]) for i in (0, 1)], axis=1)
    layer.paint(layer.poly(smooth, 3.5), colour * 0.92)
    end = smooth[-1]
    layer.paint(layer.box(end[0] - 9, end[1], end[0] + 9, end[1] + 40, 4), layer.lit(colour, end[0], 9))
    layer.paint(layer.box(end[0] - 4, end[1] + 40, end[0] + 4, end[1] + 58, 1), hexc("#c0c0c0"))


def handbag(layer: Layer, rng: np.random.Generator) -> None:
    """A bag whose arched handle leaves a hole the background shows through."""
    w, h = layer.w, layer.h
    cx = w / 2
    leather = hexc(["#8b2e2e", "#2b2b2b", "#c49a6c", "#3d5a40", "#e6dccb"][rng.integers(5)])
    top = h * 0.42
    layer.paint(
        layer.poly([(cx - 150, top), (cx + 150, top), (cx + 175, h - 40), (cx - 175, h - 40)]),
        layer.lit(leather, cx, 175, 0.2),
    )
    handle = layer.ellipse(cx, top, 95, 110, thickness=14) * (layer.y <= top)
    layer.paint(handle, layer.lit(leather * 0.85, cx, 95, 0.2))
    layer.paint(layer.box(cx - 20, top + 20, cx + 20, top + 45, 4), hexc("#d4af37"))


def kettle(layer: Layer, rng: np.random.Generator) -> None:
    """A chrome kettle: reflects the room (stripes of sky and floor), a handle with a hole, a spout."""
    w, h = layer.w, layer.h
    cx, cy = w / 2, h * 0.6
    body = layer.ellipse(cx, cy, 140, 120)
    band = np.clip((layer.y - cy) / 120, -1, 1)
    mirror = np.where(band[..., None] < -0.1, hexc("#dfe8f0"), hexc("#5c4a3a")) * (
        0.7 + 0.3 * np.cos(band * 3)[..., None]
    )
    streak = np.exp(-(((layer.x - cx + 60) / 12) ** 2))[..., None]
    layer.paint(body, np.clip(mirror + streak, 0, 1))
    layer.paint(
        layer.poly([(cx + 120, cy - 10), (cx + 215, cy - 90), (cx + 225, cy - 78), (cx + 135, cy + 30)]),
        hexc("#a8adb3"),
    )
    handle = layer.ellipse(cx, cy - 120, 90, 70, thickness=16) * (layer.y <= cy - 100)
    layer.paint(handle, hexc("#1e1e1e"))
    layer.paint(layer.ellipse(cx, cy - 122, 30, 10), hexc("#1e1e1e"))


def wine_glass(layer: Layer, rng: np.random.Generator) -> None:
    """See-through: a wine glass (bowl and stem partly transparent, rim and base more opaque)."""
    w, h = layer.w, layer.h
    cx = w / 2
    bowl_top, bowl_bottom = h * 0.12, h * 0.5
    bowl = layer.poly(
        [
            (cx - 95, bowl_top),
            (cx + 95, bowl_top),
            (cx + 85, bowl_bottom - 60),
            (cx, bowl_bottom),
            (cx - 85, bowl_bottom - 60),
        ]
    )
    tint = hexc(["#f0f4f4", "#f5e6c8", "#c84b5a"][rng.integers(3)])
    layer.paint(bowl, tint, opacity=0.62)
    layer.paint(layer.box(cx - 6, bowl_bottom - 4, cx + 6, h - 60), hexc("#e8eef0"), opacity=0.75)
    layer.paint(layer.ellipse(cx, h - 55, 80, 14), hexc("#e8eef0"), opacity=0.8)
    layer.paint(layer.ellipse(cx, bowl_top, 95, 8, thickness=3), hexc("#ffffff"))
    layer.paint(layer.poly([(cx - 60, bowl_top + 30), (cx - 50, bowl_bottom - 80)], 5), hexc("#ffffff"), 0.9)


def cufflinks(layer: Layer, rng: np.random.Generator) -> None:
    """Several separate parts: a pair of cufflinks and a tie bar, apart from each other."""
    w, h = layer.w, layer.h
    metal = hexc(["#d4af37", "#c0c0c0", "#b87333"][rng.integers(3)])
    stone = hexc(["#123c69", "#7b1e3b", "#1e5631", "#111111"][rng.integers(4)])
    for cx in (w * 0.3, w * 0.7):
        cy = h * 0.35 + rng.uniform(-20, 20)
        layer.paint(layer.ellipse(cx, cy, 48, 48), layer.lit(metal, cx, 48, 0.6))
        layer.paint(layer.ellipse(cx, cy, 34, 34), stone)
        layer.paint(layer.box(cx - 6, cy + 45, cx + 6, cy + 85, 3), metal * 0.9)
    y = h * 0.75
    layer.paint(layer.box(w * 0.2, y, w * 0.8, y + 16, 6), layer.lit(metal, w / 2, w * 0.3, 0.5))


def jars(layer: Layer, rng: np.random.Generator) -> None:
    """Several parts of one product: a set of three spice jars, touching or with small gaps."""
    w, h = layer.w, layer.h
    gap = rng.uniform(0, 14)
    width = (w - 80 - 2 * gap) / 3
    lids = hexc(["#2b2b2b", "#c0c0c0", "#8b5a2b"][rng.integers(3)])
    for i in range(3):
        x0 = 40 + i * (width + gap)
        spice = hexc(["#c0392b", "#e1b12c", "#6ab04c", "#7f5539"][rng.integers(4)])
        layer.paint(
            layer.box(x0, h * 0.35, x0 + width, h - 40, 12), layer.lit(spice, x0 + width / 2, width / 2, 0.5)
        )
        layer.paint(
            layer.box(x0 + 4, h * 0.27, x0 + width - 4, h * 0.36, 6),
            layer.lit(lids, x0 + width / 2, width / 2),
        )


def sunglasses(layer: Layer, rng: np.random.Generator) -> None:
    """Two dark lenses joined by a thin bridge, temples folded behind: gaps between the parts."""
    w, h = layer.w, layer.h
    cy = h / 2
    frame = hexc(["#1a1a1a", "#8b5a2b", "#c0c0c0", "#b03060"][rng.integers(4)])
    for cx in (w / 2 - 95, w / 2 + 95):
        layer.paint(layer.ellipse(cx, cy, 80, 62), frame)
        layer.paint(layer.ellipse(cx, cy, 70, 52), hexc("#20262e") * 1.0, opacity=1.0)
        layer.paint(layer.ellipse(cx - 20, cy - 20, 18, 8, angle=-30), hexc("#8fa3b8"), opacity=0.6)
    layer.paint(layer.poly([(w / 2 - 22, cy - 25), (w / 2, cy - 35), (w / 2 + 22, cy - 25)], 7), frame)
    layer.paint(
        layer.poly(
            [(w / 2 - 170, cy - 30), (w / 2 - 120, cy + 80), (w / 2 + 120, cy + 80), (w / 2 + 170, cy - 30)],
            6,
        ),
        frame * 0.9,
    )


def necklace(layer: Layer, rng: np.random.Generator) -> None:
    """A fine chain (2 px) hanging in a V to a pendant."""
    w, h = layer.w, layer.h
    metal = hexc(["#d4af37", "#d9d9d9"][rng.integers(2)])
    t = np.linspace(0, math.pi, 90)
    chain = np.stack([w / 2 - 170 * np.cos(t), h * 0.12 + (h * 0.55) * np.sin(t / 2) ** 1.2], axis=1)
    left = chain[: len(chain) // 2 + 1]
    right = np.stack([w - left[:, 0], left[:, 1]], axis=1)
    for half in (left, right):
        layer.paint(layer.poly(half, 2.2), metal)
    low = left[-1]
    layer.paint(layer.ellipse(w / 2, low[1] + 45, 32, 44), layer.lit(hexc("#2a7f62"), w / 2, 32, 0.7))
    layer.paint(layer.ellipse(w / 2, low[1] + 45, 36, 48, thickness=4), metal)
    layer.paint(layer.poly([(w / 2, low[1]), (w / 2, low[1] + 2)], 4), metal)


def scissors(layer: Layer, rng: np.random.Generator) -> None:
    """Two blades crossing and two ring handles with holes."""
    w, h = layer.w, layer.h
    steel, grip = hexc("#c8ccd2"), hexc(["#e67e22", "#2980b9", "#111111"][rng.integers(3)])
    pivot = (w / 2, h * 0.45)
    for side in (-1, 1):
        tip = (w / 2 + side * 70, h * 0.08)
        layer.paint(layer.poly([pivot, (pivot[0] - side * 10, pivot[1] + 10), tip], 0), steel)
        layer.paint(
            layer.poly([tip, (pivot[0] + side * 14, pivot[1])], 14), layer.lit(steel, pivot[0], 60, 0.5)
        )
        hx, hy = w / 2 - side * 75, h * 0.75
        layer.paint(layer.poly([pivot, (hx, hy - 50)], 16), grip)
        layer.paint(layer.ellipse(hx, hy, 55, 62, thickness=18), grip)
    layer.paint(layer.ellipse(pivot[0], pivot[1], 8, 8), hexc("#555555"))


PRODUCTS: list[tuple[str, str, tuple[int, int], Draw]] = [
    ("watch2", "parts-both-sides", (420, 640), watch_two_straps),
    ("bottle", "narrow-neck", (360, 640), bottle),
    ("earphones", "cable", (480, 640), cable),
    ("handbag", "handle-hole", (560, 520), handbag),
    ("kettle", "reflective", (600, 520), kettle),
    ("wineglass", "transparent", (420, 600), wine_glass),
    ("cufflinks", "several-parts", (520, 460), cufflinks),
    ("jars", "several-parts", (560, 420), jars),
    ("sunglasses", "gaps", (600, 380), sunglasses),
    ("necklace", "fine-chain", (480, 560), necklace),
    ("scissors", "handle-hole", (420, 600), scissors),
]


# --- backgrounds ---------------------------------------------------------------------------------------


def _noise(h: int, w: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    small = rng.random((max(2, int(h / scale)) + 2, max(2, int(w / scale)) + 2)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def brick(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((h, w, 3), np.float32)
    out[:] = hexc("#cfc6b8")  # mortar
    bh, bw = int(rng.integers(28, 44)), int(rng.integers(70, 110))
    for row, y in enumerate(range(0, h, bh)):
        offset = (bw // 2) * (row % 2)
        for x in range(-offset, w, bw):
            tone = hexc(["#9c4a32", "#b05a3c", "#8a3f2b", "#a65a48"][rng.integers(4)]) * rng.uniform(
                0.85, 1.1
            )
            out[y + 3 : y + bh - 2, max(0, x + 3) : max(0, x + bw - 2)] = tone
    return out * (0.9 + 0.15 * _noise(h, w, 6, rng))[..., None]


def concrete(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    base = hexc(["#9a9a96", "#b5b0a8", "#7d8288"][rng.integers(3)])
    grain = 0.75 * _noise(h, w, 40, rng) + 0.25 * _noise(h, w, 3, rng)
    return base * (0.8 + 0.35 * grain)[..., None]


def bokeh(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros((h, w, 3), np.float32) + hexc(["#1b2a3a", "#3a2a1b", "#22301f"][rng.integers(3)])
    for _ in range(60):
        colour = hexc(["#ffd27f", "#ff9f68", "#9fd3ff", "#ffffff", "#c3ff9f"][rng.integers(5)]).tolist()
        cv2.circle(
            out, (int(rng.uniform(0, w)), int(rng.uniform(0, h))), int(rng.uniform(10, 45)), colour, -1
        )
    return cv2.GaussianBlur(out, (0, 0), 6) * 0.8


def knit(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    v = np.abs(np.sin(x / 5 + np.sin(y / 7) * 1.5)) * 0.5 + 0.5 * np.abs(np.sin(y / 4))
    base = hexc(["#c7b299", "#6d7f99", "#9e5a63", "#e3e0d6"][rng.integers(4)])
    return base * (0.7 + 0.35 * v)[..., None]


def terrazzo(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros((h, w, 3), np.float32) + hexc("#ece6dc")
    for _ in range(int(h * w / 500)):
        colour = hexc(["#c76b4a", "#4a6fa5", "#2b2b2b", "#d9b26f", "#9aa59a"][rng.integers(5)]).tolist()
        pts = np.array([(rng.uniform(0, w), rng.uniform(0, h))]) + rng.normal(0, 4, (5, 2))
        cv2.fillPoly(out, [pts.astype(np.int32)], colour)
    return out


def desk(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    out = concrete(h, w, rng) * hexc("#d8c7a8")
    for _ in range(6):  # clutter: paper, a pen, a coaster
        kind = rng.integers(3)
        x, y = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        if kind == 0:
            cv2.rectangle(
                out,
                (x, y),
                (x + int(rng.uniform(60, 160)), y + int(rng.uniform(80, 200))),
                hexc("#fbfbf7").tolist(),
                -1,
            )
        elif kind == 1:
            cv2.line(
                out,
                (x, y),
                (x + int(rng.uniform(-120, 120)), y + int(rng.uniform(-40, 40))),
                hexc("#1f4e79").tolist(),
                7,
            )
        else:
            cv2.circle(out, (x, y), int(rng.uniform(25, 45)), hexc("#7b5e3b").tolist(), -1)
    return out


def lowkey(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    folds = _noise(h, w, 60, rng)
    return hexc(["#151515", "#1c1424", "#0f1a14"][rng.integers(3)]) * (0.7 + 0.9 * folds)[..., None]


def sweep(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    top = hexc(["#fafafa", "#eef2f5", "#f4ece4", "#e9f0e6"][rng.integers(4)])
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    return np.broadcast_to(top * (1 - 0.12 * t), (h, w, 3)).copy()


BACKGROUNDS: dict[str, Callable[[int, int, np.random.Generator], np.ndarray]] = {
    "brick": brick,
    "concrete": concrete,
    "bokeh": bokeh,
    "knit": knit,
    "terrazzo": terrazzo,
    "desk": desk,
    "lowkey": lowkey,
}


# --- light ---------------------------------------------------------------------------------------------


def light(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Scene light applied to background and product alike."""
    h, w = image.shape[:2]
    if kind == "cast":  # a coloured gel
        return image * hexc(["#ffd9b0", "#c8dcff", "#ffc8e0"][rng.integers(3)])
    if kind == "side":  # a side light: one half of the frame much darker
        ramp = (
            np.linspace(0.45, 1.1, w, dtype=np.float32) if rng.random() < 0.5 else np.linspace(1.1, 0.45, w)
        )
        return image * ramp[None, :, None]
    if kind == "blinds":  # window-blind stripes across everything
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        period, angle = rng.uniform(40, 80), rng.uniform(-0.6, 0.6)
        stripes = (np.sin((y + x * angle) / period * 2 * math.pi) > 0).astype(np.float32)
        stripes = cv2.GaussianBlur(stripes, (0, 0), 2.5)
        return image * (0.55 + 0.5 * stripes)[..., None]
    return image


LIGHTS = ("even", "cast", "side", "blinds")


# --- the sets ------------------------------------------------------------------------------------------


def render(product: int, background: str, light_kind: str, seed: int, clean: bool = False) -> HeldoutScene:
    name, kind, (w, h), draw = PRODUCTS[product]
    rng = np.random.default_rng(seed)
    layer = Layer(w, h)
    draw(layer, rng)
    if rng.random() < 0.5:
        layer.rgb, layer.alpha = layer.rgb[:, ::-1], layer.alpha[:, ::-1]
    bg = sweep(h, w, rng) if clean else BACKGROUNDS[background](h, w, rng)
    shadow = cv2.GaussianBlur(layer.alpha, (0, 0), 6)
    shadow = np.roll(shadow, (int(rng.integers(4, 16)), int(rng.integers(-12, 12))), axis=(0, 1))
    bg = bg * (1 - (0.3 if clean else 0.45) * shadow)[..., None]
    image = bg * (1 - layer.alpha[..., None]) + layer.rgb
    if not clean:
        image = light(image, light_kind, rng)
    image = image + rng.normal(0, 1.8 / 255, image.shape).astype(np.float32)
    out = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    label = "clean" if clean else f"{background}-{light_kind}"
    return HeldoutScene(
        f"{name}-{label}-{seed}", out, layer.alpha >= 0.5, kind, "sweep" if clean else background
    )


def heldout_scenes(n: int = 24, split: str = "test") -> Iterator[HeldoutScene]:
    """``n`` busy scenes: products cycle, background and light drawn from the seed (``tune`` or ``test``)."""
    base = {"tune": 70000, "test": 80000}[split]
    names = list(BACKGROUNDS)
    for i in range(n):
        seed = base + i
        rng = np.random.default_rng(seed + 1)
        yield render(
            i % len(PRODUCTS),
            names[int(rng.integers(len(names)))],
            LIGHTS[int(rng.integers(len(LIGHTS)))],
            seed,
        )


def heldout_clean(split: str = "test") -> Iterator[HeldoutScene]:
    """Every product once on a plain, evenly lit sweep."""
    base = {"tune": 71000, "test": 81000}[split]
    for i in range(len(PRODUCTS)):
        yield render(i, "sweep", "even", base + i, clean=True)


# --- several separate objects: which one is the product? ------------------------------------------------


def passer_by(layer: Layer, rng: np.random.Generator) -> None:
    """A person walking past: head, torso, arms and legs in plain clothes (not a product)."""
    w, h = layer.w, layer.h
    cx = w / 2
    skin = hexc(["#f1c27d", "#c68642", "#8d5524", "#ffdbac"][rng.integers(4)])
    coat = hexc(["#2c3e50", "#7f8c8d", "#8e44ad", "#a04000", "#1e8449"][rng.integers(5)])
    trousers = hexc(["#1b2631", "#5d4037", "#34495e"][rng.integers(3)])
    layer.paint(layer.box(cx - 34, h * 0.55, cx - 6, h - 10, 8), layer.lit(trousers, cx - 20, 14))
    layer.paint(layer.box(cx + 6, h * 0.55, cx + 34, h - 10, 8), layer.lit(trousers, cx + 20, 14))
    layer.paint(layer.box(cx - 48, h * 0.2, cx + 48, h * 0.6, 22), layer.lit(coat, cx, 48))
    layer.paint(layer.poly([(cx - 46, h * 0.24), (cx - 70, h * 0.52)], 18), coat * 0.9)
    layer.paint(layer.poly([(cx + 46, h * 0.24), (cx + 70, h * 0.52)], 18), coat * 0.9)
    layer.paint(layer.ellipse(cx, h * 0.12, 30, 36), layer.lit(skin, cx, 30))


MULTI_KINDS = ("two-products", "passer-by")


def render_multi(first: int, second: int | None, background: str, light_kind: str, seed: int) -> HeldoutScene:
    """Two separate salient objects side by side, apart: two unrelated products (``second`` a product
    index), or a product and a person walking past (``second`` None). The truth is both objects; which one
    is the product cannot be told from the image, so the right outcome is ``review`` unless the catalog
    names it (``product_box``)."""
    rng = np.random.default_rng(seed)
    w, h = 900, 600
    canvas = Layer(w, h)
    parts: list[tuple[int, int, Draw]] = [PRODUCTS[first][2] + (PRODUCTS[first][3],)]
    parts.append(
        PRODUCTS[second][2] + (PRODUCTS[second][3],) if second is not None else (200, 600, passer_by)
    )
    slots = [(rng.uniform(0.04, 0.1) * w, 0.42 * w), (rng.uniform(0.52, 0.6) * w, 0.42 * w)]
    if rng.random() < 0.5:
        slots.reverse()
    for (pw, ph, draw), (x0, room) in zip(parts, slots, strict=True):
        layer = Layer(pw, ph)
        draw(layer, rng)
        scale = min(room / pw, 0.85 * h / ph) * (rng.uniform(0.75, 1.0) if draw is not passer_by else 1.0)
        size = (max(1, int(pw * scale)), max(1, int(ph * scale)))
        rgb = cv2.resize(layer.rgb, size, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(layer.alpha, size, interpolation=cv2.INTER_AREA)
        y0 = int(h - size[1] - rng.uniform(0.03, 0.08) * h)
        x = int(x0)
        canvas.rgb[y0 : y0 + size[1], x : x + size[0]] += (
            rgb * (1 - canvas.alpha[y0 : y0 + size[1], x : x + size[0]])[..., None]
        )
        canvas.alpha[y0 : y0 + size[1], x : x + size[0]] = np.maximum(
            canvas.alpha[y0 : y0 + size[1], x : x + size[0]], alpha
        )
    bg = BACKGROUNDS[background](h, w, rng) if background != "sweep" else sweep(h, w, rng)
    shadow = cv2.GaussianBlur(canvas.alpha, (0, 0), 6)
    shadow = np.roll(shadow, (int(rng.integers(4, 16)), int(rng.integers(-12, 12))), axis=(0, 1))
    bg = bg * (1 - 0.4 * shadow)[..., None]
    image = bg * (1 - canvas.alpha[..., None]) + canvas.rgb
    image = light(image, light_kind, rng)
    image = image + rng.normal(0, 1.8 / 255, image.shape).astype(np.float32)
    out = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    second_name = "person" if second is None else PRODUCTS[second][0]
    name = f"multi-{PRODUCTS[first][0]}+{second_name}-{background}-{light_kind}-{seed}"
    kind = MULTI_KINDS[1] if second is None else MULTI_KINDS[0]
    return HeldoutScene(name, out, canvas.alpha >= 0.5, kind, background)


def heldout_multi(n: int = 12, split: str = "test") -> Iterator[HeldoutScene]:
    """``n`` scenes with two separate salient objects (every third a product and a passer-by), on plain
    sweeps and busy backgrounds alike; seeds split like :func:`heldout_scenes` (tune 72000+, test 82000+)."""
    base = {"tune": 72000, "test": 82000}[split]
    names = ["sweep", *BACKGROUNDS]
    for i in range(n):
        seed = base + i
        rng = np.random.default_rng(seed + 1)
        first = int(rng.integers(len(PRODUCTS)))
        second = None if i % 3 == 2 else int((first + 1 + rng.integers(len(PRODUCTS) - 1)) % len(PRODUCTS))
        background = names[int(rng.integers(len(names)))]
        light_kind = "even" if background == "sweep" else LIGHTS[int(rng.integers(len(LIGHTS)))]
        yield render_multi(first, second, background, light_kind, seed)


def main() -> None:
    import argparse

    from PIL import Image

    parser = argparse.ArgumentParser(description="write the held-out scenes as PNG images + masks")
    parser.add_argument("--out", type=Path, default=Path("out") / "heldout-scenes")
    parser.add_argument("--split", default="test", choices=["tune", "test"])
    parser.add_argument("-n", type=int, default=24)
    args = parser.parse_args()
    for folder in ("images", "masks"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
    for scene in [
        *heldout_scenes(args.n, args.split),
        *heldout_clean(args.split),
        *heldout_multi(split=args.split),
    ]:
        Image.fromarray(scene.image).save(args.out / "images" / f"{scene.name}.png")
        Image.fromarray(scene.mask.astype(np.uint8) * 255).save(args.out / "masks" / f"{scene.name}.png")
        print(scene.name, scene.kind, scene.image.shape)


if __name__ == "__main__":
    main()
