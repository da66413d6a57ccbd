"""Anomaly map above threshold → boxes in original frame pixels."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from railedge.values import Box, Crop


@dataclass(frozen=True)
class BoxFinder:
    """Connected regions of the map above a level, small ones dropped, near ones merged.

    Regions merge when the gap between their boxes is at most `merge_gap_px` plus one feature cell
    on that axis: the map is blurred over about a cell, so a one-cell dip between two regions is a
    fragment boundary, not two defects (on 2000-row line-scan images a cell is about 30 px, more than
    any fixed pixel gap that suits small video frames)."""

    stride: int
    input_hw: tuple[int, int]
    min_area_px: int = 64
    merge_gap_px: int = 16

    def __call__(self, amap: np.ndarray, threshold: float, crop: Crop) -> tuple[Box, ...]:
        above = (amap > threshold).astype(np.uint8)
        if not above.any():
            return ()
        n, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
        band, scale = crop.band, crop.frame.scale
        sx = band.width / self.input_hw[1] * self.stride * scale
        sy = band.height / self.input_hw[0] * self.stride * scale
        raw = []
        for i in range(1, n):
            c, r, w, h, _area = stats[i]
            peak = float(amap[labels == i].max())
            x0 = band.x0 * scale + c * sx
            y0 = band.y0 * scale + r * sy
            raw.append([x0, y0, x0 + w * sx, y0 + h * sy, peak])
        merged = _merge(raw, self.merge_gap_px + sx, self.merge_gap_px + sy)
        out = []
        for x0, y0, x1, y1, peak in merged:
            b = Box(int(round(x0)), int(round(y0)), int(round(x1 - x0)), int(round(y1 - y0)), round(peak, 6))
            if b.w * b.h >= self.min_area_px:
                out.append(b)
        out.sort(key=lambda b: -b.score)
        return tuple(out)


def _merge(boxes: list[list[float]], gap_x: float, gap_y: float) -> list[list[float]]:
    """Merge boxes whose gaps are at most `gap_x`/`gap_y` pixels until none are that close (fragments of one defect)."""
    boxes = [b[:] for b in boxes]
    changed = True
    while changed and len(boxes) > 1:
        changed = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] - gap_x <= b[2] and b[0] - gap_x <= a[2] and a[1] - gap_y <= b[3] and b[1] - gap_y <= a[3]:
                    boxes[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]), max(a[4], b[4])]
                    del boxes[j]
                    changed = True
                    break
            if changed:
                break
    return boxes
