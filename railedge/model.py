"""The fitted model artifact: one directory with everything inference needs.

    model.json     metadata: format, railedge version, backbone and its config, input size,
                   preprocessing, feature grid, threshold and how it was calibrated, the config
                   used, SHA-256 of every file
    backbone.onnx  exported backbone (ONNX Runtime, the edge default)
    backbone.ts    TorchScript trace (optional)
    weights.pt     state dict for the eager runtime (optional)
    bank.npz       the column memory bank (models that score with a memory bank)
    training.json  how a trained model was trained: data, split, curve (railedge train only)

`meta["scoring"]` says how the graph's output is scored: {"mode": "bank"} (the default, what
`railedge fit` writes: the graph gives patch features, scored against bank.npz) or {"mode": "head",
"classes": [...], "normal_channel": 0, "defect_channel": 1, "head": {...}} (written by
`railedge train`: the graph is backbone + per-patch head and gives class probabilities).

Loading checks the format version, that every listed file exists and matches its checksum, and
that the bank fits the backbone's feature grid: a corrupt, truncated or mismatched artifact fails
here with a message that names the file and the fix."""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from railedge import __version__
from railedge.errors import ModelError
from railedge.preprocess import Preprocess
from railedge.scoring import AnomalyScorer, ColumnMemoryBank
from railedge.scoring.head import HeadScorer

if TYPE_CHECKING:
    from railedge.config import Config

FORMAT = "railedge.model/1"
RUNTIME_FILES = {"onnx": "backbone.onnx", "torchscript": "backbone.ts", "eager": "weights.pt"}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_meta(model_dir: Path, meta: dict[str, Any]) -> None:
    """Record checksums of every file in the directory and write model.json last, so that a
    half-written artifact has no model.json and cannot be loaded."""
    files = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size} for p in sorted(model_dir.iterdir()) if p.is_file() and p.name != "model.json"}
    meta = dict(meta, format=FORMAT, railedge_version=__version__, files=files)
    tmp = model_dir / "model.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.replace(model_dir / "model.json")


def artifact_meta(cfg: "Config", pre: Preprocess, *, stride: int, channels: int, grid: tuple[int, int], threshold: float,
                  calibration: dict[str, Any], holdout_scores: np.ndarray, data: Path, **extra: Any) -> dict[str, Any]:
    """model.json fields shared by `railedge fit` and `railedge train` (`extra` adds the maker's own)."""
    return {
        "backbone": cfg.model.backbone,
        "model_config": json.loads(json.dumps(cfg.to_dict()["model"])),
        "preprocess": pre.to_dict(),
        "feature": {"stride": int(stride), "channels": int(channels), "grid": [int(grid[0]), int(grid[1])]},
        "threshold": float(threshold),
        "smoothing_sigma": cfg.scoring.smoothing_sigma,
        "calibration": {
            **calibration,
            "holdout_score_quantiles": {q: float(np.quantile(holdout_scores, float(q))) for q in ("0.5", "0.9", "0.99", "1.0")},
            "overridden": cfg.scoring.threshold is not None,
        },
        "data": str(data),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
        **extra,
    }


