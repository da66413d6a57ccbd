"""Labelled synthetic rail footage: a procedural track strip seen through a moving camera window.

Geometry. The track is a long procedural image ("strip") with the rail running vertically. Every
length is in track pixels: one pixel is `mm_per_px` mm of rail, along and across the track.

* Track position `p` (continuous, pixels) grows in the direction of travel. A strip pixel with
  integer index `p` has its centre at `p`. Columns are frame columns: column `c` spans [c, c+1).
* The camera looks down with the direction of travel at the top of the image. Frame `i` is the
  window whose middle row (row `H // 2`) is centred on `p = s_i = i * step`, with
  `step = speed_mps / fps / (mm_per_px / 1000)` pixels per frame. Row `r` shows
  `p = s_i + H // 2 - r`: the top row is furthest ahead.
* So the content scrolls DOWN the image: rail features enter at the top edge, move down by `step`
  pixels per frame and leave at the bottom edge.
* The track origin `p = 0` is the middle row of frame 0. Chainage of frame `i` is
  `start_chainage_m + i * speed_mps / fps` (the chainage of the rail under its middle row), and
  the chainage of track position `p` is `start_chainage_m + p * mm_per_px / 1000`.
* An anomaly's `bbox_track` is `[x, y, w, h]` in track pixels: columns [x, x+w) and track
  positions [y, y+h) (`y` is its rear edge, the end that enters the view last). Its
  `chainage_m` is the chainage of its centre `y + h / 2`, which is also the (fractional) frame
  chainage at which its centre sits in the middle row.
* In frame `i` the box occupies edge rows `v` in [s_i + H//2 + 1/2 - y - h, s_i + H//2 + 1/2 - y];
  the YOLO label is that box clipped to the frame. A box counts as visible (gets a label, and
  sets `first_frame`/`last_frame`) when at least `MIN_VISIBLE_PX` of its rows are in the frame.

Anomalies are rendered as local multiplicative/additive patches, and their boxes are the tight
bounds of the pixels each patch visibly changes (by more than ~10 grey levels on a 150 rail; ~6
for dirt; half the peak band contrast for corrugation), so labels describe what is drawn. A rail
joint's box covers the gap and its bevels, not the slight brightness step it leaves ahead. Everything is
a deterministic function of the seed: the strip is built in chunks from hashed lattice noise, so
the first N frames do not depend on how many frames are asked for.

Outputs of `make_footage(out)`:
  track.mp4                       the footage (mp4v, grayscale written as 3-channel BGR)
  frames/images/NNNNNN.png        the same frames, lossless, single-channel
  frames/labels/NNNNNN.txt        YOLO labels `class cx cy w h` (normalised), empty if none
  frames/classes.txt              defect, dirt, gap (class ids 0, 1, 2)
  normal/NNNNNN.png               frames of another stretch with no anomalies, for fitting
  defects.json                    the ground truth, see `make_footage`
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from railedge.logs import get_logger

CLASSES: tuple[str, ...] = ("defect", "dirt", "gap")
KIND_CLASS: dict[str, str] = {
    "squat": "defect",
    "spalling": "defect",
    "crack": "defect",
    "corrugation": "defect",
    "dirt": "dirt",
    "joint": "gap",
}
KINDS: tuple[str, ...] = tuple(KIND_CLASS)
MIN_VISIBLE_PX = 2.0  # rows of a box that must be inside a frame for it to count as visible
MEAN_GAP_FRAMES = 40.0  # mean travel between anomalies, in frames
SLEEPER_SPACING_MM = 600.0
SLEEPER_LENGTH_MM = 260.0

_CHUNK = 2048  # strip rows generated at a time
_NAME = re.compile(r"^\d{6}\.(png|txt)$")
_log = get_logger("railedge.synth")


@dataclass(frozen=True)
class SynthSummary:
    """What `make_footage` wrote. `defects` counts the entries of defects.json (all classes)."""

    out_dir: Path
    frames: int
    defects: int
    fps: float
    speed_mps: float
    mm_per_px: float
    start_chainage_m: float


# --------------------------------------------------------------------------- noise primitives


def _hash01(a: np.ndarray, b: np.ndarray, key: int) -> np.ndarray:
    """Uniform [0, 1) float32 from integer lattice coordinates (broadcast) and a key; no state."""
    h = (np.asarray(a, dtype=np.int64).astype(np.uint32) * np.uint32(0x9E3779B1)) ^ (
        np.asarray(b, dtype=np.int64).astype(np.uint32) * np.uint32(0x85EBCA77)
    )
    h = h ^ np.uint32(key & 0xFFFFFFFF)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x7FEB352D)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x846CA68B)
    h ^= h >> np.uint32(16)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _key(*parts: int) -> int:
    k = 0x2545F491
    for part in parts:
        k = (k * 0x01000193 ^ (int(part) & 0xFFFFFFFF)) & 0xFFFFFFFF
        k ^= k >> 13
    return k


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def _noise1d(p: np.ndarray, spacing: float, key: int) -> np.ndarray:
    """Smooth value noise in [-1, 1] along the track, lattice every `spacing` pixels."""
    q = np.asarray(p, dtype=np.float64) / spacing
    i = np.floor(q)
    t = _smooth((q - i).astype(np.float32))
    a = _hash01(i, 0, key) * 2 - 1
    b = _hash01(i + 1, 0, key) * 2 - 1
    return a + (b - a) * t


def _noise2d(p: np.ndarray, x: np.ndarray, sp: float, sx: float, key: int) -> np.ndarray:
    """Value noise in [-1, 1] on rows p (n,) x columns x (m,), lattice sp x sx pixels."""
    qp = np.asarray(p, dtype=np.float64) / sp
    ip = np.floor(qp)
    tp = _smooth((qp - ip).astype(np.float32))[:, None]
    qx = np.asarray(x, dtype=np.float64) / sx
    ix = np.floor(qx)
    tx = _smooth((qx - ix).astype(np.float32))[None, :]
    ip0, ix0 = int(ip.min()), int(ix.min())
    lat = _hash01(np.arange(ip0, int(ip.max()) + 2)[:, None], np.arange(ix0, int(ix.max()) + 2)[None, :], key) * 2 - 1
    ci = (ix - ix0).astype(np.intp)
    rows = lat[:, ci] + (lat[:, ci + 1] - lat[:, ci]) * tx  # (lattice rows, m)
    ri = (ip - ip0).astype(np.intp)
    return rows[ri] + (rows[ri + 1] - rows[ri]) * tp


def _fine(p: np.ndarray, x: np.ndarray, key: int) -> np.ndarray:
    """Per-pixel white noise in [-1, 1], fixed to the track."""
    return _hash01(np.asarray(p)[:, None], np.asarray(x)[None, :], key) * 2 - 1


def _stones(p: np.ndarray, x: np.ndarray, cell: float, key: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cellular (Worley) noise on a jittered grid: F1, F2 distances, the nearest cell's value, and
    a side-lighting term in [-1, 1] (offset from the nearest feature point, lit from one side)."""
    ip = np.floor(np.asarray(p, dtype=np.float64) / cell).astype(np.int64)
    ix = np.floor(np.asarray(x, dtype=np.float64) / cell).astype(np.int64)
    ip0, ix0 = int(ip.min()) - 1, int(ix.min()) - 1
    lp = np.arange(ip0, int(ip.max()) + 2)[:, None]
    lx = np.arange(ix0, int(ix.max()) + 2)[None, :]
    jp = ((lp + 0.1 + 0.8 * _hash01(lp, lx, key ^ 0x51)) * cell).astype(np.float32).ravel()
    jx = ((lx + 0.1 + 0.8 * _hash01(lp, lx, key ^ 0x52)) * cell).astype(np.float32).ravel()
    val = _hash01(lp, lx, key ^ 0x53).ravel()
    stride = lx.shape[1]
    pf = np.asarray(p, dtype=np.float32)[:, None]
    xf = (np.asarray(x, dtype=np.float32) + 0.5)[None, :]
    base = (ip - ip0)[:, None] * stride + (ix - ix0)[None, :]
    f1 = np.full(base.shape, np.inf, dtype=np.float32)
    f2 = f1.copy()
    v1 = np.zeros_like(f1)
    lit = np.zeros_like(f1)
    for dp in (-1, 0, 1):
        for dx in (-1, 0, 1):
            idx = base + (dp * stride + dx)
            ep = pf - jp.take(idx)
            ex = xf - jx.take(idx)
            d = ep * ep + ex * ex
            closer = d < f1
            v1 = np.where(closer, val.take(idx), v1)
            lit = np.where(closer, 0.8 * ep + 0.6 * ex, lit)
            f2 = np.minimum(f2, np.maximum(f1, d))
            f1 = np.minimum(f1, d)
    return np.sqrt(f1), np.sqrt(f2), v1, np.clip(lit / cell, -1, 1)


