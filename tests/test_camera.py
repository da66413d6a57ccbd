"""Camera sources: a video file played as a camera, a local HTTP MJPEG stream the test controls
(stalls, disappears, returns), absent V4L2 devices, and back-pressure in live vs replay capture."""

from __future__ import annotations

import http.server
import shutil
import socketserver
import threading
import time

import cv2
import numpy as np
import pytest

from railedge.capture import CaptureThread
from railedge.config import SourceConfig
from railedge.errors import SourceError
from railedge.sources import open_source
from railedge.sources.camera import CameraSource, camera_kind, display_name, gstreamer_available
from railedge.sources.video import VideoFileSource


def take(source, n: int, timeout: float = 20.0) -> list:
    """The first n frames of source.frames(), read on a thread so a hang fails instead of blocking."""
    out: list = []
    gen = source.frames()

    def run() -> None:
        for f in gen:
            out.append(f)
            if len(out) >= n:
                break

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert len(out) >= n, f"only {len(out)} of {n} frames within {timeout}s: {source.counters()}"
    return out


def test_uri_kinds_and_names_without_credentials():
    assert camera_kind("0") == "v4l2" and camera_kind("/dev/video2") == "v4l2"
    assert camera_kind("rtsp://cam/stream") == "stream" and camera_kind("http://10.0.0.5:8080/video.mjpg") == "stream"
    assert camera_kind("nvarguscamerasrc ! nvvidconv ! appsink") == "gstreamer"
    assert camera_kind("file:///data/track.mp4") == "file" and camera_kind("samples/track.mp4") == "file"
    with pytest.raises(SourceError, match="ftp"):
        camera_kind("ftp://host/x.mp4")
    name = display_name("rtsp://admin:s3cret@10.1.2.3:554/h264")
    assert "s3cret" not in name and "admin" not in name and name == "rtsp://10.1.2.3:554/h264"
    assert display_name("0") == "video0" and display_name("file:///a/b/track.mp4") == "track.mp4"


@pytest.mark.skipif(gstreamer_available(), reason="this OpenCV has GStreamer")
def test_gstreamer_pipeline_without_gstreamer_says_how_to_fix():
    with pytest.raises(SourceError, match="no GStreamer"):
        open_source("videotestsrc ! appsink")


def test_file_camera_plays_at_its_own_rate_and_loops(footage, tmp_path):
    cam = open_source(f"file://{footage / 'track.mp4'}", SourceConfig())
    assert isinstance(cam, CameraSource) and cam.live and cam.fps == pytest.approx(25.0)
    t0 = time.monotonic()
    frames = take(cam, 26)
    elapsed = time.monotonic() - t0
    cam.close()
    # paced: 26 frames at 25 fps cannot come faster than 25 frame intervals
    assert elapsed >= 25 / 25.0 * 0.95
    assert frames[0].image.ndim == 2 and frames[0].image.dtype == np.uint8
    # looping past the end of the 120-frame file: indices keep counting, the file is reopened
    cam = CameraSource(str(footage / "track.mp4"), SourceConfig(fps=1000.0))
    frames = take(cam, 130)
    cam.close()
    assert [f.index for f in frames] == list(range(130))
    assert cam.opens >= 2 and cam.open_failures == 0 and cam.stalls == 0


def test_file_camera_renamed_away_then_back_recovers(footage, tmp_path):
    video = tmp_path / "cam.mp4"
    shutil.copy(footage / "track.mp4", video)
    cam = CameraSource(f"file://{video}", SourceConfig(fps=200.0, watchdog_s=0.5), reopen_max_s=0.3)
    got: list = []
    stop = threading.Event()

    def run() -> None:
        for f in cam.frames():
            got.append(time.monotonic())
            if stop.is_set():
                break

    t = threading.Thread(target=run, daemon=True)
    t.start()
    end = time.monotonic() + 10
    while len(got) < 5 and time.monotonic() < end:
        time.sleep(0.02)
    video.rename(tmp_path / "away.mp4")
    end = time.monotonic() + 10
    while cam.open_failures < 2 and time.monotonic() < end:
        time.sleep(0.05)
    assert cam.open_failures >= 2 and not cam.connected
    assert "does not exist" in (cam.last_error or "")
    n_gone = len(got)
    time.sleep(0.5)
    assert len(got) == n_gone  # nothing while the file is away
    (tmp_path / "away.mp4").rename(video)
    end = time.monotonic() + 10
    while len(got) < n_gone + 10 and time.monotonic() < end:
        time.sleep(0.05)
    stop.set()
    t.join(5)
    cam.close()
    assert len(got) >= n_gone + 10, cam.counters()
    assert cam.reopens >= 1