@contextmanager
def building(out: Path) -> Iterator[Path]:
    """Write an artifact into a fresh OUT.partial folder (yielded; finish with `write_meta`); on
    success it replaces OUT, then must load. On any error the partial folder is removed and OUT,
    if it existed, is left as it was."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ModelArtifact.load(out)  # the artifact we wrote must load


@dataclass
class ModelArtifact:
    path: Path
    meta: dict[str, Any]
    preprocess: Preprocess
    bank: ColumnMemoryBank | None

    @property
    def backbone(self) -> str:
        return str(self.meta["backbone"])

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def sigma(self) -> float:
        return float(self.meta.get("smoothing_sigma", 1.0))

    @property
    def stride(self) -> int:
        return int(self.meta["feature"]["stride"])

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    @property
    def scoring(self) -> dict[str, Any]:
        return dict(self.meta.get("scoring") or {"mode": "bank"})

    @property
    def has_head(self) -> bool:
        """The graph ends in a class head: the scorer knows classes (`classify`)."""
        return self.scoring.get("mode") == "head"

    @property
    def head_classes(self) -> list[str]:
        """The head's output channels in order ("normal" first); empty for memory-bank models."""
        return list(self.scoring.get("classes", [])) if self.has_head else []

    def scorer(self) -> AnomalyScorer | HeadScorer:
        """`scorer(feats) -> (map, score)`; head models' scorer also has `classify(feats, cells)`."""
        if self.has_head:
            return HeadScorer(self.head_classes, self.sigma, int(self.scoring.get("normal_channel", 0)))
        assert self.bank is not None
        return AnomalyScorer(self.bank, self.sigma)

    def has_runtime(self, runtime: str) -> bool:
        return RUNTIME_FILES[runtime] in self.meta["files"]

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> "ModelArtifact":
        p = Path(path)
        if not p.is_dir():
            raise ModelError(f"model {str(p)!r} does not exist; fit one with 'railedge fit' or fix model.path")
        meta_path = p / "model.json"
        if not meta_path.is_file():
            raise ModelError(f"model {str(p)!r} has no model.json (an unfinished or foreign directory); refit it with 'railedge fit'")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelError(f"model {str(p)!r}: model.json is corrupt ({e.__class__.__name__}); refit the model") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise ModelError(f"model {str(p)!r}: format {found!r} is not {FORMAT!r}; refit it with this railedge ({__version__})")
        for key in ("backbone", "threshold", "feature", "preprocess", "files"):
            if key not in meta:
                raise ModelError(f"model {str(p)!r}: model.json lacks {key!r}; refit the model")
        for name, info in meta["files"].items():
            f = p / name
            if not f.is_file():
                raise ModelError(f"model {str(p)!r}: file {name} is missing; copy the whole model directory or refit")
            if f.stat().st_size != info["bytes"]:
                raise ModelError(f"model {str(p)!r}: {name} is {f.stat().st_size} bytes, expected {info['bytes']} (truncated copy?); copy it again or refit")
            if verify and sha256(f) != info["sha256"]:
                raise ModelError(f"model {str(p)!r}: {name} fails its SHA-256 check (corrupt); copy it again or refit")
        scoring = meta.get("scoring") or {"mode": "bank"}
        mode = scoring.get("mode") if isinstance(scoring, dict) else None
        feat = meta["feature"]
        if mode == "head":
            classes = scoring.get("classes")
            if not isinstance(classes, list) or len(classes) < 2 or len(classes) != feat.get("channels"):
                raise ModelError(
                    f"model {str(p)!r}: its head names classes {classes!r} but the graph gives {feat.get('channels')} "
                    "channels; the files come from different runs: retrain it with 'railedge train'"
                )
            return cls(path=p, meta=meta, preprocess=Preprocess.from_dict(meta["preprocess"]), bank=None)
        if mode != "bank":
            raise ModelError(f"model {str(p)!r}: scoring mode {mode!r} is unknown (bank | head); refit it with this railedge ({__version__})")
        if "bank.npz" not in meta["files"]:
            raise ModelError(f"model {str(p)!r} has no memory bank (bank.npz); refit it")
        bank = ColumnMemoryBank.load(p / "bank.npz")
        if bank.dim != feat["channels"] or bank.columns != feat["grid"][1]:
            raise ModelError(
                f"model {str(p)!r}: memory bank ({bank.dim} channels × {bank.columns} columns) does not match the "
                f"backbone's features ({feat['channels']} × {feat['grid'][1]}); the files come from different fits: refit"
            )
        return cls(path=p, meta=meta, preprocess=Preprocess.from_dict(meta["preprocess"]), bank=bank)

    def engine(self, runtime: str, threads: int = 0, spinning: bool = False):
        """The inference engine for `runtime` (onnx | torchscript | eager); `spinning`: ONNX
        Runtime's pool threads spin-wait between runs (config `spinning`)."""
        if not self.has_runtime(runtime):
            raise ModelError(
                f"model {str(self.path)!r} has no {runtime} export ({RUNTIME_FILES[runtime]}); "
                f"run 'railedge export --model {self.path} --format {runtime}' or set runtime: onnx"
            )
        if runtime == "onnx":
            from railedge.runtime.onnx import OnnxEngine

            return OnnxEngine(self.path / RUNTIME_FILES["onnx"], threads, spinning)
        if runtime == "torchscript":
            from railedge.runtime.torch_engines import TorchScriptEngine

            return TorchScriptEngine(self.path / RUNTIME_FILES["torchscript"], threads)
        from railedge.runtime.torch_engines import EagerEngine

        return EagerEngine(self.build_module(), threads)

    def model_config(self):
        from railedge.config import from_dict

        return from_dict({"model": self.meta["model_config"]}).model

    def build_module(self):
        """The torch backbone with the fitted weights (needs the [train] extra)."""
        try:
            import torch
        except ImportError:
            raise ModelError("the eager runtime needs torch: pip install 'railedge[train]', or use runtime: onnx") from None
        from railedge.backbones import build_backbone

        mcfg = self.model_config()
        if mcfg.backbone == "resnet" and mcfg.resnet.weights not in ("none",):
            # the fitted weights come from weights.pt; don't reach for the original file or the hub
            from dataclasses import replace

            mcfg = replace(mcfg, resnet=replace(mcfg.resnet, weights="none"))
        module = build_backbone(mcfg)
        if self.has_head:
            from railedge.train.net import HeadedBackbone

            module = HeadedBackbone.from_meta(module, self.scoring)
        state = torch.load(self.path / RUNTIME_FILES["eager"], map_location="cpu", weights_only=True)
        module.load_state_dict(state)
        return module.eval()