# --------------------------------------------------------------------------- the track model


@dataclass(frozen=True)
class _Look:
    """What one rail looks like; shared by the footage stretch and the normal stretch."""

    width: int
    head_half: float  # half width of the rail head, px
    band_off: float  # running band centre relative to the head centre, px
    band_half: float
    head_level: float
    band_gain: float
    lut_u0: float  # LUTs over u = x - rail centre, sampled every 1/_LUT_RES px from lut_u0
    head_lut: np.ndarray  # head brightness profile (band, gauge-corner fall-off, streaks)
    rough_lut: np.ndarray  # texture amplitude across the head (dull parts rougher)
    streak_lut: np.ndarray  # streaks whose strength drifts slowly along the track
    key: int


_LUT_RES = 4


def _make_look(seed: int, width: int) -> _Look:
    rng = np.random.default_rng([seed, 0x100C])
    head_half = width * rng.uniform(0.40, 0.45) / 2
    band_off = rng.uniform(-0.12, 0.12) * head_half
    band_half = rng.uniform(0.45, 0.6) * head_half
    head_level = rng.uniform(138, 152)
    band_gain = rng.uniform(38, 48)
    u0 = -width
    u = np.arange(2 * width * _LUT_RES, dtype=np.float32) / _LUT_RES + u0
    au = np.abs(u)
    # running band: polished, brighter, soft edges
    band = 0.5 - 0.5 * np.tanh((np.abs(u - band_off) - band_half) / 6.0)
    # gauge-corner rounding darkens the last ~12 px of the head
    edge = np.clip((head_half - au) / 12.0, 0, 1)
    rounding = 0.72 + 0.28 * np.sin(edge * np.pi / 2)
    # streaks: a fine random profile across the head, plus a few distinct lines
    n = int(2 * width)
    raw = cv2.GaussianBlur(rng.normal(0, 1, (1, n)).astype(np.float32), (0, 0), 0.8).ravel()
    streak = np.interp(u, np.arange(n) - width, raw * 4.0 / max(float(raw.std()), 1e-6)).astype(np.float32)
    for _ in range(int(rng.integers(4, 9))):
        c = rng.uniform(-head_half * 0.9, head_half * 0.9)
        streak += rng.choice([-1, 1]) * rng.uniform(4, 9) * np.exp(-(((u - c) / rng.uniform(0.6, 2.0)) ** 2))
    slow = np.zeros_like(u)
    for _ in range(int(rng.integers(3, 6))):
        c = rng.uniform(-head_half * 0.9, head_half * 0.9)
        slow += rng.choice([-1, 1]) * rng.uniform(4, 8) * np.exp(-(((u - c) / rng.uniform(1.0, 3.0)) ** 2))
    head = (head_level + band_gain * band + streak * (0.6 + 0.4 * band)) * rounding
    rough = 7.0 - 4.0 * band
    return _Look(
        width=width,
        head_half=float(head_half),
        band_off=float(band_off),
        band_half=float(band_half),
        head_level=float(head_level),
        band_gain=float(band_gain),
        lut_u0=float(u0),
        head_lut=head.astype(np.float32),
        rough_lut=rough.astype(np.float32),
        streak_lut=slow.astype(np.float32),
        key=_key(seed, 0x100C),
    )


