"""Recorded video files (anything OpenCV's FFmpeg backend reads)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import cv2

from railedge.errors import SourceError
from railedge.values import Frame


class VideoFileSource:
    live = False

    def __init__(self, path: str | Path, loop: bool = False, fps: float | None = None, start_index: int = 0) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"video file {str(self.path)!r} does not exist; check source.uri")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise SourceError(f"video file {str(self.path)!r} cannot be opened by OpenCV; is it a video (mp4, avi, mkv)?")
        ok, _ = cap.read()
        if not ok:
            cap.release()
            raise SourceError(f"video file {str(self.path)!r} holds no readable frame; re-encode it or pick another file")
        native = cap.get(cv2.CAP_PROP_FPS)
        self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        cap.release()
        self.fps = fps or (float(native) if native and native > 0 else None)
        self.loop = loop
        self.name = self.path.name
        self._start = start_index
        self._cap: cv2.VideoCapture | None = None

    def frames(self) -> Iterator[Frame]:
        index = 0
        while True:
            self._cap = cv2.VideoCapture(str(self.path))
            read_any = False
            while True:
                ok, img = self._cap.read()
                if not ok:
                    break
                read_any = True
                t_mono, t_wall = time.monotonic(), time.time()
                if img.ndim == 3:
                    img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
                if index >= self._start:
                    yield Frame(index=index, source=self.name, image=img, t_mono=t_mono, t_wall=t_wall)
                index += 1
            self._cap.release()
            if not self.loop or not read_any:
                return

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
