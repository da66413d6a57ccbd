"""Inference engines behind one interface. Only the torch engines import torch, lazily."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Engine(Protocol):
    """Runs the exported backbone: (B,1,H,W) float32 → (B,F,h,w) float32 patch features."""

    name: str

    def __call__(self, x: np.ndarray) -> np.ndarray: ...
