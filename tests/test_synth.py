"""The synthetic footage generator: files, labels, geometry, determinism, normal frames."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from railedge.synth import CLASSES, KIND_CLASS, make_footage

FRAMES = 60
NORMAL = 12


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "a"
    summary = make_footage(out, FRAMES, seed=0, normal_frames=NORMAL)
    meta = json.loads((out / "defects.json").read_text())
    assert summary.out_dir == out and summary.frames == FRAMES and summary.defects == len(meta["defects"])
    return out, meta


def _labels(out: Path, i: int) -> list[tuple[int, float, float, float, float]]:
    rows = []
    for line in (out / "frames" / "labels" / f"{i:06d}.txt").read_text().splitlines():
        c, cx, cy, w, h = line.split()
        rows.append((int(c), float(cx), float(cy), float(w), float(h)))
    return rows


def _band_residual(img: np.ndarray) -> float:
    """Largest local departure of the rail band from its own column medians: streaks are nearly
    constant along the track, so a clean band leaves only texture and noise."""
    w = img.shape[1]
    band = img[:, int(w * 0.33) : int(w * 0.67)].astype(np.float32)
    r = band - np.median(band, axis=0, keepdims=True)
    return float(np.abs(cv2.GaussianBlur(r, (5, 5), 0)).max())


def test_files_exist(footage):
    out, meta = footage
    assert (out / "track.mp4").stat().st_size > 0
    assert sorted(p.name for p in (out / "frames" / "images").iterdir()) == [f"{i:06d}.png" for i in range(FRAMES)]
    assert sorted(p.name for p in (out / "frames" / "labels").iterdir()) == [f"{i:06d}.txt" for i in range(FRAMES)]
    assert sorted(p.name for p in (out / "normal").iterdir()) == [f"{i:06d}.png" for i in range(NORMAL)]
    assert (out / "frames" / "classes.txt").read_text().split() == ["defect", "dirt", "gap"]
    img = cv2.imread(str(out / "frames" / "images" / "000000.png"), cv2.IMREAD_UNCHANGED)
    assert img.shape == (288, 384) and img.dtype == np.uint8
    assert meta["frame_size"] == [384, 288] and meta["fps"] == 25.0 and meta["speed_mps"] == 2.0
    assert meta["mm_per_px"] == 1.0 and meta["start_chainage_m"] == 1000.0
    assert meta["defects"], "seed 0 should place anomalies within 60 frames"
    for d in meta["defects"]:
        assert KIND_CLASS[d["kind"]] == d["class"]
        assert 0 <= d["first_frame"] <= d["last_frame"] < FRAMES


def test_video_matches_frames(footage):
    out, meta = footage
    cap = cv2.VideoCapture(str(out / "track.mp4"))
    assert cap.isOpened()
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(25.0, abs=0.01)
    decoded = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        decoded.append(f)
    cap.release()
    assert len(decoded) == FRAMES
    assert decoded[0].shape == (288, 384, 3)
    pngs = [cv2.imread(str(out / "frames" / "images" / f"{i:06d}.png"), cv2.IMREAD_GRAYSCALE) for i in range(FRAMES)]
    for v, p in zip(decoded, pngs):
        assert np.abs(v[..., 1].astype(np.float32) - p).mean() < 8.0
    # compression keeps defects visible: the band residual of a defect frame survives decoding
    for d in meta["defects"]:
        i = (d["first_frame"] + d["last_frame"]) // 2
        r_png, r_vid = _band_residual(pngs[i]), _band_residual(decoded[i][..., 1])
        assert r_vid == pytest.approx(r_png, rel=0.2), d


def test_labels_parse_and_are_normalised(footage):
    out, _ = footage
    n = 0
    for i in range(FRAMES):
        for c, cx, cy, w, h in _labels(out, i):
            n += 1
            assert c in range(len(CLASSES))
            assert 0 < w <= 1 and 0 < h <= 1
            assert cx - w / 2 >= -1e-6 and cx + w / 2 <= 1 + 1e-6
            assert cy - h / 2 >= -1e-6 and cy + h / 2 <= 1 + 1e-6
    assert n > 0


def test_every_defect_is_labelled_where_visible(footage):
    """Re-derive each frame box from bbox_track and the documented geometry; it must be among
    the frame's labels in first..last_frame and absent just outside that range."""
    out, meta = footage
    (W, H), step = meta["frame_size"], meta["step_px"]
    assert step == pytest.approx(meta["speed_mps"] / meta["fps"] / (meta["mm_per_px"] / 1000))

    def expected(d, i):
        x, y, w, h = d["bbox_track"]
        top = i * step + H // 2 + 0.5 - y - h
        v0, v1 = max(top, 0), min(top + h, H)
        return (x + w / 2) / W, (v0 + v1) / 2 / H, w / W, (v1 - v0) / H

    for d in meta["defects"]:
        cls = CLASSES.index(d["class"])
        for i in range(d["first_frame"], d["last_frame"] + 1):
            want = expected(d, i)
            got = [lab[1:] for lab in _labels(out, i) if lab[0] == cls]
            assert any(np.allclose(g, want, atol=2e-5) for g in got), (d, i, got, want)
        for i in (d["first_frame"] - 1, d["last_frame"] + 1):
            if 0 <= i < FRAMES:
                want = expected(d, i)
                got = [lab[1:] for lab in _labels(out, i) if lab[0] == cls]
                assert not any(np.allclose(g, want, atol=2e-5) for g in got), (d, i)


