"""How much to shrink image-folder frames while decoding them (`source.reduce`).

Line-scan frames are large (2048x2000) and the model sees the rail band at its input size
(512x128 by default), so most decoded pixels are thrown away by the resize. JPEG decodes at 1/2,
1/4 or 1/8 size several times faster (DCT scaling). `reduce: 0` (auto) picks, from the first
frame of the footage, the largest factor that still leaves the located rail band at least 90%
of the model's input size in both directions, so the model input keeps (nearly) all the detail it
had from a full-size decode. Measured on the raildefect runs (2048x2000, bands 243-530 px wide):
factor 2 or 4; replay 27 → 60-87 frames/s with the other speed-ups (docs in `railedge bench`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from railedge.config import RoiConfig
from railedge.errors import SourceError
from railedge.logs import get_logger
from railedge.roi import RailBandLocator
from railedge.sources.folder import list_images, read_gray

log = get_logger("railedge.sources.reduce")

FACTORS = (8, 4, 2)
KEEP = 0.9  # the band may end up at most ~10% below the model input (a negligible upsampling)


def reduce_for_image(image: np.ndarray, roi: RoiConfig, input_hw: tuple[int, int]) -> int:
    """The largest decode reduction that keeps the rail band of `image` (decoded full size) at
    least KEEP x the model input (height, width)."""
    band = RailBandLocator(roi).locate(image)
    in_h, in_w = input_hw
    for f in FACTORS:
        if band.height / f >= KEEP * in_h and band.width / f >= KEEP * in_w:
            return f
    return 1


def resolve_reduce(setting: int, data: str | Path, roi: RoiConfig, input_hw: tuple[int, int]) -> int:
    """`setting` when fixed (1, 2, 4, 8); for 0 (auto) the factor for the first image of the
    folder `data` (1 for videos and cameras, which decode at their own size)."""
    if setting:
        return int(setting)
    p = Path(data)
    if not p.is_dir():
        return 1
    try:
        files = list_images(p)
        image = read_gray(files[0])
    except SourceError:
        return 1  # the source itself reports the problem when it is opened
    f = reduce_for_image(image, roi, input_hw)
    log.info("decode_reduce", source=p.name, factor=f, frame=list(image.shape[::-1]), input=list(input_hw))
    return f
