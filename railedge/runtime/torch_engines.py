"""TorchScript and eager engines (need the [train] extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from railedge.errors import ModelError
from railedge.runtime import resolve_threads


def _torch(threads: int):
    try:
        import torch
    except ImportError:
        raise ModelError("runtime torchscript/eager needs torch: pip install 'railedge[train]', or use runtime: onnx") from None
    torch.set_num_threads(resolve_threads(threads))
    return torch


class TorchScriptEngine:
    name = "torchscript"

    def __init__(self, path: Path, threads: int = 0) -> None:
        torch = _torch(threads)
        try:
            self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:
            raise ModelError(f"TorchScript model {str(path)!r} cannot be loaded ({e.__class__.__name__}); re-export it with 'railedge export'") from None
        self._torch = torch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.module(self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


class EagerEngine:
    name = "eager"

    def __init__(self, module, threads: int = 0) -> None:
        self._torch = _torch(threads)
        self.module = module.eval()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.module(self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
