"""Position along the track: constant speed, line-scan images, CSV logs (by time, frame or file) and a
live MQTT feed on a real mosquitto; config validation of the position keys."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from broker import MosquittoBroker, have_mosquitto
from railedge.config import load_config
from railedge.errors import ConfigError
from railedge.position import CsvPositionLog, MqttPositionFeed, PositionResolver, build_position, parse_time
from railedge.values import Frame


def _frame(i: int, source: str = "", t_wall: float = 0.0, h: int = 100, scale: float = 1.0) -> Frame:
    return Frame(i, source or f"{i:06d}.png", np.zeros((h, 10), np.uint8), 0.0, t_wall, scale=scale)


def test_speed_gives_chainage_on_the_footage_clock():
    cfg = load_config(None, ["position.speed_mps=2.0", "position.start_chainage_m=1000"])
    res = build_position(cfg, fps=25.0, live=False)
    assert res is not None
    assert res(_frame(0)).chainage_m == pytest.approx(1000.0)
    # the footage's own clock: index / fps, whatever the replay speed or wall time
    p = res(_frame(50, t_wall=12345.0))
    assert p.chainage_m == pytest.approx(1004.0) and p.lat is None and p.lon is None


def test_speed_on_a_live_source_uses_the_wall_clock():
    cfg = load_config(None, ["position.speed_mps=10"])
    res = build_position(cfg, fps=None, live=True)
    assert res(_frame(0, t_wall=100.0)).chainage_m == pytest.approx(0.0)
    assert res(_frame(1, t_wall=100.5)).chainage_m == pytest.approx(5.0)


def test_speed_without_a_frame_rate_is_a_config_error():
    cfg = load_config(None, ["position.speed_mps=2.0"])
    with pytest.raises(ConfigError, match="source.fps"):
        build_position(cfg, fps=None, live=False)


def test_nothing_configured_means_no_position():
    assert build_position(load_config(None, []), fps=25.0, live=False) is None


def test_linescan_images_advance_one_image_length():
    cfg = load_config(None, ["position.linescan=true", "position.mm_per_px=0.5", "position.start_chainage_m=10"])
    res = build_position(cfg, fps=None, live=False)
    # 1000 full-size rows (500 decoded at 1/2) x 0.5 mm = 0.5 m per image
    assert res(_frame(3, h=500, scale=2.0)).chainage_m == pytest.approx(11.5)


def test_csv_by_time_interpolates_and_does_not_extrapolate(tmp_path):
    p = tmp_path / "pos.csv"
    p.write_text("t,chainage_m,lat,lon\n100.0,500.0,52.0,4.0\n101.0,510.0,52.001,4.002\n103.0,530.0,,\n")
    log = CsvPositionLog(p)
    assert log.origin == 100.0
    fix = log.at(_frame(0), 0.5)
    assert fix.chainage_m == pytest.approx(505.0) and fix.lat == pytest.approx(52.0005) and fix.lon == pytest.approx(4.001)
    # lat/lon missing in the last row: interpolated from the rows that have them (clamped at their end)
    assert log.at(_frame(0), 2.0).chainage_m == pytest.approx(520.0)
    assert log.at(_frame(0), 3.5) is None  # past the log
    # resolver on the footage clock: frame 25 at 25 fps is t = origin + 1 s
    res = PositionResolver([log], fps=25.0, media_clock=True)
    assert res(_frame(25)).chainage_m == pytest.approx(510.0)


def test_csv_time_origin_iso_and_by_frame_and_by_source(tmp_path):
    p = tmp_path / "iso.csv"
    p.write_text("timestamp,chainage_m\n2024-05-01T10:00:00Z,0\n2024-05-01T10:00:10Z,100\n")
    log = CsvPositionLog(p, time_origin="2024-05-01T10:00:05Z")
    assert log.at(_frame(0), 1.0).chainage_m == pytest.approx(60.0)
    assert parse_time("2024-05-01T10:00:00", "x") == parse_time("2024-05-01T10:00:00Z", "x")

    p2 = tmp_path / "frames.csv"
    p2.write_text("frame,chainage_m\n0,0\n10,20\n")
    assert CsvPositionLog(p2).at(_frame(5), 0.0).chainage_m == pytest.approx(10.0)

    p3 = tmp_path / "files.csv"
    p3.write_text("source,chainage_m,lat,lon\na.jpg,7.5,51.5,-0.1\n")
    log3 = CsvPositionLog(p3)
    fix = log3.at(_frame(0, source="a.jpg"), 0.0)
    assert (fix.chainage_m, fix.lat, fix.lon) == (7.5, 51.5, -0.1)
    assert log3.at(_frame(1, source="b.jpg"), 0.0) is None


@pytest.mark.parametrize(
    "text, words",
    [
        ("when,where\n1,2\n", "lack a key"),
        ("t,chainage_m\n", "no rows"),
        ("t,chainage_m\nsoon,1\n", "neither seconds nor an ISO-8601"),
        ("t,chainage_m\n1,far\n", "not a number"),
    ],
)
def test_bad_csv_logs_name_the_problem(tmp_path, text, words):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(ConfigError, match=words):
        CsvPositionLog(p)


def test_missing_csv_names_the_key(tmp_path):
    cfg = load_config(None, [f"position.csv={tmp_path / 'nope.csv'}"])
    with pytest.raises(ConfigError, match="position.csv"):
        build_position(cfg, fps=25.0, live=False)


@pytest.mark.parametrize(
    "override, words",
    [
        ("position.direction=left", "position.direction"),
        ("position.mm_per_px=0", "position.mm_per_px"),
        ("events.confirm_frames=0", "events.confirm_frames"),
        ("events.stay_ratio=1.5", "events.stay_ratio"),
        ("snapshots.max_mb=0", "snapshots.max_mb"),
    ],
)
def test_position_event_snapshot_keys_are_validated(override, words):
    with pytest.raises(ConfigError, match=words):
        load_config(None, [override])


def test_csv_beats_speed_for_the_fields_it_has(tmp_path):
    p = tmp_path / "gnss.csv"
    p.write_text("frame,lat,lon\n0,50.0,8.0\n100,50.1,8.1\n")
    cfg = load_config(None, [f"position.csv={p}", "position.speed_mps=1.0", "position.start_chainage_m=5"])
    res = build_position(cfg, fps=10.0, live=False)
    pos = res(_frame(10))
    assert pos.chainage_m == pytest.approx(6.0)  # from the speed: the log has none
    assert pos.lat == pytest.approx(50.01) and pos.lon == pytest.approx(8.01)


@pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed (scripts/setup.sh installs it)")
def test_live_mqtt_feed_gives_fresh_fixes_extrapolated_by_speed(tmp_path):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    with MosquittoBroker(tmp_path / "broker") as b:
        cfg = load_config(None, [f"mqtt.port={b.port}", "device.id=train7", "position.mqtt_topic=odometry/train7",
                                 "position.max_age_s=2.0"])
        res = build_position(cfg, fps=25.0, live=True)
        assert res is not None and isinstance(res.providers[0], MqttPositionFeed)
        feed = res.providers[0]
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="odo-test")
        pub.connect(b.host, b.port)
        pub.loop_start()
        try:
            now = time.time()
            assert res(_frame(0, t_wall=now)) is None  # nothing heard yet
            deadline = time.monotonic() + 10
            while feed.received == 0 and time.monotonic() < deadline:
                pub.publish("odometry/train7", json.dumps({"chainage_m": 1200.0, "lat": 52.1, "lon": 5.1, "t": now, "speed_mps": 20.0}))
                time.sleep(0.2)
            assert feed.received >= 1
            pos = res(_frame(1, t_wall=now + 0.5))
            assert pos.chainage_m == pytest.approx(1210.0) and pos.lat == pytest.approx(52.1)
            assert res(_frame(2, t_wall=now + 5.0)) is None  # older than max_age_s
            pub.publish("odometry/train7", b"not json").wait_for_publish(5)
            deadline = time.monotonic() + 5
            while feed.rejected == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert feed.rejected == 1  # a bad fix is logged and ignored, the last good one stays
            assert res(_frame(3, t_wall=now + 1.0)).chainage_m == pytest.approx(1220.0)
        finally:
            pub.loop_stop()
            pub.disconnect()
            res.close()
