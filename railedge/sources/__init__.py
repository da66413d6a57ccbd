"""Frame sources: recorded video, image folders, live cameras."""

from __future__ import annotations

from pathlib import Path

from railedge.config import SourceConfig
from railedge.errors import SourceError
from railedge.sources.base import FrameSource
from railedge.sources.folder import ImageFolderSource
from railedge.sources.video import VideoFileSource

__all__ = ["FrameSource", "open_source", "ImageFolderSource", "VideoFileSource"]


def is_camera_uri(uri: str) -> bool:
    u = uri.strip()
    return (
        u.isdigit()
        or u.startswith("/dev/video")
        or "://" in u
        or "!" in u  # a GStreamer pipeline
    )


def open_source(uri: str, cfg: SourceConfig | None = None) -> FrameSource:
    """Open footage by URI: an image folder, a video file, or (live) a camera or stream."""
    cfg = cfg or SourceConfig()
    if is_camera_uri(uri):
        try:
            from railedge.sources.camera import CameraSource
        except ImportError:  # pragma: no cover - camera module arrives with the daemon
            raise SourceError(f"source {uri!r} looks like a camera, but camera support is not installed") from None
        return CameraSource(uri, cfg)
    p = Path(uri)
    if p.is_dir():
        return ImageFolderSource(p, loop=cfg.loop, fps=cfg.fps, reduce=cfg.reduce)
    if p.is_file():
        return VideoFileSource(p, loop=cfg.loop, fps=cfg.fps)
    raise SourceError(
        f"source {uri!r} does not exist; give a video file, an image folder, a camera index, /dev/videoN, "
        "a stream URL or a GStreamer pipeline"
    )
