"""Defect snapshots: the best frame's rail crop with the anomaly heat-map overlaid, as JPEG, kept
in a folder of bounded size (the oldest snapshots are removed first).

`render_snapshot` is pure (image in, bytes out); `SnapshotStore` does the disk work."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from railedge.logs import get_logger
from railedge.values import Box, Scored



def _log():
    """The logger, made when used (a logger bound at import, before logging is set up, writes to stdout)."""
    return get_logger("railedge.snapshots")


def render_snapshot(scored: Scored, box: Box | None, level: float, *, max_side: int = 1024, quality: int = 85,
                    label: str = "") -> bytes:
    """JPEG of `scored`'s rail crop: map cells above `level` tinted from blue (at `level`) to red (at
    the peak), `box` (frame pixels) outlined, `label` written in the corner."""
    crop = scored.crop
    img = crop.image
    h, w = img.shape[:2]
    bgr = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    amap = cv2.resize(scored.amap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    peak = max(float(amap.max()), scored.threshold)
    heat = np.clip((amap - level) / max(peak - level, 1e-6), 0.0, 1.0)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = (0.55 * (heat > 0) * (0.4 + 0.6 * heat))[..., None].astype(np.float32)
    out = (bgr.astype(np.float32) * (1 - alpha) + colour.astype(np.float32) * alpha).astype(np.uint8)
    scale = max(h, w) / max_side if max(h, w) > max_side else 1.0
    if scale > 1.0:
        out = cv2.resize(out, (max(1, int(round(w / scale))), max(1, int(round(h / scale)))), interpolation=cv2.INTER_AREA)
    if box is not None:
        s = crop.frame.scale
        x0 = (box.x / s - crop.band.x0) / scale
        y0 = (box.y / s - crop.band.y0) / scale
        x1, y1 = x0 + box.w / s / scale, y0 + box.h / s / scale
        thick = max(1, int(round(max(out.shape[:2]) / 300)))
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), (255, 255, 255), thick)
    if label:
        fs = max(0.35, min(out.shape[1], 400) / 600)
        cv2.putText(out, label, (4, int(14 * fs / 0.35)), cv2.FONT_HERSHEY_SIMPLEX, fs, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, label, (4, int(14 * fs / 0.35)), cv2.FONT_HERSHEY_SIMPLEX, fs, (255, 255, 255), 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 BGR image
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


class SnapshotStore:
    """A folder of `<name>.jpg` files whose total size stays under `max_bytes`: each save removes
    the oldest files (by modification time) until the folder fits. Writes are atomic (temp + rename),
    so a reader never sees half a JPEG."""

    def __init__(self, folder: str | Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)
        self.removed = 0
        self._files: dict[str, tuple[tuple[int, int], int]] = {}  # name -> ((mtime ns, order), size)
        self._seq = 0
        self._opened = False

    def _open(self) -> None:
        """Create the folder and take stock of what it holds (on the first save: a run that finds
        no defect leaves no folder behind)."""
        self._opened = True
        self.folder.mkdir(parents=True, exist_ok=True)
        for p in self.folder.glob("*.jpg"):
            try:
                st = p.stat()
            except OSError:
                continue
            self._files[p.name] = ((st.st_mtime_ns, 0), st.st_size)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self._files.values())

    def path_for(self, name: str) -> Path:
        return self.folder / f"{_safe(name)}.jpg"

    def save(self, name: str, jpeg: bytes) -> Path:
        if not self._opened:
            self._open()
        path = self.path_for(name)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(jpeg)
        os.replace(tmp, path)
        self._seq += 1  # files written in one clock tick still age in the order they were written
        self._files[path.name] = ((path.stat().st_mtime_ns, self._seq), len(jpeg))
        self._prune(keep=path.name)
        return path

    def _prune(self, keep: str) -> None:
        total = self.total_bytes
        if total <= self.max_bytes:
            return
        for name, _ in sorted(self._files.items(), key=lambda kv: kv[1][0]):
            if total <= self.max_bytes:
                break
            if name == keep:
                continue
            try:
                (self.folder / name).unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                _log().warning("snapshot_remove_failed", file=name, error=str(e))
                continue
            total -= self._files.pop(name)[1]
            self.removed += 1


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"
