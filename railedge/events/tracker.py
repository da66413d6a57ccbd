"""Per-defect tracking: one event chain (new → update* → end) per physical defect.

Hysteresis. A box opens a track only when its peak is above the threshold; a track stays open
while matching boxes peak above a lower level (`stay_level`: between the map's median and the
threshold, `stay_ratio` of the way up; a ratio of the raw threshold would fall below the floor of
a kNN distance map). A track is confirmed (`new`) once seen in `confirm_frames` frames, or, when
the geometry says it has left the view first, if it was seen in most frames that showed it (a
defect inside one line-scan image is seen once). `update` follows when the peak rises by
`update_ratio`; `end` when the defect has left the view, or was not seen for more than `end_after`
frames.

Matching. A box matches a live track when their columns overlap (rails run along the image) and
they lie at the same place along the track: with a `Placement` (known speed and pixel size, or
abutting line-scan images) their track intervals must overlap or nearly touch, so a defect that
scrolls through consecutive video frames, or continues across a line-scan image boundary, keeps its
id. Without a placement the box must have moved the way the rail moves (learning the track's own
speed after two sightings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from railedge.events.geometry import Placement
from railedge.values import Box, Scored

EVENT_SCHEMA = "railedge.event/1"
_MAX_OBS = 64  # observations kept per track (for its position); a defect is seen in a few frames


def stay_level(amap: np.ndarray, threshold: float, ratio: float) -> float:
    """The level a track's peak must stay above: `ratio` of the way from the map's median to the
    threshold. Also the level above which map cells form a defect's box."""
    floor = float(np.median(amap))
    if floor >= threshold:
        return threshold * ratio
    return floor + ratio * (threshold - floor)


@dataclass
class Observation:
    frame_index: int
    box: Box
    span: tuple[float, float] | None
    chainage_m: float | None
    clipped: bool  # the box touches the frame's top or bottom edge: its extent may be cut


@dataclass
class Track:
    id: str
    first_frame: int
    last_frame: int
    box: Box
    peak_score: float
    best: Scored
    best_box: Box
    span: tuple[float, float] | None = None
    hits: int = 1
    misses: int = 0
    confirmed: bool = False
    reported_peak: float = 0.0
    last_state: dict[str, Any] | None = None
    velocity: float | None = None  # image rows per frame, without a placement
    observations: list[Observation] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def chainage_m(self) -> float | None:
        """The defect's chainage: the median of its box centres, preferring boxes not cut by a frame edge."""
        whole = [o.chainage_m for o in self.observations if o.chainage_m is not None and not o.clipped]
        vals = whole or [o.chainage_m for o in self.observations if o.chainage_m is not None]
        return float(np.median(vals)) if vals else None

    def state(self) -> dict[str, Any]:
        ch = self.chainage_m
        return {
            "bbox": self.best_box.xywh(),
            "score": round(self.best_box.score, 6),
            "peak_score": round(self.peak_score, 6),
            "frame_index": self.best.frame.index,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "frames_seen": self.hits,
            "chainage_m": None if ch is None else round(ch, 3),
        }


