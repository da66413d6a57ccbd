"""Crop → model input: resize to the model's grid and normalise brightness.

Recording runs differ in brightness (field notes: median head intensity 67 in one run, 49 in
another) and spiking layers are sensitive to input scale, so each crop is divided by its own
median and scaled so that normal rail sits near `level`."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Preprocess:
    height: int
    width: int
    level: float = 0.5
    clip: float = 3.0

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        """uint8 crop (h, w) → float32 (height, width)."""
        img = cv2.resize(crop, (self.width, self.height), interpolation=cv2.INTER_AREA)
        # The median of a subsample is enough and several times cheaper on big crops.
        med = float(np.median(img[::4, ::2]))
        x = img.astype(np.float32) * (self.level / max(med, 1.0))
        np.minimum(x, self.clip, out=x)
        return x

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(**d)
