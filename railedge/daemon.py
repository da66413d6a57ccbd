"""`railedge run`: the live service. Camera → rail crop → model → events, for months.

Threads: the capture thread reads the camera into a bounded queue (live: the oldest queued frame
is dropped and counted when inference falls behind); the main thread runs the pipeline, the
health state machine, statistics, systemd notifications and signals; the MQTT publisher has its
own network thread and a durable outbox.

systemd (Type=notify, see systemd/railedge.service and docs/daemon.md):
    READY=1     after the model is loaded and the first frame went through the pipeline
    WATCHDOG=1  every WatchdogSec/2, but only while frames flow through the pipeline (a frame
                processed within source.watchdog_s); a stalled pipeline or a camera that stays
                away gets the service restarted by systemd
    STATUS=     a one-line summary (state, rates, latency, events, outbox, memory)
    RELOADING=1 / READY=1 around a SIGHUP reload; STOPPING=1 on SIGTERM/SIGINT

Signals: SIGTERM/SIGINT stop capture, finish the queued frames (daemon.drain_timeout_s), end open
defects, flush the outbox (mqtt.flush_timeout_s) and exit 0. SIGHUP reloads the config file:
threshold, MQTT settings, logging, ROI/events, compare, source and (daemon.reload_model) the
model; queued events stay in the outbox. device.id and state_dir need a restart.

Status on <prefix>/<device>/status: 'degraded' while starting and whenever no frame arrived for
source.watchdog_s (the camera is reopened with backoff meanwhile); 'online' once frames have
flowed for daemon.recover_s without such a gap (debounced: a flapping camera stays degraded)."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import structlog

from railedge.config import Config, load_config
from railedge.errors import RailedgeError, SourceError
from railedge.logs import RateLimitedLog, setup_logging
from railedge.sdnotify import SdNotifier
from railedge.stats import LatencyStats, RateMeter, rss_mb

# A lazy proxy: it follows setup_logging() calls made after import (start-up, SIGHUP reload).
log = structlog.get_logger("railedge.daemon")

STARTING, ONLINE, DEGRADED = "starting", "online", "degraded"
LATENCY_WINDOW = 20_000  # samples per stage kept between two stats messages (bounds memory)


# ---- health ---------------------------------------------------------------------------------

class FrameHealth:
    """Online/degraded from frame arrivals, debounced so that it does not flap.

    starting → online at the first frame; online → degraded when no frame came for `watchdog_s`
    (also from starting); degraded → online only after frames flowed for `recover_s` without a
    gap longer than `watchdog_s`."""

    def __init__(self, watchdog_s: float, recover_s: float, now: float) -> None:
        self.watchdog_s = watchdog_s
        self.recover_s = recover_s
        self.state = STARTING
        self.since = now
        self.last_frame: float | None = None
        self.flowing_since: float | None = None
        self.degraded_episodes = 0
        self.degraded_s_total = 0.0

    def frame(self, now: float) -> None:
        if self.last_frame is None or now - self.last_frame > self.watchdog_s:
            self.flowing_since = now
        self.last_frame = now

    def flowing(self, now: float) -> bool:
        return self.last_frame is not None and now - self.last_frame <= self.watchdog_s

    def update(self, now: float) -> str | None:
        """The new state when it changes, else None."""
        new = None
        if self.state == STARTING:
            if self.last_frame is not None:
                new = ONLINE
            elif now - self.since > self.watchdog_s:
                new = DEGRADED
        elif self.state == ONLINE:
            if not self.flowing(now):
                new = DEGRADED
        elif self.flowing(now) and self.flowing_since is not None and now - self.flowing_since >= self.recover_s:
            new = ONLINE
        if new is None:
            return None
        if new == DEGRADED:
            self.degraded_episodes += 1
        elif self.state == DEGRADED:
            self.degraded_s_total += now - self.since
        self.state, self.since = new, now
        return new

    def degraded_s(self, now: float) -> float:
        return self.degraded_s_total + (now - self.since if self.state == DEGRADED else 0.0)


# ---- live comparison ------------------------------------------------------------------------

class CompareRunner:
    """A second fitted model (e.g. ResNet-18 beside the SNN) scored on every Nth processed frame:
    the same frame and the same rail crop as the main model, timed the same way."""

    def __init__(self, cfg: Config, primary_backbone: str) -> None:
        from railedge.model import ModelArtifact

        self.path = str(cfg.compare.model_path)
        self.model = ModelArtifact.load(self.path)
        self.engine = self.model.engine(cfg.runtime, cfg.threads, cfg.spinning)
        self.scorer = self.model.scorer()
        self.threshold = self.model.threshold  # its own calibration: scoring.threshold is the main model's
        self.every_n = cfg.compare.every_n
        self.primary = primary_backbone
        self.key = self.model.backbone if self.model.backbone != primary_backbone else f"{self.model.backbone}_compare"
        self._reset()

    def _reset(self) -> None:
        self.lat = LatencyStats(window=LATENCY_WINDOW)
        self.primary_lat = LatencyStats(window=LATENCY_WINDOW)
        self.scores: deque[tuple[float, bool, float, bool]] = deque(maxlen=LATENCY_WINDOW)
        self.primary_threshold = 0.0

    def run(self, out: Any) -> None:
        crop = out.scored.crop
        t0 = time.perf_counter()
        x = self.model.preprocess(crop.image)
        t1 = time.perf_counter()
        feats = self.engine(x[None, None])[0]
        t2 = time.perf_counter()
        _amap, score = self.scorer(feats)
        t3 = time.perf_counter()
        self.lat.add({"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3, "scoring": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3})
        st = out.timing.stages
        self.primary_lat.add({
            "preprocess": st.get("preprocess", 0.0), "inference": st.get("inference", 0.0), "scoring": st.get("scoring", 0.0),
            "total": st.get("preprocess", 0.0) + st.get("inference", 0.0) + st.get("scoring", 0.0),
        })
        p = out.scored
        self.primary_threshold = float(p.threshold)
        self.scores.append((float(p.score), bool(p.is_anomalous), float(score), bool(score > self.threshold)))

    def stats(self) -> dict[str, Any]:
        """Scores and latencies of both models over the frames compared since the last call."""
        rows = list(self.scores)
        n = len(rows)

        def side(i: int, thr: float, lat: LatencyStats) -> dict[str, Any]:
            s = [r[i] for r in rows]
            return {
                "score_mean": round(sum(s) / n, 6) if n else None,
                "score_max": round(max(s), 6) if n else None,
                "score_last": round(s[-1], 6) if n else None,
                "threshold": round(float(thr), 6),
                "above_threshold": sum(1 for r in rows if r[i + 1]),
                "latency_ms": lat.percentiles(),
            }

        out = {
            "model": self.path,
            "every_n": self.every_n,
            "frames": n,
            "agreement": round(sum(1 for r in rows if r[1] == r[3]) / n, 4) if n else None,
            "backbones": {
                self.primary: {"role": "primary", **side(0, self.primary_threshold, self.primary_lat)},
                self.key: {"role": "compare", **side(2, self.threshold, self.lat)},
            },
        }
        self._reset()
        return out

    def inference_ms(self) -> dict[str, float] | None:
        return self.lat.percentiles().get("inference")


# ---- the daemon -----------------------------------------------------------------------------

class Daemon:
    """The live service. `run()` returns 0 after a clean stop (signal or max_frames); it raises
    RailedgeError only for faults a restart cannot fix (no model, a bad source URI)."""

    def __init__(
        self,
        cfg: Config,
        load: Callable[[], Config] | None = None,
        max_frames: int | None = None,
        notifier: SdNotifier | None = None,
    ) -> None:
        self.cfg = cfg
        self._load_cfg = load or (lambda: cfg)
        self.max_frames = max_frames
        self.notifier = notifier or SdNotifier()
        self._stop = threading.Event()
        self._reload_req = threading.Event()
        self._limited = RateLimitedLog(log, interval_s=60.0)
        self.t_start = time.monotonic()
        self.health = FrameHealth(cfg.source.watchdog_s, cfg.daemon.recover_s, self.t_start)
        self.model: Any = None
        self.engine: Any = None
        self.pipeline: Any = None
        self.compare: CompareRunner | None = None
        self.publisher: Any = None
        self.jsonl: Any = None
        self.sinks: list[Any] = []
        self.source: Any = None
        self.capture: Any = None
        self._capture_retry_at: float | None = None
        self._capture_failures = 0
        # totals across capture restarts
        self._in_base = 0
        self._skipped_base = 0
        self.processed = 0
        self.frame_errors = 0
        self.events_total = 0
        self.reloads = 0
        self.reload_failures = 0
        self.ready_sent = False
        self.lat = LatencyStats(window=LATENCY_WINDOW)
        self._recent_total: deque[float] = deque(maxlen=512)
        self._rates = RateMeter()
        self._status_rates = RateMeter()
        for meter in (self._rates, self._status_rates):
            meter.sample({"in": 0, "processed": 0, "skipped": 0}, self.t_start)
        self._status_fps = {"in": 0.0, "processed": 0.0, "skipped": 0.0}
        self._last_ping = 0.0
        self._last_status = 0.0
        self._last_stats = time.monotonic()
        self.watchdog_pings = 0
        self._status: tuple[str, str | None] = (DEGRADED, None)

    # -- signals ----------------------------------------------------------------------------

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # embedded use (tests): the caller stops us with request_stop()
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload_req.set())

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_req.set()

    # -- start ------------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        cfg = self.cfg
        log.info("starting", device=cfg.device.id, source=cfg.source.uri, model=cfg.model.path, runtime=cfg.runtime, pid=os.getpid())
        self.notifier.status(f"starting: loading model {cfg.model.path}")
        try:
            self.model, self.engine = self._load_model(cfg)
            if cfg.compare.model_path:
                self.compare = self._load_compare(cfg)
            self.source = self._open_source(cfg)  # a bad URI fails here; an absent camera is retried
            waiting = f"starting: waiting for the first frame from {self.source.name}"
            self._status = (DEGRADED, waiting)
            self._open_sinks(cfg)
            self.pipeline = self._new_pipeline(cfg, None)
            self._start_capture()
            self.health.since = time.monotonic()  # the first frame is due watchdog_s after capture starts
            self.notifier.status(waiting)
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _load_model(self, cfg: Config) -> tuple[Any, Any]:
        from railedge.model import ModelArtifact

        t0 = time.perf_counter()
        model = ModelArtifact.load(cfg.model.path)
        engine = model.engine(cfg.runtime, cfg.threads, cfg.spinning)
        log.info("model_loaded", model=str(model.path), backbone=model.backbone, runtime=cfg.runtime,
                 threshold=round(model.threshold, 6), seconds=round(time.perf_counter() - t0, 3))
        return model, engine

    def _load_compare(self, cfg: Config) -> CompareRunner:
        c = CompareRunner(cfg, self.model.backbone)
        log.info("compare_loaded", model=c.path, backbone=c.model.backbone, every_n=c.every_n)
        return c

    def _open_source(self, cfg: Config) -> Any:
        from railedge.sources import is_camera_uri
        from railedge.sources.camera import CameraSource

        uri = cfg.source.uri
        if not is_camera_uri(uri) and Path(uri).is_dir():
            raise SourceError(
                f"source {uri!r} is an image folder; 'railedge run' needs a camera, a stream or a video file "
                "(use 'railedge replay' for recorded image folders)"
            )
        # A plain video path is played as a camera (looped at its own rate); it may appear later.
        return CameraSource(uri, cfg.source, reopen_max_s=cfg.daemon.reopen_max_s)

    def _open_sinks(self, cfg: Config) -> None:
        if cfg.daemon.events_out:
            from railedge.sinks.jsonl import JsonlWriter

            self.jsonl = JsonlWriter(cfg.daemon.events_out)
            self.sinks.append(self.jsonl)
        if cfg.mqtt.enabled:
            self.publisher = self._new_publisher(cfg)
            self.sinks.append(self.publisher)

    def _new_publisher(self, cfg: Config) -> Any:
        """A started publisher that announces the current state (never a premature 'online')."""
        from railedge.sinks.mqtt import MqttPublisher

        info = {"model": str(self.model.path), "backbone": self.model.backbone, "mode": "live",
                "source": self.source.name if self.source is not None else cfg.source.uri}
        pub = MqttPublisher(cfg.mqtt, cfg.device.id, Path(cfg.state_dir), info)
        state, reason = self._status
        pub.set_status(state, reason=reason, source=info["source"])
        pub.start()
        return pub

    def _new_pipeline(self, cfg: Config, previous: Any) -> Any:
        """A pipeline for `cfg`; after a reload it takes over the previous one's state: open defects
        (ids and chains continue), the rail band's smoothing, the position feed and the snapshot
        store when their config did not change."""
        from railedge.pipeline import Pipeline

        kw: dict[str, Any] = {"live": True, "fps": self.source.fps if self.source is not None else cfg.source.fps}
        keep_position = previous is not None and getattr(previous.cfg, "position", None) == getattr(cfg, "position", None)
        if keep_position:
            kw["position"] = previous.position
        p = Pipeline(cfg, self.model, self.engine, self.sinks, **kw)
        if previous is not None:
            previous.tracker.cfg = p.tracker.cfg  # new events.* settings apply to the open defects too
            p.tracker = previous.tracker
            if previous.cfg.roi == cfg.roi:
                p.locator = previous.locator
            if getattr(previous.cfg, "snapshots", None) == getattr(cfg, "snapshots", None) and previous.cfg.state_dir == cfg.state_dir:
                p.snapshots = previous.snapshots
            if not keep_position:
                previous.close()  # a live position feed has its own MQTT client
        return p

    def _start_capture(self) -> None:
        from railedge.capture import CaptureThread

        live = self.cfg.source.live
        drop = True if live is None else bool(live)
        self.capture = CaptureThread(self.source, maxsize=self.cfg.daemon.queue_size, drop_oldest=drop).start()
        self._capture_retry_at = None

    # -- main loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._reload_req.is_set():
                self._reload_req.clear()
                self._reload()
            item = self._next(0.2)
            if item is not None:
                self._process(item)
            self._tick(time.monotonic())
            if self.max_frames and self.processed >= self.max_frames:
                log.info("max_frames_reached", frames=self.processed)
                break

    def _next(self, timeout: float) -> Any:
        from railedge.capture import Captured

        if self.capture is None:
            if self._capture_retry_at is not None and time.monotonic() >= self._capture_retry_at:
                try:
                    self.source = self._open_source(self.cfg)
                    self._start_capture()
                except RailedgeError as e:
                    self._capture_ended(e)
            else:
                self._stop.wait(timeout)
            return None
        try:
            item = self.capture.q.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, Captured):
            return item
        # the end marker: the capture thread stopped although we did not ask (a source bug)
        err = self.capture.error
        self._retire_capture()
        self._capture_ended(err)
        return None

    def _capture_ended(self, err: BaseException | None) -> None:
        self._capture_failures += 1
        delay = min(self.cfg.daemon.reopen_max_s, 0.5 * 2 ** min(self._capture_failures, 10))
        self._capture_retry_at = time.monotonic() + delay
        self._limited("error", "capture_ended", source=self.cfg.source.uri,
                      error=f"{err.__class__.__name__}: {err}" if err else "the source ended",
                      retry_in_s=round(delay, 2), fix="the camera source stopped unexpectedly; it is reopened")

    def _stop_capture(self, cap: Any) -> None:
        """No new frames: the capture thread stops after the read in progress, the source closes."""
        cap.stop()
        if self.source is not None:
            self.source.close()

    def _retire_capture(self) -> None:
        """Stop the capture thread and fold its counters into the totals."""
        cap = self.capture
        if cap is None:
            return
        self._stop_capture(cap)
        cap.join(2.0)
        self._in_base += cap.captured
        self._skipped_base += cap.dropped
        self.capture = None

    def _process(self, item: Any) -> None:
        frame = item.frame
        wait_ms = max(0.0, (time.perf_counter() - item.t_queued) * 1e3)
        age_ms = max(0.0, (time.monotonic() - frame.t_mono) * 1e3)
        # capture: from the camera handing over the frame to it entering the queue (decode, convert)
        pre = {"capture": max(0.0, age_ms - wait_ms), "queue_wait": wait_ms}
        try:
            out = self.pipeline.process(frame, pre)
        except Exception as e:  # one bad frame must not stop the service; a stuck stream stops the watchdog
            self.frame_errors += 1
            self._limited("error", "frame_failed", frame_index=frame.index, source=frame.source,
                          error=f"{e.__class__.__name__}: {e}", errors=self.frame_errors, exc_info=True)
            return
        timing = out.timing.as_dict()
        self.lat.add(timing)
        self._recent_total.append(timing["total"])
        self.processed += 1
        self._capture_failures = 0
        self.events_total += len(out.events)
        self.health.frame(time.monotonic())
        if self.compare is not None and self.processed % self.compare.every_n == 0:
            try:
                self.compare.run(out)
            except Exception as e:
                self._limited("error", "compare_failed", error=f"{e.__class__.__name__}: {e}", exc_info=True)
        if not self.ready_sent:
            self.ready_sent = True
            self.notifier.ready(f"online: first frame processed from {self.source.name}")
            log.info("ready", source=self.source.name, first_frame_ms=round(timing["total"], 2),
                     startup_s=round(time.monotonic() - self.t_start, 3))

    def _tick(self, now: float) -> None:
        new = self.health.update(now)
        if new is not None:
            self._health_changed(new, now)
        wd = self.notifier.watchdog_s
        if wd and self.ready_sent and now - self._last_ping >= wd / 2 and self.health.flowing(now):
            if self.notifier.watchdog():
                self.watchdog_pings += 1
            self._last_ping = now
        if now - self._last_status >= self.cfg.daemon.status_interval_s:
            self._last_status = now
            self._status_fps = self._status_rates.sample(self._totals(), now)
            self.notifier.status(self.status_line(now))
        if now - self._last_stats >= self.cfg.mqtt.stats_interval_s:
            self._publish_stats(now)

    def _health_changed(self, state: str, now: float) -> None:
        if state == DEGRADED:
            last = self.health.last_frame
            gap = "no frame yet" if last is None else f"no frame for {now - last:.1f} s"
            why = getattr(self.source, "last_error", None)
            reason = f"camera {self.source.name}: {gap}" + (f" ({why})" if why else "") + "; reopening"
            log.warning("degraded", source=self.source.name, reason=reason, episodes=self.health.degraded_episodes,
                        camera=self._camera_counters())
            self._set_status(DEGRADED, reason=reason)
        else:
            log.info("online", source=self.source.name, episodes=self.health.degraded_episodes,
                     camera=self._camera_counters())
            self._set_status(ONLINE, reason=None)
        self.notifier.status(self.status_line(now))

    def _set_status(self, state: str, reason: str | None) -> None:
        self._status = (state, reason)
        if self.publisher is not None:
            self.publisher.set_status(state, reason=reason, source=self.source.name if self.source else None)

    # -- statistics -------------------------------------------------------------------------

    def _totals(self) -> dict[str, float]:
        cap = self.capture
        return {
            "in": self._in_base + (cap.captured if cap else 0),
            "processed": self.processed,
            "skipped": self._skipped_base + (cap.dropped if cap else 0),
        }

    def _camera_counters(self) -> dict[str, Any]:
        c = getattr(self.source, "counters", None)
        return c() if c else {}

    def stats(self, now: float | None = None) -> dict[str, Any]:
        """The stats message (railedge.stats/1) over the interval since the previous call."""
        now = time.monotonic() if now is None else now
        totals = self._totals()
        rates = self._rates.sample(totals, now)
        latency = self.lat.percentiles()
        self.lat.reset()
        inference: dict[str, Any] = {}
        if "inference" in latency:
            inference[self.model.backbone] = latency["inference"]
        body: dict[str, Any] = {
            "state": self.health.state,
            "source": self.source.name if self.source else self.cfg.source.uri,
            "live": bool(self.capture.drop_oldest) if self.capture else None,
            "model": str(self.model.path),
            "backbone": self.model.backbone,
            "runtime": self.cfg.runtime,
            "threshold": round(float(self.pipeline.threshold), 6),
            "fps_in": rates["in"],
            "fps_processed": rates["processed"],
            "fps_skipped": rates["skipped"],
            "frames_in": int(totals["in"]),
            "frames_processed": int(totals["processed"]),
            "frames_skipped": int(totals["skipped"]),
            "frame_errors": self.frame_errors,
            "queue_depth": self.capture.q.qsize() if self.capture else 0,
            "queue_size": self.cfg.daemon.queue_size,
            "latency_ms": latency,
            "inference_ms": inference,
            "events": self.events_total,
            "degraded_episodes": self.health.degraded_episodes,
            "degraded_s": round(self.health.degraded_s(now), 3),
            "camera": self._camera_counters(),
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
            "watchdog_pings": self.watchdog_pings,
            "rss_mb": rss_mb(),
            "uptime_s": round(now - self.t_start, 3),
        }
        if self.compare is not None:
            cmp_inf = self.compare.inference_ms()
            if cmp_inf:
                inference[self.compare.key] = cmp_inf
            body["compare"] = self.compare.stats()
        body["outbox_depth"] = self.publisher.depth() if self.publisher is not None else 0
        return body

    def _publish_stats(self, now: float) -> None:
        self._last_stats = now
        _trim_heap()  # freed memory back to the OS once per interval: RSS then shows what is live
        body = self.stats(now)
        if self.publisher is not None:
            self.publisher.publish_stats(body)
            body["mqtt_connected"] = self.publisher.connected
        log.info("stats", **body)

    def status_line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        r = self._status_fps
        tot = sorted(self._recent_total)
        p95 = f"{tot[min(len(tot) - 1, int(0.95 * len(tot)))]:.0f} ms" if tot else "-"
        state = self.health.state
        depth = self.publisher.depth() if self.publisher is not None else 0
        mq = "" if self.publisher is None else ("" if self.publisher.connected else " (broker down)")
        rss = rss_mb()
        return (f"{state}: {r['in']:.1f} fps in, {r['processed']:.1f} processed, {r['skipped']:.1f} skipped/s; "
                f"p95 {p95}; {self.events_total} events; outbox {depth}{mq}; "
                f"{'-' if rss is None else f'{rss:.0f}'} MB; {self.processed} frames")

    # -- reload -----------------------------------------------------------------------------

    def _reload(self) -> None:
        t0 = time.perf_counter()
        self.notifier.reloading("reloading the config")
        old = self.cfg
        try:
            new = self._load_cfg()
        except RailedgeError as e:
            self.reload_failures += 1
            log.error("reload_rejected", error=str(e), fix="fix the config file and send SIGHUP again; the running config stays")
            self.notifier.ready(self.status_line())
            return
        kept = [k for k in ("device", "state_dir") if getattr(new, k) != getattr(old, k)]
        if kept:
            log.warning("reload_needs_restart", keys=kept, fix="device.id and state_dir name the topics and the outbox: restart the service")
            new = dataclasses.replace(new, device=old.device, state_dir=old.state_dir)
        changed = sorted(k for k, v in new.to_dict().items() if old.to_dict().get(k) != v)
        reload_model = (new.daemon.reload_model or new.model != old.model or new.runtime != old.runtime
                        or new.threads != old.threads or new.spinning != old.spinning)
        source_changed = new.source != old.source or new.daemon.queue_size != old.daemon.queue_size or \
            new.daemon.reopen_max_s != old.daemon.reopen_max_s
        try:
            new_source = self._open_source(new) if source_changed else None  # a bad URI is refused here
            model, engine = self._load_model(new) if reload_model else (self.model, self.engine)
            compare = self.compare
            if new.compare.model_path and (reload_model or new.compare != old.compare or compare is None):
                compare = CompareRunner(new, model.backbone)
            elif not new.compare.model_path:
                compare = None
        except RailedgeError as e:
            self.reload_failures += 1
            log.error("reload_rejected", error=str(e), fix="the running model and config stay; fix the model or config and reload")
            self.notifier.ready(self.status_line())
            return
        if new.log != old.log:
            setup_logging(new.log.level, new.log.format)
        if new_source is not None:
            self._drain_and_retire_capture(time.monotonic() + new.daemon.drain_timeout_s)
            self.source = new_source
        self.cfg = new
        self.model, self.engine, self.compare = model, engine, compare
        self.health.watchdog_s, self.health.recover_s = new.source.watchdog_s, new.daemon.recover_s
        if new.daemon.events_out != old.daemon.events_out:
            self._replace_jsonl(new)
        if new.mqtt != old.mqtt:
            self._replace_publisher(new, old)
        self.pipeline = self._new_pipeline(new, self.pipeline)
        if new_source is not None:
            self._start_capture()
        model = engine = compare = new_source = None
        if reload_model:
            _release_model_memory()
        self.reloads += 1
        log.info("config_reloaded", changed=changed, model_reloaded=reload_model, reloads=self.reloads,
                 threshold=round(float(self.pipeline.threshold), 6), seconds=round(time.perf_counter() - t0, 3), rss_mb=rss_mb())
        self.notifier.ready(self.status_line())

    def _replace_jsonl(self, cfg: Config) -> None:
        if self.jsonl is not None:
            self.sinks.remove(self.jsonl)
            self.jsonl.close()
            self.jsonl = None
        if cfg.daemon.events_out:
            from railedge.sinks.jsonl import JsonlWriter

            self.jsonl = JsonlWriter(cfg.daemon.events_out)
            self.sinks.insert(0, self.jsonl)

    def _replace_publisher(self, cfg: Config, old: Config) -> None:
        if self.publisher is not None:
            # queued events stay in the outbox (same state_dir) and go out on the new connection;
            # on the same broker and topics the old one leaves without an 'offline' (no flicker)
            self.sinks.remove(self.publisher)
            self.publisher.close(min(0.5, cfg.mqtt.flush_timeout_s), handover=cfg.mqtt.enabled and _same_broker(old, cfg))
            self.publisher = None
        if cfg.mqtt.enabled:
            self.publisher = self._new_publisher(cfg)
            self.sinks.append(self.publisher)

    def _drain_and_retire_capture(self, deadline: float) -> None:
        """Stop capture and put the frames it already queued through the pipeline."""
        from railedge.capture import Captured

        cap = self.capture
        if cap is None:
            return
        self._stop_capture(cap)
        drained = 0
        while time.monotonic() < deadline:
            try:
                item = cap.q.get(timeout=0.2)
            except queue.Empty:
                continue  # the end marker follows the last frame; the deadline bounds a stuck read
            if not isinstance(item, Captured):
                break
            self._process(item)
            drained += 1
        left = cap.q.qsize()
        self._retire_capture()
        if drained or left:
            log.info("queue_drained", frames=drained, left_unprocessed=left)

    # -- stop -------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        cfg = self.cfg
        queued = self.capture.q.qsize() if self.capture else 0
        self.notifier.stopping(f"stopping: finishing {queued} queued frames, flushing the outbox")
        log.info("stopping", queued_frames=queued, processed=self.processed)
        try:
            self._drain_and_retire_capture(time.monotonic() + cfg.daemon.drain_timeout_s)
            if self.pipeline is not None:
                ended = self.pipeline.finish()
                self.events_total += len(ended)
                self.pipeline.close()
        except Exception as e:  # still close the outbox below
            log.error("shutdown_error", error=f"{e.__class__.__name__}: {e}", exc_info=True)
        left = None
        if self.jsonl is not None:
            self.jsonl.close()
        if self.publisher is not None:
            if self.model is not None:
                try:
                    self.publisher.publish_stats(self.stats())
                except Exception:
                    pass
            self.publisher.close(cfg.mqtt.flush_timeout_s)
            left = self.publisher.counters().get("outbox_depth")
        log.info("stopped", processed=self.processed, events=self.events_total, outbox_left=left,
                 uptime_s=round(time.monotonic() - self.t_start, 3), rss_mb=rss_mb())
        self.notifier.close()


def _same_broker(a: Config, b: Config) -> bool:
    """Whether two configs publish to the same broker, as the same client, on the same topics."""
    keys = ("host", "port", "topic_prefix", "client_id", "protocol", "username", "password_env", "password_file", "tls")
    return a.device == b.device and all(getattr(a.mqtt, k) == getattr(b.mqtt, k) for k in keys)


def _release_model_memory() -> None:
    """After a model reload: collect the old engine now, empty snntorch's class-level neuron list
    (it keeps every neuron ever built; only when snntorch is loaded at all), and hand the freed
    heap back to the OS (glibc keeps it otherwise, and RSS would creep with each reload)."""
    gc.collect()
    if "snntorch" in sys.modules:
        from railedge.backbones.snn import clear_snntorch_registry

        clear_snntorch_registry()
    _trim_heap()


def _trim_heap() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl and other libcs have no malloc_trim
        pass


# ---- CLI ------------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace, load: Callable[..., Config]) -> int:
    extra = [f"daemon.events_out={json.dumps(args.events_out)}"] if args.events_out else []
    cfg = load(args, extra)

    def reload() -> Config:
        return load_config(args.config, list(args.overrides) + extra)

    return Daemon(cfg, load=reload, max_frames=args.max_frames).run()


def add_parser(sub: Any, config_args: Callable[..., None], load: Callable[..., Config]) -> None:
    c = sub.add_parser(
        "run",
        help="the live service: camera → model → events, stats and status (systemd Type=notify)",
        description="Run until SIGTERM: frames from source.uri through model.path; events, stats and status to MQTT. "
        "SIGHUP reloads the config. See docs/daemon.md.",
    )
    config_args(c)
    c.add_argument("--events-out", help="also append events to this JSON-lines file (daemon.events_out)")
    c.add_argument("--max-frames", type=int, help="stop cleanly after this many processed frames (tests, benchmarks)")
    c.set_defaults(func=lambda args: cmd_run(args, load))
