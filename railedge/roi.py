"""Rail-head band: fixed from config, the whole frame, or located from the column profile."""

from __future__ import annotations

import numpy as np

from railedge.config import RoiConfig
from railedge.values import Band, Crop, Frame


class RailBandLocator:
    """Finds the rail head as the bright vertical band of the frame.

    The column-mean profile is smoothed, thresholded a quarter of the way (`level`) from the ballast level to the
    head level, and the run of columns around the brightest one is taken. One side of the head is
    often dim, so the band is widened by `margin` per side; its position is smoothed over frames
    (a rail does not jump sideways) unless a frame's band moves by more than half its width."""

    def __init__(self, cfg: RoiConfig) -> None:
        self.cfg = cfg
        self._prev: tuple[float, float] | None = None

    def reset(self) -> None:
        self._prev = None

    def locate(self, image: np.ndarray, scale: float = 1.0) -> Band:
        """The band in `image`'s pixels; `scale`: full-size frame pixels per image pixel (a frame
        decoded reduced), which fixed-mode `x` and `width` are given in."""
        h, w = image.shape[:2]
        if self.cfg.mode == "full":
            return Band(0, w, 0, h)
        if self.cfg.mode == "fixed":
            x0 = min(int(round(self.cfg.x / scale)), w - 1)
            x1 = w if self.cfg.width == 0 else min(w, x0 + max(1, int(round(self.cfg.width / scale))))
            return Band(x0, x1, 0, h)
        x0, x1 = self._find(image)
        if self._prev is not None:
            p0, p1 = self._prev
            if abs((x0 + x1) / 2 - (p0 + p1) / 2) < (p1 - p0) / 2:
                a = self.cfg.smoothing
                x0, x1 = a * p0 + (1 - a) * x0, a * p1 + (1 - a) * x1
        self._prev = (x0, x1)
        return Band(max(0, int(round(x0))), min(w, int(round(x1))), 0, h)

    def _find(self, image: np.ndarray) -> tuple[float, float]:
        h, w = image.shape[:2]
        step = max(1, h // 256)
        profile = image[::step].mean(axis=0, dtype=np.float32)
        k = max(3, (w // 64) | 1)
        smooth = np.convolve(profile, np.ones(k, np.float32) / k, mode="same")
        lo, hi = np.percentile(smooth, 20), float(smooth.max())
        if hi - lo < 4.0:  # a flat frame: no band to find
            return (0.0, float(w)) if self._prev is None else self._prev
        above = smooth > lo + self.cfg.level * (hi - lo)
        peak = int(np.argmax(smooth))
        left = peak
        while left > 0 and above[left - 1]:
            left -= 1
        right = peak
        while right < w - 1 and above[right + 1]:
            right += 1
        width = right + 1 - left
        pad = self.cfg.margin * width
        return max(0.0, left - pad), min(float(w), right + 1 + pad)

    def crop(self, frame: Frame) -> Crop:
        band = self.locate(frame.image, frame.scale)
        return Crop(frame=frame, band=band, image=frame.image[band.y0 : band.y1, band.x0 : band.x1])
