"""`railedge fit`: build and export a backbone, fill the memory bank with normal patches,
calibrate the threshold on held-out normal frames, and write the model artifact."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from railedge.config import Config
from railedge.datasets import Sample, iter_samples, read_classes, is_yolo_dir
from railedge.errors import DataError, ModelError
from railedge.logs import get_logger
from railedge.model import artifact_meta, building, write_meta
from railedge.preprocess import Preprocess
from railedge.roi import RailBandLocator
from railedge.scoring import AnomalyScorer, ColumnMemoryBank, calibrate_threshold
from railedge.sources.reduce import resolve_reduce
from railedge.values import Band

log = get_logger("railedge.fit")


def label_mask(sample: Sample, band: Band, grid: tuple[int, int], dilate: int = 1) -> np.ndarray:
    """(h, w) True where a feature cell touches a labelled box (any class), dilated by `dilate` cells."""
    gh, gw = grid
    mask = np.zeros((gh, gw), bool)
    if not sample.labels:
        return mask
    H, W = sample.image.shape[:2]
    cw, ch = band.width / gw, band.height / gh
    for lab in sample.labels:
        x0, y0, x1, y1 = lab.pixels(W, H)
        c0 = int(np.floor((x0 - band.x0) / cw)) - dilate
        c1 = int(np.ceil((x1 - band.x0) / cw)) + dilate
        r0 = int(np.floor((y0 - band.y0) / ch)) - dilate
        r1 = int(np.ceil((y1 - band.y0) / ch)) + dilate
        mask[max(0, r0) : max(0, min(gh, r1)), max(0, c0) : max(0, min(gw, c1))] = True
    return mask


def extract(
    samples: Iterable[Sample],
    locator: RailBandLocator,
    pre: Preprocess,
    engine: Callable[[np.ndarray], np.ndarray],
    batch: int = 1,
    scale: float = 1.0,
) -> tuple[np.ndarray, list[Band], list[Sample]]:
    """Features (N,F,h,w) of every sample's rail crop, with the bands used. Batch 1 by default:
    exported graphs are run frame by frame at the edge, and some fold time into the batch."""
    feats, bands, kept, xs = [], [], [], []

    def flush() -> None:
        if xs:
            feats.append(engine(np.stack(xs)[:, None]))
            xs.clear()

    for s in samples:
        band = locator.locate(s.image, scale)
        xs.append(pre(s.image[band.y0 : band.y1, band.x0 : band.x1]))
        bands.append(band)
        kept.append(s)
        if len(xs) == batch:
            flush()
    flush()
    if not feats:
        raise DataError("no frames to fit on")
    return np.concatenate(feats), bands, kept


def _export(cfg: Config, tmp: Path) -> tuple[Any, int, int]:
    try:
        import torch
    except ImportError:
        raise ModelError("fitting needs torch: pip install 'railedge[train]'") from None
    from railedge.backbones import build_backbone
    from railedge.backbones.export import export_runtimes

    torch.manual_seed(0)
    module = build_backbone(cfg.model).eval()
    h, w = cfg.model.input_height, cfg.model.input_width
    stride = int(module.stride)
    if h % stride or w % stride:
        raise ModelError(f"model.input_height/input_width ({h}x{w}) must be multiples of the backbone stride {stride}")
    export_runtimes(module, h, w, tmp)
    return module, h, w


def fit(cfg: Config, data: str | Path, out: str | Path, fmt: str = "auto", seed: int = 0) -> dict[str, Any]:
    out = Path(out)
    data = Path(data)
    t_start = time.monotonic()
    with building(out) as tmp:
        module, h, w = _export(cfg, tmp)
        pre = Preprocess(h, w)
        if cfg.runtime == "eager":
            from railedge.runtime.torch_engines import EagerEngine

            engine: Any = EagerEngine(module, cfg.threads)
        else:
            # Features come from the exported graph, the one inference will run: no drift.
            from railedge.runtime.onnx import OnnxEngine

            engine = OnnxEngine(tmp / "backbone.onnx", cfg.threads)
        locator = RailBandLocator(cfg.roi)
        reduce = resolve_reduce(cfg.source.reduce, data, cfg.roi, (h, w))
        samples = list(iter_samples(data, fmt, reduce=reduce, max_frames=cfg.scoring.max_fit_frames))
        if len(samples) < 4:
            raise DataError(f"data {str(data)!r} has {len(samples)} frames; fitting needs at least 4 normal frames")
        feats, bands, samples = extract(samples, locator, pre, engine, scale=reduce)
        n, f, gh, gw = feats.shape
        masks = np.stack([label_mask(s, b, (gh, gw)) for s, b in zip(samples, bands)])
        n_hold = max(1, int(round(n * cfg.scoring.holdout_fraction)))
        # The tail is held out as one stretch: neighbouring frames look alike, so interleaving
        # would calibrate on frames the bank has effectively seen.
        fit_idx, hold_idx = np.arange(n - n_hold), np.arange(n - n_hold, n)
        bank = ColumnMemoryBank.fit(feats[fit_idx], ~masks[fit_idx], cfg.scoring.bank_size, cfg.scoring.column_window, seed,
                                   project_dim=cfg.scoring.project_dim)
        scorer = AnomalyScorer(bank, cfg.scoring.smoothing_sigma)
        hold_scores = np.array([scorer(feats[i], ignore=masks[i])[1] for i in hold_idx])
        threshold = (cfg.scoring.threshold if cfg.scoring.threshold is not None
                     else calibrate_threshold(hold_scores, cfg.scoring.false_alarm_rate) * (1.0 + cfg.scoring.threshold_margin))
        bank.save(tmp / "bank.npz")
        meta = artifact_meta(
            cfg, pre, stride=int(module.stride), channels=f, grid=(gh, gw), threshold=threshold, holdout_scores=hold_scores, data=data,
            calibration={
                "method": "held-out normal frames, order statistic at the target false-alarm rate, times (1 + margin)",
                "false_alarm_rate": cfg.scoring.false_alarm_rate,
                "margin": cfg.scoring.threshold_margin,
                "fit_frames": int(len(fit_idx)),
                "holdout_frames": int(len(hold_idx)),
            },
            bank_size=bank.size,
            classes=read_classes(data) if data.is_dir() and is_yolo_dir(data) else [],
        )
        write_meta(tmp, meta)
    summary = {
        "model": str(out),
        "backbone": cfg.model.backbone,
        "frames": int(n),
        "fit_frames": int(len(fit_idx)),
        "holdout_frames": int(len(hold_idx)),
        "bank_size": bank.size,
        "feature_grid": [int(f), int(gh), int(gw)],
        "threshold": round(float(threshold), 6),
        "seconds": round(time.monotonic() - t_start, 2),
    }
    log.info("fitted", **summary)
    return summary
