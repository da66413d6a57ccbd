"""Live cameras behind the FrameSource interface.

    0, 1, ...                     V4L2 device by index (USB cameras, Raspberry Pi)
    /dev/video0                   V4L2 device by path
    rtsp://user:pw@host/stream    RTSP, HTTP (MJPEG) and other network streams (OpenCV's FFmpeg)
    ... ! appsink                 a GStreamer pipeline (needs OpenCV built with GStreamer, e.g.
                                  JetPack's; nvarguscamerasrc for a Jetson CSI camera)
    file:///path/track.mp4        a video file played as a camera: looped, at its own frame rate
                                  (or source.fps), for tests and demos

A camera never ends and never raises once constructed: when it cannot be opened, or no frame
arrives for `source.watchdog_s`, it is released and opened again with exponential backoff
(jittered, at most `reopen_max_s`), for as long as the process runs. Counters (opens, reopens,
open_failures, stalls) tell the daemon what happened; frame indices keep counting across reopens."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

import cv2
import numpy as np

import structlog

from railedge.config import SourceConfig
from railedge.errors import SourceError
from railedge.logs import RateLimitedLog
from railedge.values import Frame

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
BACKOFF_MIN_S = 0.25
FILE_FPS_DEFAULT = 25.0

# A lazy proxy: it follows setup_logging() calls made after import (start-up, SIGHUP reload).
log = structlog.get_logger("railedge.sources.camera")


def camera_kind(uri: str) -> str:
    """'v4l2', 'stream', 'gstreamer' or 'file' for a camera URI (see the module docstring)."""
    u = uri.strip()
    if "!" in u:
        return "gstreamer"
    if u.isdigit() or u.startswith("/dev/video"):
        return "v4l2"
    scheme = u.split("://", 1)[0].lower() if "://" in u else ""
    if scheme == "file" or not scheme:
        return "file"
    if scheme in STREAM_SCHEMES:
        return "stream"
    raise SourceError(
        f"source {uri!r}: URL scheme {scheme!r} is not a camera railedge knows; use a camera index, /dev/videoN, "
        f"{', '.join(s + '://' for s in STREAM_SCHEMES)}, file://, or a GStreamer pipeline ending in appsink"
    )


def display_name(uri: str) -> str:
    """The URI as it may appear in logs and events: credentials removed."""
    u = uri.strip()
    if "://" in u and "!" not in u:
        parts = urlsplit(u)
        if parts.username or parts.password:
            host = parts.hostname or ""
            if parts.port:
                host += f":{parts.port}"
            return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
        if parts.scheme == "file":
            return Path(unquote(parts.path)).name
        return u
    if "!" in u:
        return u.split("!", 1)[0].strip() or "gstreamer"
    if u.isdigit():
        return f"video{u}"
    return Path(u).name if "/" in u else u


def gstreamer_available() -> bool:
    try:
        return bool(cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER))
    except Exception:  # pragma: no cover - very old OpenCV
        return "GStreamer:                   YES" in cv2.getBuildInformation()


def _quiet_opencv() -> None:
    # A camera that is down for hours would otherwise fill the journal with OpenCV/FFmpeg warnings
    # on every reopen attempt; our own rate-limited log says what happened.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except Exception:  # pragma: no cover
        pass


class CameraSource:
    """A live source: frames as the camera delivers them; `live` so capture drops the oldest
    frames when inference falls behind."""

    live = True

    def __init__(self, uri: str, cfg: SourceConfig | None = None, *, reopen_max_s: float = 30.0) -> None:
        cfg = cfg or SourceConfig()
        self.uri = uri.strip()
        self.kind = camera_kind(self.uri)
        self.name = display_name(self.uri)
        self.watchdog_s = float(cfg.watchdog_s)
        self.reopen_max_s = max(BACKOFF_MIN_S, float(reopen_max_s))
        self._cfg = cfg
        self._api = cv2.CAP_ANY
        self._target: Any = self.uri
        self.path: Path | None = None
        if self.kind == "v4l2":
            self._api = cv2.CAP_V4L2 if os.name == "posix" and os.uname().sysname == "Linux" else cv2.CAP_ANY
            self._target = int(self.uri) if self.uri.isdigit() else self.uri
        elif self.kind == "stream":
            self._api = cv2.CAP_FFMPEG
            if self.uri.lower().startswith("rtsp"):
                # UDP RTP loses packets on busy links and shows as smeared frames; TCP does not.
                os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
        elif self.kind == "gstreamer":
            if not gstreamer_available():
                raise SourceError(
                    f"source {self.name!r} is a GStreamer pipeline, but this OpenCV ({cv2.__version__}) has no GStreamer "
                    "support (the PyPI opencv wheels have none); use the system OpenCV (JetPack: python3-opencv, with a venv "
                    "made by scripts/install.sh), or give a V4L2 device or stream URL instead"
                )
            self._api = cv2.CAP_GSTREAMER
            if "appsink" not in self.uri:
                self._target = f"{self.uri} ! videoconvert ! appsink drop=true max-buffers=1 sync=false"
        else:  # file played as a camera
            self._api = cv2.CAP_FFMPEG
            self.path = Path(unquote(urlsplit(self.uri).path)) if "://" in self.uri else Path(self.uri)
            self._target = str(self.path)
        _quiet_opencv()
        self.fps: float | None = cfg.fps
        if self.kind == "file" and self.fps is None:
            self.fps = self._probe_file_fps()
        # counters, read by other threads (ints: single writes are atomic enough for statistics)
        self.opens = 0
        self.open_failures = 0
        self.stalls = 0
        self.read_failures = 0
        self.frames_read = 0
        self.last_error: str | None = None
        self.last_frame_mono: float | None = None
        self.connected = False
        self._closed = threading.Event()
        self._io = threading.Lock()  # held around every use of the VideoCapture
        self._cap: cv2.VideoCapture | None = None
        self._limited = RateLimitedLog(log, interval_s=60.0)

    # -- FrameSource ---------------------------------------------------------------------------

    def frames(self) -> Iterator[Frame]:
        index = 0
        attempt = 0
        cap = None
        try:
            while not self._closed.is_set():
                cap = self._open()
                if cap is None:
                    self._wait_backoff(attempt)
                    attempt += 1
                    continue
                got = 0
                for frame in self._read(cap, index):
                    index += 1
                    got += 1
                    attempt = 0
                    yield frame
                self._release(cap)
                cap = None
                if got == 0 and not self._closed.is_set():
                    self._wait_backoff(attempt)
                    attempt += 1
        finally:
            self._release(cap)

    def close(self) -> None:
        """Stop: frames() returns after the read in progress (bounded by the watchdog time for
        streams and files) and releases the device itself; releasing it here while another
        thread is inside a read would crash OpenCV."""
        self._closed.set()
        if self._io.acquire(blocking=False):
            try:
                cap, self._cap = self._cap, None
            finally:
                self._io.release()
            if cap is not None:
                cap.release()
                self.connected = False

    @property
    def reopens(self) -> int:
        return max(0, self.opens - 1)

    def counters(self) -> dict[str, Any]:
        age = None if self.last_frame_mono is None else round(time.monotonic() - self.last_frame_mono, 3)
        return {
            "kind": self.kind,
            "connected": self.connected,
            "opens": self.opens,
            "reopens": self.reopens,
            "open_failures": self.open_failures,
            "stalls": self.stalls,
            "read_failures": self.read_failures,
            "frames_read": self.frames_read,
            "last_frame_age_s": age,
            "last_error": self.last_error,
        }

    # -- internals -----------------------------------------------------------------------------

    def _probe_file_fps(self) -> float:
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        try:
            native = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
        finally:
            cap.release()
        return float(native) if native and 0 < native < 1000 else FILE_FPS_DEFAULT

    def _params(self) -> list[int]:
        # Bounded blocking: a stream that stops sending makes read() return False after the
        # watchdog time instead of hanging the capture thread (FFmpeg backend only; others
        # reject unknown open parameters).
        ms = int(max(100, self.watchdog_s * 1000))
        if self._api == cv2.CAP_FFMPEG:
            return [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, max(ms, 2000), cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        return []

    def _open(self) -> cv2.VideoCapture | None:
        if self.kind == "file" and not self.path.is_file():
            self._failed_open(f"video file {str(self.path)!r} does not exist")
            return None
        try:
            params = self._params()
            cap = cv2.VideoCapture(self._target, self._api, params) if params else cv2.VideoCapture(self._target, self._api)
        except cv2.error as e:
            self._failed_open(f"OpenCV refused {self.name!r}: {str(e).strip().splitlines()[-1][:200]}")
            return None
        if not cap.isOpened():
            cap.release()
            self._failed_open(self._why_not_open())
            return None
        if self.kind == "v4l2":
            self._configure_v4l2(cap)
        with self._io:
            if self._closed.is_set():
                cap.release()
                return None
            self._cap = cap
        self.opens += 1
        self.connected = True
        self.last_error = None
        if self.fps is None:  # the device's own rate, when it states one
            native = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            self.fps = native if 0 < native < 1000 else None
        log.info("camera_opened", source=self.name, kind=self.kind, opens=self.opens,
                 width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                 fps=round(float(cap.get(cv2.CAP_PROP_FPS) or 0.0), 2))
        return cap

    def _configure_v4l2(self, cap: cv2.VideoCapture) -> None:
        c = self._cfg
        if c.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*c.fourcc.ljust(4)[:4]))
        if c.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, c.width)
        if c.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, c.height)
        if c.fps:
            cap.set(cv2.CAP_PROP_FPS, c.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not one from seconds ago

    def _why_not_open(self) -> str:
        if self.kind == "v4l2":
            dev = f"/dev/video{self.uri}" if self.uri.isdigit() else self.uri
            if not Path(dev).exists():
                return f"camera {dev} is not present (unplugged? wrong index?)"
            if not os.access(dev, os.R_OK | os.W_OK):
                return f"camera {dev} is not accessible to this user; add it to the 'video' group (systemd: SupplementaryGroups=video)"
            return f"camera {dev} cannot be opened (busy in another process, or not a capture device)"
        if self.kind == "gstreamer":
            return f"GStreamer pipeline {self.name!r} did not start; test it with gst-launch-1.0 (ending in fakesink)"
        if self.kind == "file":
            return f"video file {str(self.path)!r} cannot be opened by OpenCV"
        return f"stream {self.name} cannot be opened (unreachable, refused, or not a video stream)"

    def _failed_open(self, why: str) -> None:
        self.open_failures += 1
        self.connected = False
        self.last_error = why
        self._limited("warning", "camera_open_failed", source=self.name, reason=why, failures=self.open_failures)

    def _wait_backoff(self, attempt: int) -> None:
        delay = min(self.reopen_max_s, BACKOFF_MIN_S * 2 ** min(attempt, 20))
        self._closed.wait(delay * (0.75 + 0.5 * random.random()))

    def _read(self, cap: cv2.VideoCapture, index: int) -> Iterator[Frame]:
        """Frames from one open capture, until it fails, stalls, ends (a file) or we close."""
        pace = 1.0 / self.fps if (self.kind == "file" and self.fps) else None
        due = time.monotonic()
        last = time.monotonic()
        while not self._closed.is_set():
            if pace is not None:
                now = time.monotonic()
                if due - now > 0:
                    if self._closed.wait(due - now):
                        return
                elif now - due > 1.0:  # far behind (a reopen, a stall): don't burst to catch up
                    due = now
                due += pace
            with self._io:
                if self._cap is not cap:  # closed meanwhile
                    return
                ok = cap.grab()
                t_mono, t_wall = time.monotonic(), time.time()
                img = None
                if ok:
                    ok, img = cap.retrieve()
            if not ok or img is None:
                if self._closed.is_set():
                    return
                if self.kind == "file" and self.frames_read and time.monotonic() - last < self.watchdog_s:
                    return  # end of the file: open it again (loop)
                self.read_failures += 1
                if time.monotonic() - last >= self.watchdog_s:
                    self.stalls += 1
                    self.connected = False
                    self.last_error = f"no frame from {self.name} for {self.watchdog_s:g} s"
                    self._limited("warning", "camera_stalled", source=self.name, reason=self.last_error, stalls=self.stalls)
                    return
                self._closed.wait(0.01)  # a failing read can return at once: don't spin
                continue
            img = _gray(img)
            last = time.monotonic()
            self.last_frame_mono = last
            self.frames_read += 1
            yield Frame(index=index, source=self.name, image=img, t_mono=t_mono, t_wall=t_wall)
            index += 1

    def _release(self, cap: cv2.VideoCapture | None) -> None:
        if cap is None:
            return
        with self._io:
            if self._cap is cap:
                self._cap = None
        cap.release()
        self.connected = False


def _gray(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return img
    if img.shape[2] == 1:
        return img[:, :, 0]
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
    return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
