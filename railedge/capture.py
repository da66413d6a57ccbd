"""Capture apart from inference: a thread reads frames into a bounded queue.

Recorded footage blocks the reader when the queue is full (nothing is dropped); live sources
drop the oldest queued frame instead and count it, so inference always sees the newest frames."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from railedge.sources.base import FrameSource
from railedge.values import Frame


@dataclass(frozen=True)
class Captured:
    frame: Frame
    decode_ms: float
    t_queued: float


_END = object()


class CaptureThread:
    def __init__(self, source: FrameSource, maxsize: int = 8, drop_oldest: bool | None = None) -> None:
        self.source = source
        self.drop_oldest = source.live if drop_oldest is None else drop_oldest
        self.q: queue.Queue = queue.Queue(maxsize=maxsize)
        self.dropped = 0
        self.captured = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def start(self) -> "CaptureThread":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop capturing; frames already queued are still delivered."""
        self._stop.set()

    def _put(self, item: object) -> None:
        if self.drop_oldest and item is not _END:
            # live: never wait for room; the oldest queued frame gives way at once, so inference
            # always gets the newest frame and capture keeps the camera's pace
            while True:
                try:
                    self.q.put_nowait(item)
                    return
                except queue.Full:
                    try:
                        self.q.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass
        while not self._stop.is_set() or item is _END:
            try:
                self.q.put(item, timeout=0.1)
                return
            except queue.Full:
                if item is _END and self._stop.is_set():
                    # consumer gone: make room for the end marker rather than hang, and count it
                    try:
                        self.q.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass

    def _run(self) -> None:
        try:
            it = iter(self.source.frames())
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    frame = next(it)
                except StopIteration:
                    break
                self.captured += 1
                self._put(Captured(frame, (time.perf_counter() - t0) * 1e3, time.perf_counter()))
        except BaseException as e:  # surfaced to the consumer
            self.error = e
        finally:
            self._put(_END)

    def __iter__(self) -> Iterator[Captured]:
        while True:
            item = self.q.get()
            if item is _END:
                if self.error is not None:
                    raise self.error
                return
            yield item

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
