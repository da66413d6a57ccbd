"""Footage for fitting, training and evaluation: videos, image folders, YOLO-labelled folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from railedge.errors import DataError, SourceError
from railedge.sources import open_source
from railedge.sources.folder import list_images, read_gray
from railedge.config import SourceConfig


@dataclass(frozen=True)
class Label:
    cls: int
    cx: float
    cy: float
    w: float
    h: float

    def pixels(self, width: int, height: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in pixels of an image of this size."""
        return ((self.cx - self.w / 2) * width, (self.cy - self.h / 2) * height, (self.cx + self.w / 2) * width, (self.cy + self.h / 2) * height)


@dataclass(frozen=True)
class Sample:
    name: str
    image: np.ndarray
    labels: tuple[Label, ...] | None  # None: unlabelled footage


def is_yolo_dir(path: Path) -> bool:
    return (path / "images").is_dir() and (path / "labels").is_dir()


def read_classes(path: Path) -> list[str]:
    f = path / "classes.txt"
    if not f.is_file():
        return ["defect", "dirt", "gap"]
    return [line.strip() for line in f.read_text().splitlines() if line.strip()]


def read_labels(path: Path) -> tuple[Label, ...]:
    if not path.is_file():
        return ()
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            c, cx, cy, w, h = int(parts[0]), *map(float, parts[1:5])
        except (ValueError, TypeError):
            raise DataError(f"label file {str(path)!r} line {n}: expected 'class cx cy w h' (YOLO), got {line!r}") from None
        out.append(Label(c, cx, cy, w, h))
    return tuple(out)


def run_id(name: str) -> str:
    """The recording run of a raildefect-style file name: its first 7 characters."""
    return Path(name).stem[:7]


def list_samples(data: str | Path, fmt: str = "auto") -> list[Path] | None:
    """Image files of a folder data set (None for a video)."""
    p = Path(data)
    if p.is_file():
        if fmt == "yolo":
            raise DataError(f"--format yolo needs a folder with images/ and labels/, not the file {str(p)!r}")
        return None
    if fmt == "yolo" and not is_yolo_dir(p):
        raise DataError(f"{str(p)!r} is not a YOLO data set: it needs images/ and labels/ folders (and classes.txt)")
    return list_images(p)


def iter_samples(data: str | Path, fmt: str = "auto", names: list[str] | None = None, reduce: int = 1,
                 max_frames: int | None = None) -> Iterator[Sample]:
    """Frames of a video, a plain image folder or a YOLO folder (with labels), evenly
    subsampled to at most `max_frames`."""
    p = Path(data)
    if not p.exists():
        raise DataError(f"data {str(p)!r} does not exist; give a video, an image folder or a YOLO folder")
    files = list_samples(p, fmt)
    if files is None:
        try:
            frames = list(open_source(str(p), SourceConfig(loop=False)).frames())
        except SourceError as e:
            raise DataError(str(e)) from None
        picks = _pick(len(frames), max_frames)
        for i in picks:
            yield Sample(frames[i].source + f"#{frames[i].index}", frames[i].image, None)
        return
    if names is not None:
        wanted = set(names)
        files = [f for f in files if f.name in wanted or f.stem in wanted]
    labelled = is_yolo_dir(p) and fmt in ("auto", "yolo")
    for i in _pick(len(files), max_frames):
        f = files[i]
        labels = read_labels(p / "labels" / (f.stem + ".txt")) if labelled else None
        yield Sample(f.name, read_gray(f, reduce), labels)


def _pick(n: int, limit: int | None) -> list[int]:
    if limit is None or n <= limit:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, limit).round().astype(int).tolist()))
