"""Image folders as line-scan systems write them: one frame per image, sorted by name."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import cv2

from railedge.errors import SourceError
from railedge.logs import get_logger
from railedge.values import Frame

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
_REDUCED = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}

log = get_logger("railedge.sources.folder")


def image_dir(path: Path) -> Path:
    """A YOLO-style data set keeps its images in `images/`; a plain folder holds them directly."""
    sub = path / "images"
    return sub if sub.is_dir() else path


def list_images(path: str | Path) -> list[Path]:
    p = Path(path)
    if not p.is_dir():
        raise SourceError(f"image folder {str(p)!r} does not exist; check source.uri or the --data path")
    files = sorted(f for f in image_dir(p).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise SourceError(
            f"image folder {str(p)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); point at the folder of frames"
        )
    return files


def read_gray(path: Path, reduce: int = 1):
    """Decode one image as grayscale, optionally at 1/reduce size (JPEG decodes faster reduced)."""
    img = cv2.imread(str(path), _REDUCED[reduce or 1])  # 0 (auto) unresolved: full size
    if img is None:
        raise SourceError(f"image {str(path)!r} cannot be decoded; the file is corrupt or not an image")
    return img


class ImageFolderSource:
    live = False

    def __init__(self, path: str | Path, loop: bool = False, fps: float | None = None, reduce: int = 1) -> None:
        self.files = list_images(path)
        self.name = Path(path).name
        self.loop = loop
        self.fps = fps
        self.reduce = reduce or 1  # 0 (auto) is resolved by the caller (sources.reduce); full size otherwise
        self.skipped: list[str] = []

    def frames(self) -> Iterator[Frame]:
        index = 0
        while True:
            for f in self.files:
                try:
                    img = read_gray(f, self.reduce)
                except SourceError as e:
                    # A corrupt file in a recorded run must not stop the replay: skip it loudly.
                    self.skipped.append(f.name)
                    log.error("frame_skipped", file=str(f), reason=str(e))
                    index += 1
                    continue
                yield Frame(index=index, source=f.name, image=img, t_mono=time.monotonic(), t_wall=time.time(), scale=float(self.reduce))
                index += 1
            if not self.loop:
                return

    def close(self) -> None:
        pass