class MjpegServer:
    """A tiny HTTP MJPEG camera on a free loopback port. pause() stops sending frames while
    connections stay open (a stalled stream); stop() closes everything (a vanished camera);
    start() brings it back on the same port."""

    def __init__(self, fps: float = 30.0) -> None:
        self.frames = [cv2.imencode(".jpg", np.full((96, 128), 20 + 10 * i, np.uint8))[1].tobytes() for i in range(8)]
        self.paused = threading.Event()
        self.fps = fps
        self.port = 0
        self.srv: socketserver.ThreadingTCPServer | None = None
        self._gone = threading.Event()

    def start(self) -> "MjpegServer":
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while not owner._gone.is_set():
                        if owner.paused.is_set():
                            time.sleep(0.02)
                            continue
                        b = owner.frames[i % len(owner.frames)]
                        i += 1
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(b) + b + b"\r\n")
                        time.sleep(1.0 / owner.fps)
                except OSError:
                    pass

            def log_message(self, *a: object) -> None:
                pass

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._gone.clear()
        self.srv = Server(("127.0.0.1", self.port), Handler)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._gone.set()
        if self.srv is not None:
            self.srv.shutdown()
            self.srv.server_close()
            self.srv = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"


def test_http_stream_that_stalls_and_vanishes_is_reopened():
    server = MjpegServer().start()
    cam = CameraSource(server.url, SourceConfig(watchdog_s=0.5), reopen_max_s=0.3)
    assert cam.kind == "stream"
    got: list = []
    stop = threading.Event()

    def run() -> None:
        for f in cam.frames():
            got.append(f)
            if stop.is_set():
                break

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def wait(pred, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            time.sleep(0.02)
        return False

    try:
        assert wait(lambda: len(got) >= 5), cam.counters()
        assert got[0].image.shape == (96, 128) and got[0].source == server.url
        server.paused.set()  # the stream stops sending but stays connected
        assert wait(lambda: cam.stalls >= 1), cam.counters()
        server.paused.clear()
        n = len(got)
        assert wait(lambda: len(got) >= n + 5), cam.counters()
        assert cam.reopens >= 1
        server.stop()  # the camera vanishes: reopening fails until it is back
        assert wait(lambda: cam.open_failures >= 1), cam.counters()
        n = len(got)
        server.start()
        assert wait(lambda: len(got) >= n + 5), cam.counters()
    finally:
        stop.set()
        server.paused.clear()
        t.join(5)
        cam.close()
        server.stop()
    idx = [f.index for f in got]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)  # indices keep counting across reopens


def test_absent_v4l2_device_is_retried_and_close_ends_promptly():
    cam = CameraSource("/dev/video99", SourceConfig(watchdog_s=0.5), reopen_max_s=0.2)
    done = threading.Event()
    got: list = []

    def run() -> None:
        for f in cam.frames():
            got.append(f)
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    end = time.monotonic() + 5
    while cam.open_failures < 3 and time.monotonic() < end:
        time.sleep(0.05)
    assert cam.open_failures >= 3 and not got
    assert "not present" in cam.last_error
    cam.close()
    assert done.wait(2.0), "frames() did not return after close()"


def test_live_capture_drops_oldest_when_inference_is_slow_and_replay_never_drops(footage):
    # live: a camera at 400 fps, a consumer at ~50 frames/s -> frames are dropped and counted
    cam = CameraSource(f"file://{footage / 'track.mp4'}", SourceConfig(fps=400.0))
    cap = CaptureThread(cam, maxsize=4).start()
    assert cap.drop_oldest
    seen = 0
    t_end = time.monotonic() + 1.0
    for item in cap:
        seen += 1
        time.sleep(0.02)
        if time.monotonic() > t_end:
            break
    cap.stop()
    cam.close()
    cap.join(2)
    assert cap.dropped > 0 and cap.captured >= seen + cap.dropped - 4
    # replay: the same slow consumer, a recorded file: every frame arrives, none dropped
    src = VideoFileSource(footage / "track.mp4")
    cap = CaptureThread(src, maxsize=4).start()
    assert not cap.drop_oldest
    indices = []
    for item in cap:
        indices.append(item.frame.index)
        time.sleep(0.002)
    assert cap.dropped == 0 and indices == list(range(src.frame_count))
