"""`railedge report RUN_DIR`: a static HTML page (with PNG figures) of a replay's run directory.

Shows the anomaly score along the track (chainage when the run knew it, else the frame index),
with events and, for synthetic footage, the true anomalies; a gallery of the detected defects with
their snapshots; per-stage latency histograms; and the SNN vs ResNet-18 comparison of `railedge
compare` (feature values per layer, spikes per layer and time step, membrane potentials, inference
time) on frames of the same footage. Everything is files next to report.html: it opens offline.

The figures are drawn with OpenCV (already a dependency of the edge runtime), not a plotting
library: a few line, step and bar charts."""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from railedge.errors import DataError, RailedgeError
from railedge.logs import get_logger



def _log():
    """The logger, made when used: this module is imported while the CLI builds its parser, before
    logging is set up, and a logger bound then would write to stdout."""
    return get_logger("railedge.report")

# Colours (BGR): a colour-blind-safe palette (Okabe-Ito).
PALETTE = [(178, 114, 0), (0, 94, 213), (115, 158, 0), (167, 121, 204), (0, 159, 230), (233, 180, 86), (66, 228, 240), (0, 0, 0)]
GREY = (150, 150, 150)
FONT = cv2.FONT_HERSHEY_SIMPLEX


# ---- charts -------------------------------------------------------------------------------------

def nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    out = []
    v = start
    while v <= hi + 1e-9 * step:
        out.append(round(v, 12))
        v += step
    return out


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.0e}"
    if a >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


