"""`railedge train`: train a backbone and a per-patch head with surrogate gradients (SNN) or plain
backprop (ResNet-18) on CPU, then write the same model artifact as `railedge fit`.

Modes
    labelled     YOLO boxes or pixel masks: per-cell soft targets over {normal, defect, dirt, gap}
                 (the data set's classes); the artifact scores with the head (scoring mode "head").
    normal-only  no labels: synthetic anomalies (railedge.synthetic_defects) are pasted into tiles of
                 normal footage and the head learns {normal, defect}; the artifact scores with the
                 trained head, or (train.normal_scoring: bank) with a memory bank of the trained
                 features, fitted as `railedge fit` does. Labels present in the data are only used to
                 keep labelled regions out of the "normal" targets, as fit keeps them out of the bank.

Reproducibility: every random choice of a step (tiles, flips, jitter, pasted anomalies) is drawn
from a generator seeded by (train.seed, epoch, tile), and initialisation from train.seed, so a run
is a function of its seed; checkpoints (every train.checkpoint_every steps, at epoch ends and on
interruption) hold weights, optimiser and schedule, and a resumed run continues bit for bit.

Validation and calibration use whole recording runs held out from training (--val, or
train.val_fraction of the runs): the curve reports validation loss and AUROC per epoch, and the
threshold is calibrated on the held-out frames through the exported ONNX graph, as fit does."""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from railedge.config import Config
from railedge.evaluate import auroc
from railedge.errors import DataError, ModelError
from railedge.logs import get_logger
from railedge.model import ModelArtifact, artifact_meta, building, write_meta
from railedge.preprocess import Preprocess
from railedge.scoring import calibrate_threshold
from railedge.sources.reduce import resolve_reduce
from railedge.train.copy_paste import cut_instances
from railedge.train.copy_paste import paste as paste_instances
from railedge.train.data import IGNORE, FrameSet, LabelledFrame, cell_targets, load_frames, split_by_run

log = get_logger("railedge.train")
Progress = Callable[..., None]
CHECKPOINT = "checkpoint.pt"