def _lut(lut: np.ndarray, u: np.ndarray, u0: float) -> np.ndarray:
    idx = np.clip(((u - u0) * _LUT_RES).astype(np.intp), 0, lut.size - 1)
    return lut[idx]


@dataclass
class _Anomaly:
    kind: str
    row0: int  # track position of the patch's first row
    col0: int
    mul: np.ndarray  # (rows, cols): pixel = pixel * mul + add
    add: np.ndarray
    bbox: tuple[float, float, float, float]  # x, y, w, h in track pixels
    step: float = 0.0  # joints: relative brightness step of the rail ahead of the gap
    step_decay: float = 1.0

    @property
    def p_lo(self) -> float:
        return self.bbox[1]

    @property
    def p_hi(self) -> float:
        return self.bbox[1] + self.bbox[3]

    @property
    def centre_p(self) -> float:
        return self.bbox[1] + self.bbox[3] / 2


class _Stretch:
    """One stretch of rail: background, rail head, and the anomalies placed on it."""

    def __init__(self, look: _Look, seed: int, stretch: int, mm_per_px: float) -> None:
        self.look = look
        self.key = _key(seed, stretch, look.key)
        self.mm_per_px = mm_per_px
        rng = np.random.default_rng([seed, stretch, 0xD21F7])
        self.drift_amp = rng.uniform(2.0, 4.0, 2)
        self.drift_period = rng.uniform(2500, 9000, 2)
        self.drift_phase = rng.uniform(0, 2 * np.pi, 2)
        self.anomalies: list[_Anomaly] = []
        self._x = np.arange(look.width)

    def centre(self, p: np.ndarray | float) -> np.ndarray:
        """Rail-head centre column (continuous) at track position p: a slow lateral drift."""
        p = np.asarray(p, dtype=np.float64)
        c = self.look.width / 2 + np.zeros_like(p)
        for a, t, ph in zip(self.drift_amp, self.drift_period, self.drift_phase):
            c = c + a * np.sin(2 * np.pi * p / t + ph)
        return c

    def rows(self, p0: int, n: int) -> np.ndarray:
        """Strip rows for track positions p0 .. p0+n-1, float32 (n, width), with every anomaly
        patch that overlaps them applied. A pure function of p: chunking does not change it."""
        lk, k = self.look, self.key
        p = np.arange(p0, p0 + n, dtype=np.int64)
        x = self._x
        mm = self.mm_per_px
        c = self.centre(p).astype(np.float32)
        u = (x[None, :] + np.float32(0.5)) - c[:, None]
        au = np.abs(u)
        hh = lk.head_half

        # sleepers: concrete bands across the track every ~600 mm, hidden under the rail
        spacing = SLEEPER_SPACING_MM / mm
        kk = np.round(p / spacing)
        pc = kk * spacing + (_hash01(kk, 7, k ^ 0x14) - 0.5) * (40.0 / mm)
        dist = np.abs(p - pc)
        half = SLEEPER_LENGTH_MM / mm / 2
        sl1 = np.clip((half - dist) / 3.0, 0, 1).astype(np.float32)
        sl = sl1[:, None]
        # ballast: angular stones (cellular noise), dark crevices, surface texture and grain; the
        # stones only where neither sleeper nor rail covers them everywhere in these rows
        foot_w = 0.075 * lk.width
        cell = max(34.0 / mm, 4.0)
        n2 = _noise2d(p, x, 3.5, 3.5, k ^ 0x12)
        grain = _fine(p, x, k ^ 0x13)
        bg = np.zeros((n, lk.width), dtype=np.float32)
        xc = x + 0.5
        open_cols = np.nonzero((xc < c.max() - hh - foot_w + 1) | (xc > c.min() + hh + foot_w - 1))[0]
        open_rows = np.nonzero(sl1 < 1)[0]
        if open_cols.size and open_rows.size:
            f1, f2, v, lit = _stones(p[open_rows], x[open_cols], cell, k ^ 0x11)
            edge = np.clip((f2 - f1) / 4.0, 0, 1)
            bg[np.ix_(open_rows, open_cols)] = (35 + 65 * v) * (1 + 0.35 * lit) * (0.3 + 0.7 * np.sqrt(edge))
        bg += 8 * n2 + 4 * grain
        sleeper = 102 + 10 * _noise2d(p, x, 25.0, 25.0, k ^ 0x15) + 5 * n2 + 3 * grain
        sleeper -= 18 * np.clip(1 - (half - dist) / 8.0, 0, 1).astype(np.float32)[:, None]
        bg = bg + (sleeper - bg) * sl
        # rail foot on both sides of the head, with the web's shadow next to the head
        foot = 78 + 8 * _noise2d(p, x, 40.0, 2.0, k ^ 0x16) + 4 * grain
        clip = np.clip(((40.0 / mm) - dist) / 3.0, 0, 1).astype(np.float32)[:, None]
        foot = foot + (122 + 6 * n2 - foot) * clip * (np.abs(au - hh - foot_w * 0.55) < foot_w * 0.35)
        fm = np.clip(hh + foot_w - au, 0, 1)
        img = bg + (foot - bg) * fm
        shadow = np.exp(-np.maximum(au - hh, 0) / 2.5) * (au > hh)
        img = img * (1 - 0.55 * shadow)

        # rail head: LUT profile, slow streaks, longitudinal micro texture, grain
        head = _lut(lk.head_lut, u, lk.lut_u0)
        head += _lut(lk.streak_lut, u, lk.lut_u0) * (0.7 + 0.5 * _noise1d(p, 700.0, k ^ 0x21))[:, None]
        rough = _lut(lk.rough_lut, u, lk.lut_u0)
        micro = _noise2d(p, x, 14.0, 1.0, k ^ 0x22) * 0.8 + _noise2d(p, x, 3.0, 2.0, k ^ 0x23) * 0.5
        head += rough * micro + 2.5 * grain
        gain = 1 + 0.05 * _noise1d(p, 1600.0, k ^ 0x24) + 0.02 * _noise1d(p, 260.0, k ^ 0x25)
        for a in self.anomalies:
            if a.step and p0 - 8 * a.step_decay < a.centre_p < p0 + n:
                d = np.maximum(p - a.centre_p, 0)
                gain = gain + np.where(p > a.centre_p, a.step * np.exp(-d / a.step_decay), 0)
        head *= gain.astype(np.float32)[:, None]
        hm = np.clip(hh + 0.5 - au, 0, 1)
        img = img + (head - img) * hm

        for a in self.anomalies:
            r0, r1 = max(a.row0, p0), min(a.row0 + a.mul.shape[0], p0 + n)
            if r0 >= r1:
                continue
            c0, c1 = max(a.col0, 0), min(a.col0 + a.mul.shape[1], lk.width)
            if c0 >= c1:
                continue
            sub = img[r0 - p0 : r1 - p0, c0:c1]
            m = a.mul[r0 - a.row0 : r1 - a.row0, c0 - a.col0 : c1 - a.col0]
            ad = a.add[r0 - a.row0 : r1 - a.row0, c0 - a.col0 : c1 - a.col0]
            img[r0 - p0 : r1 - p0, c0:c1] = sub * m + ad
        return img.astype(np.float32)