class Chart:
    """A line/step/bar chart drawn into a BGR image: axes, ticks, labels, legend."""

    def __init__(self, width: int = 900, height: int = 340, title: str = "", xlabel: str = "", ylabel: str = "",
                 logy: bool = False) -> None:
        self.w, self.h = width, height
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.logy = logy
        self.ml, self.mr, self.mt, self.mb = 70, 20, 34, 48
        self.items: list[tuple[str, Any]] = []
        self.legend: list[tuple[str, tuple[int, int, int]]] = []
        self.xlim: tuple[float, float] | None = None
        self.ylim: tuple[float, float] | None = None
        self.xticks: list[tuple[float, str]] | None = None

    # data
    def line(self, xs: Sequence[float], ys: Sequence[float], color: tuple[int, int, int], label: str = "",
             width: int = 2, dashed: bool = False) -> None:
        self.items.append(("line", (np.asarray(xs, float), np.asarray(ys, float), color, width, dashed)))
        if label:
            self.legend.append((label, color))

    def steps(self, edges: Sequence[float], counts: Sequence[float], color: tuple[int, int, int], label: str = "") -> None:
        e = np.asarray(edges, float)
        c = np.asarray(counts, float)
        xs = np.repeat(e, 2)[1:-1]
        ys = np.repeat(c, 2)
        self.line(xs, ys, color, label, 2)

    def bars(self, xs: Sequence[float], ys: Sequence[float], width: float, color: tuple[int, int, int], label: str = "") -> None:
        self.items.append(("bars", (np.asarray(xs, float), np.asarray(ys, float), width, color)))
        if label:
            self.legend.append((label, color))

    def span(self, x0: float, x1: float, color: tuple[int, int, int]) -> None:
        self.items.insert(0, ("span", (x0, x1, color)))

    def hline(self, y: float, color: tuple[int, int, int], label: str = "", dashed: bool = True) -> None:
        self.items.append(("hline", (y, color, dashed)))
        if label:
            self.legend.append((label, color))

    def markers(self, xs: Sequence[float], ys: Sequence[float], color: tuple[int, int, int], label: str = "",
                shape: str = "tri") -> None:
        self.items.append(("markers", (np.asarray(xs, float), np.asarray(ys, float), color, shape)))
        if label:
            self.legend.append((label, color))

    # geometry
    def _limits(self) -> tuple[float, float, float, float]:
        xs, ys = [], []
        for kind, d in self.items:
            if kind == "line" or (kind == "markers" and d[3] != "tick"):  # ticks sit on the axis, whatever y
                xs.append(d[0])
                ys.append(d[1])
            elif kind == "markers":
                xs.append(d[0])
            elif kind == "bars":
                xs.append(d[0] - d[2] / 2)
                xs.append(d[0] + d[2] / 2)
                ys.append(d[1])
                ys.append(np.zeros(1))
            elif kind == "hline":
                ys.append(np.array([d[0]]))
        x = np.concatenate(xs) if xs else np.zeros(1)
        y = np.concatenate(ys) if ys else np.zeros(1)
        x = x[np.isfinite(x)]
        y = y[np.isfinite(y)]
        if self.logy:
            y = y[y > 0]
        x0, x1 = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
        y0, y1 = (float(y.min()), float(y.max())) if y.size else (0.0, 1.0)
        if self.xlim:
            x0, x1 = self.xlim
        if self.ylim:
            y0, y1 = self.ylim
        if x1 <= x0:
            x0, x1 = x0 - 0.5, x1 + 0.5
        if self.logy:
            y0, y1 = max(y0, 1e-12), max(y1, 1e-12)
            y0, y1 = 10 ** math.floor(math.log10(y0)), 10 ** math.ceil(math.log10(y1) + 1e-9)
            if y1 <= y0:
                y1 = y0 * 10
        elif not self.ylim:
            pad = (y1 - y0) * 0.06 or 1.0
            low = y0 - pad
            y0, y1 = (0.0 if y0 >= 0 > low else low), y1 + pad  # no negative axis for non-negative data
        return x0, x1, y0, y1

    def render(self) -> np.ndarray:
        img = np.full((self.h, self.w, 3), 255, np.uint8)
        x0, x1, y0, y1 = self._limits()
        L, R, T, B = self.ml, self.w - self.mr, self.mt, self.h - self.mb

        def px(x: Any) -> Any:
            return L + (np.asarray(x, float) - x0) / (x1 - x0) * (R - L)

        def py(y: Any) -> Any:
            y = np.asarray(y, float)
            if self.logy:
                y = np.log10(np.maximum(y, y0 * 0.5))
                a, b = math.log10(y0), math.log10(y1)
            else:
                a, b = y0, y1
            return B - (y - a) / (b - a) * (B - T)

        # grid and ticks
        if self.logy:
            yt = [10.0 ** k for k in range(int(math.log10(y0)), int(math.log10(y1)) + 1)]
        else:
            yt = nice_ticks(y0, y1, 5)
        for v in yt:
            yy = int(round(float(py(v))))
            if T <= yy <= B:
                cv2.line(img, (L, yy), (R, yy), (235, 235, 235), 1)
                label = _fmt(v)
                (tw, th), _ = cv2.getTextSize(label, FONT, 0.4, 1)
                cv2.putText(img, label, (L - 6 - tw, yy + th // 2), FONT, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
        xt = self.xticks if self.xticks is not None else [(v, _fmt(v)) for v in nice_ticks(x0, x1, 8)]
        for v, label in xt:
            xx = int(round(float(px(v))))
            if L <= xx <= R:
                cv2.line(img, (xx, T), (xx, B), (240, 240, 240), 1)
                (tw, th), _ = cv2.getTextSize(label, FONT, 0.4, 1)
                cv2.putText(img, label, (xx - tw // 2, B + 16), FONT, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
        # data (clipped to the plot area)
        plot = img[T:B + 1, L:R + 1]
        off = np.array([L, T])
        for kind, d in self.items:
            if kind == "span":
                a, b, color = d
                xa, xb = int(round(float(px(a)))) - L, int(round(float(px(b)))) - L
                xa, xb = max(0, min(xa, xb)), min(plot.shape[1] - 1, max(xa, xb, xa + 1))
                if xb >= 0 and xa < plot.shape[1]:
                    plot[:, xa:xb + 1] = (0.75 * plot[:, xa:xb + 1] + 0.25 * np.array(color)).astype(np.uint8)
            elif kind == "line":
                xs, ys, color, width, dashed = d
                ok = np.isfinite(xs) & np.isfinite(ys)
                if self.logy:
                    ok &= ys > 0
                # draw each run of valid points on its own: a gap (an empty bin on a log axis) stays a gap
                cuts = np.flatnonzero(np.diff(ok.astype(np.int8))) + 1
                for seg in np.split(np.arange(len(xs)), cuts):
                    if seg.size == 0 or not ok[seg[0]]:
                        continue
                    pts = np.stack([px(xs[seg]), py(ys[seg])], 1) - off
                    pts = np.round(pts * 4).astype(np.int32)  # 2 fractional bits: smooth lines
                    if len(pts) > 1:
                        if dashed:
                            for i in range(0, len(pts) - 1, 2):
                                cv2.line(plot, tuple(pts[i]), tuple(pts[i + 1]), color, width, cv2.LINE_AA, shift=2)
                        else:
                            cv2.polylines(plot, [pts.reshape(-1, 1, 2)], False, color, width, cv2.LINE_AA, shift=2)
                    else:
                        cv2.circle(plot, tuple(pts[0]), 8, color, -1, cv2.LINE_AA, shift=2)
            elif kind == "bars":
                xs, ys, width, color = d
                for x, y in zip(xs, ys):
                    if not np.isfinite(y):
                        continue
                    xa, xb = int(px(x - width / 2)) - L, int(px(x + width / 2)) - L
                    ya, yb = int(py(max(y, y0 if self.logy else 0.0))) - T, int(py(y0 if self.logy else max(y0, 0.0))) - T
                    cv2.rectangle(plot, (xa, min(ya, yb)), (xb, max(ya, yb)), color, -1)
            elif kind == "hline":
                y, color, dashed = d
                yy = int(round(float(py(y)))) - T
                if 0 <= yy < plot.shape[0]:
                    if dashed:
                        for xx in range(0, plot.shape[1], 12):
                            cv2.line(plot, (xx, yy), (min(xx + 6, plot.shape[1] - 1), yy), color, 1, cv2.LINE_AA)
                    else:
                        cv2.line(plot, (0, yy), (plot.shape[1] - 1, yy), color, 1, cv2.LINE_AA)
            elif kind == "markers":
                xs, ys, color, shape = d
                for x, y in zip(px(xs) - L, py(ys) - T):
                    if not (np.isfinite(x) and np.isfinite(y)):
                        continue
                    x, y = int(round(x)), int(round(min(max(y, 6), plot.shape[0] - 2)))
                    if shape == "tri":
                        pts = np.array([[x, y - 7], [x - 5, y + 2], [x + 5, y + 2]], np.int32)
                        cv2.fillPoly(plot, [pts], color, cv2.LINE_AA)
                    elif shape == "tick":
                        cv2.line(plot, (x, plot.shape[0] - 1), (x, plot.shape[0] - 14), color, 2)
                    else:
                        cv2.circle(plot, (x, y), 4, color, -1, cv2.LINE_AA)
        cv2.rectangle(img, (L, T), (R, B), (90, 90, 90), 1)
        # text
        if self.title:
            cv2.putText(img, self.title, (L, 22), FONT, 0.55, (20, 20, 20), 1, cv2.LINE_AA)
        if self.xlabel:
            (tw, _), _ = cv2.getTextSize(self.xlabel, FONT, 0.45, 1)
            cv2.putText(img, self.xlabel, ((L + R - tw) // 2, self.h - 10), FONT, 0.45, (40, 40, 40), 1, cv2.LINE_AA)
        if self.ylabel:
            (tw, th), _ = cv2.getTextSize(self.ylabel, FONT, 0.45, 1)
            tmp = np.full((th + 8, tw + 4, 3), 255, np.uint8)
            cv2.putText(tmp, self.ylabel, (2, th + 2), FONT, 0.45, (40, 40, 40), 1, cv2.LINE_AA)
            rot = cv2.rotate(tmp, cv2.ROTATE_90_COUNTERCLOCKWISE)
            y_a = max(0, (T + B - rot.shape[0]) // 2)
            hh = min(rot.shape[0], self.h - y_a)
            img[y_a:y_a + hh, 2:2 + rot.shape[1]] = rot[:hh]
        if self.legend:
            lx = R - 10
            widths = [cv2.getTextSize(t, FONT, 0.4, 1)[0][0] for t, _ in self.legend]
            bw = max(widths) + 34
            bx = lx - bw
            by = T + 6
            cv2.rectangle(img, (bx, by), (lx, by + 16 * len(self.legend) + 6), (255, 255, 255), -1)
            cv2.rectangle(img, (bx, by), (lx, by + 16 * len(self.legend) + 6), (200, 200, 200), 1)
            for i, (t, c) in enumerate(self.legend):
                yy = by + 14 + 16 * i
                cv2.line(img, (bx + 6, yy - 4), (bx + 24, yy - 4), c, 3)
                cv2.putText(img, t, (bx + 30, yy), FONT, 0.4, (30, 30, 30), 1, cv2.LINE_AA)
        return img


def save_png(img: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise RailedgeError(f"cannot write figure {str(path)!r}; check the run directory's permissions")
    return path


def grid(images: list[np.ndarray], cols: int = 2) -> np.ndarray:
    """Tile charts of equal size into one image."""
    if not images:
        return np.full((10, 10, 3), 255, np.uint8)
    h, w = images[0].shape[:2]
    rows = -(-len(images) // cols)
    out = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out[r * h:(r + 1) * h, c * w:(c + 1) * w] = cv2.resize(im, (w, h)) if im.shape[:2] != (h, w) else im
    return out


# ---- the run -----------------------------------------------------------------------------------

def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                _log().warning("report_bad_line", file=str(path))
    return out


def load_run(run_dir: Path) -> dict[str, Any]:
    if not (run_dir / "run.json").is_file():
        raise DataError(f"{str(run_dir)!r} is not a run directory (no run.json); write one with 'railedge replay SOURCE --run-dir {run_dir}'")
    run = json.loads((run_dir / "run.json").read_text())
    run["frames"] = _jsonl(run_dir / "frames.jsonl")
    run["events"] = _jsonl(run_dir / "events.jsonl")
    if not run["frames"]:
        raise DataError(f"run directory {str(run_dir)!r} has no frames.jsonl records; replay again with --run-dir")
    truth = run.get("truth")
    run["truth_data"] = json.loads(Path(truth).read_text()) if truth and Path(truth).is_file() else None
    return run


def chains(events: list[dict]) -> list[dict]:
    """One entry per event id: the last event (end when complete) and the types seen."""
    by: dict[str, dict] = {}
    for e in events:
        c = by.setdefault(e["id"], {"id": e["id"], "types": []})
        c["types"].append(e["type"])
        c["last"] = e
    return list(by.values())


def fig_score(run: dict, out: Path) -> tuple[Path, str]:
    frames = run["frames"]
    ch = [((f.get("position") or {}).get("chainage_m")) for f in frames]
    use_ch = all(c is not None for c in ch)
    xs = np.array(ch if use_ch else [f["frame_index"] for f in frames], float)
    order = np.argsort(xs, kind="stable")
    scores = np.array([f["score"] for f in frames], float)
    thr = np.array([f["threshold"] for f in frames], float)
    level = np.array([f.get("stay_level") if f.get("stay_level") is not None else np.nan for f in frames], float)
    xlabel = "chainage (m)" if use_ch else "frame"
    c = Chart(1100, 380, "Anomaly score along the track", xlabel, "frame score")
    idx_x = {f["frame_index"]: x for f, x in zip(frames, xs)}
    for ch_ in chains(run["events"]):
        e = ch_["last"]
        a, b = idx_x.get(e["first_frame"]), idx_x.get(e["last_frame"])
        if a is not None and b is not None:
            c.span(min(a, b), max(a, b), (0, 94, 213))
    c.line(xs[order], scores[order], PALETTE[0], "frame score", 1)
    c.line(xs[order], thr[order], (0, 0, 200), "threshold", 1, dashed=True)
    if np.isfinite(level).any():
        c.line(xs[order], level[order], GREY, "stay level", 1, dashed=True)
    ev_x, ev_y = [], []
    for ch_ in chains(run["events"]):
        e = ch_["last"]
        pos = (e.get("position") or {}).get("chainage_m")
        x = pos if use_ch and pos is not None else idx_x.get(e["frame_index"])
        if x is not None:
            ev_x.append(x)
            ev_y.append(e["peak_score"])
    if ev_x:
        c.markers(ev_x, ev_y, (0, 94, 213), "defect event (span: first-last frame)")
    truth = run.get("truth_data")
    if truth:
        tx = [d["chainage_m"] if use_ch else (d["first_frame"] + d["last_frame"]) / 2 for d in truth["defects"]]
        c.markers(tx, [0.0] * len(tx), (115, 158, 0), "true anomaly (synth)", shape="tick")
    path = save_png(c.render(), out / "score_along_track.png")
    return path, xlabel


def fig_latency(run: dict, out: Path) -> tuple[Path, list[dict]]:
    stages: dict[str, list[float]] = {}
    for f in run["frames"]:
        for k, v in (f.get("latency_ms") or {}).items():
            stages.setdefault(k, []).append(float(v))
    charts = []
    rows = []
    if "total" in stages:  # the sum last
        stages["total"] = stages.pop("total")
    for i, (k, vals) in enumerate(stages.items()):
        a = np.asarray(vals)
        if a.size == 0:
            continue
        hi = float(np.percentile(a, 99.5)) if a.size > 10 else float(a.max())
        hi = hi if hi > 0 else 1.0
        counts, edges = np.histogram(np.minimum(a, hi), bins=30, range=(0.0, hi))
        c = Chart(520, 250, f"{k}: p50 {np.median(a):.2f} ms, p99 {np.percentile(a, 99):.2f} ms", "ms per frame", "frames")
        c.bars((edges[:-1] + edges[1:]) / 2, counts, (edges[1] - edges[0]) * 0.9, PALETTE[i % len(PALETTE)])
        c.xlim = (0.0, hi)
        charts.append(c.render())
        rows.append({"stage": k, "p50": float(np.median(a)), "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)),
                     "max": float(a.max()), "frames": int(a.size)})
    return save_png(grid(charts, 2), out / "latency_histograms.png"), rows


def fig_compare(cmp: dict, out: Path) -> list[tuple[Path, str]]:
    figs: list[tuple[Path, str]] = []
    snn, res = cmp["snn"], cmp["resnet"]
    # feature ranges: min..max bar with mean, both backbones
    names = [("snn " + k, v) for k, v in snn["features"].items()] + [("resnet " + k, v) for k, v in res["layers"].items()]
    c = Chart(1100, 360, "Feature values per layer: range (p1-p99 thick, min-max thin) and mean (dot)", "", "value")
    ticks = []
    for i, (name, s) in enumerate(names):
        col = PALETTE[0] if name.startswith("snn") else PALETTE[1]
        c.line([i, i], [s["min"], s["max"]], col, "", 1)
        c.line([i, i], [s["p1"], s["p99"]], col, "", 6)
        c.markers([i], [s["mean"]], (0, 0, 0), "", shape="dot")
        ticks.append((float(i), name.replace("snn ", "").replace("resnet ", "r:")))
    c.legend = [("SNN (spike rate / mean membrane features)", PALETTE[0]), ("ResNet-18 activations (r:)", PALETTE[1]), ("mean", (0, 0, 0))]
    c.xticks = ticks
    c.xlim = (-0.6, len(names) - 0.4)
    figs.append((save_png(c.render(), out / "compare_feature_ranges.png"), "Feature value range and mean per layer"))
    # feature distributions
    charts = []
    for title, items in (("SNN features per layer", snn["features"]), ("ResNet-18 activations per layer", res["layers"])):
        c = Chart(700, 320, title, "feature value", "values (log)", logy=True)
        for i, (k, s) in enumerate(items.items()):
            c.steps(s["hist"]["edges"], np.maximum(np.asarray(s["hist"]["counts"], float), 0.0), PALETTE[i % len(PALETTE)], k)
        charts.append(c.render())
    figs.append((save_png(grid(charts, 2), out / "compare_feature_distributions.png"), "Feature-value distributions per layer"))
    # spikes per layer and time step
    c1 = Chart(700, 320, "SNN spikes per frame at each time step", "time step", "spikes per frame")
    c2 = Chart(700, 320, "SNN firing rate at each time step", "time step", "share of neurons firing")
    for i, (name, L) in enumerate(snn["layers"].items()):
        t = np.arange(len(L["spike_counts_per_step"]))
        c1.line(t, L["spike_counts_per_step"], PALETTE[i % len(PALETTE)], f"{name} ({L['neurons']} neurons)")
        c2.line(t, L["rate_per_step"], PALETTE[i % len(PALETTE)], name)
    figs.append((save_png(grid([c1.render(), c2.render()], 2), out / "compare_spikes.png"), "Spike counts per layer and time step"))
    # membranes
    c = Chart(1100, 340, "SNN membrane potentials per layer (all steps and neurons)", "membrane potential (threshold 1.0)", "values (log)", logy=True)
    for i, (name, L) in enumerate(snn["layers"].items()):
        m = L.get("membrane")
        if m:
            c.steps(m["hist"]["edges"], m["hist"]["counts"], PALETTE[i % len(PALETTE)], f"{name}: {m['min']:.2f} .. {m['max']:.2f}")
    figs.append((save_png(c.render(), out / "compare_membranes.png"), "Membrane-potential distributions"))
    # timing
    labels, med, p99 = [], [], []
    for bb, rts in cmp["timing"].items():
        for rt, t in rts.items():
            if t:
                labels.append(f"{bb} {rt}")
                med.append(t["median_ms"])
                p99.append(t["p99_ms"])
    c = Chart(1100, 340, f"Inference time per frame, batch 1, warm-up excluded (input {cmp['input'][0]}x{cmp['input'][1]})", "", "ms")
    x = np.arange(len(labels), dtype=float)
    c.bars(x - 0.18, med, 0.34, PALETTE[0], "median")
    c.bars(x + 0.18, p99, 0.34, PALETTE[1], "p99")
    c.xticks = [(float(i), l) for i, l in enumerate(labels)]
    c.xlim = (-0.6, max(0.6, len(labels) - 0.4))
    figs.append((save_png(c.render(), out / "compare_timing.png"), "Inference time per runtime"))
    return figs


# ---- HTML --------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1160px;color:#222;background:#fff}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left} img.fig{max-width:100%;border:1px solid #eee}
.gallery{display:flex;flex-wrap:wrap;gap:12px} .card{border:1px solid #ddd;padding:6px;width:260px;font-size:.8em}
.card img{max-width:100%;max-height:320px;display:block;margin:auto} .muted{color:#777} code{background:#f4f4f4;padding:0 3px}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _table(headers: list[str], rows: list[list[Any]], left: int = 1) -> str:
    h = "".join(f"<th class='{'l' if i < left else ''}'>{_e(x)}</th>" for i, x in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td class='{'l' if i < left else ''}'>{_e(x)}</td>" for i, x in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _n(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def build_report(run_dir: str | Path, compare_frames: int = 16, compare_runtimes: list[str] | None = None,
                 no_compare: bool = False, recompare: bool = False, compare_repeat: int | None = None) -> Path:
    """Write RUN_DIR/report.html and RUN_DIR/figures/*.png; returns the HTML path."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    figs_dir = run_dir / "figures"
    s = run["summary"]
    parts: list[str] = []
    title = f"railedge run: {Path(str(run['source'])).name}"
    parts.append(f"<h1>{_e(title)}</h1>")
    parts.append(
        f"<p>{_e(s['frames'])} frames of <code>{_e(run['source'])}</code> through the {_e(s['backbone'])} model "
        f"<code>{_e(run['model']['path'])}</code> ({_e(s['runtime'])}), {_e(s['fps'])} frames/s; "
        f"{_e(s['anomalous_frames'])} frames above the threshold {_e(_n(s['threshold'], '.4f'))}; "
        f"{_e(s['defects'])} defects ({_e(s['events'])} events {_e(s['event_types'])}).</p>"
    )
    # score along the track
    score_png, xlabel = fig_score(run, figs_dir)
    parts.append("<h2>Anomaly score along the track</h2>")
    note = "by chainage" if xlabel.startswith("chainage") else "by frame (no position was known)"
    parts.append(f"<p class='muted'>Frame score {note}; shaded: the frames of each event chain; triangles: each defect's event at its "
                 f"reported position and peak score{'; green ticks: the true anomalies of the synthetic footage' if run.get('truth_data') else ''}.</p>")
    parts.append(f"<img class='fig' alt='anomaly score along the track' src='figures/{score_png.name}'>")
    # gallery
    cs = chains(run["events"])
    parts.append(f"<h2>Detected defects ({len(cs)})</h2>")
    if not cs:
        parts.append("<p>No defect was detected in this run.</p>")
    cards = []
    rows = []
    for c in cs:
        e = c["last"]
        pos = e.get("position") or {}
        snap = e.get("snapshot")
        rel = None
        if snap:
            cand = run_dir / "snapshots" / Path(snap).name
            if cand.is_file():
                rel = f"snapshots/{cand.name}"
        img = f"<img alt='snapshot of {_e(e['id'])}' src='{_e(rel)}'>" if rel else "<p class='muted'>no snapshot</p>"
        where = f"{pos['chainage_m']:.2f} m" if pos.get("chainage_m") is not None else "position unknown"
        if pos.get("lat") is not None:
            where += f", {pos['lat']:.6f}, {pos['lon']:.6f}"
        cards.append(f"<div class='card'>{img}<b>{_e(e['id'])}</b><br>{_e(where)}<br>frames {e['first_frame']}-{e['last_frame']}, "
                     f"best {e['frame_index']} ({_e(e['source'])})<br>peak score {e['peak_score']:.3f}, bbox {_e(e['bbox'])}<br>"
                     f"<span class='muted'>{_e(' → '.join(c['types']))}</span></div>")
        rows.append([e["id"], where, e["first_frame"], e["last_frame"], f"{e['peak_score']:.4f}", e["bbox"], " ".join(c["types"])])
    parts.append("<div class='gallery'>" + "".join(cards) + "</div>")
    if rows:
        parts.append(_table(["event", "position", "first frame", "last frame", "peak score", "bbox", "messages"], rows, 2))
    # latency
    lat_png, lat_rows = fig_latency(run, figs_dir)
    parts.append("<h2>Per-stage latency</h2>")
    parts.append("<p class='muted'>Milliseconds per frame and stage, as timed by the pipeline (decode happens on the capture thread).</p>")
    parts.append(f"<img class='fig' alt='latency histograms' src='figures/{lat_png.name}'>")
    parts.append(_table(["stage", "p50 ms", "p95 ms", "p99 ms", "max ms", "frames"],
                        [[r["stage"], f"{r['p50']:.2f}", f"{r['p95']:.2f}", f"{r['p99']:.2f}", f"{r['max']:.2f}", r["frames"]] for r in lat_rows]))
    # comparison
    parts.append("<h2>SNN vs ResNet-18</h2>")
    cmp_path = run_dir / "compare.json"
    cmp = None
    if not no_compare:
        if cmp_path.is_file() and not recompare:
            cmp = json.loads(cmp_path.read_text())
        else:
            try:
                cmp = _run_compare(run, compare_frames, compare_runtimes, compare_repeat)
                cmp_path.write_text(json.dumps(cmp))
            except RailedgeError as e:
                parts.append(f"<p>The comparison could not run: {_e(e)}</p>")
                _log().warning("report_compare_failed", error=str(e))
    if cmp:
        parts.append(_compare_html(cmp, fig_compare(cmp, figs_dir)))
    elif no_compare:
        parts.append("<p class='muted'>Skipped (--no-compare).</p>")
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>" + "\n".join(parts) +
            "<p class='muted'>Written by railedge report. Static files only: it opens offline.</p></body></html>")
    out = run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    _log().info("report_written", path=str(out), figures=len(list(figs_dir.glob("*.png"))))
    return out


def _run_compare(run: dict, frames: int, runtimes: list[str] | None, repeat: int | None = None) -> dict:
    from railedge.compare import compare
    from railedge.config import from_dict

    cfg = from_dict(run["config"])
    model = run["model"]["path"]
    items = [model] if Path(model).is_dir() else []
    items.append(run["source"])
    return compare(cfg, items, frames=frames, runtimes=runtimes, repeat=repeat)


def _compare_html(cmp: dict, figs: list[tuple[Path, str]]) -> str:
    h, w = cmp["input"]
    snn, res = cmp["snn"], cmp["resnet"]
    out = [f"<p>Both backbones on the same {cmp['frames']} frames of <code>{_e(cmp['source'])}</code>, the same crop ({_e(cmp['crop'])}), "
           f"{cmp['threads']} threads. SNN preset {_e(snn.get('preset'))}, T = {snn['time_steps']} steps; ResNet-18 weights "
           f"<code>{_e(((cmp.get('config') or {}).get('resnet') or {}).get('weights'))}</code>, layers "
           f"{_e(', '.join(res.get('used_layers', [])))}. Timing: batch 1, {WARMUP_NOTE}, median and p99 over every timed frame. "
           "The origin study compared a 32x32 SNN with a 224x224 ResNet in one un-warmed pass; these figures are like for like.</p>"]
    for path, caption in figs:
        out.append(f"<h3>{_e(caption)}</h3><img class='fig' alt='{_e(caption)}' src='figures/{path.name}'>")
    rows = [["snn", k, f"{v['min']:.4f}", f"{v['max']:.4f}", f"{v['mean']:.4f}", f"{v['std']:.4f}", f"{v['zero_fraction']:.1%}"] for k, v in snn["features"].items()]
    rows += [["resnet", k, f"{v['min']:.4f}", f"{v['max']:.4f}", f"{v['mean']:.4f}", f"{v['std']:.4f}", f"{v['zero_fraction']:.1%}"] for k, v in res["layers"].items()]
    out.append("<h3>Feature values per layer</h3>" + _table(["backbone", "layer", "min", "max", "mean", "std", "zeros"], rows, 2))
    rows = []
    for name, L in snn["layers"].items():
        m = L.get("membrane") or {}
        rows.append([name, L["neurons"], f"{L['spikes_per_frame']:.0f}", f"{L['rate']:.4f}", f"{L['silent_channels']}/{L['channels']}",
                     _n(m.get("min")), _n(m.get("max")), _n(m.get("mean"))])
    out.append("<h3>SNN layers</h3>" + _table(["layer", "neurons", "spikes/frame", "firing rate", "silent channels", "membrane min", "membrane max", "membrane mean"], rows))
    rows = []
    for bb, rts in cmp["timing"].items():
        for rt, t in rts.items():
            rows.append([bb, rt] + (["unavailable", "", ""] if t is None else [f"{t['median_ms']:.2f}", f"{t['p99_ms']:.2f}", t["frames"]]))
    out.append("<h3>Inference time per frame</h3>" + _table(["backbone", "runtime", "median ms", "p99 ms", "timed frames"], rows, 2))
    ops = snn.get("synaptic_ops")
    if ops:
        out.append(f"<p class='muted'>Theoretical neuromorphic energy (45 nm convention, not a CPU figure): SNN {ops['energy_snn_pj'] / 1e6:.2f} µJ "
                   f"vs {ops['energy_ann_pj'] / 1e6:.2f} µJ for the same layers as an ANN.</p>")
    return "\n".join(out)


WARMUP_NOTE = "warm-up frames excluded"


# ---- CLI ---------------------------------------------------------------------------------------

def cmd_report(args: argparse.Namespace, load: Callable) -> int:
    from railedge.logs import setup_logging

    setup_logging()
    runtimes = [s.strip() for s in args.compare_runtimes.split(",") if s.strip()]
    path = build_report(args.run_dir, compare_frames=args.compare_frames, compare_runtimes=runtimes,
                        no_compare=args.no_compare, recompare=args.recompare, compare_repeat=args.compare_repeat)
    sys.stdout.write(f"wrote {path} (open it in a browser: file://{path.resolve()})\n")
    return 0


def add_parser(sub: Any, config_args: Callable, load: Callable) -> None:
    c = sub.add_parser("report", help="static HTML report of a replay's run directory (replay --run-dir)")
    c.add_argument("run_dir", metavar="RUN_DIR")
    c.add_argument("--compare-frames", type=int, default=16, help="frames for the SNN vs ResNet-18 comparison")
    c.add_argument("--compare-runtimes", default="eager,onnx", help="runtimes to time: eager, onnx, torchscript")
    c.add_argument("--compare-repeat", type=int, help="timed passes over the comparison frames (default: enough for 64 timed frames)")
    c.add_argument("--no-compare", action="store_true", help="leave out the comparison (it needs torch)")
    c.add_argument("--recompare", action="store_true", help="run the comparison again even when compare.json is there")
    c.set_defaults(func=lambda a: cmd_report(a, load))