class TrainingStopped(Exception):
    """Training stopped before the end (interrupted); the checkpoint lets the same command resume."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"training stopped at step {step}; checkpoint {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


def _torch():
    try:
        import torch
    except ImportError:
        raise ModelError("training needs torch: pip install 'railedge[train]'") from None
    return torch


# ------------------------------------------------------------------------------------------- tiles
def _augment(x: np.ndarray, lm: np.ndarray, rng: np.random.Generator, level: float,
             resample: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Flips; a random zoom and sideways shift (recording runs differ in rail width, band position
    and speed); gamma, gain, contrast, blur and noise (they differ in lighting and sharpness); with
    probability `resample`, a round trip through a smaller size (decoders and cameras resample)."""
    import cv2

    if rng.random() < 0.5:
        x, lm = x[:, ::-1], lm[:, ::-1]
    if rng.random() < 0.5:
        x, lm = x[::-1], lm[::-1]
    h, w = x.shape
    zx, zy = math.exp(rng.uniform(-0.2, 0.2)), math.exp(rng.uniform(-0.2, 0.2))
    tx = rng.uniform(-0.12, 0.12) * w
    a = np.array([[zx, 0.0, (1 - zx) * w / 2 + tx], [0.0, zy, (1 - zy) * h / 2]], np.float32)
    x = cv2.warpAffine(np.ascontiguousarray(x), a, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    lm = cv2.warpAffine(np.ascontiguousarray(lm), a, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
    g = math.exp(rng.uniform(-0.35, 0.35))
    x = level * np.power(np.maximum(x, 0.0) / level, g)
    gain = math.exp(rng.uniform(-0.2, 0.2))
    contrast = math.exp(rng.uniform(-0.3, 0.3))
    x = (level + (x - level) * contrast) * gain
    r = rng.random()
    if r < 0.25:
        x = cv2.GaussianBlur(x.astype(np.float32), (0, 0), rng.uniform(0.4, 1.2))
    elif r < 0.4:
        x = x + rng.uniform(0.3, 1.0) * (x - cv2.GaussianBlur(x.astype(np.float32), (0, 0), 1.0))
    if resample > 0 and rng.random() < resample:  # drawn only when enabled: default runs keep their random stream
        f = rng.uniform(0.5, 0.9)
        small = cv2.resize(x.astype(np.float32), (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        x = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR if rng.random() < 0.5 else cv2.INTER_CUBIC)
    sigma = rng.uniform(0.0, 0.04)
    if sigma > 0:
        x = x + rng.normal(0.0, sigma, x.shape).astype(np.float32)
    return np.clip(x, 0.0, 3.0).astype(np.float32), np.ascontiguousarray(lm)


class TileSampler:
    """Deterministic tiles: epoch e's tile j is a function of (seed, e, j) only."""

    def __init__(self, frames: list[LabelledFrame], classes: int, cfg: Config, stride: int, normal_only: bool) -> None:
        self.frames = frames
        self.classes = classes
        self.t = cfg.train
        self.stride = stride
        self.rows = int(cfg.train.tile_rows)
        self.level = 0.5
        self.normal_only = normal_only
        H = frames[0].x.shape[0]
        if self.rows % stride or self.rows > H:
            raise DataError(f"train.tile_rows {self.rows} must be a multiple of {stride} and at most the input height {H}")
        self.per_epoch = len(frames) * int(cfg.train.tiles_per_image)
        self.steps_per_epoch = math.ceil(self.per_epoch / int(cfg.train.batch_size))
        # label pixels per frame (to centre tiles on labelled regions)
        self._fg = [None if f.label_map is None else np.flatnonzero((f.label_map > 0) & (f.label_map != IGNORE)) for f in frames]
        self._instances = cut_instances(frames) if float(cfg.train.copy_paste) > 0 and not normal_only else []

    def tile(self, epoch: int, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x (rows, W), soft targets (K, rows/s, W/s), cell weights (rows/s, W/s))."""
        seed = int(self.t.seed)
        order = np.random.default_rng([seed, epoch, 0x7E]).permutation(self.per_epoch)
        k = int(order[j % self.per_epoch])
        fi, which = divmod(k, int(self.t.tiles_per_image))
        f = self.frames[fi]
        rng = np.random.default_rng([seed, epoch, j, 0x711E])
        H, W = f.x.shape
        fg = self._fg[fi]
        if which % 2 == 0 and fg is not None and fg.size and not self.normal_only:
            r = int(fg[int(rng.integers(fg.size))]) // W
            r0 = r - self.rows // 2 + int(rng.integers(-self.rows // 4, self.rows // 4 + 1))
        else:
            r0 = int(rng.integers(0, H - self.rows + 1))
        r0 = int(np.clip(r0 // self.stride * self.stride, 0, H - self.rows))
        x = f.x[r0: r0 + self.rows].copy()
        if f.label_map is None:
            lm = np.zeros(x.shape, np.uint8)
        else:
            lm = f.label_map[r0: r0 + self.rows].copy()
        if self.normal_only:
            lm = np.where(lm > 0, IGNORE, 0).astype(np.uint8)  # labelled regions are neither normal nor synthetic
            if rng.random() < float(self.t.synthetic_fraction):
                from railedge.synthetic_defects import paste

                x, mask, _kind = paste(x, rng, level=self.level)
                lm = np.where(mask > 0, 1, lm).astype(np.uint8)
        if self._instances and rng.random() < float(self.t.copy_paste):  # drawn only when enabled, as resample
            n = int(rng.integers(1, int(self.t.copy_paste_max) + 1))
            x, lm = paste_instances(x, lm, self._instances, rng, n, exclude_frame=fi)
        if self.t.augment:
            x, lm = _augment(x, lm, rng, self.level, float(self.t.resample))
        t, wgt = cell_targets(lm, self.classes, self.stride)
        return x, t, wgt

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b = int(self.t.batch_size)
        epoch, s = divmod(step, self.steps_per_epoch)
        xs, ts, ws = [], [], []
        for i in range(b):
            j = s * b + i
            if j >= self.per_epoch:
                j %= self.per_epoch  # the last step of an epoch tops up from the same epoch's order
            x, t, w = self.tile(epoch, j)
            xs.append(x)
            ts.append(t)
            ws.append(w)
        return np.stack(xs)[:, None], np.stack(ts), np.stack(ws)


# ----------------------------------------------------------------------------------------- train
def _fingerprint(cfg: Config, mode: str, train: list[LabelledFrame], val: list[LabelledFrame], data: Path,
                 init_sha: str | None = None) -> str:
    keep = {
        "init_sha256": init_sha,
        "model": cfg.to_dict()["model"],
        "roi": cfg.to_dict()["roi"],
        "reduce": cfg.source.reduce,
        "train": {k: v for k, v in cfg.to_dict()["train"].items() if k not in ("checkpoint_every", "threads")},
        "mode": mode,
        "data": str(data.resolve()),
        "train_frames": [f.name for f in train],
        "val_frames": [f.name for f in val],
    }
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _check_init(model_dir: Path, cfg: Config) -> ModelArtifact:
    """`train.init` before any data is read: a model folder with the same backbone kind and settings
    and eager weights, or a ModelError naming what differs."""
    if not (model_dir / "model.json").is_file():
        raise ModelError(f"train.init {str(model_dir)!r} is not a model folder (no model.json); give a folder made by "
                         "'railedge fit' or 'railedge train', or leave train.init empty")
    try:
        art = ModelArtifact.load(model_dir)
    except ModelError as e:
        raise ModelError(f"train.init {str(model_dir)!r}: {e}") from None
    mine, theirs = cfg.to_dict()["model"], art.meta.get("model_config", {})
    b = mine["backbone"]
    if theirs.get("backbone") != b:
        raise ModelError(f"train.init {str(model_dir)!r} is a {theirs.get('backbone')} model and this training a {b} one; "
                         f"give a {b} model, or leave train.init empty")
    other = theirs.get(b) or {}
    diff = sorted(k for k in set(mine[b]) | set(other) if other.get(k) != mine[b].get(k))
    if diff:
        raise ModelError(
            f"train.init {str(model_dir)!r} has other backbone settings than this training "
            f"({', '.join(f'model.{b}.{k}' for k in diff)}); train with the same model settings "
            "(its model.json 'model_config'), or leave train.init empty")
    wfile = art.path / "weights.pt"
    if not wfile.is_file():
        raise ModelError(f"train.init {str(model_dir)!r} has no weights.pt (the eager weights); re-export it with railedge fit or train")
    return art


def _init_from(net: Any, art: ModelArtifact, torch: Any) -> dict[str, Any]:
    """Start from another model's weights (fine-tuning; `train.init`, checked by _check_init): a
    trained model (backbone and head) or a fitted one (backbone only). Head tensors are taken where
    their shapes match (another class list re-initialises the class layer only)."""
    model_dir = art.path
    raw = (art.path / "weights.pt").read_bytes()
    state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    if not art.has_head:
        state = {"backbone." + k: v for k, v in state.items()}
    own = net.state_dict()
    take = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    missing = [k for k in own if k.startswith("backbone.") and k not in take]
    if missing:
        raise ModelError(f"train.init {str(model_dir)!r}: its weights do not fit this backbone ({missing[0]} and {len(missing) - 1} more)")
    net.load_state_dict(take, strict=False)
    fresh = sorted({k.rsplit(".", 1)[0] for k in own if k not in take})
    sha = hashlib.sha256(raw).hexdigest()
    log.info("train_init", model=str(model_dir), tensors=len(take), fresh=fresh)
    return {"model": str(model_dir), "sha256": sha, "fresh": fresh}


def _class_weights(frames: list[LabelledFrame], k: int, stride: int, normal_only: bool) -> np.ndarray:
    if normal_only:
        return np.array([1.0, 3.0], np.float32)
    tot = np.zeros(k + 1)
    for f in frames:
        if f.label_map is not None:
            t, w = cell_targets(f.label_map, k, stride)
            tot += (t * w).sum(axis=(1, 2))
    tot = np.maximum(tot, 1.0)
    return np.clip(np.sqrt(tot[0] / tot), 1.0, 10.0).astype(np.float32)


def _validate(net: Any, frames: list[LabelledFrame], classes: int, stride: int, weights: Any, normal_only: bool,
              seed: int, torch: Any) -> dict[str, Any]:
    """Validation loss and AUROCs on held-out frames (eval mode, plain spikes)."""
    from railedge.scoring.head import HeadScorer

    scorer = HeadScorer(["normal"] + ["c%d" % i for i in range(classes)], sigma=1.0)
    xs, tgts, wts, img_pos, cell_pos, cell_neg, frame_scores, frame_pos = [], [], [], [], [], [], [], []
    for i, f in enumerate(frames):
        x = f.x
        lm = np.zeros(x.shape, np.uint8) if f.label_map is None else f.label_map
        if normal_only:
            lm = np.where(lm > 0, IGNORE, 0).astype(np.uint8)
            if i % 2 == 0:  # every other held-out frame gets a fixed synthetic anomaly
                from railedge.synthetic_defects import paste

                x, mask, _ = paste(x, np.random.default_rng([seed, i, 0x7A1]))
                lm = np.where(mask > 0, 1, lm).astype(np.uint8)
        t, w = cell_targets(lm, classes, stride)
        xs.append(x)
        tgts.append(t)
        wts.append(w)
    net.eval()
    losses = []
    with torch.no_grad():
        for a in range(0, len(xs), 4):
            x = torch.from_numpy(np.stack(xs[a: a + 4])[:, None])
            logits = net.logits(x)
            t = torch.from_numpy(np.stack(tgts[a: a + 4]))
            w = torch.from_numpy(np.stack(wts[a: a + 4]))
            losses.append(float(_loss(logits, t, w, weights, torch)) * len(x))
            probs = torch.softmax(logits, 1).numpy()
            for p, tt, ww in zip(probs, t.numpy(), w.numpy()):
                dmap = scorer._blur(p[1])
                frame_scores.append(float(dmap.max()))
                frame_pos.append(bool((tt[1] >= 0.5).any()))
                pos = (tt[1] >= 0.5) & (ww > 0)
                neg = (tt[0] >= 0.999) & (ww > 0)
                cell_pos.append(dmap[pos])
                cell_neg.append(dmap[neg])
    fs, fp = np.array(frame_scores), np.array(frame_pos)
    return {
        "val_loss": round(sum(losses) / max(1, len(xs)), 5),
        "val_image_auroc": _r(auroc(fs[fp], fs[~fp])),
        "val_cell_auroc": _r(auroc(np.concatenate(cell_pos), np.concatenate(cell_neg))),
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def _loss(logits: Any, target: Any, weight: Any, class_w: Any, torch: Any) -> Any:
    logp = torch.log_softmax(logits, 1)
    ce = -(target * logp).sum(1)  # (B, h, w)
    cw = (target * class_w.view(1, -1, 1, 1)).sum(1)
    w = weight * cw
    return (ce * w).sum() / w.sum().clamp(min=1.0)


def train(
    cfg: Config,
    data: str | Path,
    out: str | Path,
    *,
    fmt: str = "auto",
    mode: str = "auto",
    val: str | Path | None = None,
    restart: bool = False,
    progress: Progress | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train and write a model artifact to `out`; returns a summary (curve, timings, threshold)."""
    torch = _torch()
    t_start = time.monotonic()
    tc = cfg.train
    torch.set_num_threads(int(tc.threads))
    out, data = Path(out), Path(data)
    h, w = cfg.model.input_height, cfg.model.input_width
    pre = Preprocess(h, w)
    init_art = _check_init(Path(tc.init), cfg) if tc.init else None  # a wrong --init fails before the data loads
    reduce = resolve_reduce(cfg.source.reduce, data, cfg.roi, (h, w))
    fs = load_frames(data, fmt, pre, cfg.roi, reduce, max_frames=None)
    if mode == "auto":
        mode = "labelled" if fs.labelled else "normal"
    if mode not in ("labelled", "normal"):
        raise DataError(f"--mode {mode!r}: expected auto, labelled or normal")
    if mode == "labelled" and not fs.labelled:
        raise DataError(f"data {str(data)!r} has no labels ({fs.fmt}); give a YOLO or mask folder, or use --mode normal")
    normal_only = mode == "normal"
    if val is not None:
        vs = load_frames(Path(val), fmt if Path(val).is_dir() else "auto", pre, cfg.roi, resolve_reduce(cfg.source.reduce, val, cfg.roi, (h, w)))
        train_frames, val_frames = fs.frames, vs.frames
        if not normal_only and vs.classes != fs.classes:
            raise DataError(f"--val classes {vs.classes} differ from the training data's {fs.classes}")
    else:
        if len(fs.frames) < 2:
            raise DataError(f"data {str(data)!r} has {len(fs.frames)} frame(s); training needs at least 2 (one held out)")
        tr, ho = split_by_run(fs.frames, float(tc.val_fraction))
        train_frames, val_frames = [fs.frames[i] for i in tr], [fs.frames[i] for i in ho]
    data_classes = ["defect"] if normal_only else list(fs.classes)
    head_classes = ["normal"] + data_classes
    k = len(data_classes)

    from railedge.backbones import build_backbone
    from railedge.train.net import HeadedBackbone

    torch.manual_seed(int(tc.seed))
    backbone = build_backbone(cfg.model)
    stride = int(backbone.stride)
    if h % stride or w % stride:
        raise ModelError(f"model.input_height/input_width ({h}x{w}) must be multiples of the backbone stride {stride}")
    net = HeadedBackbone(backbone, k + 1, int(tc.head_width), dilation=int(tc.head_dilation))
    for p in net.parameters():
        p.requires_grad_(True)
    init = _init_from(net, init_art, torch) if init_art is not None else None
    sampler = TileSampler(train_frames, k, cfg, stride, normal_only)
    total = sampler.steps_per_epoch * int(tc.epochs)
    class_w = torch.from_numpy(_class_weights(train_frames, k, stride, normal_only))
    opt = torch.optim.AdamW(net.parameters(), lr=float(tc.lr), weight_decay=float(tc.weight_decay))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))

    work = out.with_name(out.name + ".train")
    ckpt = work / CHECKPOINT
    fp = _fingerprint(cfg, mode, train_frames, val_frames, data, init["sha256"] if init else None)
    if restart:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    step, curve, elapsed_before = 0, {"steps": [], "epochs": []}, 0.0
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != fp:
            raise DataError(
                f"{ckpt} is the checkpoint of a different training run (other data, split or settings); "
                "pass --restart to discard it, or --out to train elsewhere"
            )
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step, curve, elapsed_before = int(state["step"]), state["curve"], float(state.get("elapsed_s", 0.0))
        log.info("train_resumed", checkpoint=str(ckpt), step=step, of=total)
    log.info("train_start", mode=mode, backbone=cfg.model.backbone, train_frames=len(train_frames), val_frames=len(val_frames),
             classes=head_classes, steps=total, steps_per_epoch=sampler.steps_per_epoch, resumed_at=step)
    if progress:
        progress("start", step=step, total=total, epochs=int(tc.epochs), steps_per_epoch=sampler.steps_per_epoch,
                 train_frames=len(train_frames), val_frames=len(val_frames), mode=mode)

    def save(at: int) -> None:
        tmp = work / (CHECKPOINT + ".tmp")
        torch.save({"fingerprint": fp, "step": at, "model": net.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "curve": curve, "elapsed_s": elapsed_before + time.monotonic() - t_run},
                   tmp)
        tmp.replace(ckpt)

    t_run = time.monotonic()
    ema = None
    try:
        while step < total:
            if stop_after is not None and step >= stop_after:
                save(step)
                raise TrainingStopped(step, ckpt)
            net.train()
            x, t, wt = sampler.batch(step)
            t0 = time.perf_counter()
            logits = net.logits(torch.from_numpy(x))
            loss = _loss(logits, torch.from_numpy(t), torch.from_numpy(wt), class_w, torch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            sched.step()
            step += 1
            lv = float(loss.detach())
            ema = lv if ema is None else 0.9 * ema + 0.1 * lv
            curve["steps"].append([step, round(lv, 5)])
            if progress:
                progress("step", step=step, total=total, loss=lv, loss_ema=ema, seconds=time.perf_counter() - t0,
                         lr=sched.get_last_lr()[0])
            if step % sampler.steps_per_epoch == 0 or step == total:
                epoch = math.ceil(step / sampler.steps_per_epoch)
                steps_here = [l for s_, l in curve["steps"] if s_ > step - sampler.steps_per_epoch]
                entry = {"epoch": epoch, "step": step, "train_loss": round(float(np.mean(steps_here)), 5),
                         **_validate(net, val_frames, k, stride, class_w, normal_only, int(tc.seed), torch),
                         "elapsed_s": round(elapsed_before + time.monotonic() - t_run, 1)}
                curve["epochs"].append(entry)
                log.info("train_epoch", **entry)
                if progress:
                    progress("epoch", **entry)
                save(step)
            elif step % int(tc.checkpoint_every) == 0:
                save(step)
    except KeyboardInterrupt:
        save(step)
        log.warning("train_interrupted", step=step, checkpoint=str(ckpt), fix="run the same command again to resume")
        raise
    train_seconds = elapsed_before + time.monotonic() - t_run
    net.eval()
    summary = _write_artifact(cfg, net, pre, out, data, fs, train_frames, val_frames, head_classes, mode, curve,
                              train_seconds, normal_only, torch, Path(val) if val is not None else data)
    shutil.rmtree(work, ignore_errors=True)
    summary["seconds"] = round(time.monotonic() - t_start, 1)
    log.info("trained", **{k_: v for k_, v in summary.items() if k_ != "curve"})
    return summary


# ---------------------------------------------------------------------------------- calibration
def calibrate(cfg: Config, frames: list[LabelledFrame], outputs: np.ndarray, scorer: Any, stride: int,
              input_hw: tuple[int, int], normal_only: bool) -> tuple[float, dict[str, Any], np.ndarray]:
    """(threshold, how it was found, held-out frame scores) from the graph outputs of held-out frames.

    Labelled held-out frames and a class head: the lowest threshold at which alarm boxes give at most
    train.val_false_alarms_per_frame false alarms per frame. Otherwise, as fit: the order statistic of
    frame scores (labelled regions excluded) at scoring.false_alarm_rate."""
    gh, gw = outputs.shape[2:]
    ignores = [_clean_ignore(f, (int(gh), int(gw)), stride) for f in frames]
    hold = np.array([scorer(outputs[i], ignore=ignores[i])[1] for i in range(len(frames))])
    if not normal_only and hasattr(scorer, "classify") and any(f.boxes for f in frames):
        from railedge.evaluate import calibrate_on_labels
        from railedge.events.boxes import BoxFinder

        finder = BoxFinder(stride=stride, input_hw=input_hw, min_area_px=cfg.events.min_area_px, merge_gap_px=cfg.events.merge_gap_px)
        thr, at = calibrate_on_labels(frames, list(outputs), scorer, finder, cfg.events.alarm_classes,
                                      float(cfg.train.val_false_alarms_per_frame))
        return thr, {
            "method": "held-out labelled runs: the lowest threshold whose alarm boxes give at most "
                      "train.val_false_alarms_per_frame false alarms per frame",
            "val_false_alarms_per_frame": float(cfg.train.val_false_alarms_per_frame),
            "alarm_classes": list(cfg.events.alarm_classes),
            "at_threshold_on_holdout": at,
        }, hold
    thr = calibrate_threshold(hold, cfg.scoring.false_alarm_rate)
    if hasattr(scorer, "classify"):  # a probability map: no multiplicative guard band
        return thr, {
            "method": "held-out runs, labelled regions (dilated one cell) excluded; order statistic at the target false-alarm rate",
            "false_alarm_rate": cfg.scoring.false_alarm_rate,
        }, hold
    margin = float(getattr(cfg.scoring, "threshold_margin", 0.0))  # a memory bank: exactly as fit
    return thr * (1.0 + margin), {
        "method": "held-out runs, labelled regions (dilated one cell) excluded; order statistic at the target "
                  "false-alarm rate, times (1 + margin), as fit",
        "false_alarm_rate": cfg.scoring.false_alarm_rate,
        "margin": margin,
    }, hold


def recalibrate(cfg: Config, model_dir: str | Path, val: str | Path | None = None, fmt: str = "auto") -> dict[str, Any]:
    """Recompute a trained model's threshold on held-out frames (`val`, or the frames it recorded as
    held out) with the current settings, e.g. after changing events.alarm_classes or
    train.val_false_alarms_per_frame; rewrites model.json. No retraining."""
    model_dir = Path(model_dir)
    model = ModelArtifact.load(model_dir)
    tj = model_dir / "training.json"
    if not tj.is_file():
        raise ModelError(f"model {str(model_dir)!r} was not made by 'railedge train' (no training.json); refit it instead")
    training = json.loads(tj.read_text())
    names = None if val is not None else training["val_frames"]
    vdata = Path(val) if val is not None else Path(training.get("val_data", training["data"]))
    fs = load_frames(vdata, fmt, model.preprocess, cfg.roi,
                     resolve_reduce(cfg.source.reduce, vdata, cfg.roi, (model.preprocess.height, model.preprocess.width)), names=names)
    engine = model.engine("onnx", cfg.threads)
    outputs = np.concatenate([engine(f.x[None, None]) for f in fs.frames])
    normal_only = training["mode"] == "normal"
    if model.bank is not None:  # a memory-bank model keeps its smoothing
        from railedge.scoring import AnomalyScorer

        scorer: Any = AnomalyScorer(model.bank, model.sigma)
    else:
        from railedge.scoring.head import HeadScorer

        scorer = HeadScorer(model.head_classes, model.sigma)
    thr, calibration, hold = calibrate(cfg, fs.frames, outputs, scorer, model.stride,
                                       (model.preprocess.height, model.preprocess.width), normal_only)
    meta = {k: v for k, v in json.loads((model_dir / "model.json").read_text()).items() if k not in ("files", "format", "railedge_version")}
    meta["threshold"] = float(thr)
    meta["calibration"] = {**calibration, "holdout_frames": len(fs.frames),
                           "holdout_score_quantiles": {q: float(np.quantile(hold, float(q))) for q in ("0.5", "0.9", "0.99", "1.0")},
                           "overridden": False, "recalibrated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_meta(model_dir, meta)
    ModelArtifact.load(model_dir)
    log.info("recalibrated", model=str(model_dir), threshold=round(thr, 6), frames=len(fs.frames))
    return {"model": str(model_dir), "threshold": round(float(thr), 6), "holdout_frames": len(fs.frames), "calibration": calibration}


# ------------------------------------------------------------------------------------- artifact
def _clean_ignore(f: LabelledFrame, grid: tuple[int, int], stride: int) -> np.ndarray:
    """(h,w) True where a cell touches a labelled region (any class), dilated by one cell."""
    import cv2

    if f.label_map is None:
        return np.zeros(grid, bool)
    gh, gw = grid
    lm = f.label_map[: gh * stride, : gw * stride].reshape(gh, stride, gw, stride)
    touched = ((lm > 0).any(axis=(1, 3))).astype(np.uint8)
    return cv2.dilate(touched, np.ones((3, 3), np.uint8)).astype(bool)


def _write_artifact(cfg: Config, net: Any, pre: Preprocess, out: Path, data: Path, fs: FrameSet,
                    train_frames: list[LabelledFrame], val_frames: list[LabelledFrame], head_classes: list[str],
                    mode: str, curve: dict, train_seconds: float, normal_only: bool, torch: Any,
                    val_data: Path | None = None) -> dict[str, Any]:
    from railedge.backbones.export import export_runtimes
    from railedge.runtime.onnx import OnnxEngine
    from railedge.scoring import AnomalyScorer, ColumnMemoryBank
    from railedge.scoring.head import HeadScorer

    h, w = pre.height, pre.width
    use_bank = normal_only and cfg.train.normal_scoring == "bank"
    module = net.backbone if use_bank else net
    module.eval()
    with building(out) as tmp:
        export_runtimes(module, h, w, tmp)
        engine = OnnxEngine(tmp / "backbone.onnx", cfg.threads)  # calibrate on the graph inference runs

        def feats_of(frames: list[LabelledFrame]) -> np.ndarray:
            return np.concatenate([engine(f.x[None, None]) for f in frames])

        vfeat = feats_of(val_frames)
        n_out, gh, gw = vfeat.shape[1:]
        stride = int(net.stride)
        extra: dict[str, Any] = {}
        if use_bank:
            tfeat = feats_of(train_frames)
            masks = np.stack([_clean_ignore(f, (gh, gw), stride) for f in train_frames])
            bank = ColumnMemoryBank.fit(tfeat, ~masks, cfg.scoring.bank_size, cfg.scoring.column_window, int(cfg.train.seed),
                                        project_dim=cfg.scoring.project_dim)
            bank.save(tmp / "bank.npz")
            scorer: Any = AnomalyScorer(bank, cfg.scoring.smoothing_sigma)
            scoring = {"mode": "bank"}
            extra["bank_size"] = bank.size
        else:
            scorer = HeadScorer(head_classes, cfg.scoring.smoothing_sigma)
            scoring = {"mode": "head", "classes": head_classes, "normal_channel": 0,
                       "defect_channel": head_classes.index("defect") if "defect" in head_classes else 1,
                       "head": net.head_meta(), "map": "1 - P(normal), Gaussian-smoothed"}
        cal_thr, calibration, hold = calibrate(cfg, val_frames, vfeat, scorer, stride, (h, w), normal_only)
        threshold = cfg.scoring.threshold if cfg.scoring.threshold is not None else cal_thr
        from railedge.train.plots import training_curve_png

        training = {
            "mode": mode,
            "data": str(data),
            "val_data": str(val_data or data),
            "format": fs.fmt,
            "train_frames": [f.name for f in train_frames],
            "val_frames": [f.name for f in val_frames],
            "train_runs": sorted({f.run for f in train_frames}),
            "val_runs": sorted({f.run for f in val_frames}),
            "classes": head_classes,
            "train_seconds": round(train_seconds, 1),
            "curve": curve,
            "settings": cfg.to_dict()["train"],
        }
        (tmp / "training.json").write_text(json.dumps(training, indent=1))
        training_curve_png(curve, tmp / "training_curve.png", title=f"{cfg.model.backbone} {mode}")
        meta = artifact_meta(
            cfg, pre, stride=stride, channels=n_out, grid=(gh, gw), threshold=threshold, holdout_scores=hold, data=data,
            calibration={**calibration, "holdout_frames": len(val_frames)},
            scoring=scoring,
            classes=[] if use_bank else head_classes[1:],
            trained={"mode": mode, "epochs": int(cfg.train.epochs), "seed": int(cfg.train.seed),
                     "train_seconds": round(train_seconds, 1), "final": curve["epochs"][-1] if curve["epochs"] else None},
            **extra,
        )
        write_meta(tmp, meta)
    return {
        "model": str(out),
        "backbone": cfg.model.backbone,
        "mode": mode,
        "scoring": scoring["mode"],
        "classes": head_classes if not use_bank else [],
        "train_frames": len(train_frames),
        "val_frames": len(val_frames),
        "val_runs": sorted({f.run for f in val_frames}),
        "threshold": round(float(threshold), 6),
        "train_seconds": round(train_seconds, 1),
        "epochs": curve["epochs"],
    }
