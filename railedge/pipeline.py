"""Wiring: frame → rail crop → backbone → anomaly map → boxes → tracked events → sinks.

The pipeline times every stage; the stages themselves do no timing, logging set-up or I/O."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from railedge.config import Config
from railedge.events.boxes import BoxFinder
from railedge.events.tracker import EVENT_SCHEMA, DefectTracker, TrackerConfig, TrackUpdate
from railedge.model import ModelArtifact
from railedge.roi import RailBandLocator
from railedge.values import Frame, FrameTiming, Scored

if TYPE_CHECKING:
    from railedge.sinks import EventSink


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class FrameOutcome:
    scored: Scored
    timing: FrameTiming
    events: list[dict[str, Any]] = field(default_factory=list)

    def frame_record(self) -> dict[str, Any]:
        f = self.scored.frame
        return {
            "source": f.source,
            "frame_index": f.index,
            "frame_ts": iso(f.t_wall),
            "score": round(self.scored.score, 6),
            "threshold": round(self.scored.threshold, 6),
            "boxes": [b.xywh() for b in self.scored.boxes if b.score > self.scored.threshold],
            "position": f.position.to_dict() if f.position else None,
            "latency_ms": self.timing.as_dict(),
        }


class Pipeline:
    def __init__(
        self,
        cfg: Config,
        model: ModelArtifact,
        engine: Callable[[np.ndarray], np.ndarray],
        sinks: list["EventSink"],
        run_id: str | None = None,
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
        run_id = run_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        self.tracker = DefectTracker(TrackerConfig(), id_prefix=f"{cfg.device.id}-{run_id}")
        self.backbone = model.backbone

    def set_threshold(self, threshold: float) -> None:
        self.threshold = threshold

    def process(self, frame: Frame, pre_stages: dict[str, float] | None = None) -> FrameOutcome:
        timing = FrameTiming(dict(pre_stages or {}))
        t0 = time.perf_counter()
        crop = self.locator.crop(frame)
        t1 = time.perf_counter()
        x = self.preprocess(crop.image)
        t2 = time.perf_counter()
        feats = self.engine(x[None, None])[0]
        t3 = time.perf_counter()
        amap, score = self.scorer(feats)
        t4 = time.perf_counter()
        stay = self.tracker.stay_threshold(self.threshold)
        scored = Scored(crop=crop, amap=amap, score=score, threshold=self.threshold)
        boxes = self.boxes(amap, stay, crop) if score > stay else ()
        scored = Scored(crop=crop, amap=amap, score=score, threshold=self.threshold, boxes=boxes)
        updates = self.tracker.step(scored, boxes)
        t5 = time.perf_counter()
        timing.stages.update(roi=(t1 - t0) * 1e3, preprocess=(t2 - t1) * 1e3, inference=(t3 - t2) * 1e3,
                             scoring=(t4 - t3) * 1e3, events=(t5 - t4) * 1e3)
        events = [self._payload(u, timing) for u in updates]
        self._emit(events, timing)
        return FrameOutcome(scored, timing, events)

    def finish(self) -> list[dict[str, Any]]:
        """End open defects (end of footage, shutdown) and emit their `end` events."""
        timing = FrameTiming({})
        events = [self._payload(u, timing) for u in self.tracker.flush()]
        self._emit(events, timing)
        return events

    def _emit(self, events: list[dict[str, Any]], timing: FrameTiming) -> None:
        t0 = time.perf_counter()
        for ev in events:
            for sink in self.sinks:
                sink.emit(ev)
        timing.stages["publish"] = (time.perf_counter() - t0) * 1e3

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
            "class": None,
            "class_score": None,
            "backbone": self.backbone,
            "position": best.position.to_dict() if best.position else None,
            "peak_score": round(t.peak_score, 6),
            "first_frame": t.first_frame,
            "last_frame": t.last_frame,
            "before": u.before,
            "after": u.after,
            "latency_ms": timing.as_dict(),
        }
