"""Per-defect tracking: one event chain (new → update* → end) per physical defect.

A box opens a track when its peak is above the threshold, and keeps it open while matching boxes
stay above a lower threshold (hysteresis). Boxes match a track when their columns overlap the
track's last box and the track was seen within `end_after` frames, so a defect that scrolls
through consecutive video frames, or continues across a line-scan image boundary, keeps its id."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from railedge.values import Box, Scored

EVENT_SCHEMA = "railedge.event/1"


@dataclass
class Track:
    id: str
    first_frame: int
    last_frame: int
    box: Box
    peak_score: float
    best: Scored
    best_box: Box
    hits: int = 1
    confirmed: bool = False
    reported_peak: float = 0.0
    last_state: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        return {
            "bbox": self.best_box.xywh(),
            "score": round(self.best_box.score, 6),
            "peak_score": round(self.peak_score, 6),
            "frame_index": self.best.frame.index,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
        }


@dataclass(frozen=True)
class TrackerConfig:
    confirm_frames: int = 1
    stay_ratio: float = 0.85
    end_after: int = 1
    update_ratio: float = 1.1


@dataclass
class TrackUpdate:
    """What the tracker decided for a track on this frame: 'new', 'update' or 'end'."""

    kind: str
    track: Track
    before: dict[str, Any] | None
    after: dict[str, Any]


class DefectTracker:
    def __init__(self, cfg: TrackerConfig, id_prefix: str) -> None:
        self.cfg = cfg
        self.prefix = id_prefix
        self.tracks: list[Track] = []
        self._seq = 0
        self._frame = -1

    def stay_threshold(self, threshold: float) -> float:
        return threshold * self.cfg.stay_ratio

    def step(self, scored: Scored, boxes: tuple[Box, ...]) -> list[TrackUpdate]:
        """`boxes`: regions above the stay threshold on this frame, strongest first."""
        idx = scored.frame.index
        self._frame = idx
        updates: list[TrackUpdate] = []
        used: set[int] = set()
        for box in boxes:
            track = self._match(box, idx, used)
            if track is None:
                if box.score <= scored.threshold:
                    continue  # below the opening threshold: not a defect yet
                self._seq += 1
                track = Track(id=f"{self.prefix}-{self._seq:05d}", first_frame=idx, last_frame=idx, box=box,
                              peak_score=box.score, best=scored, best_box=box)
                self.tracks.append(track)
            else:
                if track.last_frame != idx:
                    track.hits += 1
                track.last_frame = idx
                track.box = box
                if box.score > track.peak_score:
                    track.peak_score, track.best, track.best_box = box.score, scored, box
            used.add(id(track))
            if not track.confirmed and track.hits >= self.cfg.confirm_frames:
                track.confirmed = True
                track.reported_peak = track.peak_score
                after = track.state()
                updates.append(TrackUpdate("new", track, None, after))
                track.last_state = after
            elif track.confirmed and track.peak_score > track.reported_peak * self.cfg.update_ratio:
                track.reported_peak = track.peak_score
                after = track.state()
                updates.append(TrackUpdate("update", track, track.last_state, after))
                track.last_state = after
        updates.extend(self._expire(idx))
        return updates

    def _match(self, box: Box, idx: int, used: set[int]) -> Track | None:
        best, best_overlap = None, 0.0
        for t in self.tracks:
            if id(t) in used and t.last_frame == idx:
                continue
            if idx - t.last_frame > self.cfg.end_after:
                continue
            lo, hi = max(box.x, t.box.x), min(box.x + box.w, t.box.x + t.box.w)
            overlap = (hi - lo) / max(1, min(box.w, t.box.w))
            if overlap > best_overlap:
                best, best_overlap = t, overlap
        return best if best_overlap > 0.3 else None

    def _expire(self, idx: int) -> list[TrackUpdate]:
        out, keep = [], []
        for t in self.tracks:
            if idx - t.last_frame > self.cfg.end_after:
                if t.confirmed:
                    out.append(TrackUpdate("end", t, t.last_state, t.state()))
            else:
                keep.append(t)
        self.tracks = keep
        return out

    def flush(self) -> list[TrackUpdate]:
        """End every open track (end of footage or shutdown)."""
        out = [TrackUpdate("end", t, t.last_state, t.state()) for t in self.tracks if t.confirmed]
        self.tracks = []
        return out
