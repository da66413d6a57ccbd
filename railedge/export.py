"""`railedge export`: (re)export a fitted model's backbone for a runtime, in place."""

from __future__ import annotations

import json
from pathlib import Path

from railedge.model import RUNTIME_FILES, ModelArtifact, write_meta


def export_model(model_dir: Path, fmt: str) -> Path:
    model = ModelArtifact.load(model_dir)
    from railedge.backbones.export import export_onnx, export_torchscript

    module = model.build_module()
    h, w = model.preprocess.height, model.preprocess.width
    target = model_dir / RUNTIME_FILES[fmt]
    if fmt == "onnx":
        export_onnx(module, h, w, target)
    else:
        export_torchscript(module, h, w, target)
    meta = {k: v for k, v in json.loads((model_dir / "model.json").read_text()).items() if k not in ("files", "format", "railedge_version")}
    write_meta(model_dir, meta)
    ModelArtifact.load(model_dir)
    return target
