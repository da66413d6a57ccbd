"""PNG plots drawn with OpenCV and numpy (matplotlib is not a dependency): line charts for the
training curve, ROC, precision-recall and FROC, and a confusion-matrix table."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

_COLOURS = [(180, 90, 20), (30, 120, 230), (40, 160, 40), (40, 40, 200), (150, 60, 150), (20, 160, 160)]
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(img: np.ndarray, s: str, org: tuple[int, int], scale: float = 0.45, colour=(30, 30, 30), thick: int = 1) -> None:
    cv2.putText(img, s, org, _FONT, scale, colour, thick, cv2.LINE_AA)


def line_chart(path: Path, series: Sequence[tuple[str, Sequence[float], Sequence[float]]], *, title: str, xlabel: str,
               ylabel: str, xlim: tuple[float, float] | None = None, ylim: tuple[float, float] | None = None,
               size: tuple[int, int] = (640, 440), diagonal: bool = False, marks: Sequence[tuple[float, float, str]] = ()) -> Path:
    """A line chart of (label, xs, ys) series to a PNG at `path`."""
    W, H = size
    L, R, T, B = 64, 20, 36, 50
    img = np.full((H, W, 3), 255, np.uint8)
    xs_all = np.concatenate([np.asarray(s[1], float) for s in series if len(s[1])] or [np.zeros(1)])
    ys_all = np.concatenate([np.asarray(s[2], float) for s in series if len(s[2])] or [np.zeros(1)])
    x0, x1 = xlim or (float(np.nanmin(xs_all)), float(np.nanmax(xs_all)))
    y0, y1 = ylim or (float(np.nanmin(ys_all)), float(np.nanmax(ys_all)))
    if x1 <= x0:
        x1 = x0 + 1.0
    if y1 <= y0:
        y1 = y0 + 1.0

    def px(x: float, y: float) -> tuple[int, int]:
        return (int(round(L + (x - x0) / (x1 - x0) * (W - L - R))), int(round(H - B - (y - y0) / (y1 - y0) * (H - T - B))))

    for i in range(6):  # grid and tick labels
        fx, fy = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
        cv2.line(img, px(fx, y0), px(fx, y1), (230, 230, 230), 1)
        cv2.line(img, px(x0, fy), px(x1, fy), (230, 230, 230), 1)
        _text(img, f"{fx:.3g}", (px(fx, y0)[0] - 12, H - B + 18), 0.38)
        _text(img, f"{fy:.3g}", (6, px(x0, fy)[1] + 4), 0.38)
    cv2.rectangle(img, px(x0, y1), px(x1, y0), (90, 90, 90), 1)
    if diagonal:
        cv2.line(img, px(x0, y0), px(x1, y1), (200, 200, 200), 1, cv2.LINE_AA)
    for i, (label, xs, ys) in enumerate(series):
        c = _COLOURS[i % len(_COLOURS)]
        pts = [px(float(a), float(b)) for a, b in zip(xs, ys) if np.isfinite(a) and np.isfinite(b)]
        if len(pts) > 1:
            cv2.polylines(img, [np.array(pts, np.int32).reshape(-1, 1, 2)], False, c, 2, cv2.LINE_AA)
        elif pts:
            cv2.circle(img, pts[0], 3, c, -1)
        _text(img, label, (L + 10, T + 18 + 18 * i), 0.45, c, 1)
    for mx, my, ml in marks:
        p = px(mx, my)
        cv2.circle(img, p, 5, (0, 0, 0), 1, cv2.LINE_AA)
        _text(img, ml, (p[0] + 7, p[1] - 6), 0.4)
    _text(img, title, (L, 22), 0.55, thick=1)
    _text(img, xlabel, (W // 2 - 4 * len(xlabel), H - 12), 0.45)
    side = np.full((H, 24, 3), 255, np.uint8)
    lab = np.full((24, H, 3), 255, np.uint8)
    _text(lab, ylabel, (H // 2 - 4 * len(ylabel), 17), 0.45)
    side = cv2.rotate(lab, cv2.ROTATE_90_COUNTERCLOCKWISE)
    img = np.hstack([side, img])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path


def confusion_png(path: Path, matrix: Sequence[Sequence[int]], rows: Sequence[str], cols: Sequence[str], title: str) -> Path:
    """A table of counts with shaded cells (rows: truth, columns: prediction)."""
    m = np.asarray(matrix, float)
    cw, ch, lw, th = 92, 40, 120, 70
    H, W = th + ch * len(rows) + 10, lw + cw * len(cols) + 10
    img = np.full((H, W, 3), 255, np.uint8)
    _text(img, title, (8, 22), 0.55)
    _text(img, "truth \\ predicted", (8, th - 10), 0.4)
    for j, c in enumerate(cols):
        _text(img, c[:11], (lw + j * cw + 6, th - 10), 0.42)
    for i, r in enumerate(rows):
        _text(img, r[:14], (8, th + i * ch + 25), 0.45)
        tot = max(m[i].sum(), 1.0)
        for j in range(len(cols)):
            v = m[i, j] / tot
            shade = int(255 - 150 * v)
            # green where the prediction names the true class, red where it does not (BGR)
            colour = (shade, 255, shade) if r == cols[j] else (shade, shade, 255)
            cv2.rectangle(img, (lw + j * cw, th + i * ch), (lw + (j + 1) * cw - 2, th + (i + 1) * ch - 2), colour, -1)
            _text(img, f"{int(m[i, j])}", (lw + j * cw + 30, th + i * ch + 25), 0.5)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path


def training_curve_png(curve: dict, path: Path, title: str = "training") -> Path:
    steps = curve.get("steps", [])
    epochs = curve.get("epochs", [])
    series = []
    if steps:
        s = np.array(steps, float)
        k = max(1, len(s) // 100)
        sm = np.convolve(s[:, 1], np.ones(k) / k, mode="valid")
        series.append(("train loss (per step, smoothed)", s[k - 1:, 0], sm))
    if epochs:
        series.append(("val loss", [e["step"] for e in epochs], [e["val_loss"] for e in epochs]))
        au = [(e["step"], e["val_image_auroc"]) for e in epochs if e.get("val_image_auroc") is not None]
        if au:
            series.append(("val image AUROC", [a for a, _ in au], [b for _, b in au]))
        cu = [(e["step"], e["val_cell_auroc"]) for e in epochs if e.get("val_cell_auroc") is not None]
        if cu:
            series.append(("val cell AUROC", [a for a, _ in cu], [b for _, b in cu]))
    ymax = max([1.0] + [float(np.nanmax(np.asarray(y, float))) for _, _, y in series if len(y)])
    return line_chart(path, series, title=f"{title}: training curve", xlabel="step", ylabel="loss / AUROC",
                      ylim=(0.0, min(ymax, 3.0)))
