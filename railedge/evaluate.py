"""`railedge eval`: labelled evaluation of a model artifact on held-out footage.

Every frame goes through the same stages as the pipeline (rail band, preprocessing, the exported
graph on the configured runtime, the model's scorer, map → boxes at the model's threshold), one
frame at a time. Measured against the labels:

* image AUROC       frames with a defect box vs frames without (they may hold dirt or joints);
                    frame score = max of the alarm map (head models: smoothed P(alarm classes);
                    memory-bank models: the anomaly map).
* tile AUROC        8x8-cell tiles of the rail crop (64x64 input pixels): tiles touching a defect vs
                    tiles with no label at all (the origin study's "defect tiles vs clean tiles").
* pixel AUROC       the alarm map upsampled to half the input resolution, defect pixels vs all other
                    band pixels (dirt and joints are negatives here).
* boxes             regions of the anomaly map above the threshold (BoxFinder, as the pipeline),
                    each classified (head models); alarm boxes are those whose class is in
                    events.alarm_classes (every box for memory-bank models). A labelled defect is
                    found when an alarm box matches it: IoU >= 0.1, or the predicted
                    box lies mostly (>= half of it) inside the labelled one, or the predicted box
                    covers half of the labelled one while at most 8x its area. An alarm box that
                    matches no defect is a false alarm (also when it sits on dirt or a joint).
* PR / FROC         the same box measures over a sweep of thresholds; the recall at <= 0.2 false
                    alarms per frame there is an oracle operating point (chosen on these labels).
* confusion         truth (defect, dirt, gap..., background) x predicted class of the matching box
                    (or "missed").
* inference ms      median and p90 of the engine call per frame (batch 1), and of scoring."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from railedge.config import Config
from railedge.events.boxes import BoxFinder
from railedge.model import ModelArtifact
from railedge.sources.reduce import resolve_reduce
from railedge.train.data import IGNORE, LabelledFrame, load_frames
from railedge.values import Crop, Frame

FA_TARGET = 0.2
TILE_CELLS = 8


def auroc(pos: Sequence[float] | np.ndarray, neg: Sequence[float] | np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties averaged); None when either side is empty."""
    pos, neg = np.asarray(pos, np.float64).ravel(), np.asarray(neg, np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        return None
    s = np.concatenate([pos, neg])
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    cum = np.cumsum(counts)
    avg_rank = cum - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    ranks = avg_rank[inv]
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def roc_curve(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) over every distinct threshold."""
    s = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    o = np.argsort(-s, kind="mergesort")
    s, y = s[o], y[o]
    keep = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp, fp = np.cumsum(y)[keep], np.cumsum(1 - y)[keep]
    return np.r_[0.0, fp / max(1, len(neg))], np.r_[0.0, tp / max(1, len(pos))]


def box_match(p: Sequence[float], g: Sequence[float]) -> bool:
    """Whether a predicted box p and a labelled box g (x0, y0, x1, y1) are the same thing (see module doc)."""
    iw = min(p[2], g[2]) - max(p[0], g[0])
    ih = min(p[3], g[3]) - max(p[1], g[1])
    if iw <= 0 or ih <= 0:
        return False
    inter = iw * ih
    ap = max((p[2] - p[0]) * (p[3] - p[1]), 1e-9)
    ag = max((g[2] - g[0]) * (g[3] - g[1]), 1e-9)
    if inter / (ap + ag - inter) >= 0.1:
        return True
    if inter / ap >= 0.5:  # the predicted box lies mostly on the labelled one: a fragment of it
        return True
    return inter / ag >= 0.5 and ap <= 8 * ag  # it covers the labelled box without being far larger


@dataclass
class FrameResult:
    name: str
    amap: np.ndarray  # the scorer's map (boxes come from it)
    alarm_map: np.ndarray  # what the image/tile/pixel AUROCs score
    probs: np.ndarray | None  # head models: the graph output (K, h, w)
    crop: Crop
    gt: list[tuple[str, float, float, float, float]]
    label_map: np.ndarray | None
    infer_ms: float
    score_ms: float
    boxes: list[dict[str, Any]] = field(default_factory=list)


def _boxes_at(fr: FrameResult, threshold: float, finder: BoxFinder, scorer: Any, alarm_classes: Sequence[str]) -> list[dict[str, Any]]:
    from railedge.scoring.head import box_cells

    out = []
    for b in finder(fr.amap, threshold, fr.crop):
        if fr.probs is not None:
            cls, cs = scorer.classify(fr.probs, box_cells(b, fr.crop, fr.amap.shape))
            alarm = cls in alarm_classes
        else:
            cls, cs, alarm = "anomaly", None, True
        out.append({"xyxy": (b.x, b.y, b.x + b.w, b.y + b.h), "score": b.score, "class": cls, "class_score": cs, "alarm": alarm})
    return out


def _box_stats(results: list[FrameResult], per_frame_boxes: list[list[dict[str, Any]]], alarm_classes: Sequence[str]) -> dict[str, Any]:
    found = total = fa = alarms = tp_alarms = 0
    for fr, boxes in zip(results, per_frame_boxes):
        gts = [g[1:] for g in fr.gt if g[0] in alarm_classes]
        total += len(gts)
        ab = [b for b in boxes if b["alarm"]]
        alarms += len(ab)
        for g in gts:
            if any(box_match(b["xyxy"], g) for b in ab):
                found += 1
        for b in ab:
            if any(box_match(b["xyxy"], g) for g in gts):
                tp_alarms += 1
            else:
                fa += 1
    n = max(1, len(results))
    return {
        "defect_boxes": total,
        "found": found,
        "recall": round(found / total, 4) if total else None,
        "alarm_boxes": alarms,
        "precision": round(tp_alarms / alarms, 4) if alarms else None,
        "false_alarms": fa,
        "false_alarms_per_frame": round(fa / n, 4),
    }


def _confusion(results: list[FrameResult], per_frame_boxes: list[list[dict[str, Any]]], truth: list[str],
               predicted: list[str]) -> list[list[int]]:
    rows = truth + ["background"]
    cols = ["missed"] + predicted
    m = np.zeros((len(rows), len(cols)), int)
    for fr, boxes in zip(results, per_frame_boxes):
        for cls, *g in fr.gt:
            if cls not in truth:
                continue
            best = max((b for b in boxes if box_match(b["xyxy"], g)), key=lambda b: b["score"], default=None)
            m[rows.index(cls), 0 if best is None else cols.index(best["class"])] += 1
        for b in boxes:
            if not any(box_match(b["xyxy"], g) for _c, *g in fr.gt):
                m[len(rows) - 1, cols.index(b["class"])] += 1
    return m.tolist()


def _tiles(fr: FrameResult, alarm_classes_idx: list[int]) -> tuple[list[float], list[float]]:
    if fr.label_map is None:
        return [], []
    gh, gw = fr.alarm_map.shape
    H, W = fr.label_map.shape
    sy, sx = H // gh, W // gw
    pos, neg = [], []
    for r in range(0, gh, TILE_CELLS):
        for c in range(0, gw, TILE_CELLS):
            lm = fr.label_map[r * sy: (r + TILE_CELLS) * sy, c * sx: (c + TILE_CELLS) * sx]
            s = float(fr.alarm_map[r: r + TILE_CELLS, c: c + TILE_CELLS].max())
            if np.isin(lm, alarm_classes_idx).any():
                pos.append(s)
            elif not ((lm > 0) & (lm != IGNORE)).any():
                neg.append(s)
    return pos, neg


def _pixels(fr: FrameResult, alarm_classes_idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
    if fr.label_map is None:
        return np.zeros(0), np.zeros(0)
    H, W = fr.label_map.shape
    up = cv2.resize(fr.alarm_map.astype(np.float32), (W // 2, H // 2), interpolation=cv2.INTER_LINEAR)
    lm = fr.label_map[::2, ::2][: H // 2, : W // 2]
    pos = np.isin(lm, alarm_classes_idx)
    valid = lm != IGNORE
    return up[pos & valid], up[~pos & valid]


def frame_result(f: LabelledFrame, out: np.ndarray, scorer: Any, has_head: bool, alarm: Sequence[str], index: int = 0,
                 infer_ms: float = 0.0) -> FrameResult:
    """Score one frame's graph output as the pipeline does (boxes are added by the caller)."""
    t1 = time.perf_counter()
    amap, _score = scorer(out)
    am = scorer.class_map(out, alarm) if has_head else amap
    t2 = time.perf_counter()
    frame = Frame(index=index, source=f.name, image=np.empty((0, 0), np.uint8), t_mono=0.0, t_wall=0.0, scale=f.scale)
    crop = Crop(frame=frame, band=f.band, image=np.empty((0, 0), np.uint8))
    return FrameResult(f.name, amap, am, out if has_head else None, crop, list(f.boxes or []), f.label_map, infer_ms,
                       (t2 - t1) * 1e3)


def sweep(results: list[FrameResult], finder: BoxFinder, scorer: Any, alarm: Sequence[str], n: int = 40,
          extra: Sequence[float] = ()) -> list[dict[str, Any]]:
    """Box recall, precision and false alarms per frame over `n` thresholds from the median map level
    to the highest map value (plus `extra`)."""
    amax = max(float(fr.amap.max()) for fr in results)
    lo = float(np.min([np.median(fr.amap) for fr in results]))
    out = []
    for t in np.unique(np.r_[np.linspace(lo, amax, n), list(extra)]):
        st = _box_stats(results, [_boxes_at(fr, float(t), finder, scorer, alarm) for fr in results], alarm)
        out.append({"threshold": round(float(t), 6), **st})
    return out


def calibrate_on_labels(frames: list[LabelledFrame], outputs: Sequence[np.ndarray], scorer: Any, finder: BoxFinder,
                        alarm: Sequence[str], target_fa: float) -> tuple[float, dict[str, Any]]:
    """The lowest threshold at which alarm boxes on labelled held-out frames give at most
    `target_fa` false alarms per frame (head models trained on labels)."""
    results = [frame_result(f, o, scorer, True, alarm, i) for i, (f, o) in enumerate(zip(frames, outputs))]
    sw = sweep(results, finder, scorer, alarm, n=60)
    ok = [x for x in sw if x["false_alarms_per_frame"] <= target_fa]
    if not ok:
        top = max(float(fr.amap.max()) for fr in results)
        return top + 1e-6, {"false_alarms_per_frame": 0.0, "recall": 0.0, "note": "no threshold met the target"}
    best = min(ok, key=lambda x: x["threshold"])
    return float(best["threshold"]), {k: best[k] for k in ("recall", "precision", "false_alarms_per_frame", "found", "defect_boxes")}


def evaluate(cfg: Config, model_path: str | Path, data: str | Path, fmt: str = "auto", plots: str | Path | None = None,
             alarm_classes: Sequence[str] | None = None, threshold: float | None = None,
             names: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate a model artifact on labelled data; returns the metrics (see the module docstring)."""
    model = ModelArtifact.load(model_path)
    engine = model.engine(cfg.runtime, cfg.threads, cfg.spinning)
    scorer = model.scorer()
    alarm = list(alarm_classes if alarm_classes is not None else cfg.events.alarm_classes)
    thr = threshold if threshold is not None else (cfg.scoring.threshold if cfg.scoring.threshold is not None else model.threshold)
    reduce = resolve_reduce(cfg.source.reduce, data, cfg.roi, (model.preprocess.height, model.preprocess.width))
    fs = load_frames(data, fmt, model.preprocess, cfg.roi, reduce, names=names)
    frames: list[LabelledFrame] = [f for f in fs.frames if f.boxes is not None]
    if not frames:
        from railedge.errors import DataError

        raise DataError(f"data {str(data)!r} has no labels; eval needs a YOLO or mask folder")
    alarm_idx = [fs.classes.index(c) + 1 for c in alarm if c in fs.classes]
    finder = BoxFinder(stride=model.stride, input_hw=(model.preprocess.height, model.preprocess.width),
                       min_area_px=cfg.events.min_area_px, merge_gap_px=cfg.events.merge_gap_px)
    engine(frames[0].x[None, None])  # warm-up, not timed
    results: list[FrameResult] = []
    for i, f in enumerate(frames):
        t0 = time.perf_counter()
        out = engine(f.x[None, None])[0]
        t1 = time.perf_counter()
        results.append(frame_result(f, out, scorer, model.has_head, alarm, i, (t1 - t0) * 1e3))
    for fr in results:
        fr.boxes = _boxes_at(fr, thr, finder, scorer, alarm)

    is_pos = np.array([any(g[0] in alarm for g in fr.gt) for fr in results])
    fscore = np.array([float(fr.alarm_map.max()) for fr in results])
    tp_, tn_ = [], []
    pp, pn = [], []
    for fr in results:
        a, b = _tiles(fr, alarm_idx)
        tp_ += a
        tn_ += b
        c, d = _pixels(fr, alarm_idx)
        pp.append(c)
        pn.append(d)
    at = _box_stats(results, [fr.boxes for fr in results], alarm)

    # sweep thresholds over the range of the maps for PR / FROC
    sw = sweep(results, finder, scorer, alarm, extra=[thr])
    ok = [s for s in sw if s["false_alarms_per_frame"] <= FA_TARGET and s["recall"] is not None]
    best = max(ok, key=lambda s: (s["recall"], -s["false_alarms_per_frame"]), default=None)

    truth = list(fs.classes)
    predicted = model.head_classes[1:] if model.has_head else ["anomaly"]
    conf = _confusion(results, [fr.boxes for fr in results], truth, predicted)
    inf = np.array([fr.infer_ms for fr in results])
    sc = np.array([fr.score_ms for fr in results])
    fpr, tpr = roc_curve(fscore[is_pos], fscore[~is_pos]) if is_pos.any() and (~is_pos).any() else (np.zeros(0), np.zeros(0))
    summary: dict[str, Any] = {
        "model": str(model_path),
        "backbone": model.backbone,
        "scoring": model.scoring.get("mode", "bank"),
        "classes": model.head_classes,
        "data": str(data),
        "frames": len(results),
        "frames_with_defect": int(is_pos.sum()),
        "alarm_classes": alarm,
        "threshold": round(float(thr), 6),
        "image_auroc": _r(auroc(fscore[is_pos], fscore[~is_pos])),
        "tile_auroc": _r(auroc(tp_, tn_)),
        "tiles": {"defect": len(tp_), "clean": len(tn_)},
        "pixel_auroc": _r(auroc(np.concatenate(pp), np.concatenate(pn))),
        "at_threshold": at,
        "at_fa_target": None if best is None else {"false_alarms_per_frame_target": FA_TARGET, **best,
                                                    "note": "threshold chosen on these labels (oracle operating point)"},
        "pr_sweep": sw,
        "confusion": {"rows": truth + ["background"], "cols": ["missed"] + predicted, "counts": conf},
        "inference_ms": {"median": round(float(np.median(inf)), 2), "p90": round(float(np.percentile(inf, 90)), 2),
                         "runtime": cfg.runtime, "threads": cfg.threads},
        "scoring_ms": {"median": round(float(np.median(sc)), 2), "p90": round(float(np.percentile(sc, 90)), 2)},
        "misses": [{"frame": fr.name, "class": g[0], "bbox_xyxy": [round(v) for v in g[1:]]}
                   for fr in results for g in fr.gt if g[0] in alarm
                   and not any(b["alarm"] and box_match(b["xyxy"], g[1:]) for b in fr.boxes)],
        "false_alarm_boxes": [{"frame": fr.name, "class": b["class"], "bbox_xyxy": [round(v) for v in b["xyxy"]],
                               "on": next((g[0] for g in fr.gt if box_match(b["xyxy"], g[1:])), "background")}
                              for fr in results for b in fr.boxes
                              if b["alarm"] and not any(box_match(b["xyxy"], g[1:]) for g in fr.gt if g[0] in alarm)],
    }
    if plots is not None:
        summary["plots"] = _plots(Path(plots), summary, fpr, tpr)
    return summary


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def _plots(d: Path, s: dict[str, Any], fpr: np.ndarray, tpr: np.ndarray) -> list[str]:
    from railedge.train.plots import confusion_png, line_chart

    d.mkdir(parents=True, exist_ok=True)
    name = f"{s['backbone']} ({s['scoring']})"
    out = []
    if len(fpr):
        out.append(line_chart(d / "roc.png", [(f"image AUROC {s['image_auroc']}", fpr, tpr)], title=f"{name}: image ROC",
                              xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1), diagonal=True))
    sw = [x for x in s["pr_sweep"] if x["recall"] is not None]
    at = s["at_threshold"]
    pr = [(x["recall"], x["precision"]) for x in sw if x["precision"] is not None]
    marks = [(at["recall"], at["precision"], "model threshold")] if at["recall"] is not None and at["precision"] is not None else []
    if pr:
        out.append(line_chart(d / "pr.png", [("defect boxes", [a for a, _ in pr], [b for _, b in pr])], title=f"{name}: precision-recall",
                              xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1), marks=marks))
    if sw:
        fmax = max(1.0, min(5.0, max(x["false_alarms_per_frame"] for x in sw)))
        marks = [(at["false_alarms_per_frame"], at["recall"], "model threshold")] if at["recall"] is not None else []
        out.append(line_chart(d / "froc.png", [("defect boxes", [x["false_alarms_per_frame"] for x in sw], [x["recall"] for x in sw])],
                              title=f"{name}: recall vs false alarms", xlabel="false alarms per frame", ylabel="recall",
                              xlim=(0, fmax), ylim=(0, 1), marks=marks))
    c = s["confusion"]
    out.append(confusion_png(d / "confusion.png", c["counts"], c["rows"], c["cols"], f"{name}: boxes at the model threshold"))
    return [str(p) for p in out]


# ------------------------------------------------------------------------------------------- CLI
def _format(s: dict[str, Any]) -> str:
    at, fa = s["at_threshold"], s["at_fa_target"]
    lines = [
        f"{s['model']} ({s['backbone']}, {s['scoring']}) on {s['data']}: {s['frames']} frames, {s['frames_with_defect']} with a defect",
        f"  image AUROC {s['image_auroc']}   tile AUROC {s['tile_auroc']}   pixel AUROC {s['pixel_auroc']}",
        f"  at the model threshold {s['threshold']}: defect-box recall {at['recall']} ({at['found']}/{at['defect_boxes']}), "
        f"precision {at['precision']}, {at['false_alarms_per_frame']} false alarms per frame",
    ]
    if fa:
        lines.append(f"  best recall at <= {FA_TARGET} false alarms/frame (threshold {fa['threshold']}, chosen on these labels): "
                     f"{fa['recall']} at {fa['false_alarms_per_frame']}")
    c = s["confusion"]
    lines.append("  confusion (truth x predicted): " + " | ".join(c["cols"]))
    for r, row in zip(c["rows"], c["counts"]):
        lines.append(f"    {r:<11} " + "  ".join(f"{v:>6}" for v in row))
    lines.append(f"  inference {s['inference_ms']['median']} ms/frame median (p90 {s['inference_ms']['p90']}), "
                 f"scoring {s['scoring_ms']['median']} ms ({s['inference_ms']['runtime']}, {s['inference_ms']['threads']} threads)")
    if s.get("plots"):
        lines.append("  plots: " + ", ".join(s["plots"]))
    return "\n".join(lines) + "\n"


def cmd_eval(args: argparse.Namespace, load: Callable) -> int:
    extra = [f"model.path={args.model}"]
    cfg = load(args, extra)
    s = evaluate(cfg, args.model, args.data, fmt=args.format, plots=args.plots)
    if args.json:
        sys.stdout.write(json.dumps(s) + "\n")
    else:
        sys.stdout.write(_format(s))
    return 0


def add_parser(sub: Any, config_args: Callable, load: Callable) -> None:
    c = sub.add_parser("eval", help="evaluate a model on labelled footage (AUROC, box recall, false alarms, confusion)")
    config_args(c)
    c.add_argument("--model", required=True, help="model directory (railedge fit or train)")
    c.add_argument("--data", required=True, help="labelled data: YOLO folder or mask folder")
    c.add_argument("--format", choices=["auto", "yolo", "masks"], default="auto")
    c.add_argument("--json", action="store_true", help="print every metric as one JSON object")
    c.add_argument("--plots", help="write PNG plots (ROC, precision-recall, recall vs false alarms, confusion) to this folder")
    c.set_defaults(func=lambda a: cmd_eval(a, load))
