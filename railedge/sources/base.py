"""The frame-source interface shared by files, folders and cameras."""

from __future__ import annotations

from typing import Iterator, Protocol

from railedge.values import Frame


class FrameSource(Protocol):
    """Yields frames in order. `fps` is the footage's own rate when known; `live` sources drop
    frames under back-pressure, recorded ones never do."""

    name: str
    fps: float | None
    live: bool

    def frames(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...