def test_chainage_consistent(footage):
    out, meta = footage
    (W, H), step = meta["frame_size"], meta["step_px"]
    for d in meta["defects"]:
        x, y, w, h = d["bbox_track"]
        centre = y + h / 2
        assert d["chainage_m"] == pytest.approx(meta["start_chainage_m"] + centre * meta["mm_per_px"] / 1000, abs=1e-4)
        # the frame whose chainage is the defect's has the defect centre in its middle row
        f = (d["chainage_m"] - meta["start_chainage_m"]) * meta["fps"] / meta["speed_mps"]
        assert f == pytest.approx(centre / step, abs=1e-3)
        i = int(round(f))
        if d["first_frame"] <= i <= d["last_frame"] and h < H / 2:
            cls = CLASSES.index(d["class"])
            cys = [lab[2] * H for lab in _labels(out, i) if lab[0] == cls]
            moved = (i - f) * step  # the content scrolls down by step px per frame
            assert any(abs(cy - (H // 2 + 0.5 + moved)) < 0.01 for cy in cys), (d, cys)


def test_deterministic(footage, tmp_path):
    out, _ = footage
    again = make_footage(tmp_path / "b", FRAMES, seed=0, normal_frames=NORMAL).out_dir
    for sub in ("frames/images", "normal"):
        for p in sorted((out / sub).iterdir()):
            assert p.read_bytes() == (again / sub / p.name).read_bytes(), p
    assert (out / "defects.json").read_text() == (again / "defects.json").read_text()
    other = make_footage(tmp_path / "c", 5, seed=1, normal_frames=2).out_dir
    for sub in ("frames/images/000000.png", "normal/000000.png"):
        assert (out / sub).read_bytes() != (other / sub).read_bytes()


def test_normal_frames_are_clean(footage):
    out, meta = footage
    normal = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((out / "normal").iterdir())]
    r_normal = max(_band_residual(img) for img in normal)
    defect_frames = [
        (d["first_frame"] + d["last_frame"]) // 2 for d in meta["defects"] if d["class"] in ("defect", "gap")
    ]
    assert defect_frames
    r_defect = min(
        _band_residual(cv2.imread(str(out / "frames" / "images" / f"{i:06d}.png"), cv2.IMREAD_GRAYSCALE))
        for i in defect_frames
    )
    assert r_normal < 0.5 * r_defect, (r_normal, r_defect)
    # same look: the rail band of normal frames is as bright as in the footage
    track0 = cv2.imread(str(out / "frames" / "images" / "000000.png"), cv2.IMREAD_GRAYSCALE)
    assert abs(float(normal[0][:, 150:234].mean()) - float(track0[:, 150:234].mean())) < 20


def test_fractional_step_and_other_size(tmp_path):
    s = make_footage(tmp_path / "f", 12, seed=3, normal_frames=0, width=256, height=192, fps=30.0, speed_mps=1.234)
    meta = json.loads((s.out_dir / "defects.json").read_text())
    assert meta["frame_size"] == [256, 192]
    img = cv2.imread(str(s.out_dir / "frames" / "images" / "000011.png"), cv2.IMREAD_UNCHANGED)
    assert img.shape == (192, 256)
    assert not list((s.out_dir / "normal").iterdir())


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_footage(tmp_path / "x", 0)
    with pytest.raises(ValueError):
        make_footage(tmp_path / "x", 5, speed_mps=0)
