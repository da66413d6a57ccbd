"""Where a frame lies along the track, so boxes in different frames can be compared on the rail.

Track position `p` is measured in full-size image rows along the rail and grows in the direction
of travel. A frame covers `[centre - H/2, centre + H/2]`; with `direction` +1 its top row is
furthest ahead (the rail scrolls down the image, as in the synthetic footage), with -1 its bottom
row is. A video frame's centre advances by speed / fps / pixel size per frame; abutting line-scan
images advance by exactly one image height, so a defect cut by an image boundary lies on both
sides of one track position and is matched as one defect."""

from __future__ import annotations

from dataclasses import dataclass

from railedge.values import Frame


@dataclass(frozen=True, slots=True)
class Placement:
    """A frame's place on the track: its middle row's track position and its height (full-size px)."""

    centre_px: float
    height_px: float
    direction: int = 1
    mm_per_px: float | None = None

    def span(self, y: float, h: float) -> tuple[float, float]:
        """Track interval (lo, hi) covered by frame rows [y, y + h) (full-size px)."""
        half = self.height_px / 2
        if self.direction >= 0:
            return self.centre_px + half - (y + h), self.centre_px + half - y
        return self.centre_px - half + y, self.centre_px - half + y + h

    def view(self) -> tuple[float, float]:
        half = self.height_px / 2
        return self.centre_px - half, self.centre_px + half

    def chainage_m(self, p: float) -> float | None:
        """Chainage of track position `p`, when the pixel size is known."""
        return None if self.mm_per_px is None else p * self.mm_per_px / 1000.0


@dataclass(frozen=True)
class TrackGeometry:
    """Places frames on the track from their chainage (needs `mm_per_px`) or, for abutting line-scan
    images without a position, from their index (one image height per image)."""

    mm_per_px: float | None = None
    linescan: bool = False
    direction: int = 1

    def place(self, frame: Frame) -> Placement | None:
        h = frame.height * frame.scale
        pos = frame.position
        if self.mm_per_px is not None and pos is not None and pos.chainage_m is not None:
            return Placement(pos.chainage_m * 1000.0 / self.mm_per_px, h, self.direction, self.mm_per_px)
        if self.linescan:
            return Placement(frame.index * h, h, self.direction, None)
        return None
