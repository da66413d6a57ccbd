"""Synthetic rail-surface anomalies pasted into normal crops (DRAEM / CutPaste style), for training
without real defects.

Works on preprocessed crops (float32, normal rail near the preprocess level, 0.5). Each anomaly is
shaped by a Perlin-noise mask (irregular edges, as DRAEM) and drawn like a rail defect:

* squat      a dark, roughly elliptical depression wider across the rail than along it, with a
             bright rim on one side (light falling into it)
* crack      thin dark lines, mostly across the rail or oblique, sometimes branched
* spalling   an irregular patch where the surface flaked off: rough texture, darker or brighter
* texture    the Perlin region filled with foreign texture (noise at another scale) blended in
* brightness a Perlin region made darker or brighter (stains, burns, wheel burns)

`paste(x, rng)` returns the changed crop and a float mask in [0, 1] of the pixels it changed.
Everything is a function of the numpy Generator: the same seed gives the same anomalies."""

from __future__ import annotations

import cv2
import numpy as np

KINDS: tuple[str, ...] = ("squat", "crack", "spalling", "texture", "brightness")


def perlin(shape: tuple[int, int], cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise of `shape` with `cells` lattice cells per axis, about [-1, 1]."""
    h, w = shape
    ch, cw = max(1, cells[0]), max(1, cells[1])
    ang = rng.uniform(0, 2 * np.pi, (ch + 1, cw + 1))
    gy, gx = np.sin(ang), np.cos(ang)
    y = np.linspace(0, ch, h, endpoint=False)
    x = np.linspace(0, cw, w, endpoint=False)
    yi, xi = np.floor(y).astype(int), np.floor(x).astype(int)
    yf, xf = (y - yi)[:, None], (x - xi)[None, :]

    def dot(dy: int, dx: int) -> np.ndarray:
        return gy[yi[:, None] + dy, xi[None, :] + dx] * (yf - dy) + gx[yi[:, None] + dy, xi[None, :] + dx] * (xf - dx)

    fade = lambda t: t * t * t * (t * (t * 6 - 15) + 10)  # noqa: E731
    u, v = fade(yf), fade(xf)
    n0 = dot(0, 0) * (1 - v) + dot(0, 1) * v
    n1 = dot(1, 0) * (1 - v) + dot(1, 1) * v
    return ((n0 * (1 - u) + n1 * u) * np.sqrt(2)).astype(np.float32)


def _blob(h: int, w: int, cy: float, cx: float, ry: float, rx: float, rng: np.random.Generator, rough: float = 0.5) -> np.ndarray:
    """Soft mask of an ellipse whose edge is perturbed by Perlin noise, values in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((yy - cy) / max(ry, 1.0)) ** 2 + ((xx - cx) / max(rx, 1.0)) ** 2)
    n = perlin((h, w), (max(2, h // 12), max(2, w // 12)), rng)
    return np.clip((1.0 + rough * n - r) * 3.0, 0.0, 1.0)


def _centre(h: int, w: int, rng: np.random.Generator) -> tuple[float, float]:
    # on the rail head: the band is located with a margin, so keep to the middle 70% of the width
    return float(rng.uniform(0.08 * h, 0.92 * h)), float(rng.uniform(0.15 * w, 0.85 * w))


def squat(x: np.ndarray, rng: np.random.Generator, level: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = x.shape
    cy, cx = _centre(h, w, rng)
    rx = rng.uniform(0.05, 0.25) * w
    ry = rx * rng.uniform(0.3, 0.9)
    m = _blob(h, w, cy, cx, ry, rx, rng, rough=0.4)
    depth = rng.uniform(0.35, 0.8)
    core = m ** 1.5
    out = x * (1 - depth * core)
    rim = np.clip(cv2.GaussianBlur(m, (0, 0), 1.5) - m, 0, 1)
    shift = int(rng.choice([-2, 2]))
    out = out + level * rng.uniform(0.5, 1.5) * np.roll(rim, shift, axis=0)
    return out, np.clip(m + rim * 2, 0, 1)


def crack(x: np.ndarray, rng: np.random.Generator, level: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = x.shape
    canvas = np.zeros((h, w), np.float32)
    cy, cx = _centre(h, w, rng)
    for _branch in range(int(rng.integers(1, 4))):
        ang = rng.normal(0, 0.5) + (0 if rng.random() < 0.75 else np.pi / 2)  # mostly across the rail
        length = rng.uniform(0.15, 0.6) * w
        pts = [(cx, cy)]
        for _ in range(int(rng.integers(4, 10))):
            ang += rng.normal(0, 0.3)
            step = length / 6
            pts.append((pts[-1][0] + step * np.cos(ang), pts[-1][1] + step * np.sin(ang)))
        poly = np.array(pts, np.float32).round().astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [poly], False, 1.0, thickness=int(rng.integers(1, 3)), lineType=cv2.LINE_AA)
        cx, cy = pts[int(rng.integers(1, len(pts)))]
    m = np.clip(cv2.GaussianBlur(canvas, (0, 0), 0.6) * 1.5, 0, 1)
    depth = rng.uniform(0.4, 0.85)
    return x * (1 - depth * m), m


def spalling(x: np.ndarray, rng: np.random.Generator, level: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = x.shape
    cy, cx = _centre(h, w, rng)
    rx = rng.uniform(0.08, 0.3) * w
    ry = rx * rng.uniform(0.5, 1.5)
    m = _blob(h, w, cy, cx, ry, rx, rng, rough=0.9)
    tex = perlin((h, w), (max(2, h // 3), max(2, w // 3)), rng)
    tone = rng.uniform(0.35, 0.75) if rng.random() < 0.7 else rng.uniform(1.3, 1.8)
    patch = level * tone * (1 + 0.5 * tex)
    return x * (1 - m) + patch * m, m


def texture(x: np.ndarray, rng: np.random.Generator, level: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = x.shape
    cy, cx = _centre(h, w, rng)
    rx = rng.uniform(0.08, 0.3) * w
    ry = rx * rng.uniform(0.4, 2.0)
    m = _blob(h, w, cy, cx, ry, rx, rng, rough=1.0)
    s = int(rng.integers(2, 16))
    tex = perlin((h, w), (max(2, h // s), max(2, w // s)), rng)
    foreign = level * (rng.uniform(0.6, 1.4) + rng.uniform(0.3, 0.8) * tex)
    beta = rng.uniform(0.3, 1.0)
    mm = m * beta
    return x * (1 - mm) + foreign * mm, m


def brightness(x: np.ndarray, rng: np.random.Generator, level: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = x.shape
    n = perlin((h, w), (max(2, h // 24), max(2, w // 24)), rng)
    cy, cx = _centre(h, w, rng)
    rx = rng.uniform(0.1, 0.35) * w
    win = _blob(h, w, cy, cx, rx * rng.uniform(0.5, 2.0), rx, rng, rough=0.3)
    m = np.clip((n - rng.uniform(-0.1, 0.3)) * 4, 0, 1) * win
    gain = rng.uniform(0.35, 0.65) if rng.random() < 0.6 else rng.uniform(1.5, 2.2)
    return x * (1 + (gain - 1) * m), m


_DRAW = {"squat": squat, "crack": crack, "spalling": spalling, "texture": texture, "brightness": brightness}


def paste(x: np.ndarray, rng: np.random.Generator, kinds: tuple[str, ...] = KINDS, level: float = 0.5,
          clip: float = 3.0, visible: float = 0.06) -> tuple[np.ndarray, np.ndarray, str]:
    """One synthetic anomaly in crop `x` (H, W) float32. Returns (new crop, mask (H, W) float32 of
    the pixels that visibly changed (by more than `visible` of the level), kind)."""
    kind = str(kinds[int(rng.integers(len(kinds)))])
    out, m = _DRAW[kind](x.astype(np.float32), rng, level)
    out = np.clip(out, 0.0, clip).astype(np.float32)
    changed = (np.abs(out - x) > visible * level).astype(np.float32)
    mask = np.where(m > 0.2, changed, 0.0).astype(np.float32)
    mask = cv2.dilate(mask, np.ones((3, 3), np.uint8))
    return out, mask, kind
