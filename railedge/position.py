"""Position along the track for each frame: chainage (metres) and, when a feed gives them, lat/lon.

Sources, in order of preference for each field:
  * a live odometry/GNSS feed on MQTT (`position.mqtt_topic`): the newest fix, extrapolated by its
    speed to the frame's time, none when older than `position.max_age_s`;
  * a CSV log for replays (`position.csv`): rows keyed by `frame` (index), `source` (file name) or
    `t` (seconds or ISO-8601; aligned so that `position.time_origin`, default the first row, is
    frame 0), interpolated linearly; no position outside the log;
  * abutting line-scan images (`position.linescan` with `position.mm_per_px`): each image one image
    height further on;
  * a constant speed (`position.speed_mps`): start + speed x frame time.

Frame time is `index / fps` when replaying recorded footage (the footage's own clock, whatever the
replay speed) and the wall clock for live sources. A frame's chainage is that of its middle row."""

from __future__ import annotations

import csv
import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from railedge.config import Config, PositionConfig
from railedge.errors import ConfigError
from railedge.logs import get_logger
from railedge.values import Frame, Position



def _log():
    """The logger, made when used (a logger bound at import, before logging is set up, writes to stdout)."""
    return get_logger("railedge.position")

FIELDS = ("chainage_m", "lat", "lon")


@dataclass(frozen=True)
class Fix:
    """Part of a position: any field may be None (unknown)."""

    chainage_m: float | None = None
    lat: float | None = None
    lon: float | None = None


class PositionProvider(Protocol):
    def at(self, frame: Frame, t: float) -> Fix | None: ...

    def close(self) -> None: ...


