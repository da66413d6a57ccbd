"""Wiring: frame → position → rail crop → backbone → anomaly map → boxes → tracked events →
snapshots → sinks.

The pipeline times every stage; the stages themselves do no timing, logging set-up or I/O (the
pipeline does the snapshot writes and sink calls)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from railedge.config import Config
from railedge.events.boxes import BoxFinder
from railedge.events.geometry import Placement, TrackGeometry
from railedge.events.tracker import EVENT_SCHEMA, DefectTracker, Track, TrackerConfig, TrackUpdate, stay_level
from railedge.logs import get_logger
from railedge.model import ModelArtifact
from railedge.position import PositionResolver, build_position
from railedge.roi import RailBandLocator
from railedge.values import Frame, FrameTiming, Scored

if TYPE_CHECKING:
    from railedge.sinks import EventSink
    from railedge.snapshots import SnapshotStore



def _log():
    """The logger, made when used (a logger bound at import, before logging is set up, writes to stdout)."""
    return get_logger("railedge.pipeline")
_AUTO: Any = object()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class FrameOutcome:
    scored: Scored
    timing: FrameTiming
    events: list[dict[str, Any]] = field(default_factory=list)
    level: float | None = None  # the stay level (boxes are regions above it)
    tracked: list[tuple[str, list[int], bool]] = field(default_factory=list)  # (track id, bbox, confirmed)
    placement: Placement | None = None

    def frame_record(self) -> dict[str, Any]:
        f = self.scored.frame
        return {
            "source": f.source,
            "frame_index": f.index,
            "frame_ts": iso(f.t_wall),
            "score": round(self.scored.score, 6),
            "threshold": round(self.scored.threshold, 6),
            "stay_level": None if self.level is None else round(self.level, 6),
            "boxes": [b.xywh() for b in self.scored.boxes if b.score > self.scored.threshold],
            "tracks": [{"id": tid, "bbox": bbox, "confirmed": conf} for tid, bbox, conf in self.tracked],
            "position": f.position.to_dict() if f.position else None,
            "latency_ms": self.timing.as_dict(),
        }


class Pipeline:
    """One frame at a time through every stage; `finish()` ends open defects.

    `fps`/`live` say how to clock the footage for positions (recorded footage with a frame rate runs
    on its own clock, index / fps); `position` replaces the resolver built from `cfg.position` (None:
    no positions); `snapshot_dir` replaces `snapshots.dir` (a replay's run directory)."""

    def __init__(
        self,
        cfg: Config,
        model: ModelArtifact,
        engine: Callable[[np.ndarray], np.ndarray],
        sinks: list["EventSink"],
        run_id: str | None = None,
        *,
        fps: float | None = None,
        live: bool | None = None,
        position: PositionResolver | None = _AUTO,
        snapshot_dir: str | Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.engine = engine
        self.sinks = sinks
        self.locator = RailBandLocator(cfg.roi)
        self.preprocess = model.preprocess
        self.scorer = model.scorer()
        self.threshold = cfg.scoring.threshold if cfg.scoring.threshold is not None else model.threshold
        self.boxes = BoxFinder(
            stride=model.stride,
            input_hw=(self.preprocess.height, self.preprocess.width),
            min_area_px=cfg.events.min_area_px,
            merge_gap_px=cfg.events.merge_gap_px,
        )
        if live is None:
            from railedge.sources import is_camera_uri

            live = cfg.source.live if cfg.source.live is not None else is_camera_uri(cfg.source.uri)
        self.position = build_position(cfg, fps, live) if position is _AUTO else position
        direction = 1 if cfg.position.direction == "down" else -1
        self.geometry = TrackGeometry(cfg.position.mm_per_px, cfg.position.linescan, direction)
        ev = cfg.events
        run_id = run_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        self.tracker = DefectTracker(
            TrackerConfig(confirm_frames=ev.confirm_frames, stay_ratio=ev.stay_ratio, end_after=ev.end_after_frames,
                          update_ratio=ev.update_ratio, gap_px=float(ev.merge_gap_px), direction=direction),
            id_prefix=f"{cfg.device.id}-{run_id}",
        )
        self._gap_set = False
        self.backbone = model.backbone
        self.snapshots: SnapshotStore | None = None
        self._snapshot_publishers = [s for s in sinks if hasattr(s, "publish_snapshot")] if cfg.mqtt.publish_snapshots else []
        if cfg.snapshots.enabled:
            from railedge.snapshots import SnapshotStore

            folder = Path(snapshot_dir) if snapshot_dir is not None else Path(cfg.snapshots.dir)
            if not folder.is_absolute() and snapshot_dir is None:
                folder = Path(cfg.state_dir) / folder
            self.snapshots = SnapshotStore(folder, int(cfg.snapshots.max_mb * 1e6))

    def set_threshold(self, threshold: float) -> None:
        self.threshold = threshold

    def process(self, frame: Frame, pre_stages: dict[str, float] | None = None) -> FrameOutcome:
        timing = FrameTiming(dict(pre_stages or {}))
        st = timing.stages
        t0 = time.perf_counter()
        if self.position is not None:
            pos = self.position(frame)
            if pos is not None:
                frame = dataclasses.replace(frame, position=pos)
            t1 = time.perf_counter()
            st["position"] = (t1 - t0) * 1e3
            t0 = t1
        crop = self.locator.crop(frame)
        t1 = time.perf_counter()
        x = self.preprocess(crop.image)
        t2 = time.perf_counter()
        feats = self.engine(x[None, None])[0]
        t3 = time.perf_counter()
        amap, score = self.scorer(feats)
        t4 = time.perf_counter()
        if not self._gap_set:
            self._set_gap(crop.band.height * frame.scale)
        level = stay_level(amap, self.threshold, self.cfg.events.stay_ratio)
        boxes = self.boxes(amap, level, crop) if score > level else ()
        scored = Scored(crop=crop, amap=amap, score=score, threshold=self.threshold, boxes=boxes)
        placement = self.geometry.place(frame)
        updates = self.tracker.step(scored, boxes, placement)
        self._classify(feats, crop, amap.shape)
        tracked = [(t.id, b.xywh(), t.confirmed) for t, b in self.tracker.assigned]
        t5 = time.perf_counter()
        st.update(roi=(t1 - t0) * 1e3, preprocess=(t2 - t1) * 1e3, inference=(t3 - t2) * 1e3,
                  scoring=(t4 - t3) * 1e3, events=(t5 - t4) * 1e3)
        events = self._deliver(updates, timing)
        return FrameOutcome(scored, timing, events, level, tracked, placement)

    def finish(self) -> list[dict[str, Any]]:
        """End open defects (end of footage, shutdown) and emit their `end` events."""
        return self._deliver(self.tracker.flush(), FrameTiming({}))

    def close(self) -> None:
        """Release what the pipeline opened itself (a live position feed). Sinks belong to the caller."""
        if self.position is not None:
            self.position.close()

    # -- internals -------------------------------------------------------------------------------

    def _classify(self, feats: np.ndarray, crop: Any, grid: tuple[int, ...]) -> None:
        """Models with a class head: each track takes the class of its best box (railedge train)."""
        classify = getattr(self.scorer, "classify", None)
        if classify is None:
            return
        from railedge.scoring.head import box_cells

        for t, b in self.tracker.assigned:
            if b is t.best_box:
                cls, cs = classify(feats, box_cells(b, crop, (int(grid[0]), int(grid[1]))))
                t.extra["class"], t.extra["class_score"] = cls, round(cs, 6)

    def _set_gap(self, band_h_px: float) -> None:
        # Box edges move by up to a feature cell between frames: tolerate two cells beyond the merge gap.
        cell = band_h_px / self.preprocess.height * self.model.stride
        self.tracker.cfg = dataclasses.replace(self.tracker.cfg, gap_px=float(self.cfg.events.merge_gap_px) + 2 * cell)
        self._gap_set = True

    def _deliver(self, updates: list[TrackUpdate], timing: FrameTiming) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        fresh: list[tuple[str, bytes]] = []
        if self.snapshots is not None or self._snapshot_publishers:
            for u in updates:
                snap = self._snapshot(u.track)
                if snap is not None:
                    fresh.append(snap)
        if fresh:
            timing.stages["snapshot"] = (time.perf_counter() - t0) * 1e3
        events = [self._payload(u, timing) for u in updates]
        t1 = time.perf_counter()
        for ev in events:
            for sink in self.sinks:
                sink.emit(ev)
        for event_id, jpeg in fresh:  # after the events: a subscriber hears of a defect before its picture
            for pub in self._snapshot_publishers:
                pub.publish_snapshot(event_id, jpeg)
        timing.stages["publish"] = (time.perf_counter() - t1) * 1e3
        return events

    def _snapshot(self, t: Track) -> tuple[str, bytes] | None:
        """Render (and store) the track's best frame when it changed since its last snapshot."""
        key = (t.best.frame.index, t.best_box)
        if t.extra.get("snapshot_key") == key:
            return None
        from railedge.snapshots import render_snapshot

        level = stay_level(t.best.amap, t.best.threshold, self.cfg.events.stay_ratio)
        ch = t.chainage_m
        label = f"{t.id.rsplit('-', 1)[-1]}  frame {t.best.frame.index}  score {t.peak_score:.3f}"
        if ch is not None:
            label += f"  {ch:.2f} m"
        jpeg = render_snapshot(t.best, t.best_box, level, max_side=self.cfg.snapshots.max_side_px,
                               quality=self.cfg.snapshots.quality, label=label)
        t.extra["snapshot_key"] = key
        if self.snapshots is not None:
            try:
                t.extra["snapshot"] = str(self.snapshots.save(t.id, jpeg))
            except OSError as e:  # a full disk must not stop detection: the event still goes out
                _log().error("snapshot_write_failed", event_id=t.id, error=str(e), fix="free space in the snapshot folder")
        elif self._snapshot_publishers:
            t.extra["snapshot"] = f"snapshot/{t.id}"
        return t.id, jpeg

    def _position(self, t: Track) -> dict[str, Any] | None:
        pos = t.best.frame.position
        ch = t.chainage_m
        if ch is None and pos is not None:
            ch = pos.chainage_m
        out = {"chainage_m": None if ch is None else round(ch, 3),
               "lat": pos.lat if pos else None, "lon": pos.lon if pos else None}
        return None if all(v is None for v in out.values()) else out

    def _payload(self, u: TrackUpdate, timing: FrameTiming) -> dict[str, Any]:
        t = u.track
        best = t.best.frame
        return {
            "schema": EVENT_SCHEMA,
            "id": t.id,
            "type": u.kind,
            "device": self.cfg.device.id,
            "source": best.source,
            "frame_index": best.index,
            "frame_ts": iso(best.t_wall),
            "score": round(t.best_box.score, 6),
            "threshold": round(self.threshold, 6),
            "bbox": t.best_box.xywh(),
            "class": t.extra.get("class"),
            "class_score": t.extra.get("class_score"),
            "alarm": t.extra.get("class") is None or t.extra["class"] in self.cfg.events.alarm_classes,
            "backbone": self.backbone,
            "position": self._position(t),
            "peak_score": round(t.peak_score, 6),
            "first_frame": t.first_frame,
            "last_frame": t.last_frame,
            "snapshot": t.extra.get("snapshot"),
            "before": u.before,
            "after": u.after,
            "latency_ms": timing.as_dict(),
        }