@dataclass(frozen=True)
class TrackerConfig:
    confirm_frames: int = 2
    stay_ratio: float = 0.85
    end_after: int = 2
    update_ratio: float = 1.1
    min_overlap: float = 0.3  # column overlap, as a fraction of the narrower box
    gap_px: float = 32.0  # along-track (or image-row) tolerance when matching, full-size px
    direction: int = 1  # without a placement: +1 the rail moves down the image, -1 up


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
        self.assigned: list[tuple[Track, Box]] = []  # this frame's boxes and the track each joined
        self._seq = 0

    def stay_threshold(self, threshold: float, amap: np.ndarray | None = None) -> float:
        """See `stay_level`; without a map, `stay_ratio` x threshold."""
        if amap is None:
            return threshold * self.cfg.stay_ratio
        return stay_level(amap, threshold, self.cfg.stay_ratio)

    def step(self, scored: Scored, boxes: tuple[Box, ...], placement: Placement | None = None) -> list[TrackUpdate]:
        """`boxes`: regions above the stay level on this frame, strongest first. `placement`: where
        the frame lies on the track, when known."""
        idx = scored.frame.index
        frame_h = scored.frame.height * scored.frame.scale
        updates: list[TrackUpdate] = []
        seen: list[Track] = []
        self.assigned = []
        for box in boxes:
            obs = self._observe(idx, box, placement, frame_h)
            track = self._match(obs, idx, placement, frame_h)
            if track is None:
                if box.score <= scored.threshold:
                    continue  # below the opening threshold: not a defect yet
                self._seq += 1
                track = Track(id=f"{self.prefix}-{self._seq:05d}", first_frame=idx, last_frame=idx, box=box,
                              peak_score=box.score, best=scored, best_box=box, span=obs.span)
                self.tracks.append(track)
            else:
                self._absorb(track, obs, idx)
                if box.score > track.peak_score:
                    track.peak_score, track.best, track.best_box = box.score, scored, box
            if len(track.observations) < _MAX_OBS:
                track.observations.append(obs)
            if track not in seen:
                seen.append(track)
            self.assigned.append((track, box))
        for track in seen:
            if not track.confirmed and track.hits >= self.cfg.confirm_frames:
                updates.append(self._confirm(track))
            elif track.confirmed and track.peak_score > track.reported_peak * self.cfg.update_ratio:
                track.reported_peak = track.peak_score
                after = track.state()
                updates.append(TrackUpdate("update", track, track.last_state, after))
                track.last_state = after
        updates.extend(self._expire(idx, seen, placement))
        return updates

    def flush(self) -> list[TrackUpdate]:
        """End every open track (end of footage or shutdown). Unconfirmed tracks seen in most frames
        that showed them are confirmed first, as when they leave the view."""
        out: list[TrackUpdate] = []
        for t in self.tracks:
            if not t.confirmed and t.hits > t.misses:
                out.append(self._confirm(t))
            if t.confirmed:
                out.append(TrackUpdate("end", t, t.last_state, t.state()))
        self.tracks = []
        return out

    # -- internals -------------------------------------------------------------------------------

    def _confirm(self, track: Track) -> TrackUpdate:
        track.confirmed = True
        track.reported_peak = track.peak_score
        after = track.state()
        track.last_state = after
        return TrackUpdate("new", track, None, after)

    @staticmethod
    def _observe(idx: int, box: Box, placement: Placement | None, frame_h: float) -> Observation:
        clipped = box.y <= 1 or box.y + box.h >= frame_h - 1
        if placement is None:
            return Observation(idx, box, None, None, clipped)
        span = placement.span(box.y, box.h)
        return Observation(idx, box, span, placement.chainage_m((span[0] + span[1]) / 2), clipped)

    def _match(self, obs: Observation, idx: int, placement: Placement | None, frame_h: float) -> Track | None:
        box = obs.box
        best, best_key = None, None
        for t in self.tracks:
            lo, hi = max(box.x, t.box.x), min(box.x + box.w, t.box.x + t.box.w)
            overlap = (hi - lo) / max(1, min(box.w, t.box.w))
            if overlap < self.cfg.min_overlap:
                continue
            dt = idx - t.last_frame
            tol = self.cfg.gap_px + 0.05 * frame_h * max(dt, 0)
            if obs.span is not None and t.span is not None:
                gap = max(obs.span[0], t.span[0]) - min(obs.span[1], t.span[1])
                if gap > tol:
                    continue
            elif dt == 0:  # a second fragment on the same frame
                gap = max(box.y, t.box.y) - min(box.y + box.h, t.box.y + t.box.h)
                if gap > self.cfg.gap_px:
                    continue
            else:
                gap = self._motion_gap(t, box, dt, frame_h)
                if gap is None:
                    continue
            key = (overlap > 0.5, -gap, overlap)
            if best_key is None or key > best_key:
                best, best_key = t, key
        return best

    def _motion_gap(self, t: Track, box: Box, dt: int, frame_h: float) -> float | None:
        """Without a placement: how far the box is from where the track should be now (None: it
        cannot be the same defect)."""
        d = self.cfg.direction
        moved = ((box.y + box.h / 2) - (t.box.y + t.box.h / 2)) * d  # along the rail's motion
        if t.velocity is not None:
            expected = t.velocity * dt
            gap = abs(moved - expected) - (t.box.h + box.h) / 2
            return max(0.0, gap) if gap <= self.cfg.gap_px + 0.25 * abs(expected) else None
        # speed unknown yet: any forward move up to a frame height, small jitter backwards
        if -self.cfg.gap_px - max(box.h, t.box.h) / 2 <= moved <= frame_h:
            return 0.0
        return None

    def _absorb(self, t: Track, obs: Observation, idx: int) -> None:
        box = obs.box
        if t.last_frame == idx:  # a fragment: widen this frame's box
            x0, y0 = min(t.box.x, box.x), min(t.box.y, box.y)
            x1, y1 = max(t.box.x + t.box.w, box.x + box.w), max(t.box.y + t.box.h, box.y + box.h)
            t.box = Box(x0, y0, x1 - x0, y1 - y0, max(t.box.score, box.score))
        else:
            dt = idx - t.last_frame
            unclipped = not obs.clipped and not (t.observations and t.observations[-1].clipped)
            if unclipped:
                v = ((box.y + box.h / 2) - (t.box.y + t.box.h / 2)) * self.cfg.direction / dt
                t.velocity = v if t.velocity is None else 0.5 * (t.velocity + v)
            t.hits += 1
            t.last_frame = idx
            t.box = box
        if obs.span is not None:
            t.span = obs.span if t.span is None else (min(t.span[0], obs.span[0]), max(t.span[1], obs.span[1]))

    def _left_view(self, t: Track, placement: Placement | None) -> bool:
        """True when the placement shows the defect is (almost) out of the view: if it were still
        there it would have been seen."""
        if placement is None or t.span is None:
            return False
        v_lo, v_hi = placement.view()
        lo, hi = t.span
        visible = min(hi, v_hi) - max(lo, v_lo)
        return visible < 0.5 * (hi - lo)

    def _expire(self, idx: int, seen: list[Track], placement: Placement | None) -> list[TrackUpdate]:
        out: list[TrackUpdate] = []
        keep: list[Track] = []
        for t in self.tracks:
            if t in seen:
                keep.append(t)
                continue
            if self._left_view(t, placement):
                if not t.confirmed and t.hits > t.misses:
                    out.append(self._confirm(t))
                if t.confirmed:
                    out.append(TrackUpdate("end", t, t.last_state, t.state()))
                continue
            t.misses += 1
            if idx - t.last_frame > self.cfg.end_after:
                if t.confirmed:
                    out.append(TrackUpdate("end", t, t.last_state, t.state()))
                continue
            keep.append(t)
        self.tracks = keep
        return out