class _StripReader:
    """Serves strip rows by track position, generating chunks on demand (bounded memory)."""

    def __init__(self, stretch: _Stretch) -> None:
        self.stretch = stretch
        self._cache: dict[int, np.ndarray] = {}

    def _chunk(self, k: int) -> np.ndarray:
        if k not in self._cache:
            if len(self._cache) >= 3:
                del self._cache[min(self._cache)]
            self._cache[k] = self.stretch.rows(k * _CHUNK, _CHUNK)
        return self._cache[k]

    def get(self, p0: int, n: int) -> np.ndarray:
        k0, k1 = p0 // _CHUNK, (p0 + n - 1) // _CHUNK
        parts = [self._chunk(k) for k in range(k0, k1 + 1)]
        block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        off = p0 - k0 * _CHUNK
        return block[off : off + n]


# --------------------------------------------------------------------------- anomalies


def _radial_blob(yy: np.ndarray, xx: np.ndarray, ry: float, rx: float, rng: np.random.Generator, rough: float) -> np.ndarray:
    """Normalised radius of an irregular blob: < 1 inside."""
    th = np.arctan2(yy / ry, xx / rx)
    r = np.ones_like(th)
    for order in range(2, 6):
        r += rough * rng.uniform(-1, 1) / order * np.cos(order * th + rng.uniform(0, 2 * np.pi))
    return np.sqrt((yy / ry) ** 2 + (xx / rx) ** 2) / np.maximum(r, 0.4)


