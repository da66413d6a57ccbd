"""Labelled frames for training and evaluation, in model-input coordinates (numpy and cv2 only:
`railedge eval` uses it without torch).

Each frame is located (rail band), cropped and preprocessed exactly as the pipeline does, and its
labels are rasterised onto the model-input grid as a class map: 0 normal, k = the k-th data-set
class (1-based), IGNORE where nothing is known. Formats:

* yolo   images/ + labels/ (+ classes.txt): boxes `class cx cy w h`, normalised.
* masks  pixel masks, either `images/NAME` + `masks/NAME` (mask value = class id + 1, or 255 for
         class 0 "defect"), or MVTec AD style: `<split>/<type>/NAME.png` with
         `ground_truth/<type>/NAME_mask.png`; type `good` is normal, types named like a known
         non-defect class (dirt, gap, joint) map to it, every other type is "defect".
* plain  an image folder or a video without labels (normal-only training)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from railedge.config import RoiConfig
from railedge.datasets import is_yolo_dir, read_classes, read_labels, run_id
from railedge.errors import DataError, SourceError
from railedge.preprocess import Preprocess
from railedge.roi import RailBandLocator
from railedge.sources.folder import IMAGE_SUFFIXES, read_gray
from railedge.values import Band

IGNORE = 255
DEFAULT_CLASSES = ["defect", "dirt", "gap"]
_ALIASES = {"dirt": "dirt", "gap": "gap", "joint": "gap", "rail_joint": "gap"}


@dataclass
class LabelledFrame:
    """One frame in model-input coordinates. `boxes`: (class name, x0, y0, x1, y1) in full-size frame
    pixels (None: unlabelled footage)."""

    name: str
    x: np.ndarray  # (H, W) float32 preprocessed crop
    label_map: np.ndarray | None  # (H, W) uint8: 0 normal, k class k (1-based), IGNORE unknown
    boxes: list[tuple[str, float, float, float, float]] | None
    band: Band
    scale: float  # full-size pixels per decoded pixel
    shape: tuple[int, int]  # decoded frame (h, w)

    @property
    def run(self) -> str:
        return run_id(self.name)

    @property
    def labelled(self) -> bool:
        return self.label_map is not None


@dataclass
class FrameSet:
    frames: list[LabelledFrame]
    classes: list[str]  # data-set classes; class map value k is classes[k-1]
    fmt: str

    @property
    def labelled(self) -> bool:
        return any(f.labelled for f in self.frames)


def detect_format(data: Path, fmt: str = "auto") -> str:
    if fmt not in ("auto", "yolo", "masks", "plain"):
        raise DataError(f"--format {fmt!r}: expected auto, yolo, masks or plain")
    if fmt != "auto":
        return fmt
    if data.is_dir() and is_yolo_dir(data):
        return "yolo"
    if data.is_dir() and ((data / "masks").is_dir() or (data / "ground_truth").is_dir() or (data.parent / "ground_truth").is_dir()):
        return "masks"
    return "plain"


def _rasterise_boxes(lm: np.ndarray, boxes: list[tuple[int, float, float, float, float]], band: Band, hw: tuple[int, int]) -> None:
    """Draw boxes (class index, x0, y0, x1, y1 in decoded pixels) into the class map; class 0 (defect) drawn last wins."""
    H, W = hw
    sx, sy = W / band.width, H / band.height
    for c, x0, y0, x1, y1 in sorted(boxes, key=lambda b: -b[0]):
        c0, c1 = int(np.floor((x0 - band.x0) * sx)), int(np.ceil((x1 - band.x0) * sx))
        r0, r1 = int(np.floor((y0 - band.y0) * sy)), int(np.ceil((y1 - band.y0) * sy))
        c0, c1, r0, r1 = max(0, c0), min(W, c1), max(0, r0), min(H, r1)
        if c1 > c0 and r1 > r0:
            lm[r0:r1, c0:c1] = c + 1


def _crop(image: np.ndarray, locator: RailBandLocator, pre: Preprocess, scale: float = 1.0) -> tuple[Band, np.ndarray]:
    locator.reset()  # frames of a data set need not be neighbours: locate each on its own
    band = locator.locate(image, scale)
    return band, pre(image[band.y0: band.y1, band.x0: band.x1])


def _yolo(data: Path, locator: RailBandLocator, pre: Preprocess, reduce: int, names: set[str] | None) -> FrameSet:
    classes = read_classes(data)
    files = sorted(f for f in (data / "images").iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    out = []
    for f in files:
        if names is not None and f.name not in names and f.stem not in names:
            continue
        img = read_gray(f, reduce)
        h, w = img.shape[:2]
        band, x = _crop(img, locator, pre, reduce)
        labels = read_labels(data / "labels" / (f.stem + ".txt"))
        lm = np.zeros(x.shape, np.uint8)
        raw, boxes = [], []
        for lab in labels:
            if not 0 <= lab.cls < len(classes):
                raise DataError(f"label file for {f.name}: class {lab.cls} is not in classes.txt ({', '.join(classes)})")
            x0, y0, x1, y1 = lab.pixels(w, h)
            raw.append((lab.cls, x0, y0, x1, y1))
            boxes.append((classes[lab.cls], x0 * reduce, y0 * reduce, x1 * reduce, y1 * reduce))
        _rasterise_boxes(lm, raw, band, x.shape)
        out.append(LabelledFrame(f.name, x, lm, boxes, band, float(reduce), (h, w)))
    return FrameSet(out, classes, "yolo")


def _mask_class(kind: str) -> str | None:
    if kind == "good":
        return None
    return _ALIASES.get(kind.lower(), "defect")


def _mask_pairs(data: Path) -> tuple[list[tuple[Path, Path | None, str | None]], list[str]]:
    """(image, mask or None, class name or None for normal) and the class list."""
    pairs: list[tuple[Path, Path | None, str | None]] = []
    if (data / "images").is_dir() and (data / "masks").is_dir():
        classes = read_classes(data) if (data / "classes.txt").is_file() else list(DEFAULT_CLASSES)
        for f in sorted(p for p in (data / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            m = next((q for q in ((data / "masks" / f.name), (data / "masks" / (f.stem + ".png")),
                                  (data / "masks" / (f.stem + "_mask.png"))) if q.is_file()), None)
            pairs.append((f, m, "*"))  # "*": class ids come from the mask values
        return pairs, classes
    gt = data / "ground_truth" if (data / "ground_truth").is_dir() else data.parent / "ground_truth"
    roots = [data / s for s in ("train", "test") if (data / s).is_dir()] or [data]
    classes: list[str] = ["defect"]
    for root in roots:
        for kind_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "ground_truth"):
            cls = _mask_class(kind_dir.name)
            if cls is not None and cls not in classes:
                classes.append(cls)
            for f in sorted(p for p in kind_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                m = None
                if cls is not None:
                    m = next((q for q in (gt / kind_dir.name / (f.stem + "_mask.png"), gt / kind_dir.name / f.name) if q.is_file()), None)
                    if m is None:
                        raise DataError(f"no mask for {f} under {gt / kind_dir.name} (expected {f.stem}_mask.png)")
                pairs.append((f, m, cls))
    if not pairs:
        raise DataError(f"{str(data)!r} holds no mask-format data: expected images/ + masks/, or <split>/<type>/*.png with ground_truth/<type>/*_mask.png")
    return pairs, classes


def _masks(data: Path, locator: RailBandLocator, pre: Preprocess, reduce: int, names: set[str] | None) -> FrameSet:
    pairs, classes = _mask_pairs(data)
    out = []
    for f, m, cls in pairs:
        name = f.name if f.parent.parent == data or (data / "images").is_dir() else f"{f.parent.name}/{f.name}"
        if names is not None and f.name not in names and f.stem not in names and name not in names:
            continue
        img = read_gray(f, reduce)
        h, w = img.shape[:2]
        band, x = _crop(img, locator, pre, reduce)
        full = np.zeros((h, w), np.uint8)
        if m is not None:
            mk = cv2.imread(str(m), cv2.IMREAD_GRAYSCALE)
            if mk is None:
                raise DataError(f"mask {str(m)!r} cannot be decoded")
            mk = cv2.resize(mk, (w, h), interpolation=cv2.INTER_NEAREST)
            if cls == "*":
                full = np.where(mk == 255, 1, np.minimum(mk, len(classes))).astype(np.uint8)
            else:
                full[mk > 127] = classes.index(cls) + 1
        crop_lm = full[band.y0: band.y1, band.x0: band.x1]
        lm = cv2.resize(crop_lm, (x.shape[1], x.shape[0]), interpolation=cv2.INTER_NEAREST)
        boxes = []
        for k in range(1, len(classes) + 1):
            n, _lab, stats, _ = cv2.connectedComponentsWithStats((full == k).astype(np.uint8), connectivity=8)
            for i in range(1, n):
                c, r, bw, bh, _a = stats[i]
                boxes.append((classes[k - 1], c * reduce, r * reduce, (c + bw) * reduce, (r + bh) * reduce))
        out.append(LabelledFrame(name, x, lm, boxes, band, float(reduce), (h, w)))
    return FrameSet(out, classes, "masks")


def _plain(data: Path, locator: RailBandLocator, pre: Preprocess, reduce: int, names: set[str] | None,
           max_frames: int | None) -> FrameSet:
    from railedge.datasets import iter_samples

    out = []
    for s in iter_samples(data, "plain" if data.is_dir() else "auto", reduce=reduce if data.is_dir() else 1, max_frames=max_frames):
        if names is not None and s.name not in names and Path(s.name).stem not in names:
            continue
        h, w = s.image.shape[:2]
        band, x = _crop(s.image, locator, pre, reduce if data.is_dir() else 1)
        out.append(LabelledFrame(s.name, x, None, None, band, float(reduce if data.is_dir() else 1), (h, w)))
    return FrameSet(out, list(DEFAULT_CLASSES), "plain")


def load_frames(data: str | Path, fmt: str, pre: Preprocess, roi: RoiConfig, reduce: int = 1,
                names: Iterable[str] | None = None, max_frames: int | None = None) -> FrameSet:
    """Every frame of `data` cropped and preprocessed as the pipeline does, with its labels."""
    p = Path(data)
    if not p.exists():
        raise DataError(f"data {str(p)!r} does not exist; give a YOLO folder, a mask folder, an image folder or a video")
    kind = detect_format(p, fmt)
    if kind == "yolo" and not is_yolo_dir(p):
        raise DataError(f"{str(p)!r} is not a YOLO data set: it needs images/ and labels/ folders (and classes.txt)")
    locator = RailBandLocator(roi)
    wanted = set(names) if names is not None else None
    try:
        if kind == "yolo":
            fs = _yolo(p, locator, pre, reduce, wanted)
        elif kind == "masks":
            fs = _masks(p, locator, pre, reduce, wanted)
        else:
            fs = _plain(p, locator, pre, reduce, wanted, max_frames)
    except SourceError as e:
        raise DataError(str(e)) from None
    if not fs.frames:
        raise DataError(f"data {str(p)!r} has no frames" + (" with the requested names" if wanted is not None else ""))
    return fs


def split_by_run(frames: list[LabelledFrame], fraction: float) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): whole recording runs (datasets.run_id) are held out,
    latest run ids first, until about `fraction` of the frames; a single run gives its tail."""
    n = len(frames)
    target = max(1, int(round(n * fraction)))
    runs: dict[str, list[int]] = {}
    for i, f in enumerate(frames):
        runs.setdefault(f.run, []).append(i)
    held: list[int] = []
    if len(runs) >= 2:
        for r in sorted(runs, reverse=True):
            if len(held) >= target:
                break
            if len(held) + len(runs[r]) <= max(1.5 * target, target + 1) or not held:
                held.extend(runs[r])
        if len(held) >= n:  # never hold out everything
            held = runs[sorted(runs, reverse=True)[0]]
    if not held or len(held) >= n:
        held = list(range(n - target, n))
    hs = set(held)
    return [i for i in range(n) if i not in hs], sorted(held)


