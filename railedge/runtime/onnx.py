"""ONNX Runtime engine: the default at the edge, and free of torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from railedge.errors import ModelError
from railedge.runtime import resolve_threads


class OnnxEngine:
    name = "onnx"

    def __init__(self, path: Path, threads: int = 0) -> None:
        threads = self.threads = resolve_threads(threads)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"ONNX model {str(path)!r} cannot be loaded by ONNX Runtime ({str(e).splitlines()[0][:200]}); re-export it with 'railedge export'") from None
        self._input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: np.ascontiguousarray(x, dtype=np.float32)})[0]
