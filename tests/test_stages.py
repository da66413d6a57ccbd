"""One test (or a few) per pipeline stage, on images and videos the tests make."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from railedge.capture import CaptureThread
from railedge.config import RoiConfig, SourceConfig
from railedge.errors import SourceError
from railedge.events.boxes import BoxFinder
from railedge.events.tracker import DefectTracker, TrackerConfig
from railedge.preprocess import Preprocess
from railedge.roi import RailBandLocator
from railedge.scoring import AnomalyScorer, ColumnMemoryBank, calibrate_threshold
from railedge.sources import ImageFolderSource, VideoFileSource, open_source
from railedge.values import Band, Box, Crop, Frame, Scored


def rail_image(h=200, w=320, x0=110, x1=210, seed=0, brightness=170):
    rng = np.random.default_rng(seed)
    img = rng.normal(30, 6, (h, w))
    img[:, x0:x1] = brightness + rng.normal(0, 5, (h, x1 - x0)) + np.linspace(-10, 10, x1 - x0)[None]
    return np.clip(img, 0, 255).astype(np.uint8)


def test_image_folder_sorted_with_names_and_times(tmp_path):
    for name in ["b.png", "a.png", "c.jpg"]:
        cv2.imwrite(str(tmp_path / name), rail_image())
    (tmp_path / "notes.txt").write_text("not an image")
    frames = list(ImageFolderSource(tmp_path).frames())
    assert [f.source for f in frames] == ["a.png", "b.png", "c.jpg"]
    assert [f.index for f in frames] == [0, 1, 2]
    assert all(f.image.ndim == 2 and f.t_wall > 1e9 and f.t_mono > 0 for f in frames)
    assert frames[0].t_mono <= frames[1].t_mono <= frames[2].t_mono


def test_image_folder_reduced_decode_keeps_scale(tmp_path):
    cv2.imwrite(str(tmp_path / "a.jpg"), rail_image(400, 640))
    f = next(ImageFolderSource(tmp_path, reduce=4).frames())
    assert f.image.shape == (100, 160) and f.scale == 4.0


def test_image_folder_skips_corrupt_file_loudly(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), rail_image())
    (tmp_path / "b.png").write_bytes(b"\x89PNG garbage")
    cv2.imwrite(str(tmp_path / "c.png"), rail_image())
    src = ImageFolderSource(tmp_path)
    frames = list(src.frames())
    assert [f.source for f in frames] == ["a.png", "c.png"]
    assert src.skipped == ["b.png"]


def test_video_source_reads_all_frames_and_loops(tmp_path):
    path = tmp_path / "v.mp4"
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 20.0, (320, 200))
    for i in range(12):
        wr.write(cv2.cvtColor(rail_image(seed=i), cv2.COLOR_GRAY2BGR))
    wr.release()
    src = VideoFileSource(path)
    frames = list(src.frames())
    assert len(frames) == 12 and src.fps == pytest.approx(20.0)
    assert frames[0].image.shape == (200, 320) and frames[-1].index == 11
    looped = VideoFileSource(path, loop=True).frames()
    got = [next(looped).index for _ in range(30)]
    assert got == list(range(30))


def test_bad_sources_name_the_thing(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        open_source(str(tmp_path / "missing.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(SourceError, match="bad.mp4"):
        open_source(str(bad))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no images"):
        open_source(str(tmp_path / "empty"))


def test_capture_thread_replay_never_drops_and_live_drops_oldest(tmp_path):
    for i in range(20):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), rail_image(seed=i))
    cap = CaptureThread(ImageFolderSource(tmp_path), maxsize=2, drop_oldest=False).start()
    import time

    got = []
    for item in cap:
        time.sleep(0.005)
        got.append(item.frame.index)
    assert got == list(range(20)) and cap.dropped == 0
    live = CaptureThread(ImageFolderSource(tmp_path), maxsize=2, drop_oldest=True).start()
    live.join(5)
    got = [item.frame.index for item in live]
    assert live.dropped > 0 and len(got) + live.dropped == 20 and got[-1] == 19


class _BurstSource:
    """A live source that has its frames ready at once (a camera far faster than inference)."""

    name, fps, live = "burst", None, True

    def __init__(self, n):
        self.n = n

    def frames(self):
        img = np.zeros((8, 8), np.uint8)
        for i in range(self.n):
            yield Frame(index=i, source=self.name, image=img, t_mono=float(i), t_wall=float(i))

    def close(self):
        pass


def test_live_capture_drops_without_waiting_for_room():
    """With nobody consuming, a live capture must keep the camera's pace: each frame displaces the
    oldest queued one at once (a 100 ms wait per frame here would take 30 s for 300 frames)."""
    cap = CaptureThread(_BurstSource(300), maxsize=4, drop_oldest=True).start()
    import time

    deadline = time.monotonic() + 5
    while cap.captured < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cap.captured == 300, f"capture blocked: {cap.captured} captured in 5 s, {cap.dropped} dropped"
    got = [item.frame.index for item in cap]
    assert got == [296, 297, 298, 299] and cap.dropped == 296


def test_rail_band_located_on_synthetic_frame():
    img = rail_image(x0=110, x1=210)
    band = RailBandLocator(RoiConfig(margin=0.0)).locate(img)
    assert abs(band.x0 - 110) <= 6 and abs(band.x1 - 210) <= 6
    fixed = RailBandLocator(RoiConfig(mode="fixed", x=50, width=100)).locate(img)
    assert (fixed.x0, fixed.x1) == (50, 150)
    assert RailBandLocator(RoiConfig(mode="full")).locate(img).width == 320


def test_rail_band_on_real_images_covers_labelled_defects(raildefect):
    from railedge.datasets import iter_samples

    loc = RailBandLocator(RoiConfig())
    covered = []
    for s in iter_samples(raildefect, "yolo", reduce=4, max_frames=80):
        loc.reset()
        b = loc.locate(s.image)
        w = s.image.shape[1]
        for lab in s.labels:
            if lab.cls != 0:
                continue
            x0, _, x1, _ = lab.pixels(w, s.image.shape[0])
            covered.append(max(0.0, min(x1, b.x1) - max(x0, b.x0)) / (x1 - x0))
    covered = np.array(covered)
    assert covered.mean() > 0.9, covered.mean()


def test_preprocess_normalises_brightness():
    pre = Preprocess(64, 32)
    a = pre(rail_image(brightness=120)[:, 110:210])
    b = pre(rail_image(brightness=200)[:, 110:210])
    assert a.shape == (64, 32) and a.dtype == np.float32
    assert abs(np.median(a) - 0.5) < 0.05 and abs(np.median(b) - 0.5) < 0.05


def _features(n, h=8, w=4, f=6, seed=0):
    base = np.random.default_rng(123).normal(0, 1, (1, f, 1, w))  # columns differ, rows alike: rail-like
    rng = np.random.default_rng(seed)
    return (base + 0.1 * rng.normal(0, 1, (n, f, h, w))).astype(np.float32)


def test_memory_bank_nearest_neighbour_matches_brute_force():
    train = _features(20)
    bank = ColumnMemoryBank.fit(train, None, size=10_000, window=1)
    q = _features(1, seed=5)[0]
    d = bank.distances(q)
    for r in range(q.shape[1]):
        for c in range(q.shape[2]):
            cols = range(max(0, c - 1), min(q.shape[2], c + 2))
            cand = np.concatenate([train[:, :, :, j].transpose(0, 2, 1).reshape(-1, train.shape[1]) for j in cols])
            assert d[r, c] == pytest.approx(np.sqrt(((cand - q[:, r, c]) ** 2).sum(1)).min(), rel=1e-3, abs=1e-3)


def test_coreset_bounds_bank_and_anomaly_scores_high(tmp_path):
    train = _features(40)
    bank = ColumnMemoryBank.fit(train, None, size=64, window=1)
    assert bank.size == 64
    scorer = AnomalyScorer(bank, sigma=0.0)
    normal = _features(1, seed=9)[0]
    odd = normal.copy()
    odd[:, 3, 2] += 3.0
    amap, s_norm = scorer(normal)
    amap2, s_odd = scorer(odd)
    assert s_odd > 2 * s_norm and np.unravel_index(amap2.argmax(), amap2.shape) == (3, 2)
    bank.save(tmp_path / "b.npz")
    again = ColumnMemoryBank.load(tmp_path / "b.npz")
    assert np.allclose(again.distances(odd), bank.distances(odd))


def test_normal_mask_keeps_labelled_patches_out_of_bank():
    train = _features(10)
    train[:, :, 2, 1] += 5.0  # a "defect" at (2,1) in every frame
    mask = np.ones((10, 8, 4), bool)
    mask[:, 2, 1] = False
    bank = ColumnMemoryBank.fit(train, mask, size=10_000)
    q = train[0].copy()
    assert bank.distances(q)[2, 1] > 3.0


def test_threshold_calibration_order_statistic():
    s = np.arange(1, 101, dtype=float)
    assert calibrate_threshold(s, 0.01) == 99.0
    assert calibrate_threshold(s, 0.1) == 90.0
    assert calibrate_threshold(np.array([3.0, 1.0, 2.0]), 0.01) == 3.0


def _crop(h=400, w=300, band=Band(100, 200, 0, 400), scale=1.0):
    f = Frame(0, "x", np.zeros((h, w), np.uint8), 0.0, 0.0, scale=scale)
    return Crop(f, band, f.image[band.y0 : band.y1, band.x0 : band.x1])


def test_boxes_map_back_to_frame_pixels_and_merge_fragments():
    finder = BoxFinder(stride=8, input_hw=(64, 16), min_area_px=0, merge_gap_px=0)
    amap = np.zeros((8, 2), np.float32)
    amap[2:4, 1] = 5.0
    boxes = finder(amap, 1.0, _crop(scale=2.0))
    # grid cell = 8 input px; input 16 wide ↔ band 100 px → 50 px per cell; ×2 original scale
    assert len(boxes) == 1
    b = boxes[0]
    assert (b.x, b.w) == (300, 100) and (b.y, b.h) == (200, 200) and b.score == 5.0
    amap[6, 1] = 4.0
    assert len(finder(amap, 1.0, _crop())) == 2
    merged = BoxFinder(stride=8, input_hw=(64, 16), min_area_px=0, merge_gap_px=200)(amap, 1.0, _crop())
    assert len(merged) == 1


def test_tracker_one_chain_per_defect_with_hysteresis():
    tr = DefectTracker(TrackerConfig(confirm_frames=2, stay_ratio=0.5, end_after=1), "dev")
    crop = _crop()

    def step(i, score, x=120):
        f = Frame(i, "s", crop.frame.image, 0.0, 0.0)
        c = Crop(f, crop.band, crop.image)
        boxes = (Box(x, 10 * i, 40, 40, score),) if score else ()
        return tr.step(Scored(c, np.zeros((1, 1)), score, 1.0, boxes), boxes)

    kinds = []
    for i, s in enumerate([0, 1.5, 1.2, 0.7, 2.0, 0.6, 0, 0, 0]):
        kinds += [u.kind for u in step(i, s)]
    assert kinds == ["new", "update", "end"]
    # below the opening threshold, nothing opens
    assert step(20, 0.9) == [] and tr.tracks == []


def test_projected_bank_lower_bounds_distances_and_keeps_anomalies(tmp_path):
    rng = np.random.default_rng(1)
    train = _features(30, f=40)
    full = ColumnMemoryBank.fit(train, None, size=10_000)
    proj = ColumnMemoryBank.fit(train, None, size=10_000, project_dim=8)
    assert proj.dim == 40 and proj.banks[0].shape[1] == 9
    q = _features(1, f=40, seed=7)[0]
    odd = q.copy()
    odd[:, 5, 1] += rng.normal(0, 3, 40)  # off the normal subspace: caught by the residual coordinate
    assert (proj.distances(q) <= full.distances(q) + 1e-3).all()
    d = proj.distances(odd)
    assert np.unravel_index(d.argmax(), d.shape) == (5, 1) and d.max() > 3 * np.median(d)
    proj.save(tmp_path / "p.npz")
    assert np.allclose(ColumnMemoryBank.load(tmp_path / "p.npz").distances(odd), d)


def test_auto_decode_reduction_keeps_the_band_at_model_input(tmp_path):
    """reduce 0 (auto): the largest factor that leaves the located rail band >= 90% of the model
    input; small frames are decoded full size; a fixed band stays in full-size pixels."""
    from railedge.sources.reduce import resolve_reduce

    big = tmp_path / "big"
    big.mkdir()
    cv2.imwrite(str(big / "000.jpg"), rail_image(h=2000, w=2048, x0=800, x1=1320))  # band ~520 px (+ margin)
    roi = RoiConfig(margin=0.0)
    assert resolve_reduce(0, big, roi, (512, 128)) == 4  # 2000/4 = 500 rows >= 461, 520/4 = 130 cols >= 115
    assert resolve_reduce(0, big, roi, (512, 256)) == 2  # a wider input needs more columns
    assert resolve_reduce(0, big, roi, (1024, 128)) == 2  # 1000 rows >= 922
    assert resolve_reduce(0, big, roi, (2048, 128)) == 1
    assert resolve_reduce(2, big, roi, (512, 128)) == 2  # a fixed setting is kept
    assert resolve_reduce(0, tmp_path / "missing.mp4", roi, (512, 128)) == 1  # videos decode at their own size
    small = tmp_path / "small"
    small.mkdir()
    cv2.imwrite(str(small / "000.png"), rail_image())
    assert resolve_reduce(0, small, roi, (512, 128)) == 1
    frame = next(iter(ImageFolderSource(big, reduce=4).frames()))
    assert frame.image.shape == (500, 512) and frame.scale == 4.0
    fixed = RailBandLocator(RoiConfig(mode="fixed", x=800, width=520)).crop(frame)
    assert (fixed.band.x0, fixed.band.x1) == (200, 330)


def test_auto_decode_reduction_follows_the_narrowest_probed_band(tmp_path):
    """A folder mixing runs: the wide-band first frame alone would allow 1/4, a narrower run later
    in the folder needs 1/2 (its band would otherwise be upsampled to the model width)."""
    from railedge.sources.reduce import resolve_reduce

    for i in range(6):
        x1 = 1320 if i < 4 else 1060  # band 520 px, then 260 px (260 / 4 = 65 < 115)
        cv2.imwrite(str(tmp_path / f"{i:03d}.jpg"), rail_image(h=2000, w=2048, x0=800, x1=x1, seed=i))
    roi = RoiConfig(margin=0.0)
    assert resolve_reduce(0, tmp_path, roi, (512, 128), probes=1) == 4  # the first frame only
    assert resolve_reduce(0, tmp_path, roi, (512, 128)) == 2
