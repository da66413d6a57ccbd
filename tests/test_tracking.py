"""Per-defect tracking: one chain (new → update* → end) per defect, in video and in line-scan
sequences, with hysteresis, confirmation and track positions; end to end on synthetic footage."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from railedge.events.geometry import Placement, TrackGeometry
from railedge.events.tracker import DefectTracker, TrackerConfig, stay_level
from railedge.values import Band, Box, Crop, Frame, Position, Scored
from tests.conftest import RAILEDGE, SMALL_MODEL

H, W = 288, 384
STEP = 80.0  # track px per frame (2 m/s at 25 fps, 1 mm/px)


def _scored(i: int, boxes: tuple[Box, ...], threshold: float = 1.0, h: int = H) -> Scored:
    f = Frame(i, f"{i:06d}.png", np.zeros((h, W), np.uint8), 0.0, 0.0)
    band = Band(90, 300, 0, h)
    crop = Crop(f, band, f.image[:, 90:300])
    score = max((b.score for b in boxes), default=0.0)
    return Scored(crop, np.zeros((8, 4), np.float32), score, threshold, boxes)


def _video_placement(i: int) -> Placement:
    return Placement(centre_px=i * STEP, height_px=H, direction=1, mm_per_px=1.0)


def _defect_box(i: int, p_lo: float, p_hi: float, score: float, x: int = 150, w: int = 80) -> Box | None:
    """The box a defect at track interval [p_lo, p_hi] makes in video frame i (None when out of view)."""
    top = i * STEP + H / 2 - p_hi  # row of p_hi (direction down: the top row is ahead)
    bottom = i * STEP + H / 2 - p_lo
    y0, y1 = max(0.0, top), min(float(H), bottom)
    if y1 - y0 < 4:
        return None
    return Box(x, int(y0), w, int(y1 - y0), score)


def _run(tr: DefectTracker, frames: list[tuple[tuple[Box, ...], Placement | None]], threshold: float = 1.0, h: int = H):
    log = []
    for i, (boxes, pl) in enumerate(frames):
        for u in tr.step(_scored(i, boxes, threshold, h), boxes, pl):
            log.append((i, u.kind, u.track.id))
    for u in tr.flush():
        log.append((len(frames), u.kind, u.track.id))
    return log


def test_placement_maps_rows_to_track_both_directions():
    down = Placement(1000.0, 200.0, 1, 2.0)
    assert down.span(0, 10) == (1090.0, 1100.0)  # top rows are ahead
    assert down.view() == (900.0, 1100.0)
    assert down.chainage_m(1000.0) == 2.0
    up = Placement(1000.0, 200.0, -1, None)
    assert up.span(0, 10) == (900.0, 910.0) and up.chainage_m(5.0) is None
    geo = TrackGeometry(mm_per_px=2.0, linescan=False, direction=1)
    f = Frame(3, "x", np.zeros((100, 50), np.uint8), 0.0, 0.0, position=Position(chainage_m=10.0), scale=2.0)
    pl = geo.place(f)
    assert pl is not None and pl.centre_px == 5000.0 and pl.height_px == 200.0
    assert TrackGeometry(linescan=True).place(f).centre_px == 600.0
    assert TrackGeometry().place(f) is None


def test_stay_level_sits_between_map_floor_and_threshold():
    amap = np.full((10, 10), 2.0, np.float32)
    amap[0, 0] = 5.0
    assert stay_level(amap, 3.0, 0.5) == pytest.approx(2.5)
    # a raw ratio of the threshold (2.55) would sit above this floor, 0.85 x 3.0 = 2.55 too, but a floor of 2.8 would swallow it
    amap[:] = 2.8
    assert stay_level(amap, 3.0, 0.85) == pytest.approx(2.97)


def test_video_defect_scrolling_through_frames_is_one_chain_ended_when_it_leaves():
    tr = DefectTracker(TrackerConfig(confirm_frames=2, end_after=5, gap_px=30), "dev")
    p_lo, p_hi = 1000.0, 1040.0
    frames = []
    for i in range(30):
        b = _defect_box(i, p_lo, p_hi, 2.0)
        frames.append(((b,) if b else (), _video_placement(i)))
    log = _run(tr, frames)
    kinds = [k for _, k, _ in log]
    assert kinds == ["new", "end"], log
    seen = [i for i, (bx, _) in enumerate(frames) if bx]
    assert log[0][0] == seen[1]  # confirmed on its second frame
    assert log[1][0] == seen[-1] + 1  # ended on the first frame without it: it left the view (not after end_after=5)


def test_chainage_of_a_track_is_its_box_centre():
    tr = DefectTracker(TrackerConfig(confirm_frames=1), "dev")
    updates = []
    for i in range(12, 16):
        b = _defect_box(i, 1000.0, 1040.0, 2.0)
        updates += tr.step(_scored(i, (b,) if b else ()), (b,) if b else (), _video_placement(i))
    track = updates[0].track
    assert track.chainage_m == pytest.approx(1.020, abs=0.01)
    assert updates[0].after["chainage_m"] == pytest.approx(1.020, abs=0.01)


def test_two_defects_in_the_same_columns_stay_apart_with_geometry():
    tr = DefectTracker(TrackerConfig(confirm_frames=2, end_after=3, gap_px=30), "dev")
    frames = []
    for i in range(25):
        boxes = tuple(b for b in (_defect_box(i, 1000, 1030, 2.0), _defect_box(i, 1200, 1230, 1.8)) if b)
        frames.append((boxes, _video_placement(i)))
    log = _run(tr, frames)
    ids = {tid for _, k, tid in log if k == "new"}
    assert len(ids) == 2 and [k for _, k, _ in log].count("end") == 2


def test_a_missed_frame_in_view_keeps_the_chain():
    tr = DefectTracker(TrackerConfig(confirm_frames=2, end_after=2, gap_px=30), "dev")
    frames = []
    for i in range(25):
        b = _defect_box(i, 1000, 1030, 2.0)
        frames.append(((b,) if b else (), _video_placement(i)))
    seen = [i for i, (bx, _) in enumerate(frames) if bx]
    assert len(seen) >= 3
    frames[seen[1]] = ((), frames[seen[1]][1])  # a flicker in the middle of its pass
    log = _run(tr, frames)
    assert [k for _, k, _ in log] == ["new", "end"], log


def test_single_frame_false_alarm_in_mid_view_makes_no_event():
    tr = DefectTracker(TrackerConfig(confirm_frames=2, end_after=2, gap_px=30), "dev")
    frames = [((), _video_placement(i)) for i in range(10)]
    frames[4] = ((Box(150, 100, 40, 30, 3.0),), _video_placement(4))
    assert _run(tr, frames) == []


def test_hysteresis_opens_above_threshold_and_stays_above_the_lower_level():
    tr = DefectTracker(TrackerConfig(confirm_frames=1, end_after=1), "dev")
    # no placement: the box moves down 10 px per frame, the tracker follows it
    scores = [0.9, 1.5, 0.7, 0.6, 0.65, 0]
    frames = [((Box(150, 20 + 10 * i, 40, 40, s),) if s else (), None) for i, s in enumerate(scores)]
    # 0.9 is below the threshold: nothing opens; 1.5 opens; 0.6-0.7 (above the stay level the
    # pipeline filtered boxes with) keep it; it ends after the gap
    log = _run(tr, frames)
    assert [k for _, k, _ in log] == ["new", "end"]
    assert log[0][0] == 1 and log[1][0] == len(frames)  # ended by the flush: still "seen" through frame 4


def test_update_when_peak_rises_by_the_ratio_only():
    tr = DefectTracker(TrackerConfig(confirm_frames=1, end_after=1, update_ratio=1.2), "dev")
    scores = [1.5, 1.6, 2.0, 2.1, 0, 0, 0]
    frames = [((Box(150, 20 + 10 * i, 40, 40, s),) if s else (), None) for i, s in enumerate(scores)]
    log = _run(tr, frames)
    assert [k for _, k, _ in log] == ["new", "update", "end"]
    assert log[1][0] == 2


def test_events_carry_before_after_state():
    tr = DefectTracker(TrackerConfig(confirm_frames=1, end_after=0), "dev")
    u1 = tr.step(_scored(0, (Box(150, 20, 40, 40, 1.5),)), (Box(150, 20, 40, 40, 1.5),))
    u2 = tr.step(_scored(1, (Box(150, 30, 40, 40, 2.0),)), (Box(150, 30, 40, 40, 2.0),))
    u3 = tr.step(_scored(2, ()), ())
    assert u1[0].kind == "new" and u1[0].before is None and u1[0].after["peak_score"] == 1.5
    assert u2[0].kind == "update" and u2[0].before == u1[0].after and u2[0].after["peak_score"] == 2.0
    assert u3[0].kind == "end" and u3[0].after["first_frame"] == 0 and u3[0].after["last_frame"] == 1


def test_linescan_defect_continuing_across_an_image_boundary_is_one_chain():
    h = 2000
    tr = DefectTracker(TrackerConfig(confirm_frames=2, end_after=2, gap_px=60), "dev")
    geo = TrackGeometry(linescan=True, direction=1)

    def pl(i):
        return geo.place(Frame(i, "x", np.zeros((h, 10), np.uint8), 0.0, 0.0))

    frames = [
        ((Box(700, 900, 200, 150, 3.0),), pl(0)),  # inside image 0 only
        ((Box(650, 0, 220, 120, 2.5),), pl(1)),  # touches image 1's top edge: the part ahead ...
        ((Box(660, 1850, 200, 150, 2.8),), pl(2)),  # ... continues at the bottom of image 2
        ((), pl(3)),
        ((Box(650, 0, 220, 120, 2.5),), pl(4)),  # top of image 4 ...
        ((), pl(5)),  # ... nothing at the bottom of image 5: its own defect
    ]
    log = _run(tr, frames, h=h)
    news = [(i, tid) for i, k, tid in log if k == "new"]
    ends = [(i, tid) for i, k, tid in log if k == "end"]
    assert len(news) == 3 and len(ends) == 3, log
    # the first: seen once, confirmed as it left the view (on image 1), new and end together
    assert news[0] == (1, ends[0][1]) and ends[0][0] == 1
    # the boundary defect: one id over images 1 and 2, ended when image 3 did not show it
    assert news[1][0] == 2 and ends[1] == (3, news[1][1])
    assert ends[2][0] == 5


def test_linescan_without_geometry_would_split_nothing_across_gaps():
    # abutting images: the same columns in the next image but far from the boundary is another defect
    h = 2000
    tr = DefectTracker(TrackerConfig(confirm_frames=1, end_after=2, gap_px=60), "dev")
    geo = TrackGeometry(linescan=True, direction=1)
    frames = [((Box(700, 900, 200, 150, 3.0),), geo.place(Frame(i, "x", np.zeros((h, 10), np.uint8), 0.0, 0.0)))
              for i in range(3)]
    log = _run(tr, frames, h=h)
    assert len({tid for _, k, tid in log if k == "new"}) == 3


def _match(events: list[dict], truth: dict) -> dict[int, list[str]]:
    """Ground-truth anomaly id → ids of event chains whose frames and columns overlap it."""
    chains: dict[str, dict] = {}
    for e in events:
        chains.setdefault(e["id"], {}).setdefault("types", []).append(e["type"])
        chains[e["id"]]["last"] = e
    out: dict[int, list[str]] = {d["id"]: [] for d in truth["defects"]}
    for cid, c in chains.items():
        e = c["last"]
        ch = (e.get("position") or {}).get("chainage_m")
        best, dist = None, None
        for d in truth["defects"]:
            if e["last_frame"] < d["first_frame"] or e["first_frame"] > d["last_frame"]:
                continue
            dd = abs(ch - d["chainage_m"]) if ch is not None else 0.0
            if dist is None or dd < dist:
                best, dist = d, dd
        if best is not None and dist is not None and dist < 1.0:
            out[best["id"]].append(cid)
    return out


@pytest.mark.slow
def test_replay_with_known_speed_gives_one_chain_per_detected_defect_at_its_chainage(footage, small_model, tmp_path):
    truth = json.loads((footage / "defects.json").read_text())
    run = tmp_path / "run"
    r = subprocess.run(
        RAILEDGE + ["replay", str(footage / "track.mp4"), "--model", str(small_model), "--run-dir", str(run), "--json"]
        + SMALL_MODEL + ["--set", f"position.speed_mps={truth['speed_mps']}", "--set", f"position.start_chainage_m={truth['start_chainage_m']}",
                         "--set", f"position.mm_per_px={truth['mm_per_px']}", "--set", f"state_dir={tmp_path / 'state'}"],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    frames = [json.loads(line) for line in (run / "frames.jsonl").read_text().splitlines()]
    assert len(frames) == truth["frames"]
    # every frame carries its chainage: start + speed x index / fps
    f10 = frames[10]
    assert f10["position"]["chainage_m"] == pytest.approx(truth["start_chainage_m"] + 10 * truth["speed_mps"] / truth["fps"], abs=1e-6)
    # every chain is complete: new first, end last, one of each
    import jsonschema

    from railedge.schemas import load_schema

    schema = load_schema("event")
    chains: dict[str, list[str]] = {}
    for e in events:
        jsonschema.validate(e, schema)
        chains.setdefault(e["id"], []).append(e["type"])
        assert e["position"] is not None and e["snapshot"]
        assert e["first_frame"] <= e["frame_index"] <= e["last_frame"] and e["peak_score"] >= e["threshold"]
    for types in chains.values():
        assert types[0] == "new" and types[-1] == "end" and types.count("new") == 1 and types.count("end") == 1
    matched = _match(events, truth)
    detected = {k: v for k, v in matched.items() if v}
    strong = [d for d in truth["defects"] if d["kind"] in ("joint", "squat", "spalling", "crack")]
    assert strong and all(matched[d["id"]] for d in strong), matched  # clearly visible anomalies are found
    assert all(len(v) == 1 for v in detected.values()), matched  # one chain each, never two
    by_id = {e["id"]: e for e in events if e["type"] == "end"}
    for d in truth["defects"]:
        for cid in matched[d["id"]]:
            assert abs(by_id[cid]["position"]["chainage_m"] - d["chainage_m"]) < 0.5
    # snapshots: one JPEG per defect in the run directory
    snaps = sorted((run / "snapshots").glob("*.jpg"))
    assert len(snaps) == len(chains) and all(s.read_bytes()[:2] == b"\xff\xd8" for s in snaps)


def test_snapshot_store_keeps_the_folder_under_its_bound_oldest_first(tmp_path):
    from railedge.snapshots import SnapshotStore

    store = SnapshotStore(tmp_path / "snaps", max_bytes=2500)
    assert not (tmp_path / "snaps").exists()  # nothing written, no folder
    for i in range(5):
        store.save(f"dev-run-{i:05d}", bytes([0xFF, 0xD8]) + bytes(998))
    names = sorted(p.name for p in (tmp_path / "snaps").glob("*.jpg"))
    assert names == ["dev-run-00003.jpg", "dev-run-00004.jpg"] and store.removed == 3
    assert store.total_bytes <= 2500 and not list((tmp_path / "snaps").glob("*.tmp"))
    store.save("dev-run-00003", bytes(1000))  # rewritten: now the newest
    store.save("dev-run-00005", bytes(1000))
    assert sorted(p.name for p in (tmp_path / "snaps").glob("*.jpg")) == ["dev-run-00003.jpg", "dev-run-00005.jpg"]
    # a new store on the same folder counts what is there
    again = SnapshotStore(tmp_path / "snaps", max_bytes=1500)
    again.save("x/y", bytes(1000))
    assert sorted(p.name for p in (tmp_path / "snaps").glob("*.jpg")) == ["x_y.jpg"]


def test_snapshot_shows_the_heat_map_and_the_box():
    import cv2

    from railedge.snapshots import render_snapshot

    img = np.full((200, 300), 120, np.uint8)
    f = Frame(0, "a.png", img, 0.0, 0.0, scale=2.0)  # decoded at 1/2: boxes are in full-size pixels
    band = Band(100, 200, 0, 200)
    amap = np.zeros((8, 4), np.float32)
    amap[2:4, 1:3] = 5.0
    sc = Scored(Crop(f, band, img[:, 100:200]), amap, 5.0, 2.0)
    jpeg = render_snapshot(sc, Box(240, 100, 80, 100, 5.0), 1.0, label="d-1")
    out = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert out.shape[:2] == (200, 100)
    hot = out[60:90, 30:70].astype(int)  # the anomaly: red-ish
    assert (hot[..., 2] - hot[..., 0]).mean() > 60
    cold = out[150:190, 10:90].astype(int)  # normal rail: untinted grey
    assert np.abs(cold[..., 2] - cold[..., 0]).mean() < 10
    assert out[50, 22:58].min() > 200  # the box (x 240..320, y 100 at scale 2 = crop columns 20..60, row 50) in white
    assert out[50, 70:90].max() < 200  # and nothing beyond it


@pytest.mark.slow
def test_pipeline_publishes_snapshots_after_events_over_mqtt(footage, small_model, tmp_path):
    from broker import MessageCollector, MosquittoBroker, have_mosquitto

    if not have_mosquitto():
        pytest.skip("mosquitto is not installed (scripts/setup.sh installs it)")
    from railedge.config import load_config
    from railedge.model import ModelArtifact
    from railedge.pipeline import Pipeline
    from railedge.sinks.mqtt import MqttPublisher
    from railedge.sources import open_source

    truth = json.loads((footage / "defects.json").read_text())
    strong = next(d for d in truth["defects"] if d["kind"] in ("joint", "squat"))
    with MosquittoBroker(tmp_path / "broker") as b, MessageCollector(b, "railedge/#") as col:
        cfg = load_config(None, [f"mqtt.port={b.port}", "mqtt.publish_snapshots=true", "device.id=dev1",
                                 f"state_dir={tmp_path / 'state'}", "position.speed_mps=2.0", "position.mm_per_px=1.0"])
        model = ModelArtifact.load(small_model)
        pub = MqttPublisher(cfg.mqtt, "dev1", tmp_path / "state")
        pub.start()
        pipe = Pipeline(cfg, model, model.engine("onnx"), [pub], run_id="t", fps=25.0, live=False)
        events = []
        for fr in open_source(str(footage / "track.mp4")).frames():
            if strong["first_frame"] - 1 <= fr.index <= strong["last_frame"] + 2:
                events += pipe.process(fr).events
            if fr.index > strong["last_frame"] + 2:
                break
        events += pipe.finish()
        assert events and events[-1]["type"] == "end"
        ids = {e["id"] for e in events}
        assert pub.wait_drained(15)
        pub.close(2)
        snaps = [t for t, _, _ in col.messages if "/snapshot/" in t]
        assert {t.rsplit("/", 1)[1] for t in snaps} == ids
        for t, payload, _ in col.messages:
            if "/snapshot/" in t:
                assert payload[:2] == b"\xff\xd8"
        first_event = next(i for i, (t, _, _) in enumerate(col.messages) if t.endswith("/events"))
        first_snap = next(i for i, (t, _, _) in enumerate(col.messages) if "/snapshot/" in t)
        assert first_event < first_snap  # a subscriber hears of the defect before its picture
        for e in events:
            assert Path(e["snapshot"]).is_file() and Path(e["snapshot"]).parent == tmp_path / "state" / "snapshots"


def test_box_fragments_one_feature_cell_apart_merge_two_cells_apart_do_not():
    from railedge.events.boxes import BoxFinder

    f = Frame(0, "x", np.zeros((400, 300), np.uint8), 0.0, 0.0)
    crop = Crop(f, Band(100, 200, 0, 400), f.image[:, 100:200])
    finder = BoxFinder(stride=8, input_hw=(64, 16), min_area_px=0, merge_gap_px=0)  # cells: 50 x 50 px
    amap = np.zeros((8, 2), np.float32)
    amap[1, 0] = amap[3, 0] = 5.0  # one empty cell between them: fragments of one defect
    (box,) = finder(amap, 1.0, crop)
    assert (box.y, box.h) == (50, 150)
    amap[3, 0] = 0.0
    amap[4, 0] = 5.0  # two empty cells: two defects
    assert len(finder(amap, 1.0, crop)) == 2
