"""How much to shrink image-folder frames while decoding them (`source.reduce`).

Line-scan frames are large (2048x2000) and the model sees the rail band at its input size
(512x128 by default), so most decoded pixels are thrown away by the resize. JPEG decodes at 1/2,
1/4 or 1/8 size several times faster (DCT scaling). `reduce: 0` (auto) probes a few frames spread
over the folder and picks the largest factor that leaves the located rail band at least 90% of
the model's input size in both directions in every probed frame, so the model input keeps
(nearly) all the detail of a full-size decode. raildefect (2048x2000, bands 243-530 px wide):
1/4 for wide-band runs, 1/2 for the whole folder (its narrowest runs need it)."""

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


def resolve_reduce(setting: int, data: str | Path, roi: RoiConfig, input_hw: tuple[int, int], probes: int = 8) -> int:
    """The decode reduction for `data`: 1 for videos and cameras (they decode at their own size);
    for an image folder `setting` when fixed (1, 2, 4, 8), for 0 (auto) the smallest factor that
    `probes` images spread over the folder allow (a folder may hold runs of different band widths)."""
    p = Path(data)
    if not p.is_dir():
        return 1
    if setting:
        return int(setting)
    try:
        files = list_images(p)
    except SourceError:
        return 1  # the source itself reports the problem when it is opened
    picks = sorted({round(i * (len(files) - 1) / max(1, probes - 1)) for i in range(min(probes, len(files)))})
    f, shape = max(FACTORS), None
    for i in picks:
        try:
            image = read_gray(files[i])
        except SourceError:
            continue  # a corrupt frame is reported (and skipped) by the source itself
        shape = shape or list(image.shape[::-1])
        f = min(f, reduce_for_image(image, roi, input_hw))
    if shape is None:
        return 1
    log.info("decode_reduce", source=p.name, factor=f, frame=shape, input=list(input_hw), probed=len(picks))
    return f
