"""Scoring for trained models whose exported graph ends in a per-patch class head (numpy only).

The graph outputs class probabilities per feature cell, (K, h, w), channel 0 "normal". The anomaly
map is the probability that a cell is *not* normal rail (any known class: defect, dirt, joint...),
so every labelled kind of thing becomes a box and an event; which classes raise alarms is the
config's choice (events.alarm_classes), made per box with `classify`."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from railedge.values import Box, Crop


class HeadScorer:
    """Same call signature as `AnomalyScorer`: `scorer(probs) -> (map, score)`, plus `classify`."""

    def __init__(self, classes: Sequence[str], sigma: float = 1.0, normal_channel: int = 0) -> None:
        self.classes = list(classes)
        self.sigma = float(sigma)
        self.normal_channel = int(normal_channel)
        if not 0 <= self.normal_channel < len(self.classes):
            raise ValueError(f"normal_channel {normal_channel} outside {len(self.classes)} classes")

    def _blur(self, m: np.ndarray) -> np.ndarray:
        m = np.ascontiguousarray(m, dtype=np.float32)
        if self.sigma > 0:
            m = cv2.GaussianBlur(m, (0, 0), self.sigma, borderType=cv2.BORDER_REFLECT)
        return m

    def __call__(self, probs: np.ndarray, ignore: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """probs (K,h,w) → (map (h,w) = smoothed 1 − P(normal), score = its max). Cells where
        `ignore` is True do not count in the score."""
        amap = self._blur(1.0 - probs[self.normal_channel])
        counted = amap if ignore is None else np.where(ignore, 0.0, amap)
        return amap, float(counted.max())

    def class_map(self, probs: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """Smoothed summed probability of the named classes (unknown names count as zero), (h,w)."""
        idx = [self.classes.index(n) for n in names if n in self.classes]
        if not idx:
            return np.zeros(probs.shape[1:], np.float32)
        return self._blur(probs[idx].sum(0))

    def classify(self, probs: np.ndarray, cells_mask: np.ndarray) -> tuple[str, float]:
        """The class of a region: argmax over the non-normal classes of the mean probabilities in
        the cells of `cells_mask` (h,w bool); the score is that mean probability."""
        if not cells_mask.any():
            cells_mask = np.ones(probs.shape[1:], bool)
        mean = probs[:, cells_mask].mean(axis=1)
        mean[self.normal_channel] = -1.0
        k = int(np.argmax(mean))
        return self.classes[k], float(mean[k])


def box_cells(box: Box, crop: Crop, grid: tuple[int, int]) -> np.ndarray:
    """(h,w) bool: the feature cells of the crop's map grid that a frame-pixel box covers."""
    gh, gw = grid
    band, scale = crop.band, crop.frame.scale
    cw, ch = band.width * scale / gw, band.height * scale / gh
    c0 = int(np.floor((box.x - band.x0 * scale) / cw))
    c1 = int(np.ceil((box.x + box.w - band.x0 * scale) / cw))
    r0 = int(np.floor((box.y - band.y0 * scale) / ch))
    r1 = int(np.ceil((box.y + box.h - band.y0 * scale) / ch))
    mask = np.zeros((gh, gw), bool)
    mask[max(0, r0): max(0, min(gh, r1)), max(0, c0): max(0, min(gw, c1))] = True
    return mask
