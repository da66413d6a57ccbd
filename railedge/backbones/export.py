"""Export a backbone for the runtimes: ONNX (one self-contained file) and TorchScript (trace)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


def _example(h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return 0.5 + 0.1 * torch.randn(1, 1, h, w, generator=g)


def export_onnx(module: nn.Module, height: int, width: int, path: Path, opset: int = 17) -> Path:
    module = module.eval()
    x = _example(height, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The legacy exporter keeps weights inside the .onnx file (dynamo writes a side .onnx.data).
        # Batch 1, as frames arrive at the edge: the SNN folds time into the batch axis.
        torch.onnx.export(
            module,
            (x,),
            str(path),
            input_names=["input"],
            output_names=["features"],
            opset_version=opset,
            dynamo=False,
        )
    return path


def export_torchscript(module: nn.Module, height: int, width: int, path: Path) -> Path:
    module = module.eval()
    x = _example(height, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (x,), check_trace=False)
        traced.save(str(path))
    return path


def export_runtimes(module: nn.Module, height: int, width: int, folder: Path) -> None:
    """Everything the runtimes load, into an artifact folder: weights.pt (eager), backbone.onnx
    (ONNX Runtime) and, when tracing works, backbone.ts (TorchScript is optional: deprecated in
    torch 2.14; a failed trace is logged and the artifact stays usable)."""
    from railedge.logs import get_logger

    torch.save(module.state_dict(), folder / "weights.pt")
    export_onnx(module, height, width, folder / "backbone.onnx")
    try:
        export_torchscript(module, height, width, folder / "backbone.ts")
    except Exception as e:
        get_logger("railedge.export").warning("torchscript_export_failed", error=str(e)[:200])