def _mottle(shape: tuple[int, int], rng: np.random.Generator, scale: float) -> np.ndarray:
    small = rng.normal(0, 1, (max(2, int(shape[0] / scale) + 2), max(2, int(shape[1] / scale) + 2))).astype(np.float32)
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _pit(yy, xx, ry, rx, rng, depth, rim) -> tuple[np.ndarray, np.ndarray]:
    rho = _radial_blob(yy, xx, ry, rx, rng, 0.55)
    inside = np.clip((1.0 - rho) / 0.25, 0, 1)
    mul = 1 - depth * _smooth(inside)
    ring = np.exp(-(((rho - 1.05) / 0.14) ** 2))
    return mul, rim * ring


def _render(kind: str, st: _Stretch, p_c: float, rng: np.random.Generator) -> _Anomaly:
    """Build an anomaly centred (roughly) at track position p_c on stretch st."""
    lk = st.look
    hh = lk.head_half
    cx = float(st.centre(p_c))
    step, decay = 0.0, 1.0
    if kind in ("squat", "spalling"):
        size = rng.uniform(15, 40)
        xc = cx + lk.band_off + rng.uniform(-0.45, 0.45) * lk.band_half
        half = int(size * 0.9) + 6
    elif kind == "crack":
        length = rng.uniform(0.4, 0.8) * 2 * hh
        oblique = rng.random() < 0.5
        ang = np.deg2rad(rng.uniform(22, 40) if oblique else rng.uniform(-10, 10)) * rng.choice([-1, 1])
        half = int(abs(np.sin(ang)) * length / 2 + 0.3 * length + 10)  # room for the wobble
    elif kind == "corrugation":
        half = int(rng.uniform(90, 180))
    elif kind == "dirt":
        size = rng.uniform(30, 80)
        half = int(size) + 4
    else:  # joint
        half = 16
    row0 = int(np.floor(p_c)) - half
    rows = 2 * half + 1
    yy_rows = np.arange(row0, row0 + rows, dtype=np.float64)
    col0 = 0
    cols = lk.width
    xx_cols = np.arange(cols) + 0.5
    uu = xx_cols[None, :] - st.centre(yy_rows)[:, None]  # across-head coordinate per patch pixel
    head = np.clip(hh + 0.5 - np.abs(uu), 0, 1)
    yy = (yy_rows - p_c)[:, None] * np.ones((1, cols))
    mul = np.ones((rows, cols), dtype=np.float64)
    add = np.zeros((rows, cols), dtype=np.float64)

    if kind == "squat":
        xx = xx_cols[None, :] - xc
        ry, rx = size / 2, size / 2 * rng.uniform(0.55, 0.85)
        m1, a1 = _pit(yy, xx, ry, rx, rng, rng.uniform(0.5, 0.62), rng.uniform(0.14, 0.2))
        # the typical second, smaller lobe of a squat (kidney / V shape)
        oy, ox = rng.uniform(-0.5, 0.5) * ry, rng.choice([-1, 1]) * rng.uniform(0.5, 0.8) * rx
        m2, a2 = _pit(yy - oy, xx - ox, ry * 0.6, rx * 0.6, rng, rng.uniform(0.35, 0.5), 0.1)
        dark = np.minimum(m1, m2)
        mot = _mottle((rows, cols), rng, 3.0)
        mul = dark * (1 + 0.06 * mot * np.clip((1 - dark) / 0.2, 0, 1)) + np.maximum(a1, a2) * np.clip((dark - 0.7) / 0.3, 0, 1)
    elif kind == "spalling":
        area = size / 2
        mul = np.ones_like(mul)
        for _ in range(int(rng.integers(2, 6))):
            oy, ox = rng.uniform(-0.75, 0.75, 2) * area
            r = rng.uniform(3.0, 7.0)
            m, a = _pit(yy - oy, xx_cols[None, :] - xc - ox, r * rng.uniform(0.8, 1.4), r, rng, rng.uniform(0.5, 0.65), rng.uniform(0.15, 0.22))
            mul = np.minimum(mul, m) + a * np.clip((m - 0.7) / 0.3, 0, 1)
        haze = np.exp(-((yy / area) ** 2 + ((xx_cols[None, :] - xc) / area) ** 2) * 1.5)
        mul = mul * (1 - 0.12 * haze)
    elif kind == "crack":
        # a jagged random walk from the gauge or field side across part of the head, tapering at
        # its ends, drawn 4x supersampled and averaged down for sub-pixel widths
        sup = 4
        canvas = np.zeros((rows * sup, cols * sup), dtype=np.uint8)
        side = float(rng.choice([-1, 1]))
        seg = 3.0
        nseg = max(int(length / seg), 4)
        dx, dy = -side * np.cos(ang), np.sin(ang)
        x, y = cx + side * (hh - rng.uniform(1, 8)), half + 0.5 - dy * length / 2
        wob = 0.0
        thick = rng.uniform(1.0, 1.7)
        pts = [(x, y)]
        for j in range(nseg):
            wob = 0.6 * wob + rng.normal(0, 0.25)
            x += seg * (dx - dy * wob)
            y += seg * (dy + dx * wob)
            pts.append((x, y))
        for j in range(nseg):
            t = (j + 0.5) / nseg
            w = thick * min(1.0, 0.35 + 2.5 * min(t, 1 - t))
            (x0, y0), (x1, y1) = pts[j], pts[j + 1]
            p0 = (int(round(x0 * sup)), int(round(y0 * sup)))
            p1 = (int(round(x1 * sup)), int(round(y1 * sup)))
            cv2.line(canvas, p0, p1, 255, max(1, int(round(w * sup))), cv2.LINE_AA)
        if rng.random() < 0.5:  # a short branch
            j = int(rng.integers(nseg // 4, 3 * nseg // 4))
            bx, by = pts[j]
            ba = ang + rng.uniform(0.5, 1.0) * rng.choice([-1, 1])
            bdx, bdy = -side * np.cos(ba), np.sin(ba)
            for _ in range(int(rng.uniform(0.1, 0.25) * nseg)):
                nx, ny = bx + seg * bdx + rng.normal(0, 0.6), by + seg * bdy + rng.normal(0, 0.6)
                cv2.line(canvas, (int(bx * sup), int(by * sup)), (int(nx * sup), int(ny * sup)), 255, max(1, int(0.8 * sup)), cv2.LINE_AA)
                bx, by = nx, ny
        cov = cv2.resize(canvas.astype(np.float32) / 255, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float64)
        halo = cv2.GaussianBlur(cov, (0, 0), 1.5)
        mul = 1 - rng.uniform(0.45, 0.6) * np.clip(cov * 1.4, 0, 1) - 0.12 * np.clip(halo * 1.5, 0, 1)
        mul = 1 - (1 - mul) * head
    elif kind == "corrugation":
        lam = rng.uniform(24, 48)
        amp = rng.uniform(0.1, 0.15)
        tilt = np.tan(np.deg2rad(rng.uniform(-3, 3)))
        t = np.clip((yy + half) / (2 * half), 0, 1)
        env = np.clip(np.minimum(t, 1 - t) / 0.15, 0, 1)
        env = _smooth(env)
        phase = 2 * np.pi * (yy + tilt * uu) / lam + rng.uniform(0, 2 * np.pi)
        colw = 0.5 - 0.5 * np.tanh((np.abs(uu - lk.band_off) - lk.band_half * 1.2) / 6.0)
        wave = np.sin(phase) + 0.25 * np.sin(2 * phase + 1.0)
        mul = 1 + amp * env * colw * wave * head
    elif kind == "dirt":
        xc = cx + rng.uniform(-0.5, 0.5) * hh
        ry, rx = size / 2, size / 2 * rng.uniform(0.6, 1.4)
        rho2 = (yy / ry) ** 2 + ((xx_cols[None, :] - xc) / rx) ** 2
        blob = np.exp(-rho2 * 1.4) * np.clip(1 + 0.45 * _mottle((rows, cols), rng, 6.0), 0, 2)
        depth = rng.uniform(0.08, 0.13) * (1 if rng.random() < 0.8 else -0.8)
        mul = 1 - depth * blob * head
    else:  # joint
        gap = rng.uniform(4, 9)
        g = np.clip(gap / 2 + 0.5 - np.abs(yy), 0, 1)
        bevel = np.clip(gap / 2 + 3.5 - np.abs(yy), 0, 1) - g
        side = np.sign(yy)
        mul = 1 - (1 - rng.uniform(0.14, 0.24)) * g * head
        mul = mul * (1 + 0.12 * bevel * side * head)
        step = float(rng.uniform(0.05, 0.09) * rng.choice([-1, 1]))
        decay = float(rng.uniform(500, 1500))

    mul = mul.astype(np.float32)
    add = add.astype(np.float32)
    level = 150.0
    change = np.abs(mul - 1) * level + np.abs(add)
    thresh = 6.0 if kind == "dirt" else 10.0
    if kind == "corrugation":
        thresh = 0.5 * amp * level
    mask = change > thresh
    if not mask.any():
        mask = change >= change.max()
    ys, xs = np.nonzero(mask)
    bbox = (
        float(col0 + xs.min()),
        float(row0 + ys.min() - 0.5),
        float(xs.max() - xs.min() + 1),
        float(ys.max() - ys.min() + 1),
    )
    # the patch keeps every pixel it changes at all (no seams); the box only the visible part
    ys, xs = np.nonzero(change > 0.25)
    r_lo, r_hi = int(ys.min()), int(ys.max()) + 1
    c_lo, c_hi = int(xs.min()), int(xs.max()) + 1
    return _Anomaly(
        kind=kind,
        row0=row0 + int(r_lo),
        col0=col0 + int(c_lo),
        mul=np.ascontiguousarray(mul[r_lo:r_hi, c_lo:c_hi]),
        add=np.ascontiguousarray(add[r_lo:r_hi, c_lo:c_hi]),
        bbox=bbox,
        step=step,
        step_decay=decay,
    )


def _place(st: _Stretch, seed: int, p_end: float, height: int, step_px: float) -> None:
    """Anomalies at seeded, randomly spaced places up to track position p_end."""
    rng = np.random.default_rng([seed, 0xA40])
    mean_gap = MEAN_GAP_FRAMES * max(step_px, 1e-6)
    order: list[str] = []
    p = float(height // 2) + 40.0 + rng.uniform(0.2, 0.6) * mean_gap
    prev_hi = -np.inf
    i = 0
    while True:
        if not order:
            order = [KINDS[j] for j in rng.permutation(len(KINDS))]
        kind = order.pop(0)
        gap = rng.uniform(0.5, 1.5) * mean_gap
        a = _render(kind, st, 0.0, np.random.default_rng([seed, 0xA41, i]))
        lo = a.p_lo  # rear edge of the box relative to a centre at 0
        if i > 0:
            p = max(p + gap, prev_hi + 0.6 * height - lo)
        if p + a.row0 - 1 > p_end:  # not even its faintest pixel can reach the last frame
            break
        st.anomalies.append(_render(kind, st, p, np.random.default_rng([seed, 0xA41, i])))
        prev_hi = st.anomalies[-1].p_hi
        i += 1


# --------------------------------------------------------------------------- frames


def _frames(st: _Stretch, n: int, height: int, step_px: float, noise_key: list[int]):
    """Yield (index, uint8 frame) for frames 0..n-1 of a stretch."""
    reader = _StripReader(st)
    w = st.look.width
    xs = (np.arange(w) + 0.5 - w / 2) / (w / 2)
    vignette = (1 - 0.1 * xs**2).astype(np.float32)[None, :]
    rng = np.random.default_rng(noise_key)
    below = height - 1 - height // 2
    for i in range(n):
        p_b = i * step_px - below
        a = int(np.floor(p_b))
        f = np.float32(p_b - a)
        block = reader.get(a, height + 1)
        rows = block[:height] if f == 0 else block[:height] * (1 - f) + block[1:] * f
        img = rows[::-1] * vignette * np.float32(1 + 0.01 * rng.standard_normal())
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(1.8)
        yield i, np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _frame_box(a: _Anomaly, i: int, step_px: float, width: int, height: int) -> tuple[float, float, float, float] | None:
    """Box (x0, y0, x1, y1) in frame edge coordinates, clipped, or None when not visible."""
    x, y, w, h = a.bbox
    top = i * step_px + height // 2 + 0.5 - y - h
    v0, v1 = max(top, 0.0), min(top + h, float(height))
    if v1 - v0 < min(MIN_VISIBLE_PX, h):
        return None
    x0, x1 = max(x, 0.0), min(x + w, float(width))
    if x1 <= x0:
        return None
    return x0, v0, x1, v1


def _clear(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.is_file() and _NAME.match(f.name):
            f.unlink()


def make_footage(
    out: Path,
    frames: int = 300,
    seed: int = 0,
    *,
    normal_frames: int = 120,
    width: int = 384,
    height: int = 288,
    fps: float = 25.0,
    speed_mps: float = 2.0,
    start_chainage_m: float = 1000.0,
    mm_per_px: float = 1.0,
) -> SynthSummary:
    """Write labelled synthetic footage under `out` (see the module docstring for the geometry).

    defects.json holds `fps`, `speed_mps`, `mm_per_px`, `start_chainage_m`, `frame_size` [w, h],
    `step_px` (track pixels per frame), `seed`, `frames`, `normal_frames`, `classes`, and
    `defects`: one entry per anomaly visible in at least one frame, in track order, with `id`,
    `kind` (squat|spalling|crack|corrugation|dirt|joint), `class` (defect|dirt|gap),
    `first_frame`, `last_frame`, `chainage_m` and `bbox_track` [x, y, w, h]."""
    if frames < 1 or normal_frames < 0:
        raise ValueError(f"frames must be >= 1 and normal_frames >= 0, got {frames}, {normal_frames}")
    if width < 64 or height < 64:
        raise ValueError(f"frame size must be at least 64x64, got {width}x{height}")
    if fps <= 0 or speed_mps <= 0 or mm_per_px <= 0:
        raise ValueError(f"fps, speed_mps and mm_per_px must be > 0, got {fps}, {speed_mps}, {mm_per_px}")
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    step_px = speed_mps / fps / (mm_per_px / 1000.0)
    look = _make_look(seed, width)

    track = _Stretch(look, seed, 1, mm_per_px)
    p_end = (frames - 1) * step_px + height // 2 + 1
    _place(track, seed, p_end, height, step_px)

    images, labels = out / "frames" / "images", out / "frames" / "labels"
    _clear(images)
    _clear(labels)
    (out / "frames" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    video_path = out / "track.mp4"
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter.fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cannot open a video writer for {video_path} (mp4v)")
    seen: dict[int, list[int]] = {}
    try:
        for i, img in _frames(track, frames, height, step_px, [seed, 1, 0x5E75]):
            lines = []
            for k, a in enumerate(track.anomalies):
                box = _frame_box(a, i, step_px, width, height)
                if box is None:
                    continue
                x0, y0, x1, y1 = box
                cls = CLASSES.index(KIND_CLASS[a.kind])
                lines.append(
                    f"{cls} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
                    f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}"
                )
                seen.setdefault(k, [i, i])[1] = i
            name = f"{i:06d}"
            cv2.imwrite(str(images / f"{name}.png"), img)
            (labels / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
            writer.write(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    finally:
        writer.release()

    normal_dir = out / "normal"
    _clear(normal_dir)
    normal = _Stretch(look, seed, 2, mm_per_px)
    for i, img in _frames(normal, normal_frames, height, step_px, [seed, 2, 0x5E75]):
        cv2.imwrite(str(normal_dir / f"{i:06d}.png"), img)

    entries = []
    for k in sorted(seen):
        a = track.anomalies[k]
        entries.append(
            {
                "id": len(entries),
                "kind": a.kind,
                "class": KIND_CLASS[a.kind],
                "first_frame": seen[k][0],
                "last_frame": seen[k][1],
                "chainage_m": round(start_chainage_m + a.centre_p * mm_per_px / 1000.0, 4),
                "bbox_track": [round(v, 2) for v in a.bbox],
            }
        )
    meta = {
        "fps": fps,
        "speed_mps": speed_mps,
        "mm_per_px": mm_per_px,
        "start_chainage_m": start_chainage_m,
        "frame_size": [width, height],
        "step_px": step_px,
        "seed": seed,
        "frames": frames,
        "normal_frames": normal_frames,
        "classes": list(CLASSES),
        "defects": entries,
    }
    (out / "defects.json").write_text(json.dumps(meta, indent=2) + "\n")
    _log.info(
        "synth.done",
        out=str(out),
        frames=frames,
        normal_frames=normal_frames,
        anomalies=len(entries),
        step_px=round(step_px, 3),
        seconds=round(time.perf_counter() - t0, 2),
    )
    return SynthSummary(
        out_dir=out,
        frames=frames,
        defects=len(entries),
        fps=fps,
        speed_mps=speed_mps,
        mm_per_px=mm_per_px,
        start_chainage_m=start_chainage_m,
    )
