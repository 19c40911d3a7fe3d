#!/usr/bin/env python3
"""Generate the synthetic demo product catalog used by the canvas_ray examples.

Everything is drawn procedurally with numpy / OpenCV / Pillow (no model
weights, no downloads) and all randomness uses fixed seeds, so running the
script twice produces the same files.

Outputs (relative to this file):
    catalog/images/<item_id>.jpg|png   product photos (10 JPEG, 2 RGBA PNG)
    catalog/masks/<item_id>.png        ground-truth product masks (L, 255 = product,
                                       anti-aliased edge values in between)
    catalog/catalog.jsonl              one JSON object per item
    catalog/catalog.csv                the same rows as CSV

Usage:
    python examples/make_catalog.py [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SS = 4  # supersampling factor used for anti-aliasing
JPEG_QUALITY = 90

cv2.setNumThreads(1)  # keep results independent of the thread count


def C(hex_colour: str) -> np.ndarray:
    """'#rrggbb' -> float32 RGB in 0..1."""
    h = hex_colour.lstrip("#")
    return np.array([int(h[i : i + 2], 16) / 255.0 for i in (0, 2, 4)], np.float32)


WHITE = np.ones(3, np.float32)


def smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def value_noise(h: int, w: int, cell, rng: np.random.Generator, octaves: int = 4) -> np.ndarray:
    """Smooth fractal value noise in 0..1, shape (h, w). cell = (cell_y, cell_x) in px."""
    cy, cx = (cell, cell) if np.isscalar(cell) else cell
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        gh, gw = int(h / cy) + 3, int(w / cx) + 3
        grid = rng.random((gh, gw)).astype(np.float32)
        up = cv2.resize(grid, (int(gw * cx), int(gh * cy)), interpolation=cv2.INTER_CUBIC)
        out += amp * up[:h, :w]
        total += amp
        amp *= 0.5
        cy, cx = max(cy / 2.0, 1.0), max(cx / 2.0, 1.0)
    return np.clip(out / total, 0.0, 1.0)


# ----------------------------------------------------------------------------
# Supersampled product layer
# ----------------------------------------------------------------------------
class Canvas:
    """Product layer drawn at SS x resolution; coordinates are in output pixels."""

    def __init__(self, w: int, h: int, seed: int = 0):
        self.w, self.h = w, h
        self.W, self.H = w * SS, h * SS
        self.X = ((np.arange(self.W, dtype=np.float32) + 0.5) / SS)[None, :]
        self.Y = ((np.arange(self.H, dtype=np.float32) + 0.5) / SS)[:, None]
        self.rgb = np.zeros((self.H, self.W, 3), np.float32)
        self.a = np.zeros((self.H, self.W), np.float32)
        self.rng = np.random.default_rng(seed)

    # -- masks ---------------------------------------------------------------
    def ellipse(self, cx, cy, rx, ry, ang=0.0):
        dx, dy = self.X - cx, self.Y - cy
        if ang:
            ca, sa = math.cos(math.radians(ang)), math.sin(math.radians(ang))
            dx, dy = dx * ca + dy * sa, -dx * sa + dy * ca
        return (dx / rx) ** 2 + (dy / ry) ** 2 <= 1.0

    def ring(self, cx, cy, rx, ry, t):
        return self.ellipse(cx, cy, rx, ry) & ~self.ellipse(cx, cy, rx - t, ry - t)

    def rect(self, x0, y0, x1, y1):
        return (x0 <= self.X) & (x1 > self.X) & (y0 <= self.Y) & (y1 > self.Y)

    def rrect(self, x0, y0, x1, y1, r):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        hx, hy = (x1 - x0) / 2 - r, (y1 - y0) / 2 - r
        qx, qy = np.abs(self.X - cx) - hx, np.abs(self.Y - cy) - hy
        d = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2) + np.minimum(np.maximum(qx, qy), 0) - r
        return d <= 0

    def _pts(self, pts):
        return np.round(np.asarray(pts, np.float64) * SS * 16).astype(np.int32)

    def poly(self, pts):
        m = np.zeros((self.H, self.W), np.uint8)
        cv2.fillPoly(m, [self._pts(pts)], 1, lineType=cv2.LINE_8, shift=4)
        return m.astype(bool)

    def lines(self, pts, width, closed=False):
        m = np.zeros((self.H, self.W), np.uint8)
        cv2.polylines(
            m,
            [self._pts(pts)],
            closed,
            1,
            thickness=max(1, int(round(width * SS))),
            lineType=cv2.LINE_8,
            shift=4,
        )
        return m.astype(bool)

    def text(self, s, cx, cy, height, thick=1.0, font=cv2.FONT_HERSHEY_DUPLEX):
        """Mask of text string centred on (cx, cy); height = cap height in px."""
        m = np.zeros((self.H, self.W), np.uint8)
        (_, th), _ = cv2.getTextSize("H", font, 1.0, 1)
        scale = height * SS / th
        t = max(1, int(round(thick * SS)))
        (tw, th2), _ = cv2.getTextSize(s, font, scale, t)
        org = (int(round(cx * SS - tw / 2)), int(round(cy * SS + th2 / 2)))
        cv2.putText(m, s, org, font, scale, 255, t, cv2.LINE_AA)
        return m.astype(np.float32) / 255.0

    def leaf(self, x, y, ang, length, width):
        """Pointed oval leaf starting at (x, y) pointing along ang (deg, 0 = up, clockwise)."""
        a = math.radians(ang)
        ux, uy = math.sin(a), -math.cos(a)  # along leaf
        dx, dy = self.X - x, self.Y - y
        along = (dx * ux + dy * uy) / length
        across = (-dx * uy + dy * ux) / (width / 2)
        t = np.clip(along, 0, 1)
        half = np.power(np.maximum(np.sin(np.pi * t**0.8), 0), 0.75) * (1.0 - 0.15 * t)
        mask = (along >= 0) & (along <= 1) & (np.abs(across) <= half)
        return mask, along, across

    # -- shading -------------------------------------------------------------
    def cyl(self, base, cx, hw, amb=0.45, light=-0.45, spec=0.5, spec_pos=-0.45, spec_w=0.12, rim=0.12):
        """Colour of a vertical cylinder of half-width hw (scalar or (H,1) array) around cx."""
        u = np.clip((self.X - cx) / hw, -1, 1)
        n = np.sqrt(np.maximum(1 - u * u, 0))
        d = np.clip(n * math.cos(light) + u * math.sin(light), 0, 1)
        lum = amb + (1 - amb) * d
        col = np.asarray(base, np.float32) * lum[..., None]
        h = spec * np.exp(-(((u - spec_pos) / spec_w) ** 2)) + rim * np.exp(-(((u - 0.88) / 0.07) ** 2))
        return col + h[..., None] * (1 - col)

    def vramp(self, col, y0, y1, top, bot):
        t = np.clip((self.Y - y0) / (y1 - y0), 0, 1)
        return np.asarray(col, np.float32) * (top + (bot - top) * t)[..., None]

    def hramp(self, col, x0, x1, left, right):
        t = np.clip((self.X - x0) / (x1 - x0), 0, 1)
        return np.asarray(col, np.float32) * (left + (right - left) * t)[..., None]

    def sphere(self, base, cx, cy, rx, ry=None, amb=0.35, light=(-0.5, -0.6, 0.62), spec=0.6, shin=30.0):
        ry = rx if ry is None else ry
        dx, dy = (self.X - cx) / rx, (self.Y - cy) / ry
        nz = np.sqrt(np.clip(1 - dx * dx - dy * dy, 0, 1))
        L = np.asarray(light, np.float32)
        L = L / np.linalg.norm(L)
        d = np.clip(dx * L[0] + dy * L[1] + nz * L[2], 0, 1)
        Hv = L + np.array([0, 0, 1], np.float32)
        Hv = Hv / np.linalg.norm(Hv)
        s = np.clip(dx * Hv[0] + dy * Hv[1] + nz * Hv[2], 0, 1) ** shin
        col = np.asarray(base, np.float32) * (amb + (1 - amb) * d)[..., None]
        return col + (spec * s)[..., None] * (1 - col)

    def conic(self, base, cx, cy, lo=0.55, hi=0.95, phase=-2.35, k=1):
        """Brushed-metal look: brightness varies with angle around (cx, cy)."""
        th = np.arctan2(self.Y - cy, self.X - cx)
        lum = lo + (hi - lo) * (0.5 + 0.5 * np.cos(k * (th - phase)))
        return np.asarray(base, np.float32) * lum[..., None]

    def noise(self, cell, amount, seed=0):
        """Multiplicative texture (H, W, 1) around 1.0 for paper/fabric."""
        rng = np.random.default_rng(seed)
        n = value_noise(self.h, self.w, cell, rng, octaves=3)
        n = cv2.resize(n, (self.W, self.H), interpolation=cv2.INTER_LINEAR)
        return (1.0 + amount * (n - 0.5) * 2)[..., None]

    # -- painting ------------------------------------------------------------
    def paint(self, mask, color, opacity=1.0, cover=True):
        """Paint colour (RGB, or an array broadcastable to (H,W,3)) through mask.

        cover=True adds the painted area to the product alpha; cover=False only
        recolours (used for highlights, prints, seams inside the product).
        """
        mask = np.broadcast_to(mask, (self.H, self.W))
        nz = mask if mask.dtype == bool else mask > 1e-3
        rows = np.flatnonzero(nz.any(1))
        if rows.size == 0:
            return
        cols = np.flatnonzero(nz.any(0))
        ys, xs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        m = mask[ys, xs].astype(np.float32) * opacity
        col = np.clip(np.broadcast_to(np.asarray(color, np.float32), (self.H, self.W, 3))[ys, xs], 0, 1)
        rgb = self.rgb[ys, xs]
        rgb += (col - rgb) * m[..., None]
        if cover:
            a = self.a[ys, xs]
            np.maximum(a, m, out=a)

    def inside(self):
        return self.a > 0.5

    def resolve(self):
        """Downsample to output size -> (premultiplied rgb, alpha)."""
        a = cv2.resize(self.a, (self.w, self.h), interpolation=cv2.INTER_AREA)
        prem = cv2.resize(self.rgb * self.a[..., None], (self.w, self.h), interpolation=cv2.INTER_AREA)
        return np.clip(prem, 0, 1), np.clip(a, 0, 1)


# ----------------------------------------------------------------------------
# Backgrounds (output resolution, float32 HxWx3)
# ----------------------------------------------------------------------------
def bg_solid(w, h, col):
    return np.broadcast_to(np.asarray(col, np.float32), (h, w, 3)).copy()


def bg_vgrad(w, h, top, bot, y0=0.0, y1=1.0):
    t = smoothstep(y0, y1, (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h)[..., None]
    return np.broadcast_to(top * (1 - t) + bot * t, (h, w, 3)).copy()


def bg_sweep(w, h, wall, floor, horizon, soft):
    """Photo-studio paper sweep: wall colour blending into a floor colour."""
    y = np.arange(h, dtype=np.float32)[:, None] + 0.5
    t = smoothstep(horizon - soft, horizon + soft, y)[..., None]
    img = wall * (1 - t) + floor * t
    # the floor gets slightly brighter towards the camera
    img = img * (1.0 + 0.05 * smoothstep(horizon, h, y))[..., None]
    return np.broadcast_to(img, (h, w, 3)).copy()


def vignette(img, strength):
    h, w = img.shape[:2]
    y = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h - 0.5
    x = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w - 0.5
    r2 = (x * x + y * y) * 2.0
    return img * (1 - strength * r2)[..., None]


def wood(h, w, rng, light, dark, plank=90, tone=0.12):
    """Horizontal wood planks with distorted grain."""
    y = np.arange(h)[:, None]
    x = np.arange(w)[None, :]
    n1 = value_noise(h, w, (10, 220), rng, 3)
    n2 = value_noise(h, w, (1.5, 40), rng, 3)
    n3 = value_noise(h, w, (30, 30), rng, 2)
    idx = y // plank
    local = (y % plank).astype(np.float32)
    nplanks = h // plank + 1
    phase = rng.uniform(0, 2 * np.pi, nplanks)[idx]
    tones = rng.uniform(1 - tone, 1 + tone, nplanks)[idx]
    freq = rng.uniform(0.22, 0.4, nplanks)[idx]
    rings = 0.5 + 0.5 * np.sin(local * freq + n1 * 22 + phase)
    g = rings**4
    t = np.clip(0.45 * g + 0.55 * n2 + 0.25 * (n3 - 0.5), 0, 1)
    img = light * (1 - t[..., None]) + dark * t[..., None]
    img = img * tones[..., None]
    seam = np.where(local < 2, 0.55, np.where(local < 3.5, 0.85, 1.0)).astype(np.float32)
    img = img * seam[..., None]
    joints = rng.uniform(0, w, nplanks)[idx]
    jmask = np.abs(x - joints) < 1.2
    img = np.where(jmask[..., None], img * 0.6, img)
    return img.astype(np.float32)


def tiles(h, w, rng, size, grout, palette, grout_col):
    img = np.broadcast_to(grout_col, (h, w, 3)).copy()
    glaze = value_noise(h, w, 18, rng, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    sheen = 1.0 + 0.10 * (1 - (xx + yy) / (2 * size)) - 0.05
    for ty in range(0, h, size):
        for tx in range(0, w, size):
            col = palette[rng.integers(len(palette))] * rng.uniform(0.9, 1.06)
            y0, y1 = ty + grout, min(ty + size, h)
            x0, x1 = tx + grout, min(tx + size, w)
            if y1 <= y0 or x1 <= x0:
                continue
            g = glaze[y0:y1, x0:x1, None]
            s = sheen[: y1 - y0, : x1 - x0, None]
            img[y0:y1, x0:x1] = col * s * (0.9 + 0.2 * g)
    return img


def wallpaper(h, w, rng, base, line, dot, period=56):
    """Diamond-lattice wallpaper with dots and paper texture."""
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    u = np.mod(x + y, period)
    v = np.mod(x - y, period)
    lines = np.minimum(np.minimum(u, period - u), np.minimum(v, period - v))
    lm = 1 - smoothstep(1.0, 2.5, lines)
    cx = np.mod(x, period) - period / 2
    cy = np.mod(y + period / 2, period) - period / 2
    dm = 1 - smoothstep(5.0, 6.5, np.sqrt(cx * cx + cy * cy))
    img = np.broadcast_to(base, (h, w, 3)).copy()
    img = img * (1 - lm[..., None]) + line * lm[..., None]
    img = img * (1 - dm[..., None]) + dot * dm[..., None]
    paper = value_noise(h, w, 6, rng, 3)
    return (img * (0.93 + 0.12 * paper[..., None])).astype(np.float32)


def contact_shadow(bg, alpha, strength, spread=1.15, flat=0.12):
    """Soft elliptical shadow under the lowest part of the product."""
    h, w = alpha.shape
    ys, xs = np.nonzero(alpha > 0.5)
    ymax = ys.max()
    band = ys >= ymax - max(4, 0.03 * (ys.max() - ys.min()))
    x0, x1 = xs[band].min(), xs[band].max()
    cx, hw = (x0 + x1) / 2, max((x1 - x0) / 2, 10)
    big = np.zeros((h, w), np.float32)
    cv2.ellipse(
        big,
        (int(cx), int(ymax - 1)),
        (int(hw * spread), int(max(6, hw * flat))),
        0,
        0,
        360,
        1.0,
        -1,
        cv2.LINE_AA,
    )
    big = cv2.GaussianBlur(big, (0, 0), max(3.0, hw * 0.14))
    tight = np.zeros((h, w), np.float32)
    cv2.ellipse(tight, (int(cx), int(ymax)), (int(hw * 0.95), 3), 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    tight = cv2.GaussianBlur(tight, (0, 0), 2.5)
    s = np.clip(strength * (0.65 * big + 0.7 * tight), 0, 0.9)
    return bg * (1 - s)[..., None]


def drop_shadow(bg, alpha, strength, dx, dy, blur):
    sh = np.roll(np.roll(alpha, dy, axis=0), dx, axis=1)
    sh = cv2.GaussianBlur(sh, (0, 0), blur)
    return bg * (1 - strength * sh)[..., None]


def grain(img, rng, sigma=1.0 / 255):
    return img + rng.normal(0.0, sigma, img.shape).astype(np.float32)


# ----------------------------------------------------------------------------
# Products
# ----------------------------------------------------------------------------
def draw_perfume(c: Canvas):
    x0, x1, y0, y1 = 150, 330, 300, 560
    cx, hw = (x0 + x1) / 2, (x1 - x0) / 2
    glass = C("#e8eef0")
    # cap + collar first so the glass shoulder overlaps them cleanly
    c.paint(
        c.rrect(196, 172, 284, 286, 10),
        c.vramp(c.cyl(C("#cfa45a"), cx, 44, amb=0.35, spec=0.85, spec_w=0.1), 172, 286, 1.1, 0.85),
    )
    c.paint(c.rect(196, 172, 284, 180), c.cyl(C("#e6c27a"), cx, 44, amb=0.5, spec=0.6), cover=False)
    c.paint(c.rect(214, 282, 266, 304), c.cyl(C("#b8924a"), cx, 26, amb=0.35, spec=0.7))
    body = c.rrect(x0, y0, x1, y1, 22)
    c.paint(body, c.cyl(glass, cx, hw, amb=0.72, spec=0.0, rim=0.0))
    liq_y0, liq_y1 = 338, y1 - 24
    liquid = c.rrect(x0 + 14, liq_y0, x1 - 14, liq_y1, 12)
    amber = c.vramp(
        c.cyl(C("#e39a3b"), cx, hw - 14, amb=0.5, light=-0.3, spec=0.2), liq_y0, liq_y1, 1.12, 0.7
    )
    c.paint(liquid, amber)
    c.paint(c.rect(x0 + 14, liq_y0, x1 - 14, liq_y0 + 4) & liquid, C("#f6d28f"), 0.8, cover=False)  # meniscus
    c.paint(c.rrect(x0 + 6, y1 - 22, x1 - 6, y1 - 4, 8), C("#c9d4d6"), 0.55, cover=False)  # thick glass base
    edge = body & ~c.rrect(x0 + 5, y0 + 5, x1 - 5, y1 - 5, 18)
    c.paint(edge, C("#9eacb0"), 0.55, cover=False)
    # label
    c.paint(c.rect(188, 408, 292, 478), c.vramp(C("#f6f0e3"), 408, 478, 1.0, 0.93), cover=False)
    c.paint(c.rect(188, 408, 292, 478) & ~c.rect(191, 411, 289, 475), C("#b58d45"), cover=False)
    c.paint(c.text("LUMIERE", 240, 434, 11, 1.2, cv2.FONT_HERSHEY_TRIPLEX), C("#2b2118"), cover=False)
    c.paint(c.text("AMBRE NUIT", 240, 456, 6, 0.7), C("#5a4630"), cover=False)
    # glass reflections
    c.paint(c.rrect(x0 + 16, y0 + 14, x0 + 28, y1 - 30, 6), WHITE, 0.6, cover=False)
    c.paint(c.rrect(x1 - 24, y0 + 30, x1 - 18, y1 - 70, 3), WHITE, 0.4, cover=False)


def draw_mug(c: Canvas):
    cx, hw, top, bot = 236, 92, 188, 392
    sage = C("#8fae9b")
    # handle: elliptical tube, only the part outside the body
    hcx, hcy, rxo, ryo, rxi, ryi = 326, 292, 66, 72, 42, 48
    dx, dy = c.X - hcx, c.Y - hcy
    q = np.sqrt((dx / ((rxo + rxi) / 2)) ** 2 + (dy / ((ryo + ryi) / 2)) ** 2)
    ht = ((rxo - rxi) / 2) / ((rxo + rxi) / 2)
    t = np.clip((q - 1) / ht, -1, 1)
    n = np.sqrt(1 - t * t)
    lum = 0.35 + 0.65 * n * (0.8 - 0.2 * dy / ryo)
    hcol = sage * lum[..., None]
    hcol = hcol + (0.35 * np.exp(-(((t + 0.35) / 0.2) ** 2)))[..., None] * (1 - hcol)
    c.paint(c.ring(hcx, hcy, rxo, ryo, rxo - rxi) & (cx + 40 < c.X), hcol)
    # body
    body = c.rect(cx - hw, top, cx + hw, bot) | c.ellipse(cx, bot, hw, 15)
    col = c.vramp(c.cyl(sage, cx, hw, amb=0.4, spec=0.35, spec_w=0.1), top, bot, 1.08, 0.88)
    c.paint(body, col)
    # unglazed clay foot
    foot = body & (bot - 12 + 15 * np.sqrt(np.clip(1 - ((c.X - cx) / hw) ** 2, 0, 1)) - 15 < c.Y)
    c.paint(foot, c.cyl(C("#d9c3a5"), cx, hw, amb=0.45, spec=0.1))
    # glaze drip line above the foot
    c.paint(
        body
        & (np.abs(c.Y - (bot - 14 + 15 * np.sqrt(np.clip(1 - ((c.X - cx) / hw) ** 2, 0, 1)) - 15)) < 1.2),
        C("#6d8a78"),
        0.8,
        cover=False,
    )
    # rim and interior
    c.paint(c.ellipse(cx, top, hw, 16), c.cyl(C("#eee8dc"), cx, hw, amb=0.7, spec=0.2))
    inner = c.ellipse(cx, top + 1, hw - 7, 12)
    c.paint(inner, c.vramp(C("#efe9dd"), top - 12, top + 13, 0.95, 0.55), cover=False)


def draw_sneaker(c: Canvas):
    navy = C("#23375e")
    upper = [
        (106, 312),
        (100, 250),
        (104, 200),
        (116, 160),
        (150, 146),
        (186, 152),
        (214, 170),
        (236, 186),
        (292, 202),
        (352, 218),
        (420, 238),
        (478, 256),
        (528, 272),
        (556, 288),
        (568, 302),
        (568, 312),
    ]
    ucol = c.vramp(c.hramp(navy, 100, 568, 0.85, 1.0), 146, 305, 1.3, 0.8)
    ucol = ucol * c.noise(3, 0.06, seed=31)
    c.paint(c.poly(upper), ucol)
    # tongue
    c.paint(
        c.poly([(214, 172), (226, 138), (252, 136), (270, 152), (262, 196), (236, 186)]),
        c.vramp(C("#31497a"), 136, 196, 1.25, 0.85),
    )
    # collar lining
    c.paint(
        c.poly([(118, 160), (150, 148), (186, 154), (214, 172), (200, 178), (160, 166), (126, 170)]),
        C("#1a2440"),
    )
    # heel counter + toe cap (lighter suede panels)
    c.paint(
        c.poly([(104, 300), (100, 250), (104, 200), (124, 206), (142, 230), (154, 262), (160, 300)]),
        c.vramp(C("#3a5286"), 190, 300, 1.2, 0.85),
        cover=False,
    )
    c.paint(
        c.poly([(452, 300), (462, 252), (500, 262), (540, 276), (560, 290), (568, 302)]),
        c.vramp(C("#3a5286"), 250, 302, 1.2, 0.9),
        cover=False,
    )
    # side stripe
    c.paint(
        c.poly([(196, 292), (300, 250), (430, 226), (462, 228), (330, 262), (236, 296)]),
        C("#f1f1ee"),
        cover=False,
    )
    # heel tab
    c.paint(c.rrect(96, 168, 112, 218, 5), C("#ef7b45"))
    # laces & eyelets along the throat
    for i in range(6):
        t = i / 5
        px, py = 244 + t * 130, 190 + t * 36
        c.paint(c.ellipse(px - 6, py + 8, 3.5, 3.5), C("#c9ccd3"), cover=False)
        c.paint(c.ellipse(px + 10, py - 6, 3.5, 3.5), C("#c9ccd3"), cover=False)
        c.paint(c.lines([(px - 8, py + 10), (px + 12, py - 8)], 5), C("#f4f4f0"))
    # midsole and outsole
    sole = c.poly(
        [
            (98, 292),
            (100, 330),
            (112, 350),
            (140, 358),
            (500, 358),
            (540, 352),
            (564, 336),
            (574, 312),
            (566, 296),
            (470, 300),
            (300, 302),
            (150, 300),
        ]
    )
    c.paint(sole, c.vramp(C("#f6f5f0"), 292, 358, 1.0, 0.82))
    c.paint(sole & (c.Y > 347), C("#3b3b3d"))
    c.paint(sole & (np.abs(c.Y - 325) < 1.0), C("#c8c6bf"), cover=False)


def draw_lipstick(c: Canvas):
    cx = 192
    red = C("#b0122a")
    gold = C("#d6ae5c")
    # bullet
    bullet = c.poly([(152, 275), (152, 180), (158, 168), (226, 122), (232, 124), (232, 275)])
    face = c.ellipse(192, 150, 49, 11, ang=-34.5)
    c.paint(bullet | face, c.cyl(red, cx, 40, amb=0.35, spec=0.55, spec_w=0.1))
    c.paint(face, c.sphere(C("#d23246"), 192, 150, 49, 30, amb=0.55, spec=0.5, shin=12), cover=False)
    # inner sleeve
    c.paint(c.rect(142, 262, 242, 336), c.cyl(gold * 1.05, cx, 50, amb=0.35, spec=0.9, spec_w=0.08))
    c.paint(c.ellipse(cx, 262, 50, 6), c.cyl(C("#f1d58f"), cx, 50, amb=0.5, spec=0.5))
    # outer tube
    tube = c.rect(132, 336, 252, 520) | c.ellipse(cx, 520, 60, 8) | c.ellipse(cx, 336, 60, 7)
    c.paint(tube, c.cyl(gold, cx, 60, amb=0.3, spec=0.95, spec_w=0.09, rim=0.25))
    c.paint(c.rect(132, 352, 252, 356), C("#8a6a2c"), 0.7, cover=False)
    c.paint(c.rect(132, 496, 252, 500), C("#8a6a2c"), 0.7, cover=False)
    c.paint(c.text("VELOUR", cx, 430, 12, 1.3, cv2.FONT_HERSHEY_TRIPLEX), C("#6e5222"), 0.85, cover=False)


def draw_watch(c: Canvas):
    cx, cy = 280, 280
    leather = C("#7a4a2a")
    steel = C("#c9ccd0")
    strap = c.rrect(240, 36, 320, 524, 16)
    scol = c.cyl(leather, cx, 40, amb=0.6, spec=0.12, spec_w=0.3) * c.noise(2, 0.08, seed=51)
    c.paint(strap, scol)
    for x in (247, 313):
        for y in range(46, 516, 11):
            c.paint(c.rect(x - 1, y, x + 1, y + 6), C("#c9a27a"), 0.9, cover=False)
    for y in (420, 446, 472):
        c.paint(c.ellipse(cx, y, 4, 4), C("#2a170c"), cover=False)
    c.paint(c.rect(240, 96, 320, 108), c.cyl(C("#5e371d"), cx, 40, amb=0.6, spec=0.1))  # keeper
    buckle = c.rrect(228, 50, 332, 82, 9) & ~c.rrect(238, 58, 322, 74, 4)
    c.paint(buckle, c.cyl(steel, cx, 52, amb=0.4, spec=0.9))
    c.paint(c.rect(276, 60, 284, 90), c.cyl(steel, cx, 4, amb=0.5, spec=0.6))
    # lugs
    for ly0, ly1 in ((150, 180), (380, 410)):
        for lx in (244, 300):
            c.paint(c.rrect(lx, ly0, lx + 16, ly1, 4), c.cyl(steel, lx + 8, 8, amb=0.5, spec=0.8))
    # crown
    c.paint(c.rrect(394, 266, 414, 294, 4), c.cyl(steel, 404, 10, amb=0.5, spec=0.7))
    for y in range(269, 292, 4):
        c.paint(c.rect(396, y, 414, y + 1.5), C("#7b7f86"), cover=False)
    # case, bezel, dial
    c.paint(c.ellipse(cx, cy, 120, 120), c.conic(steel, cx, cy, 0.5, 1.05))
    c.paint(c.ring(cx, cy, 110, 110, 8), c.conic(steel, cx, cy, 0.55, 1.0, phase=0.8), cover=False)
    dial = c.ellipse(cx, cy, 102, 102)
    c.paint(dial, c.conic(C("#1d3461"), cx, cy, 0.7, 1.15, phase=-0.8, k=2))
    for k in range(12):
        a = math.radians(k * 30)
        sx, sy = math.sin(a), -math.cos(a)
        r0 = 74 if k % 3 == 0 else 82
        c.paint(
            c.lines([(cx + sx * r0, cy + sy * r0), (cx + sx * 94, cy + sy * 94)], 5 if k % 3 == 0 else 3.5),
            C("#e9eaec"),
            cover=False,
        )
    c.paint(c.text("ALDERMOOR", cx, cy - 40, 7, 0.8), C("#e9e4d6"), cover=False)
    c.paint(c.text("AUTOMATIC", cx, cy + 44, 5, 0.6), C("#b9bfca"), cover=False)

    def hand(deg, length, width, col, tail=12):
        a = math.radians(deg)
        sx, sy = math.sin(a), -math.cos(a)
        c.paint(
            c.lines([(cx - sx * tail, cy - sy * tail), (cx + sx * length, cy + sy * length)], width),
            col,
            cover=False,
        )

    hand(305, 56, 8, C("#f2f2f2"))
    hand(60, 86, 5.5, C("#f2f2f2"))
    hand(200, 90, 1.8, C("#e0483a"), tail=20)
    c.paint(c.ellipse(cx, cy, 6, 6), c.sphere(steel, cx, cy, 6, amb=0.5), cover=False)
    # crystal reflection
    c.paint(
        dial & c.ellipse(236, 226, 80, 36, ang=-40) & ~c.ellipse(250, 244, 80, 36, ang=-40),
        WHITE,
        0.22,
        cover=False,
    )


def draw_backpack(c: Canvas):
    mustard = C("#d29a32")
    cx = 240
    # top handle loop
    c.paint(c.ring(cx, 134, 38, 32, 9) & (c.Y < 140), c.cyl(C("#3c3a36"), cx, 40, amb=0.5, spec=0.2))
    body = (c.ellipse(cx, 240, 122, 115) & (c.Y < 241)) | c.rrect(118, 200, 362, 545, 44) & (c.Y >= 240)
    tex = c.noise(1.5, 0.07, seed=61)
    c.paint(
        body, c.vramp(c.cyl(mustard, cx, 122, amb=0.55, spec=0.12, spec_w=0.25), 120, 545, 1.1, 0.85) * tex
    )
    # main zip arc
    c.paint(c.ring(cx, 246, 106, 100, 3) & (c.Y < 262), C("#2d2a26"), cover=False)
    c.paint(c.rrect(340, 248, 350, 274, 3), C("#8f8a80"), cover=False)
    # front pocket
    pocket = c.rrect(148, 340, 332, 528, 34)
    c.paint(
        pocket,
        c.vramp(c.cyl(C("#c58d28"), cx, 92, amb=0.55, spec=0.18, spec_w=0.2), 340, 528, 1.1, 0.8) * tex,
        cover=False,
    )
    c.paint(pocket & ~c.rrect(152, 344, 328, 524, 30), C("#8a601b"), cover=False)
    c.paint(c.rect(170, 366, 310, 369), C("#2d2a26"), cover=False)
    c.paint(c.rrect(296, 368, 306, 392, 3), C("#8f8a80"), cover=False)
    # leather patch
    c.paint(c.rrect(214, 420, 266, 452, 5), c.vramp(C("#7a4b2c"), 420, 452, 1.15, 0.85), cover=False)
    c.paint(c.text("TN", cx, 436, 9, 1.0), C("#e2c9a6"), 0.8, cover=False)
    # compression straps with buckles
    for sx in (176, 304):
        c.paint(
            c.rect(sx - 7, 232, sx + 7, 350), c.hramp(C("#3c3a36"), sx - 7, sx + 7, 1.15, 0.85), cover=False
        )
        c.paint(c.rrect(sx - 10, 300, sx + 10, 318, 3), C("#24221f"), cover=False)


def draw_lamp(c: Canvas):
    cx = 240
    brass = C("#c8a04c")
    # finial + harp top
    c.paint(c.ellipse(cx, 98, 7, 7), c.sphere(brass, cx, 98, 7, amb=0.45))
    # shade
    shade = (
        c.poly([(170, 112), (310, 112), (362, 292), (118, 292)])
        | c.ellipse(cx, 292, 122, 14)
        | c.ellipse(cx, 112, 70, 8)
    )
    hw = np.clip(70 + (c.Y - 112) * (52 / 180), 70, 122)
    lin = C("#f3e6cc")
    col = c.vramp(c.cyl(lin, cx, hw, amb=0.78, light=-0.25, spec=0.05), 112, 306, 0.95, 1.08) * c.noise(
        1, 0.05, 71
    )
    c.paint(shade, col)
    c.paint(c.ellipse(cx, 112, 66, 6), C("#8c7a5c"), cover=False)
    c.paint(shade & (c.Y > 288) & ~c.ellipse(cx, 290, 122, 11), C("#b89250"), cover=False)  # trim
    # stem
    c.paint(c.rect(cx - 7, 300, cx + 7, 412), c.cyl(brass, cx, 7, amb=0.4, spec=0.8))
    # glazed ceramic base
    c.paint(
        c.ellipse(cx, 472, 78, 72), c.sphere(C("#245a73"), cx - 0, 472, 78, 72, amb=0.28, spec=0.75, shin=40)
    )
    c.paint(
        c.rect(cx - 18, 398, cx + 18, 412) | c.ellipse(cx, 398, 18, 4),
        c.cyl(C("#245a73"), cx, 18, amb=0.4, spec=0.5),
    )
    c.paint(c.rrect(186, 530, 294, 550, 5), c.cyl(brass, cx, 54, amb=0.4, spec=0.8))


def wine_profile(y):
    """Half-width of the wine bottle as a function of y (numpy array)."""
    hw = np.full_like(y, 0.0)
    hw = np.where((y >= 62) & (y < 70), 19.0, hw)
    hw = np.where((y >= 70) & (y < 210), 16.5 + (y - 70) * (1.5 / 140), hw)
    t = np.clip((y - 210) / 95.0, 0, 1)
    hw = np.where((y >= 210) & (y < 305), 18 + 37 * (t * t * (3 - 2 * t)), hw)
    hw = np.where((y >= 305) & (y <= 600), 55.0, hw)
    corner = np.clip(y - 590, 0, 10)
    hw = np.where(y > 590, 55 - 10 + np.sqrt(np.maximum(100 - corner**2, 0)), hw)
    return hw


def draw_wine(c: Canvas):
    cx = 192
    ys = np.arange(62, 600.01, 0.5)
    hws = wine_profile(ys)
    pts = [(cx - w, y) for y, w in zip(ys, hws, strict=False)] + [
        (cx + w, y) for y, w in zip(ys[::-1], hws[::-1], strict=False)
    ]
    bottle = c.poly(pts)
    hw = np.maximum(wine_profile(c.Y), 1.0)
    c.paint(bottle, c.cyl(C("#1d3b24"), cx, hw, amb=0.35, spec=0.55, spec_pos=-0.55, spec_w=0.08, rim=0.3))
    c.paint(bottle & (np.abs((c.X - cx) / hw - 0.35) < 0.05), WHITE, 0.18, cover=False)
    # foil capsule
    cap = bottle & (c.Y < 150)
    c.paint(cap, c.cyl(C("#6b1423"), cx, hw + 0.5, amb=0.35, spec=0.7, spec_w=0.1))
    c.paint(bottle & (c.Y >= 146) & (c.Y < 150), C("#3d0a13"), cover=False)
    c.paint(bottle & (c.Y < 70), c.cyl(C("#85202f"), cx, 19, amb=0.4, spec=0.8), cover=False)
    # label with curved (cylindrical) edges
    u = np.clip((c.X - cx) / 55, -1, 1)
    bow = 7 * np.sqrt(1 - u * u)
    label = bottle & (372 + bow < c.Y) & (512 + bow > c.Y) & (np.abs(c.X - cx) < 52)
    paper = c.cyl(C("#f1ead8"), cx, 55, amb=0.55, spec=0.15, spec_pos=-0.5, rim=0.0) * c.noise(1, 0.03, 81)
    c.paint(label, paper, cover=False)
    c.paint(
        label & ((np.abs(c.Y - (380 + bow)) < 1) | (np.abs(c.Y - (504 + bow)) < 1)), C("#a8843c"), cover=False
    )
    c.paint(
        c.text("CHATEAU", cx, 406 + 6, 8, 0.8, cv2.FONT_HERSHEY_TRIPLEX) * label, C("#2a1c14"), cover=False
    )
    c.paint(
        c.text("VERLAINE", cx, 426 + 6, 10, 1.0, cv2.FONT_HERSHEY_TRIPLEX) * label, C("#6b1423"), cover=False
    )
    c.paint(c.ring(cx, 462, 13, 13, 2) & label, C("#a8843c"), cover=False)
    c.paint(c.text("V", cx, 462, 9, 1.0, cv2.FONT_HERSHEY_TRIPLEX) * label, C("#a8843c"), cover=False)
    c.paint(c.text("BORDEAUX 2019", cx, 490 + 6, 5, 0.6) * label, C("#2a1c14"), cover=False)


def draw_pouch(c: Canvas):
    cx = 240
    ys = np.linspace(92, 540, 120)
    t = (ys - 92) / (540 - 92)
    bulge = 14 * np.sin(np.pi * np.clip(t * 1.1, 0, 1))
    left = [(122 - b, y) for y, b in zip(ys, bulge, strict=False)]
    right = [(358 + b, y) for y, b in zip(ys[::-1], bulge[::-1], strict=False)]
    bottom = [(cx + 118 * math.cos(a), 540 + 10 * math.sin(a)) for a in np.linspace(0, np.pi, 40)]
    pts = left + sorted(bottom, key=lambda p: p[0]) + right
    body = c.poly(pts)
    # tear notches
    notch = c.poly([(100, 136), (122, 142), (100, 148)]) | c.poly([(380, 136), (358, 142), (380, 148)])
    body &= ~notch
    kraft = C("#b88c5e")
    col = c.vramp(c.cyl(kraft, cx, 134, amb=0.62, light=-0.35, spec=0.1, spec_w=0.25), 92, 550, 1.05, 0.85)
    col = col * c.noise(1.2, 0.08, seed=91)
    c.paint(body, col)
    # crimped heat seal
    seal = body & (c.Y < 124)
    ridge = 0.88 + 0.12 * np.cos(c.X * (2 * np.pi / 4.0))
    c.paint(seal, c.vramp(kraft * 0.92, 92, 124, 1.05, 0.9) * ridge[..., None], cover=False)
    c.paint(body & (np.abs(c.Y - 124) < 1.2), C("#7d5c39"), cover=False)
    # soft wrinkle highlights
    for hx, hy, rx, ry, ang, op in ((190, 300, 14, 160, 8, 0.10), (318, 360, 10, 130, -6, 0.08)):
        dx, dy = c.X - hx, c.Y - hy
        ca, sa = math.cos(math.radians(ang)), math.sin(math.radians(ang))
        u, v = dx * ca + dy * sa, -dx * sa + dy * ca
        blob = np.exp(-((u / rx) ** 2) - (v / ry) ** 2)
        c.paint(blob * body, WHITE, op, cover=False)
    # degassing valve
    c.paint(c.ellipse(cx, 182, 14, 14), c.sphere(C("#e8e4da"), cx, 182, 14, amb=0.6, spec=0.3), cover=False)
    c.paint(c.ring(cx, 182, 7, 7, 1.5), C("#9d968a"), cover=False)
    # label
    lab = c.rrect(166, 236, 314, 440, 6)
    c.paint(lab, c.cyl(C("#1f1d1b"), cx, 134, amb=0.7, spec=0.06, spec_w=0.25), cover=False)
    cream = C("#efe3c8")
    c.paint(c.ellipse(cx, 280, 15, 21, ang=20), cream, cover=False)
    c.paint(
        c.lines([(cx - 2, 261), (cx + 4, 272), (cx - 4, 288), (cx + 2, 299)], 2.2), C("#1f1d1b"), cover=False
    )
    c.paint(c.text("RIDGELINE", cx, 326, 10, 1.1), cream, cover=False)
    c.paint(c.text("ROASTERS", cx, 344, 6, 0.7), cream, cover=False)
    c.paint(c.rect(196, 360, 284, 361.5), C("#c98b3c"), cover=False)
    c.paint(c.text("ETHIOPIA", cx, 378, 7, 0.8), C("#c98b3c"), cover=False)
    c.paint(c.text("YIRGACHEFFE", cx, 394, 5.5, 0.6), cream, cover=False)
    c.paint(c.text("WHOLE BEAN  340 G", cx, 420, 4.5, 0.55), cream, 0.9, cover=False)


def draw_plant(c: Canvas):
    cx = 256
    terracotta = C("#c06a43")
    # stem
    c.paint(c.lines([(cx, 412), (cx - 4, 300), (cx + 2, 190), (cx, 150)], 7), C("#5b6b34"))
    # leaves: (attach_y, angle, length, width, colour)
    rng = np.random.default_rng(101)
    leaves = []
    for i in range(10):
        side = -1 if i % 2 == 0 else 1
        ay = 396 - i * 24
        ang = side * (rng.uniform(48, 72) - i * 2.5)
        length = rng.uniform(105, 130) - i * 4
        width = length * rng.uniform(0.42, 0.5)
        leaves.append((ay, ang, length, width))
    leaves.append((150, -6, 80, 30))
    for j, (ay, ang, length, width) in enumerate(leaves):
        ax = cx - 2 + (0 if ay > 300 else 2)
        a = math.radians(ang)
        px, py = ax + math.sin(a) * 14, ay - math.cos(a) * 14
        c.paint(c.lines([(ax, ay), (px, py)], 4), C("#4f6a2e"))
        mask, along, across = c.leaf(px, py, ang, length, width)
        green = C("#1f5a2a") * rng.uniform(0.85, 1.15)
        if j == len(leaves) - 1:
            green = C("#3f7a35")
        side_light = 0.8 + 0.25 * np.clip(-across * np.sign(ang or 1), -1, 1)
        lum = (0.75 + 0.3 * (1 - np.abs(across))) * side_light * (0.85 + 0.25 * np.clip(1 - along, 0, 1))
        col = green * lum[..., None]
        gloss = (
            0.35
            * np.exp(-(((across + 0.35 * np.sign(ang or 1)) / 0.18) ** 2))
            * np.clip(np.sin(np.pi * along), 0, 1)
        )
        col = col + gloss[..., None] * (1 - col)
        c.paint(mask, col)
        c.paint(mask & (np.abs(across) < 0.05) & (along < 0.92), C("#a7c47f"), 0.8, cover=False)
    # pot
    pot = c.poly([(178, 436), (334, 436), (316, 600), (196, 600)]) | c.ellipse(cx, 600, 60, 7)
    hw = np.clip(78 - (c.Y - 436) * (18 / 164), 60, 78)
    c.paint(pot, c.cyl(terracotta, cx, hw, amb=0.45, spec=0.12, spec_w=0.2) * c.noise(1.5, 0.08, 102))
    c.paint(
        c.rect(164, 408, 348, 440) | c.ellipse(cx, 440, 92, 6),
        c.vramp(c.cyl(terracotta * 1.05, cx, 92, amb=0.5, spec=0.15, spec_w=0.2), 408, 446, 1.1, 0.9),
    )
    c.paint(c.ellipse(cx, 408, 92, 10), c.cyl(C("#d58a63"), cx, 92, amb=0.6, spec=0.1))
    c.paint(c.ellipse(cx, 409, 84, 7), C("#3b2a1e") * c.noise(0.8, 0.25, 103), cover=False)
    # re-draw stem base over the soil
    c.paint(c.lines([(cx, 409), (cx - 1, 392)], 7), C("#5b6b34"))


def draw_headphones(c: Canvas):
    cx = 320
    black = C("#2a2b30")
    silver = C("#b9bcc2")
    # headband
    bcx, bcy, rx, ry = cx, 275, 170, 190
    dx, dy = c.X - bcx, c.Y - bcy
    q = np.sqrt((dx / (rx - 9)) ** 2 + (dy / (ry - 9)) ** 2)
    t = np.clip((q - 1) / (9 / (rx - 9)), -1, 1)
    band = c.ring(bcx, bcy, rx, ry, 18) & (c.Y < 262)
    lum = 0.35 + 0.65 * np.sqrt(1 - t * t)
    bcol = black * lum[..., None]
    bcol = bcol + (0.3 * np.exp(-(((t + 0.3) / 0.25) ** 2)))[..., None] * (1 - bcol)
    c.paint(band, bcol)
    pad = c.ring(bcx, bcy, rx - 15, ry - 15, 14) & (c.Y < 175)
    c.paint(pad & ~band, c.vramp(C("#4a4b52"), 100, 175, 1.2, 0.8))
    for sgn in (-1, 1):
        ex = cx + sgn * 168
        # slider
        c.paint(c.rrect(ex - 7, 232, ex + 7, 290, 3), c.cyl(silver, ex, 7, amb=0.45, spec=0.85))
        c.paint(c.rect(ex - 7, 250, ex + 7, 252), C("#6c6f76"), cover=False)
        # yoke
        c.paint(c.rrect(ex - 12, 284, ex + 12, 300, 5), c.cyl(C("#3a3b40"), ex, 12, amb=0.5, spec=0.3))
        # cup shell
        sx0, sx1 = (ex - 26, ex + 20) if sgn < 0 else (ex - 20, ex + 26)
        c.paint(
            c.rrect(sx0, 292, sx1, 430, 22),
            c.vramp(c.cyl(black, (sx0 + sx1) / 2, 23, amb=0.4, spec=0.35, spec_w=0.15), 292, 430, 1.1, 0.85),
        )
        c.paint(c.rect(sx0 + 6, 358, sx1 - 6, 362), silver, 0.8, cover=False)
        # cushion on the inner side
        kx0, kx1 = (sx1 - 4, sx1 + 34) if sgn < 0 else (sx0 - 34, sx0 + 4)
        kc = (kx0 + kx1) / 2
        c.paint(
            c.rrect(kx0, 300, kx1, 422, 18),
            c.vramp(c.cyl(C("#3c3d44"), kc, 19, amb=0.4, spec=0.25, spec_w=0.2), 300, 422, 1.1, 0.85),
        )


def draw_jar(c: Canvas):
    cx = 224
    glass = C("#f0cdd2")
    rose = C("#d49a86")
    body = c.rect(cx - 90, 214, cx + 90, 348) | c.ellipse(cx, 348, 90, 15)
    c.paint(
        body, c.vramp(c.cyl(glass, cx, 90, amb=0.7, spec=0.45, spec_w=0.08, rim=0.25), 214, 360, 1.02, 0.88)
    )
    c.paint(
        body & (336 + 15 * np.sqrt(np.clip(1 - ((c.X - cx) / 90) ** 2, 0, 1)) - 15 < c.Y),
        C("#e2b4bc"),
        0.7,
        cover=False,
    )
    c.paint(c.text("PETAL & PEARL", cx, 268, 9, 1.0, cv2.FONT_HERSHEY_TRIPLEX), C("#7c4c55"), cover=False)
    c.paint(c.rect(cx - 40, 284, cx + 40, 285.5), C("#b98a7b"), cover=False)
    c.paint(c.text("ROSE NIGHT CREAM", cx, 300, 5, 0.6), C("#7c4c55"), cover=False)
    c.paint(c.text("50 ML", cx, 316, 4.5, 0.55), C("#7c4c55"), 0.8, cover=False)
    # lid
    lid = c.rect(cx - 95, 150, cx + 95, 218) | c.ellipse(cx, 218, 95, 15) | c.ellipse(cx, 150, 95, 16)
    c.paint(lid, c.cyl(rose, cx, 95, amb=0.35, spec=0.85, spec_w=0.09, rim=0.3))
    top = c.ellipse(cx, 150, 95, 16)
    c.paint(top, c.conic(C("#e8b9a6"), cx, 150, 0.8, 1.08, phase=-1.9), cover=False)
    c.paint(c.ring(cx, 150, 95, 16, 2), C("#b07a66"), cover=False)
    for y in (166, 204):
        c.paint(
            lid & (np.abs(c.Y - (y + 15 * np.sqrt(np.clip(1 - ((c.X - cx) / 95) ** 2, 0, 1)))) < 1),
            C("#a8705e"),
            0.6,
            cover=False,
        )


# ----------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------
def scene_studio(colours, kind="solid", shadow=0.0, vig=0.06, horizon=0.7, soft=0.18):
    def make(w, h, alpha, rng):
        if kind == "solid":
            bg = bg_solid(w, h, C(colours[0]))
        elif kind == "gradient":
            bg = bg_vgrad(w, h, C(colours[0]), C(colours[1]))
        else:  # sweep
            bg = bg_sweep(w, h, C(colours[0]), C(colours[1]), horizon * h, soft * h)
        bg = vignette(bg, vig)
        if shadow:
            bg = contact_shadow(bg, alpha, shadow)
        return bg

    return make


def scene_wood_table(w, h, alpha, rng):
    bg = wood(h, w, rng, C("#c79a6b"), C("#7a4e2d"), plank=92)
    bg = vignette(bg, 0.18)
    return drop_shadow(bg, alpha, 0.45, 10, 14, 9)


def scene_tiles(w, h, alpha, rng):
    horizon = 520
    palette = [C("#e9e4d8"), C("#dcd6c6"), C("#8fb5a4"), C("#6f9d8b"), C("#f2efe7"), C("#b9cdbf")]
    wall = tiles(horizon, w, rng, 48, 3, palette, C("#cfc8b8"))
    # warm lamp glow on the wall
    y = np.arange(horizon, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    glow = np.exp(-(((x - 240) / 190) ** 2 + ((y - 300) / 230) ** 2))
    wall = wall * (0.8 + 0.3 * glow[..., None]) * np.array([1.0, 0.97, 0.9], np.float32) ** glow[..., None]
    table = wood(h - horizon, w, rng, C("#a8754a"), C("#5e3a22"), plank=400, tone=0.0)
    table = table * np.linspace(0.95, 0.7, h - horizon, dtype=np.float32)[:, None, None]
    bg = np.concatenate([wall, table], axis=0)
    bg[horizon : horizon + 3] *= 0.6
    bg = vignette(bg, 0.15)
    return contact_shadow(bg, alpha, 0.55, spread=1.25)


def scene_wallpaper(w, h, alpha, rng):
    horizon = 540
    wall = wallpaper(horizon, w, rng, C("#4f7f7a"), C("#d8b45a"), C("#e8d9b0"))
    wall = wall * np.linspace(0.95, 1.05, horizon, dtype=np.float32)[:, None, None]
    floor = wood(h - horizon, w, rng, C("#d2b48c"), C("#9c7650"), plank=24)
    bg = np.concatenate([wall, floor], axis=0)
    bg[horizon - 14 : horizon] = C("#efebe3") * np.linspace(1.0, 0.85, 14, dtype=np.float32)[:, None, None]
    bg[horizon : horizon + 2] *= 0.65
    bg = vignette(bg, 0.2)
    return contact_shadow(bg, alpha, 0.6, spread=1.3)


# ----------------------------------------------------------------------------
# Catalogue definition
# ----------------------------------------------------------------------------
ITEMS = [
    {
        "item_id": "sku-0001",
        "size": (480, 640),
        "draw": draw_perfume,
        "fmt": "jpg",
        "backdrop": "studio white sweep + shadow",
        "scene": scene_studio(["#f7f6f3", "#ecebe7"], "sweep", shadow=0.45, horizon=0.78),
        "title": "Maison Lumière Ambre Nuit Eau de Parfum, 50 ml",
        "description": "A warm amber and vanilla eau de parfum in a weighted glass flacon with a brushed-gold cap.",
        "category": "fragrance",
        "brand": "Maison Lumière",
        "style": "",
        "impressions": 18450,
        "saves": 612,
        "clicks": 934,
    },
    {
        "item_id": "sku-0002",
        "size": (512, 512),
        "draw": draw_mug,
        "fmt": "jpg",
        "backdrop": "light grey solid + shadow",
        "scene": scene_studio(["#e3e3e1"], "solid", shadow=0.5, vig=0.1),
        "title": "Hearthstone Sage Stoneware Mug, 12 oz",
        "description": "Hand-glazed stoneware mug in matte sage with a cream interior and an unglazed clay foot.",
        "category": "kitchen",
        "brand": "Hearthstone Ceramics",
        "style": "",
        "impressions": 9320,
        "saves": 287,
        "clicks": 401,
    },
    {
        "item_id": "sku-0003",
        "size": (640, 427),
        "draw": draw_sneaker,
        "fmt": "jpg",
        "backdrop": "pastel mint solid + shadow",
        "scene": scene_studio(["#cfe8dc"], "solid", shadow=0.5, vig=0.08),
        "title": "Stridewell Aero Runner Men's Running Shoe – Navy",
        "description": "Lightweight knit running shoe with a cushioned foam midsole and a grippy rubber outsole.",
        "category": "footwear",
        "brand": "Stridewell",
        "style": "",
        "impressions": 25610,
        "saves": 1104,
        "clicks": 1873,
    },
    {
        "item_id": "sku-0004",
        "size": (384, 576),
        "draw": draw_lipstick,
        "fmt": "png",
        "backdrop": "transparent (RGBA)",
        "scene": None,
        "title": "Velour & Co. Satin Matte Lipstick – Cherry Crush",
        "description": "A creamy satin-matte lipstick in a deep cherry red, housed in a polished gold bullet case.",
        "category": "beauty",
        "brand": "Velour & Co.",
        "style": "",
        "impressions": 14200,
        "saves": 730,
        "clicks": 655,
    },
    {
        "item_id": "sku-0005",
        "size": (560, 560),
        "draw": draw_watch,
        "fmt": "jpg",
        "backdrop": "busy: wood-grain table",
        "scene": scene_wood_table,
        "title": "Aldermoor Heritage 40 mm Automatic Watch, Brown Leather Strap",
        "description": "A 40 mm stainless-steel automatic watch with a navy sunburst dial and a stitched leather strap.",
        "category": "accessories",
        "brand": "Aldermoor",
        "style": "",
        "impressions": 7860,
        "saves": 398,
        "clicks": 512,
    },
    {
        "item_id": "sku-0006",
        "size": (480, 600),
        "draw": draw_backpack,
        "fmt": "jpg",
        "backdrop": "peach vertical gradient",
        "scene": scene_studio(["#fbeee2", "#efc7a6"], "gradient", shadow=0.4, vig=0.05),
        "title": "Trailnest Daypack 22 L Water-Resistant Backpack – Mustard",
        "description": "A 22-litre everyday backpack in water-resistant canvas with a zip front pocket and compression straps.",
        "category": "bags",
        "brand": "Trailnest",
        "style": "",
        "impressions": 11875,
        "saves": 455,
        "clicks": 702,
    },
    {
        "item_id": "sku-0007",
        "size": (480, 640),
        "draw": draw_lamp,
        "fmt": "jpg",
        "backdrop": "busy: tiled wall + wood table",
        "scene": scene_tiles,
        "title": "Lumo Home Ceramic Table Lamp with Linen Shade",
        "description": "A glossy cobalt ceramic table lamp with brass accents and a natural linen drum shade.",
        "category": "home",
        "brand": "Lumo Home",
        "style": "",
        "impressions": 5390,
        "saves": 341,
        "clicks": 228,
    },
    {
        "item_id": "sku-0008",
        "size": (384, 640),
        "draw": draw_wine,
        "fmt": "jpg",
        "backdrop": "warm beige sweep + shadow",
        "scene": scene_studio(["#f1ece4", "#d8cfc2"], "sweep", shadow=0.5, horizon=0.8, vig=0.12),
        "title": "Château Verlaine Bordeaux Rouge 2019, 750 ml",
        "description": "A structured Merlot–Cabernet blend from Bordeaux with notes of blackcurrant, cedar and plum.",
        "category": "wine",
        "brand": "Château Verlaine",
        "style": "luxury dark",
        "impressions": 4120,
        "saves": 96,
        "clicks": 187,
    },
    {
        "item_id": "sku-0009",
        "size": (480, 600),
        "draw": draw_pouch,
        "fmt": "png",
        "backdrop": "transparent (RGBA)",
        "scene": None,
        "title": "Ridgeline Roasters Ethiopia Yirgacheffe Whole Bean Coffee, 340 g",
        "description": "Light-roast single-origin whole beans with bright citrus and jasmine notes, sealed with a one-way valve.",
        "category": "coffee",
        "brand": "Ridgeline Roasters",
        "style": "",
        "impressions": 0,
        "saves": 0,
        "clicks": 0,
    },
    {
        "item_id": "sku-0010",
        "size": (512, 640),
        "draw": draw_plant,
        "fmt": "jpg",
        "backdrop": "busy: patterned wallpaper + floor",
        "scene": scene_wallpaper,
        "title": "Greenhaus Rubber Plant (Ficus elastica) in Terracotta Pot, 14 cm",
        "description": "An easy-care rubber plant with glossy deep-green leaves, potted in a classic terracotta planter.",
        "category": "garden",
        "brand": "Greenhaus",
        "style": "",
        "impressions": 6730,
        "saves": 519,
        "clicks": 344,
    },
    {
        "item_id": "sku-0011",
        "size": (640, 480),
        "draw": draw_headphones,
        "fmt": "jpg",
        "backdrop": "white solid + soft shadow",
        "scene": scene_studio(["#fbfbfa"], "solid", shadow=0.3, vig=0.04),
        "title": "Sonique Studio Pro Wireless Over-Ear Headphones – Matte Black",
        "description": "Over-ear wireless headphones with active noise cancelling, memory-foam cushions and 40-hour battery life.",
        "category": "electronics",
        "brand": "Sonique",
        "style": "",
        "impressions": 32980,
        "saves": 1420,
        "clicks": 2651,
    },
    {
        "item_id": "sku-0012",
        "size": (448, 448),
        "draw": draw_jar,
        "fmt": "jpg",
        "backdrop": "pastel pink solid + shadow",
        "scene": scene_studio(["#f6d9de"], "solid", shadow=0.45, vig=0.08),
        "title": "Petal & Pearl Rose Hydrating Night Cream, 50 ml",
        "description": "A rich overnight moisturiser with rosehip oil and hyaluronic acid in a frosted glass jar.",
        "category": "beauty",
        "brand": "Petal & Pearl",
        "style": "marble countertop",
        "impressions": 10450,
        "saves": 866,
        "clicks": 590,
    },
]

FIELDS = [
    "item_id",
    "image_uri",
    "title",
    "description",
    "category",
    "brand",
    "style",
    "impressions",
    "saves",
    "clicks",
]


def render(item, seed):
    w, h = item["size"]
    c = Canvas(w, h, seed)
    item["draw"](c)
    prem, alpha = c.resolve()
    mask = np.round(alpha * 255).astype(np.uint8)
    rng = np.random.default_rng(seed + 1000)
    if item["scene"] is None:
        rgb = np.where(alpha[..., None] > 0, prem / np.maximum(alpha[..., None], 1e-6), 0)
        rgba = np.dstack([np.clip(rgb, 0, 1) * 255, alpha * 255])
        img = Image.fromarray(np.round(rgba).astype(np.uint8), "RGBA")
        img.putalpha(Image.fromarray(mask, "L"))
    else:
        bg = item["scene"](w, h, alpha, rng)
        bg = grain(bg, rng, 1.2 / 255)
        out = bg * (1 - alpha[..., None]) + prem
        img = Image.fromarray(np.round(np.clip(out, 0, 1) * 255).astype(np.uint8), "RGB")
    return img, Image.fromarray(mask, "L")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "catalog", help="output catalog directory")
    args = ap.parse_args()
    out: Path = args.out
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, item in enumerate(ITEMS):
        img, mask = render(item, seed=1234 + i)
        name = f"{item['item_id']}.{item['fmt']}"
        if item["fmt"] == "jpg":
            img.save(out / "images" / name, quality=JPEG_QUALITY, optimize=True)
        else:
            img.save(out / "images" / name, optimize=True)
        mask.save(out / "masks" / f"{item['item_id']}.png", optimize=True)
        row = {k: item[k] for k in FIELDS if k in item}
        row["image_uri"] = f"images/{name}"
        rows.append({k: row[k] for k in FIELDS})
        print(f"{item['item_id']}  {img.size[0]}x{img.size[1]}  {img.mode:4s}  {item['backdrop']}")
    with open(out / "catalog.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    with open(out / "catalog.csv", "w", encoding="utf-8", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=FIELDS)
        wr.writeheader()
        wr.writerows(rows)
    print(f"wrote {len(rows)} items to {out}")


if __name__ == "__main__":
    main()