def parse_time(value: str | float | int, what: str) -> float:
    """Seconds (a number) or an ISO-8601 time (UTC when no zone is given) → float seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    s = str(value).strip()
    try:
        return float(s)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{what}: {value!r} is neither seconds nor an ISO-8601 time (e.g. 2024-05-01T10:00:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


class SpeedChainage:
    """Chainage from a constant speed: start + speed x t."""

    def __init__(self, start_m: float, speed_mps: float) -> None:
        self.start, self.speed = start_m, speed_mps

    def at(self, frame: Frame, t: float) -> Fix:
        return Fix(chainage_m=self.start + self.speed * t)

    def close(self) -> None:
        pass


class LinescanChainage:
    """Abutting line-scan images: image i starts one image length after image i-1."""

    def __init__(self, start_m: float, mm_per_px: float) -> None:
        self.start, self.mm = start_m, mm_per_px

    def at(self, frame: Frame, t: float) -> Fix:
        return Fix(chainage_m=self.start + frame.index * frame.height * frame.scale * self.mm / 1000.0)

    def close(self) -> None:
        pass


class CsvPositionLog:
    """A recorded odometry/GNSS log, interpolated at each frame (see the module docstring)."""

    def __init__(self, path: str | Path, time_origin: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"config key 'position.csv': {str(self.path)!r} does not exist; give the position log's path or remove the key")
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise ConfigError(f"position log {str(self.path)!r} cannot be read as CSV ({e.__class__.__name__}); fix the file") from None
        if not rows:
            raise ConfigError(f"position log {str(self.path)!r} has no rows; it needs a header and one row per fix")
        cols = {c.strip().lower(): c for c in rows[0] if c}
        key = next((k for k in ("frame", "source", "t", "time", "timestamp") if k in cols), None)
        have = [f for f in FIELDS if f in cols]
        if key is None or not have:
            raise ConfigError(
                f"position log {str(self.path)!r}: columns {sorted(cols)} lack a key (frame, source or t) or a value "
                "(chainage_m, lat, lon); write a header such as 't,chainage_m,lat,lon'"
            )
        self.key = "t" if key in ("time", "timestamp") else key
        self.fields = have
        if self.key == "source":
            self._by_name: dict[str, Fix] = {}
            for r in rows:
                self._by_name[str(r[cols["source"]]).strip()] = Fix(**{f: _num(r.get(cols[f])) for f in have})
            return
        keys = []
        values: dict[str, list[float]] = {f: [] for f in have}
        for n, r in enumerate(rows, start=2):
            raw = r.get(cols[key])
            if raw is None or str(raw).strip() == "":
                raise ConfigError(f"position log {str(self.path)!r} line {n}: the {key} column is empty")
            keys.append(float(raw) if self.key == "frame" else parse_time(raw, f"position log {self.path} line {n}"))
            for f in have:
                values[f].append(_num(r.get(cols[f]), nan=True))
        order = np.argsort(np.asarray(keys, dtype=np.float64), kind="stable")
        self._keys = np.asarray(keys, dtype=np.float64)[order]
        self._values = {f: np.asarray(v, dtype=np.float64)[order] for f, v in values.items()}
        self.origin = parse_time(time_origin, "config key 'position.time_origin'") if time_origin not in (None, "") else float(self._keys[0])

    def at(self, frame: Frame, t: float) -> Fix | None:
        if self.key == "source":
            return self._by_name.get(frame.source)
        k = float(frame.index) if self.key == "frame" else self.origin + t
        if k < self._keys[0] or k > self._keys[-1]:
            return None  # no extrapolation beyond the log
        out: dict[str, float | None] = {}
        for f, v in self._values.items():
            ok = ~np.isnan(v)
            out[f] = float(np.interp(k, self._keys[ok], v[ok])) if ok.any() else None
        return Fix(**out)

    def close(self) -> None:
        pass


def _num(raw: Any, nan: bool = False) -> Any:
    if raw is None or str(raw).strip() == "":
        return float("nan") if nan else None
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"position log value {raw!r} is not a number") from None


class MqttPositionFeed:
    """Subscribes to odometry/GNSS fixes on the broker of `mqtt`: JSON objects with any of
    chainage_m, lat, lon, and optionally t (unix seconds or ISO-8601; default: arrival time) and
    speed_mps (to extrapolate the chainage to the frame's time). The newest fix wins."""

    def __init__(self, cfg: Config, topic: str, max_age_s: float) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        from railedge.config import mqtt_password

        self.topic, self.max_age = topic, max_age_s
        self._log = _log().bind(topic=topic)
        self._lock = threading.Lock()
        self._fix: tuple[float, Fix, float | None] | None = None  # (time, fix, speed)
        self.received = 0
        self.rejected = 0
        m = cfg.mqtt
        proto = MQTTProtocolVersion.MQTTv5 if m.protocol == "5" else MQTTProtocolVersion.MQTTv311
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"railedge-{cfg.device.id}-position", protocol=proto)
        if m.username:
            self._client.username_pw_set(m.username, mqtt_password(m))
        if m.tls.enabled:
            from railedge.sinks.mqtt import build_tls_context

            self._client.tls_set_context(build_tls_context(m))
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(min(0.5, m.reconnect_max_s), m.reconnect_max_s)
        self._client.connect_async(m.host, m.port, m.keepalive_s)
        self._client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if not getattr(reason, "is_failure", False):
            client.subscribe(self.topic, qos=0)
            self._log.info("position_feed_connected")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            body = json.loads(msg.payload)
            if not isinstance(body, dict):
                raise ValueError("not an object")
            fix = Fix(**{f: (float(body[f]) if body.get(f) is not None else None) for f in FIELDS})
            t = parse_time(body["t"], "position fix") if body.get("t") is not None else time.time()
            speed = float(body["speed_mps"]) if body.get("speed_mps") is not None else None
        except (ValueError, TypeError, ConfigError) as e:
            self.rejected += 1
            self._log.warning("position_fix_rejected", error=str(e)[:120])
            return
        with self._lock:
            self._fix = (t, fix, speed)
            self.received += 1

    def at(self, frame: Frame, t: float) -> Fix | None:
        with self._lock:
            cur = self._fix
        if cur is None:
            return None
        t_fix, fix, speed = cur
        age = frame.t_wall - t_fix
        if abs(age) > self.max_age:
            return None
        if speed is not None and fix.chainage_m is not None:
            return Fix(fix.chainage_m + speed * age, fix.lat, fix.lon)
        return fix

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class PositionResolver:
    """Gives each frame a Position from the configured providers (the first that knows a field wins)."""

    def __init__(self, providers: list[PositionProvider], fps: float | None, media_clock: bool) -> None:
        self.providers = providers
        self.fps = fps
        self.media_clock = media_clock and bool(fps)
        self._t0: float | None = None

    def frame_time(self, frame: Frame) -> float:
        if self.media_clock:
            return frame.index / float(self.fps)  # type: ignore[arg-type]
        if self._t0 is None:
            self._t0 = frame.t_wall
        return frame.t_wall - self._t0

    def __call__(self, frame: Frame) -> Position | None:
        t = self.frame_time(frame)
        found: dict[str, float | None] = {f: None for f in FIELDS}
        for p in self.providers:
            fix = p.at(frame, t)
            if fix is None:
                continue
            for f in FIELDS:
                if found[f] is None and getattr(fix, f) is not None:
                    found[f] = getattr(fix, f)
        if all(v is None for v in found.values()):
            return None
        return Position(**found)

    def close(self) -> None:
        for p in self.providers:
            p.close()


def build_position(cfg: Config, fps: float | None = None, live: bool | None = None) -> PositionResolver | None:
    """The resolver for `cfg.position`, or None when nothing about position is configured.
    `fps`/`live`: recorded footage with a frame rate uses its own clock (index / fps)."""
    pc: PositionConfig = cfg.position
    media = not live and bool(fps or cfg.source.fps)
    rate = fps or cfg.source.fps
    providers: list[PositionProvider] = []
    if pc.mqtt_topic:
        providers.append(MqttPositionFeed(cfg, pc.mqtt_topic, pc.max_age_s))
    if pc.csv:
        providers.append(CsvPositionLog(pc.csv, pc.time_origin))
    if pc.linescan and pc.mm_per_px:
        providers.append(LinescanChainage(pc.start_chainage_m, pc.mm_per_px))
    elif pc.speed_mps is not None:
        if not live and not rate:
            raise ConfigError(
                "config key 'position.speed_mps' needs the footage's frame rate to place frames: "
                "set source.fps (image folders state none)"
            )
        providers.append(SpeedChainage(pc.start_chainage_m, pc.speed_mps))
    if not providers:
        return None
    return PositionResolver(providers, rate, media)
