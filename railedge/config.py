"""The typed config: YAML loading, `--set key.path=value` overrides, validation with key paths.

Every section is a frozen dataclass. Field metadata may carry `choices`, `min`, `max` and `help`;
validation walks the tree and reports the first bad key path, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from railedge.errors import ConfigError


def _f(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **meta: Any) -> Any:
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DeviceConfig:
    id: str = _f("railedge-dev", help="device name used in MQTT topics and events")


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True)
class SourceConfig:
    uri: str = _f("samples/track.mp4", help="video file, image folder, camera index, /dev/videoN, rtsp:// URL or GStreamer pipeline")
    loop: bool = False
    fps: float | None = _f(None, min=0.1, help="frame rate when the source does not state one")
    live: bool | None = _f(None, help="drop oldest frames when inference falls behind; default: true for cameras, false for files")
    watchdog_s: float = _f(5.0, min=0.1, help="seconds without a frame before a camera is reopened")
    reduce: Literal[0, 1, 2, 4, 8] = _f(0, help="decode image-folder frames at 1/N size (faster); 0: auto, the largest N that keeps the rail band at the model's input size")
    width: int = _f(0, min=0, help="cameras (V4L2): requested frame width; 0 keeps the driver's default")
    height: int = _f(0, min=0, help="cameras (V4L2): requested frame height; 0 keeps the driver's default")
    fourcc: str | None = _f(None, help="cameras (V4L2): requested pixel format, e.g. MJPG or YUYV")


@dataclass(frozen=True)
class RoiConfig:
    mode: Literal["auto", "fixed", "full"] = "auto"
    x: int = _f(0, min=0, help="fixed mode: left column of the rail band, frame pixels")
    width: int = _f(0, min=0, help="fixed mode: band width in frame pixels (0: to the right edge)")
    margin: float = _f(0.15, min=0.0, max=1.0, help="auto mode: widen the located band by this fraction per side")
    level: float = _f(0.25, min=0.01, max=0.99, help="auto mode: band edge at this fraction from ballast to head brightness")
    smoothing: float = _f(0.7, min=0.0, max=0.99, help="auto mode: weight of the previous band (rail moves slowly)")


@dataclass(frozen=True)
class SnnConfig:
    preset: Literal["railedge", "seed"] = _f("railedge", help="seed: the origin study's network exactly")
    channels: tuple[int, ...] = (16, 16, 16)
    beta: float = _f(0.5, min=0.0, max=1.0)
    threshold: float = _f(1.0, min=1e-6)
    reset: Literal["subtract", "zero", "none"] = "subtract"
    time_steps: int = _f(8, min=1, max=256)
    fc_features: int = _f(16, min=1, help="width of the fully connected spiking layer")
    features: Literal["spikes", "membrane", "both"] = "both"


@dataclass(frozen=True)
class ResnetConfig:
    weights: str = _f("none", help="none | imagenet | path to a .pth state dict")
    layers: tuple[str, ...] = _f(("layer2", "layer3"), choices=("layer1", "layer2", "layer3", "layer4"))


@dataclass(frozen=True)
class ModelConfig:
    path: str = _f("models/default", help="a fitted model directory (railedge fit)")
    backbone: Literal["snn", "resnet"] = "snn"
    input_height: int = _f(512, min=16, max=4096)
    input_width: int = _f(128, min=16, max=4096)
    snn: SnnConfig = _f(factory=SnnConfig)
    resnet: ResnetConfig = _f(factory=ResnetConfig)


@dataclass(frozen=True)
class ScoringConfig:
    bank_size: int = _f(4096, min=16, help="memory-bank size bound after coreset selection")
    column_window: int = _f(1, min=0, help="patches match bank entries within this many feature columns")
    project_dim: int = _f(64, min=0, help="search in a PCA space of this many dimensions (+1 residual); 0: full features")
    smoothing_sigma: float = _f(1.0, min=0.0, help="Gaussian blur of the anomaly map, in feature cells")
    false_alarm_rate: float = _f(0.01, min=0.0, max=0.5, help="target rate of normal frames above threshold")
    threshold_margin: float = _f(0.08, min=0.0, max=10.0, help="guard band above the calibrated order statistic, as a fraction")
    threshold: float | None = _f(None, help="override the calibrated threshold")
    holdout_fraction: float = _f(0.25, min=0.05, max=0.9, help="normal frames held out to calibrate the threshold")
    max_fit_frames: int = _f(400, min=4)


@dataclass(frozen=True)
class EventsConfig:
    min_area_px: int = _f(64, min=0, help="boxes smaller than this (frame pixels) are dropped")
    merge_gap_px: int = _f(16, min=0, help="boxes closer than this are merged into one defect")
    alarm_classes: tuple[str, ...] = ("defect",)
    confirm_frames: int = _f(
        2, min=1, max=1000,
        help="frames a defect must be seen in before its 'new' event (one that leaves the view first, seen in most "
        "frames that showed it, is confirmed as it leaves)",
    )
    stay_ratio: float = _f(
        0.85, min=0.0, max=1.0,
        help="hysteresis: a defect stays open while its peak is above median(map) + stay_ratio x (threshold - median(map)); "
        "it opens only above the threshold",
    )
    end_after_frames: int = _f(2, min=0, max=1000, help="a defect not seen for more than this many frames has ended (sooner when it is known to have left the view)")
    update_ratio: float = _f(1.1, min=1.0, help="send 'update' when a defect's peak score rises above its last reported peak x this")


@dataclass(frozen=True)
class PositionConfig:
    speed_mps: float | None = _f(None, min=0.0, help="constant train speed: chainage = start_chainage_m + speed x frame time")
    start_chainage_m: float = _f(0.0, help="chainage of the first frame's middle row, metres")
    mm_per_px: float | None = _f(
        None, min=1e-6,
        help="rail length along the track per image row (full-size pixels): places boxes along the track and predicts "
        "where a defect moves between frames",
    )
    linescan: bool = _f(False, help="frames are consecutive line-scan images that abut (image i+1 continues image i)")
    direction: Literal["down", "up"] = _f(
        "down", help="how the rail moves through the image: down = the top row is furthest ahead (content scrolls down)"
    )
    csv: str | None = _f(None, help="replays: position log (CSV with t, frame or source, and chainage_m and/or lat, lon)")
    time_origin: str | None = _f(
        None, help="CSV time (seconds or ISO-8601) of the first frame; default: the log's first row"
    )
    mqtt_topic: str | None = _f(None, help="live: odometry/GNSS fixes (JSON chainage_m, lat, lon, t, speed_mps) on the mqtt broker")
    max_age_s: float = _f(5.0, min=0.0, help="a live fix older than this gives no position")


@dataclass(frozen=True)
class SnapshotsConfig:
    enabled: bool = _f(True, help="save each defect's best frame (rail crop, heat-map overlaid) as JPEG")
    dir: str = _f("snapshots", help="folder for snapshots; relative paths are inside state_dir")
    max_mb: float = _f(200.0, min=0.01, help="disk bound for the folder: the oldest snapshots are removed first")
    quality: int = _f(85, min=10, max=100, help="JPEG quality")
    max_side_px: int = _f(1024, min=64, max=8192, help="longest side of a snapshot; larger crops are scaled down")


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify_hostname: bool = True


@dataclass(frozen=True)
class OutboxConfig:
    max_rows: int = _f(200000, min=10, help="bound on queued messages; stats and snapshots give way first")
    synchronous: Literal["group", "full"] = _f(
        "group",
        help="group: put returns after a crash-safe commit and a background fsync follows within milliseconds, "
        "shared by bursts; full: put returns only after its own fsync (power-loss safe on return, slower)",
    )


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = _f(1883, min=1, max=65535)
    topic_prefix: str = "railedge"
    client_id: str | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = _f(30, min=5, max=3600)
    max_inflight: int = _f(32, min=1, max=65535, help="QoS 1 messages awaiting PUBACK at once; resends keep their order")
    reconnect_max_s: float = _f(30.0, min=0.1, help="longest wait between reconnect attempts (exponential backoff, jitter)")
    username: str | None = None
    password_env: str = _f("RAILEDGE_MQTT_PASSWORD", help="environment variable holding the password")
    password_file: str | None = None
    stats_interval_s: float = _f(60.0, min=0.5)
    flush_timeout_s: float = _f(5.0, min=0.0, help="on shutdown, wait this long for acknowledgements")
    publish_snapshots: bool = False
    tls: TlsConfig = _f(factory=TlsConfig)
    outbox: OutboxConfig = _f(factory=OutboxConfig)


@dataclass(frozen=True)
class CompareConfig:
    model_path: str | None = _f(None, help="railedge run: a second fitted model (e.g. ResNet-18) scored beside the main one")
    every_n: int = _f(10, min=1, help="run the comparison model on every Nth processed frame")


@dataclass(frozen=True)
class DaemonConfig:
    queue_size: int = _f(8, min=1, max=1024, help="frames held between capture and inference")
    recover_s: float = _f(2.0, min=0.0, help="frames must flow this long before 'degraded' turns back to 'online'")
    reopen_max_s: float = _f(30.0, min=0.1, help="longest wait between camera reopen attempts (exponential backoff)")
    drain_timeout_s: float = _f(10.0, min=0.0, help="on SIGTERM, at most this long to finish the queued frames")
    reload_model: bool = _f(True, help="SIGHUP also reloads the model files (a new fit deployed in place)")
    status_interval_s: float = _f(5.0, min=0.5, help="how often the systemd STATUS= line is refreshed")
    events_out: str | None = _f(None, help="also append every event to this JSON-lines file")


@dataclass(frozen=True)
class TrainConfig:
    """`railedge train`: labelled (boxes or masks) or normal-only (synthetic defects pasted in)."""

    epochs: int = _f(40, min=1, max=10000, help="passes over the training tiles")
    batch_size: int = _f(8, min=1, max=4096, help="tiles per optimiser step")
    tile_rows: int = _f(128, min=8, max=4096, help="training tile height in model-input rows (full input width; multiple of 8)")
    tiles_per_image: int = _f(2, min=1, max=64, help="tiles drawn from each training image per epoch (half centred on labelled regions)")
    lr: float = _f(0.002, min=0.0, help="AdamW learning rate (cosine decay to 5% over the run)")
    weight_decay: float = _f(0.0001, min=0.0)
    head_width: int = _f(64, min=4, max=4096, help="channels of the per-patch head (3x3 conv, 3x3 conv, 1x1 logits)")
    head_dilation: int = _f(1, min=1, max=16, help="dilation of the head's second 3x3 conv (wider context per cell)")
    seed: int = _f(0, min=0, help="initialisation, tile sampling and augmentation: a fixed seed reproduces the run")
    val_fraction: float = _f(0.2, min=0.05, max=0.9, help="share of images (whole recording runs) held out to validate and calibrate when no --val is given")
    checkpoint_every: int = _f(25, min=1, help="optimiser steps between checkpoints (resume after interruption)")
    augment: bool = _f(True, help="flips, brightness/contrast jitter and noise")
    resample: float = _f(0.0, min=0.0, max=1.0, help="share of augmented tiles sent through a smaller size and back (resampling texture)")
    init: str = _f("", help="a model folder (railedge fit or train, same backbone settings) whose weights start the training: fine-tuning; empty = train.seed's initialisation")
    copy_paste: float = _f(0.0, min=0.0, max=1.0, help="labelled mode: share of tiles given labelled instances (defects, dirt, joints) cut from other training frames")
    copy_paste_max: int = _f(2, min=1, max=16, help="labelled mode: at most this many instances pasted into a tile (1 to this, evenly)")
    synthetic_fraction: float = _f(0.6, min=0.0, max=1.0, help="normal-only mode: share of tiles given a pasted synthetic defect")
    val_false_alarms_per_frame: float = _f(
        0.1, min=0.0, help="labelled mode: threshold = the lowest at which alarm boxes on the held-out runs give at most "
        "this many false alarms per frame (normal-only mode calibrates at scoring.false_alarm_rate, as fit)"
    )
    normal_scoring: Literal["head", "bank"] = _f(
        "head", help="normal-only mode: score with the trained anomaly head, or with a memory bank of the trained features (as fit)"
    )
    threads: int = _f(2, min=1, max=256, help="torch threads for training")


@dataclass(frozen=True)
class Config:
    device: DeviceConfig = _f(factory=DeviceConfig)
    state_dir: str = "state"
    log: LogConfig = _f(factory=LogConfig)
    source: SourceConfig = _f(factory=SourceConfig)
    roi: RoiConfig = _f(factory=RoiConfig)
    model: ModelConfig = _f(factory=ModelConfig)
    runtime: Literal["onnx", "torchscript", "eager"] = "onnx"
    threads: int = _f(0, min=0, max=256, help="inference threads; 0: one fewer than the CPU cores (decoding has its own)")
    spinning: bool = _f(False, help="ONNX Runtime's worker threads (threads > 1) spin-wait for work between frames: "
                        "a little lower latency for a core kept busy all the time; off saves CPU and power on the edge")
    scoring: ScoringConfig = _f(factory=ScoringConfig)
    events: EventsConfig = _f(factory=EventsConfig)
    position: PositionConfig = _f(factory=PositionConfig)
    snapshots: SnapshotsConfig = _f(factory=SnapshotsConfig)
    mqtt: MqttConfig = _f(factory=MqttConfig)
    compare: CompareConfig = _f(factory=CompareConfig)
    daemon: DaemonConfig = _f(factory=DaemonConfig)
    train: TrainConfig = _f(factory=TrainConfig)

    def to_dict(self) -> dict:
        return _to_plain(self)

    def with_overrides(self, overrides: list[str]) -> "Config":
        return from_dict(apply_overrides(self.to_dict(), overrides))


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    return obj


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in get_args(tp) if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in get_args(tp) else "")
    if origin is tuple:
        return f"a list of {_describe(get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _bad(path: str, value: Any, tp: Any, extra: str = "") -> ConfigError:
    return ConfigError(f"config key '{path}': {value!r} is not valid; expected {_describe(tp)}{extra}")


def _convert(path: str, value: Any, tp: Any, meta: Any) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(path, value, a, meta)
            except ConfigError as e:
                errors.append(e)
        raise _bad(path, value, tp)
    if origin is Literal:
        allowed = get_args(tp)
        for a in allowed:
            if value == a or (isinstance(a, str) and not isinstance(value, bool) and str(value) == a):
                return a
        raise _bad(path, value, tp)
    if origin is tuple:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise _bad(path, value, tp)
        inner = get_args(tp)[0]
        return tuple(_convert(f"{path}[{i}]", v, inner, meta) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise _bad(path, value, tp)
        return _build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _bad(path, value, tp)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(path, value, tp)
        out: Any = value
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(path, value, tp)
        out = float(value)
    elif tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise _bad(path, value, tp)
        out = str(value)
    else:  # pragma: no cover - every field type is handled above
        raise _bad(path, value, tp)
    choices = meta.get("choices")
    if choices and out not in choices:
        raise ConfigError(f"config key '{path}': {out!r} is not valid; allowed: {', '.join(map(str, choices))}")
    if "min" in meta and out < meta["min"]:
        raise ConfigError(f"config key '{path}': {out!r} is too small; minimum {meta['min']}")
    if "max" in meta and out > meta["max"]:
        raise ConfigError(f"config key '{path}': {out!r} is too large; maximum {meta['max']}")
    return out


def _build(cls: Any, data: dict, prefix: str) -> Any:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(f"config key '{path}' is unknown; allowed keys here: {', '.join(sorted(fields))}")
        kwargs[key] = _convert(path, value, hints[key], fields[key].metadata)
    return cls(**kwargs)


def from_dict(data: dict | None) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("config: the top level must be a mapping of keys (device, source, model, mqtt, ...)")
    return _build(Config, data, "")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key.path=value` strings (values parsed as YAML) to a plain dict, in order."""
    data = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value, for example --set mqtt.port=1884")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {item!r}: the key is empty; expected key.path=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e.__class__.__name__})") from None
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
                node[p] = nxt
            node = nxt
        node[parts[-1]] = value
    return data


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load and validate a YAML config (defaults when path is None), then apply overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist; pass --config with a YAML file (see configs/default.yaml)")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {str(p)!r} is not UTF-8 text") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r}: the top level must be a mapping of keys")
        data = loaded
    if overrides:
        data = apply_overrides(data, overrides)
    return from_dict(data)


def mqtt_password(cfg: MqttConfig) -> str | None:
    """The broker password from a file or the environment; never stored in the config itself."""
    if cfg.password_file:
        try:
            return Path(cfg.password_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(
                f"config key 'mqtt.password_file': cannot read {cfg.password_file!r} ({e.strerror}); fix the path or its permissions"
            ) from None
    return os.environ.get(cfg.password_env) or None
