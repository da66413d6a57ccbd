"""Typed values passed between pipeline stages (one direction of flow)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class Position:
    """Where a frame was taken along the line; any part may be unknown."""

    chainage_m: float | None = None
    lat: float | None = None
    lon: float | None = None

    def to_dict(self) -> dict:
        return {"chainage_m": self.chainage_m, "lat": self.lat, "lon": self.lon}


@dataclass(frozen=True, slots=True)
class Frame:
    """One image from a source. `image` is HxW uint8 grayscale. `scale` maps image pixels to the
    original footage's pixels (a JPEG decoded at 1/4 size has scale 4): reported boxes use
    original pixels."""

    index: int
    source: str
    image: np.ndarray
    t_mono: float
    t_wall: float
    position: Position | None = None
    scale: float = 1.0

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass(frozen=True, slots=True)
class Band:
    """Rail-head region in frame pixels: columns x0..x1, rows y0..y1 (end-exclusive)."""

    x0: int
    x1: int
    y0: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


@dataclass(frozen=True, slots=True)
class Crop:
    """The rail-head crop of a frame, grayscale uint8, with the band it came from."""

    frame: Frame
    band: Band
    image: np.ndarray


@dataclass(frozen=True, slots=True)
class Box:
    """A region above threshold, in frame pixels."""

    x: int
    y: int
    w: int
    h: int
    score: float

    def xywh(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


@dataclass(frozen=True, slots=True)
class Scored:
    """A frame's anomaly result: map over the crop (model input grid), frame score, boxes."""

    crop: Crop
    amap: np.ndarray
    score: float
    threshold: float
    boxes: tuple[Box, ...] = ()

    @property
    def frame(self) -> Frame:
        return self.crop.frame

    @property
    def is_anomalous(self) -> bool:
        return self.score > self.threshold


@dataclass(slots=True)
class FrameTiming:
    """Per-stage latencies in milliseconds, filled by the pipeline (stages never time themselves)."""

    stages: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return float(sum(self.stages.values()))

    def as_dict(self) -> dict[str, float]:
        d = {k: round(v, 3) for k, v in self.stages.items()}
        d["total"] = round(self.total, 3)
        return d
