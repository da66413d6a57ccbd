"""`railedge replay`: recorded footage through the fitted model, events to JSONL and MQTT."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, TextIO

from railedge.capture import CaptureThread
from railedge.config import Config
from railedge.logs import get_logger
from railedge.model import ModelArtifact
from railedge.pipeline import FrameOutcome, Pipeline
from railedge.sources import open_source
from railedge.sources.reduce import resolve_reduce
from railedge.stats import LatencyStats

log = get_logger("railedge.replay")


def open_sinks(cfg: Config, model: ModelArtifact, events_out: Path | None) -> list[Any]:
    """The durable outbox comes first: an event is on disk before any other sink shows it."""
    sinks: list[Any] = []
    if cfg.mqtt.enabled:
        from railedge.sinks.mqtt import MqttPublisher

        pub = MqttPublisher(
            cfg.mqtt,
            cfg.device.id,
            Path(cfg.state_dir),
            {"model": str(model.path), "backbone": model.backbone, "mode": "replay"},
        )
        pub.start()
        sinks.append(pub)
    if events_out is not None:
        from railedge.sinks.jsonl import JsonlWriter

        sinks.append(JsonlWriter(events_out))
    return sinks


class Progress:
    """A one-line progress bar on a TTY (stderr); silent otherwise."""

    def __init__(self, total: int | None, stream: TextIO = sys.stderr) -> None:
        self.total, self.stream = total, stream
        self.enabled = stream.isatty()
        self._last = 0.0

    def update(self, n: int, fps: float, events: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.2:
            return
        self._last = now
        if self.total:
            done = int(30 * min(n, self.total) / self.total)
            bar = "#" * done + "-" * (30 - done)
            self.stream.write(f"\r[{bar}] {n}/{self.total} frames  {fps:6.1f} fps  {events} events")
        else:
            self.stream.write(f"\r{n} frames  {fps:6.1f} fps  {events} events")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def replay(
    cfg: Config,
    source_uri: str,
    events_out: Path | None = None,
    frames_out: Path | None = None,
    pace: str = "max",
    max_frames: int | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    on_frame: Callable[[FrameOutcome], None] | None = None,
    run_dir: Path | None = None,
) -> dict[str, Any]:
    """Replay `source_uri` through the fitted model. With `run_dir`, also write a run directory for
    `railedge report`: run.json (summary, config, model, source), events.jsonl, frames.jsonl and
    snapshots/ (see `write_run`)."""
    model = ModelArtifact.load(cfg.model.path)
    engine = model.engine(cfg.runtime, cfg.threads, cfg.spinning)
    reduce = resolve_reduce(cfg.source.reduce, source_uri, cfg.roi, (model.preprocess.height, model.preprocess.width))
    source = open_source(source_uri, replace(cfg.source, reduce=reduce))
    started = time.time()
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        frames_out = frames_out or run_dir / "frames.jsonl"
    sinks = open_sinks(cfg, model, events_out)
    if run_dir is not None:
        from railedge.sinks.jsonl import JsonlWriter

        run_events = run_dir / "events.jsonl"
        if run_events.exists() and (events_out is None or Path(events_out).resolve() != run_events.resolve()):
            run_events.unlink()  # a run directory describes one replay
        if events_out is None or Path(events_out).resolve() != run_events.resolve():
            sinks.append(JsonlWriter(run_events))
    pipeline = Pipeline(cfg, model, engine, sinks, fps=source.fps, live=False,
                        snapshot_dir=(run_dir / "snapshots") if run_dir is not None else None)
    stats = LatencyStats()
    frames_file = open(frames_out, "w", encoding="utf-8") if frames_out else None
    total = getattr(source, "frame_count", None) or (len(source.files) if hasattr(source, "files") else None)
    if max_frames:
        total = min(total or max_frames, max_frames)
    progress = Progress(total)
    capture = CaptureThread(source, maxsize=8, drop_oldest=False).start()
    counts: Counter[str] = Counter()
    ids: set[str] = set()
    anomalous = 0
    n = 0
    t0 = time.perf_counter()
    fps = source.fps or 25.0
    try:
        for item in capture:
            if pace == "realtime":
                due = t0 + n / fps
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            # Replay prefetches frames, so time spent queued is not latency: only decode counts.
            out = pipeline.process(item.frame, {"decode": item.decode_ms})
            _account(out.events, counts, ids, on_event)
            anomalous += out.scored.is_anomalous
            stats.add(out.timing.as_dict())
            if frames_file:
                frames_file.write(json.dumps(out.frame_record()) + "\n")
            if on_frame:
                on_frame(out)
            n += 1
            progress.update(n, n / max(1e-9, time.perf_counter() - t0), sum(counts.values()))
            if max_frames and n >= max_frames:
                capture.stop()
                break
        _account(pipeline.finish(), counts, ids, on_event)
    finally:
        capture.stop()
        elapsed = time.perf_counter() - t0
        progress.close()
        if frames_file:
            frames_file.close()
        mqtt_summary = None
        for sink in sinks:
            if hasattr(sink, "counters"):
                sink.close(cfg.mqtt.flush_timeout_s)
                mqtt_summary = sink.counters()
            else:
                sink.close()
        source.close()
        pipeline.close()
    summary = {
        "source": source_uri,
        "model": str(model.path),
        "backbone": model.backbone,
        "runtime": cfg.runtime,
        "frames": n,
        "seconds": round(elapsed, 3),
        "fps": round(n / elapsed, 2) if elapsed > 0 else 0.0,
        "threshold": round(pipeline.threshold, 6),
        "anomalous_frames": anomalous,
        "events": sum(counts.values()),
        "event_types": dict(counts),
        "defects": len(ids),
        "skipped_files": list(getattr(source, "skipped", [])),
        "latency_ms": stats.percentiles(),
        "mqtt": mqtt_summary,
    }
    if pipeline.snapshots is not None:
        summary["snapshots"] = {"dir": str(pipeline.snapshots.folder), "bytes": pipeline.snapshots.total_bytes,
                                "removed": pipeline.snapshots.removed}
    if run_dir is not None:
        write_run(run_dir, cfg, model, source_uri, source.fps, summary, started)
    log.info("replay_done", frames=n, fps=summary["fps"], events=summary["events"], defects=len(ids))
    return summary


def find_truth(source_uri: str) -> Path | None:
    """defects.json written by `railedge synth` beside the footage (track.mp4 or frames/images)."""
    p = Path(source_uri)
    for d in [p.parent, p, *p.parents[:3]] if p.exists() else []:
        if (d / "defects.json").is_file():
            return d / "defects.json"
    return None


def write_run(run_dir: Path, cfg: Config, model: ModelArtifact, source_uri: str, fps: float | None,
              summary: dict[str, Any], started: float) -> Path:
    """run.json: what `railedge report` needs besides events.jsonl, frames.jsonl and snapshots/."""
    truth = find_truth(source_uri)
    run = {
        "format": "railedge.run/1",
        "started": started,
        "finished": time.time(),
        "source": str(Path(source_uri).resolve()) if Path(source_uri).exists() else source_uri,
        "fps": fps,
        "summary": summary,
        "config": cfg.to_dict(),
        "model": {
            "path": str(model.path.resolve()),
            "backbone": model.backbone,
            "threshold": model.threshold,
            "input": [model.preprocess.height, model.preprocess.width],
            "stride": model.stride,
            "calibration": model.meta.get("calibration"),
        },
        "truth": str(truth.resolve()) if truth else None,
    }
    path = run_dir / "run.json"
    tmp = path.with_name("run.json.tmp")
    tmp.write_text(json.dumps(run, indent=2))
    tmp.replace(path)
    return path


def _account(events: list[dict[str, Any]], counts: Counter[str], ids: set[str], on_event: Callable | None) -> None:
    for ev in events:
        counts[ev["type"]] += 1
        ids.add(ev["id"])
        if on_event:
            on_event(ev)
