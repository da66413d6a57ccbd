"""ONNX Runtime engine: the default at the edge, and free of torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from railedge.errors import ModelError
from railedge.runtime import resolve_threads


class OnnxEngine:
    name = "onnx"

    def __init__(self, path: Path, threads: int = 0, spinning: bool = False) -> None:
        """`spinning`: ORT's default keeps its pool threads spin-waiting for work; at a camera's
        frame rate that is a core busy between frames (42 vs 3 ms CPU per 40 ms frame with 2
        threads, measured by `railedge bench`), so railedge turns it off unless asked."""
        threads = self.threads = resolve_threads(threads)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"ONNX model {str(path)!r} cannot be loaded by ONNX Runtime ({str(e).splitlines()[0][:200]}); re-export it with 'railedge export'") from None
        self._input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: np.ascontiguousarray(x, dtype=np.float32)})[0]
