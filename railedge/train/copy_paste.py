"""Copy-paste augmentation for labelled training (Ghiasi et al., "Simple Copy-Paste is a Strong Data
Augmentation Method", 2021), adapted to rail crops: labelled instances (defects, dirt, joints) are
cut from the training frames with a small margin of their own rail and blended, with feathered
edges and the brightness of the place they land, into other training tiles. A small data set gets
more positions and neighbourhoods for each labelled instance, and dirt and joints are pasted as
often as defects, so the head keeps learning to tell them apart.

numpy and cv2 only; every draw comes from the caller's generator (tiles stay reproducible)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from railedge.train.data import IGNORE, LabelledFrame

MARGIN = 3  # input pixels of surrounding rail cut with each instance (the feathered edge)


@dataclass(frozen=True)
class Instance:
    """One labelled region cut from a training frame: pixels, class map and blend weight, same shape."""

    x: np.ndarray  # (h, w) float32 preprocessed pixels
    lm: np.ndarray  # (h, w) uint8 class map (0 around the instance)
    alpha: np.ndarray  # (h, w) float32 in [0, 1]: 1 on the instance, falling to 0 over the margin
    cls: int  # class value (1-based) of the instance
    frame: int  # index of the frame it came from


def cut_instances(frames: list[LabelledFrame], min_pixels: int = 4) -> list[Instance]:
    """Every connected labelled region of every frame's class map, with MARGIN pixels around it."""
    out: list[Instance] = []
    for fi, f in enumerate(frames):
        if f.label_map is None:
            continue
        H, W = f.label_map.shape
        for k in sorted(int(v) for v in np.unique(f.label_map) if 0 < v < IGNORE):
            n, _lab, stats, _ = cv2.connectedComponentsWithStats((f.label_map == k).astype(np.uint8), connectivity=8)
            for i in range(1, n):
                c, r, bw, bh, area = (int(v) for v in stats[i])
                if area < min_pixels:
                    continue
                r0, r1 = max(0, r - MARGIN), min(H, r + bh + MARGIN)
                c0, c1 = max(0, c - MARGIN), min(W, c + bw + MARGIN)
                lm = f.label_map[r0:r1, c0:c1].copy()
                lm[lm == IGNORE] = 0
                inner = np.zeros(lm.shape, np.uint8)
                inner[r - r0: r - r0 + bh, c - c0: c - c0 + bw] = 1
                # distance to the cut's edge, as a share of the margin: the instance's own box is opaque
                dist = cv2.distanceTransform(np.pad(np.ones(lm.shape, np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
                alpha = np.where(inner > 0, 1.0, np.clip((dist - 0.5) / MARGIN, 0.0, 1.0)).astype(np.float32)
                out.append(Instance(f.x[r0:r1, c0:c1].astype(np.float32).copy(), lm, alpha, k, fi))
    return out


def paste(x: np.ndarray, lm: np.ndarray, instances: list[Instance], rng: np.random.Generator,
          count: int, exclude_frame: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paste `count` instances (classes drawn evenly, then an instance of that class) into a tile:
    random position and flips, the instance's brightness scaled to the rail it lands on, its class
    map written where it is labelled. Instances of `exclude_frame` (the tile's own frame) are left
    out unless nothing else is there. Returns new arrays; the inputs are not changed."""
    if not instances or count <= 0:
        return x, lm
    x, lm = x.astype(np.float32).copy(), lm.copy()
    H, W = x.shape
    by_class: dict[int, list[int]] = {}
    for i, ins in enumerate(instances):
        if ins.frame != exclude_frame:
            by_class.setdefault(ins.cls, []).append(i)
    if not by_class:
        for i, ins in enumerate(instances):
            by_class.setdefault(ins.cls, []).append(i)
    classes = sorted(by_class)
    for _ in range(count):
        pool = by_class[classes[int(rng.integers(len(classes)))]]
        ins = instances[pool[int(rng.integers(len(pool)))]]
        px, pl, pa = ins.x, ins.lm, ins.alpha
        if rng.random() < 0.5:
            px, pl, pa = px[:, ::-1], pl[:, ::-1], pa[:, ::-1]
        if rng.random() < 0.5:
            px, pl, pa = px[::-1], pl[::-1], pa[::-1]
        h, w = px.shape
        if h > H or w > W:  # taller than the tile (long dirt, wide joints): paste the part that fits
            r0 = int(rng.integers(0, h - min(h, H) + 1))
            c0 = int(rng.integers(0, w - min(w, W) + 1))
            px, pl, pa = px[r0: r0 + H, c0: c0 + W], pl[r0: r0 + H, c0: c0 + W], pa[r0: r0 + H, c0: c0 + W]
            h, w = px.shape
        y = int(rng.integers(0, H - h + 1))
        c = int(rng.integers(0, W - w + 1))
        dst = x[y: y + h, c: c + w]
        ring = pa < 1.0
        src_ref = float(np.median(px[ring])) if ring.any() else float(np.median(px))
        dst_ref = float(np.median(dst))
        gain = float(np.clip((dst_ref + 1e-3) / (src_ref + 1e-3), 0.5, 2.0))
        x[y: y + h, c: c + w] = pa * (px * gain) + (1.0 - pa) * dst
        region = lm[y: y + h, c: c + w]
        labelled = pl > 0
        region[labelled] = pl[labelled]
    return np.clip(x, 0.0, 3.0), lm
