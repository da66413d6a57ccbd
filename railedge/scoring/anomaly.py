"""Patch distances → smoothed anomaly map and frame score; threshold calibration."""

from __future__ import annotations

import cv2
import numpy as np

from railedge.scoring.memory_bank import ColumnMemoryBank


class AnomalyScorer:
    """Frame score = max of the Gaussian-smoothed nearest-neighbour distance map."""

    def __init__(self, bank: ColumnMemoryBank, sigma: float = 1.0) -> None:
        self.bank = bank
        self.sigma = sigma

    def __call__(self, feats: np.ndarray, ignore: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """feats (F,h,w) → (map (h,w), score). Cells where `ignore` is True do not count in the score."""
        amap = self.bank.distances(feats)
        if self.sigma > 0:
            amap = cv2.GaussianBlur(amap, (0, 0), self.sigma, borderType=cv2.BORDER_REFLECT)
        counted = amap if ignore is None else np.where(ignore, 0.0, amap)
        return amap, float(counted.max())


def calibrate_threshold(normal_scores: np.ndarray, false_alarm_rate: float) -> float:
    """The score that normal frames exceed at most at `false_alarm_rate`: an order statistic of
    held-out normal scores (the highest one when there are fewer than 1/rate of them). Needs no
    defect examples; adaptive-F1 thresholds fail on normal-only validation data (field notes)."""
    s = np.sort(np.asarray(normal_scores, dtype=np.float64))
    if s.size == 0:
        raise ValueError("no held-out normal scores to calibrate on")
    k = int(np.ceil((1.0 - false_alarm_rate) * s.size)) - 1
    return float(s[min(max(k, 0), s.size - 1)])
