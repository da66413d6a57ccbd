"""Inference engines behind one interface. Only the torch engines import torch, lazily."""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np


def resolve_threads(threads: int) -> int:
    """Inference threads: `threads` when set, else (0, auto) one fewer than the CPU cores this
    process may use, at least 1. Frames are decoded on a thread of their own; measured on 2 cores,
    ONNX Runtime on 2 threads fighting the decoder ran replay at 66 frames/s, on 1 thread at 87."""
    if threads > 0:
        return threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


class Engine(Protocol):
    """Runs the exported backbone: (B,1,H,W) float32 → (B,F,h,w) float32 patch features."""

    name: str

    def __call__(self, x: np.ndarray) -> np.ndarray: ...