def cell_targets(label_map: np.ndarray, n_classes: int, stride: int, full_at: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Soft per-cell targets (K, h, w) from a class map (K = n_classes + 1, channel 0 normal) and a
    (h, w) weight that is 0 where a cell is mostly IGNORE. A cell covered by `full_at` or more of a
    class is fully that class (labelled boxes and masks are loose around small defects)."""
    H, W = label_map.shape
    h, w = H // stride, W // stride
    lm = label_map[: h * stride, : w * stride].reshape(h, stride, w, stride)
    cover = np.stack([(lm == k).mean(axis=(1, 3)) for k in range(1, n_classes + 1)])
    ign = (lm == IGNORE).mean(axis=(1, 3))
    t = np.clip(cover / full_at, 0.0, 1.0)
    tot = t.sum(0)
    over = tot > 1.0
    t[:, over] /= tot[over]
    normal = 1.0 - t.sum(0)
    return np.concatenate([normal[None], t]).astype(np.float32), (ign < 0.5).astype(np.float32)


def frames_to_arrays(frames: list[LabelledFrame]) -> tuple[np.ndarray, np.ndarray]:
    xs = np.stack([f.x for f in frames]).astype(np.float32)
    lms = np.stack([f.label_map if f.label_map is not None else np.zeros(f.x.shape, np.uint8) for f in frames])
    return xs, lms

