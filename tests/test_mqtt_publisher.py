"""MqttPublisher and run_subscriber against real mosquitto brokers on free loopback ports:
outages, SIGKILL and restarts lose nothing and keep order; TLS, passwords, will, schemas."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest

from broker import MessageCollector, MosquittoBroker, have_mosquitto, make_tls_files, sample_event, unique_event_ids
from railedge.config import MqttConfig, OutboxConfig, TlsConfig
from railedge.errors import ConfigError
from railedge.schemas import load_schema
from railedge.sinks import EventSink
from railedge.sinks.mqtt import MqttPublisher
from railedge.subscribe import run_subscriber

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")

TESTS_DIR = Path(__file__).resolve().parent
INFO = {"model": "models/default", "backbone": "snn"}


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema(name))


def cfg_for(broker: MosquittoBroker, **kw) -> MqttConfig:
    kw.setdefault("reconnect_max_s", 0.5)
    return MqttConfig(host=broker.host, port=broker.port, **kw)


def wait_until(pred, timeout: float, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


@pytest.fixture
def broker(tmp_path: Path):
    b = MosquittoBroker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_publishes_all_kinds_with_valid_schemas(broker: MosquittoBroker, tmp_path: Path, protocol: str) -> None:
    with MessageCollector(broker, [("railedge/#", 1)]) as col:
        pub = MqttPublisher(cfg_for(broker, protocol=protocol), "dev1", tmp_path / "state", INFO)
        assert isinstance(pub, EventSink)
        pub.start()
        assert pub.wait_connected(5)
        ev = sample_event(0)
        del ev["schema"], ev["device"]  # added by the publisher
        pub.publish_event(ev)
        pub.emit(sample_event(1, position=None, **{"class": None, "class_score": None}))
        stats = {
            "fps_in": 25.0, "fps_processed": 24.5, "frames_skipped": 3,
            "latency_ms": {"infer": {"p50": 8.0, "p95": 9.5, "p99": 12.0}, "total": {"p50": 11, "p95": 14, "p99": 20}},
            "inference_ms": {"snn": {"p50": 8.0, "p95": 9.5, "p99": 12.0}}, "uptime_s": 12.5, "rss_mb": 210.0,
        }
        assert pub.publish_stats(stats) is True
        pub.publish_snapshot("ev-000000", b"\xff\xd8\xff\xe0fakejpeg")
        assert col.wait_for(lambda c: len(c.payloads("/status")) == 1, 5)
        pub.set_status("degraded", reason="camera lost")
        assert col.wait_for(lambda c: len(c.payloads("/events")) == 2 and len(c.payloads("/stats")) == 1
                            and any(b'"degraded"' in p for p in c.payloads("/status")), 10)
        assert pub.wait_drained(5)
        pub.close(5)
        assert col.wait_for(lambda c: b'"offline"' in c.payloads("/status")[-1], 5)

    events = col.json("/events")
    for e in events:
        validator("event").validate(e)
    assert [e["id"] for e in events] == ["ev-000000", "ev-000001"]
    assert events[0]["schema"] == "railedge.event/1" and events[0]["device"] == "dev1"
    st = col.json("/stats")[0]
    validator("stats").validate(st)
    assert st["outbox_depth"] >= 0 and st["device"] == "dev1"
    statuses = col.json("/status")
    for s in statuses:
        validator("status").validate(s)
    assert [s["state"] for s in statuses] == ["online", "degraded", "offline"]
    assert statuses[0]["model"] == "models/default" and statuses[0]["backbone"] == "snn"
    assert statuses[1]["reason"] == "camera lost" and statuses[2]["reason"] == "shutdown"
    snaps = [(t, p) for t, p, _ in col.messages if "/snapshot/" in t]
    assert snaps == [("railedge/dev1/snapshot/ev-000000", b"\xff\xd8\xff\xe0fakejpeg")]
    # the status is retained: a late subscriber sees the last one at once
    with MessageCollector(broker, [("railedge/dev1/status", 1)]) as late:
        assert late.wait_for(lambda c: len(c.messages) == 1, 5)
        assert late.messages[0][2] is True and json.loads(late.messages[0][1])["state"] == "offline"
    c = pub.counters()
    assert c["acked"] == 3 and c["outbox_depth"] == 0 and c["connects"] == 1


def test_handover_close_leaves_no_offline_status(broker: MosquittoBroker, tmp_path: Path) -> None:
    """A config reload replaces the publisher on the same broker: the old one leaves without an
    'offline' (subscribers would see the device flicker), the next one announces itself."""
    with MessageCollector(broker, [("railedge/dev1/status", 1)]) as col:
        a = MqttPublisher(cfg_for(broker), "dev1", tmp_path / "state", INFO)
        a.start()
        assert a.wait_connected(5)
        a.publish_event(sample_event(0))
        a.close(2, handover=True)
        b = MqttPublisher(cfg_for(broker), "dev1", tmp_path / "state", INFO)
        b.start()
        assert b.wait_connected(5) and b.wait_drained(5)
        # connected is set at CONNACK, the 'online' goes out on the next loop turn: a close in
        # between says only the final 'offline' (right for subscribers, but not what is tested here)
        assert col.wait_for(lambda c: len(c.json("/status")) == 2, 5), col.json("/status")
        b.close(2)
        assert col.wait_for(lambda c: c.json("/status") and c.json("/status")[-1]["state"] == "offline", 5)
    assert [s["state"] for s in col.json("/status")] == ["online", "online", "offline"]
    assert a.counters()["acked"] + b.counters()["acked"] >= 1


def test_broker_outage_loses_nothing_and_keeps_order(tmp_path: Path) -> None:
    """The broker stops for ~10 s in the middle of a stream; a persistent-session subscriber
    (run_subscriber) still gets every event, once, in order."""
    broker = MosquittoBroker(tmp_path / "broker").start()
    log = tmp_path / "events.jsonl"
    ready = threading.Event()
    result: dict = {}
    n = 240
    out = io.StringIO()

    def subscriber() -> None:
        result["count"] = run_subscriber(
            broker.host, broker.port, "railedge", "dev1", as_json=False, log_path=log, log_format="jsonl",
            client_id="control-room-1", reconnect_max_s=1.0, stop_after=n, timeout_s=60, out=out, err=io.StringIO(), ready=ready,
        )

    th = threading.Thread(target=subscriber)
    th.start()
    pub = None
    try:
        assert ready.wait(10)
        pub = MqttPublisher(cfg_for(broker, max_inflight=16), "dev1", tmp_path / "state", INFO)
        pub.start()
        assert pub.wait_connected(5)
        for i in range(n):
            if i == 60:
                broker.stop()  # graceful stop: mosquitto saves sessions and queued messages
                t_down = time.monotonic()
            if i == 200:
                assert pub.depth() >= 140 and not pub.connected
                time.sleep(max(0.0, 10.0 - (time.monotonic() - t_down)))
                broker.start()
            pub.publish_event(sample_event(i))
            time.sleep(0.02 if 60 <= i < 200 else 0.005)
        assert pub.wait_drained(20), pub.counters()
        th.join(40)
        assert not th.is_alive()
        c = pub.counters()
        assert c["connects"] >= 2 and c["connect_failures"] >= 1
        pub.close(2)
    finally:
        if pub is not None:
            pub.close(0)
        broker.stop()
    ids = [json.loads(line)["id"] for line in log.read_text().splitlines()]
    assert ids == [f"ev-{i:06d}" for i in range(n)]
    assert result["count"] == n
    assert "DEFECT NEW" in out.getvalue() and "STATUS ONLINE" in out.getvalue()


_CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from broker import sample_event
from railedge.config import MqttConfig
from railedge.sinks.mqtt import MqttPublisher
from railedge.logs import setup_logging
setup_logging("info", "json")  # logs to stderr
port, state, start, n, delay = int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
pub = MqttPublisher(MqttConfig(port=port, reconnect_max_s=0.5, max_inflight=64), "dev1", state, {"model": "m", "backbone": "snn"})
print("resume", pub.depth(), flush=True)
pub.start()
for i in range(start, n):
    pub.publish_event(sample_event(i))
    print("put", i, flush=True)
    if delay:
        time.sleep(delay)
print("drained", pub.wait_drained(30), flush=True)
pub.close(5)
print("done", flush=True)
"""


def _child(broker: MosquittoBroker, state: Path, start: int, n: int, delay: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(TESTS_DIR), str(broker.port), str(state), str(start), str(n), str(delay)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_sigkill_then_restart_delivers_everything(broker: MosquittoBroker, tmp_path: Path) -> None:
    n = 400
    state = tmp_path / "state"
    with MessageCollector(broker, [("railedge/dev1/#", 1)]) as col:
        a = _child(broker, state, 0, n, 0.001)
        last_put = -1
        assert a.stdout is not None
        try:
            for line in a.stdout:
                if line.startswith("put "):
                    last_put = int(line.split()[1])
                    if last_put == 100:
                        broker.pause()  # from here on nothing is acknowledged
                    if last_put >= 150:
                        a.send_signal(signal.SIGKILL)
                        break
            rest = a.stdout.read()
            a.wait(10)
        finally:
            broker.resume()
        assert a.returncode == -signal.SIGKILL
        for line in rest.splitlines():
            if line.startswith("put "):
                last_put = int(line.split()[1])
        # the broker publishes the retained last will when the killed process's socket closes
        assert col.wait_for(lambda c: c.json("/status") and c.json("/status")[-1]["state"] == "offline", 5)
        will = col.json("/status")[-1]
        assert will.get("will") is True and will["reason"] == "connection lost"
        validator("status").validate(will)

        b = _child(broker, state, last_put + 1, n, 0.0)
        out, err = b.communicate(timeout=60)
        assert b.returncode == 0, err
        resumed = int(next(ln for ln in out.splitlines() if ln.startswith("resume ")).split()[1])
        assert "drained True" in out
        assert resumed >= 40  # the killed process left at least the rows put while the broker was frozen
        assert col.wait_for(lambda c: len(unique_event_ids(c.json("/events"))) >= n, 10)
        states = [s["state"] for s in col.json("/status")]
    assert unique_event_ids(col.json("/events")) == [f"ev-{i:06d}" for i in range(n)]
    assert states[:2] == ["online", "offline"] and states[-2:] == ["online", "offline"]
    # with 'resume' > 0 the restarted process re-sent rows the killed one left unacknowledged
    print(f"killed after put {last_put}; restarted process found {resumed} unacknowledged rows")


def test_restart_on_same_state_dir_resends_in_order(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")  # not started: no broker at first
    state = tmp_path / "state"
    pub = MqttPublisher(cfg_for(broker), "dev1", state, INFO)
    pub.start()
    for i in range(50):
        pub.publish_event(sample_event(i))
    time.sleep(0.3)
    assert pub.depth() == 50 and not pub.connected
    assert pub.counters()["connect_failures"] >= 1
    assert "unreachable" in (pub.counters()["last_error"] or "")
    pub.close(1)
    broker.start()
    try:
        with MessageCollector(broker, [("railedge/dev1/events", 1)]) as col:
            pub2 = MqttPublisher(cfg_for(broker), "dev1", state, INFO)
            assert pub2.depth() == 50
            pub2.start()
            for i in range(50, 60):
                pub2.publish_event(sample_event(i))
            assert pub2.wait_drained(10)
            assert col.wait_for(lambda c: len(c.payloads()) >= 60, 5)
            pub2.close(2)
        assert [e["id"] for e in col.json()] == [f"ev-{i:06d}" for i in range(60)]
    finally:
        broker.stop()


def test_stats_are_dropped_while_offline(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    pub = MqttPublisher(cfg_for(broker), "dev1", tmp_path / "state", INFO)
    pub.start()
    assert pub.publish_stats({"fps_in": 1.0}) is False
    assert pub.counters()["stats_dropped"] == 1 and pub.depth() == 0
    pub.close(0)


def test_wrong_password_keeps_events_until_fixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = MosquittoBroker(tmp_path / "broker", passwords={"edge": "right-secret"}).start()
    pw = tmp_path / "mqtt.pw"
    pw.write_text("wrong-secret\n")
    try:
        with MessageCollector(broker, [("railedge/#", 1)], username="edge", password="right-secret") as col:
            pub = MqttPublisher(cfg_for(broker, username="edge", password_file=str(pw)), "dev1", tmp_path / "state", INFO)
            pub.start()
            for i in range(5):
                pub.publish_event(sample_event(i))
            assert wait_until(lambda: pub.counters()["auth_failures"] >= 2, 10)
            c = pub.counters()
            assert c["outbox_depth"] == 5 and not c["connected"]
            msg = c["last_error"]
            assert "refused the credentials" in msg and "mqtt.username" in msg and "mqtt.password_file" in msg
            assert "secret" not in msg
            pw.write_text("right-secret\n")  # the fix is picked up on the next attempt
            assert pub.wait_drained(10)
            assert col.wait_for(lambda col: len(col.payloads("/events")) == 5, 5)
            pub.close(2)
        assert [e["id"] for e in col.json("/events")] == [f"ev-{i:06d}" for i in range(5)]
    finally:
        broker.stop()


def test_tls_client_certificate_and_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tls = make_tls_files(tmp_path / "pki")
    broker = MosquittoBroker(tmp_path / "broker", tls=tls, require_client_cert=True, passwords={"edge": "s3cret"}).start()
    monkeypatch.setenv("RAILEDGE_MQTT_PASSWORD", "s3cret")
    try:
        with MessageCollector(broker, [("railedge/#", 1)], username="edge", password="s3cret", tls=tls) as col:
            tcfg = TlsConfig(enabled=True, ca_file=str(tls.ca), cert_file=str(tls.client_cert), key_file=str(tls.client_key))
            pub = MqttPublisher(cfg_for(broker, username="edge", tls=tcfg), "dev1", tmp_path / "state", INFO)
            pub.start()
            assert pub.wait_connected(10), pub.counters()
            for i in range(3):
                pub.publish_event(sample_event(i))
            assert pub.wait_drained(5)
            assert col.wait_for(lambda c: len(c.payloads("/events")) == 3, 5)
            pub.close(2)
            assert col.wait_for(lambda c: json.loads(c.payloads("/status")[-1])["state"] == "offline", 5)

            # a CA that did not sign the broker's certificate: a clear error, events kept
            other = make_tls_files(tmp_path / "other-pki")
            bad = TlsConfig(enabled=True, ca_file=str(other.ca), cert_file=str(tls.client_cert), key_file=str(tls.client_key))
            pub2 = MqttPublisher(cfg_for(broker, username="edge", tls=bad), "dev2", tmp_path / "state2", INFO)
            pub2.start()
            pub2.publish_event(sample_event(9, device="dev2"))
            assert wait_until(lambda: "certificate was not accepted" in (pub2.counters()["last_error"] or ""), 10)
            assert pub2.depth() == 1
            pub2.close(0)
    finally:
        broker.stop()


def test_bad_tls_paths_are_config_errors(tmp_path: Path) -> None:
    cfg = MqttConfig(tls=TlsConfig(enabled=True, ca_file=str(tmp_path / "missing.crt")))
    with pytest.raises(ConfigError, match="mqtt.tls.ca_file"):
        MqttPublisher(cfg, "dev1", tmp_path / "state", INFO)
    with pytest.raises(ConfigError, match="device.id"):
        MqttPublisher(MqttConfig(), "bad/id", tmp_path / "state", INFO)


def test_outbox_bound_applies_through_publisher(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")  # never started
    pub = MqttPublisher(cfg_for(broker, outbox=OutboxConfig(max_rows=10)), "dev1", tmp_path / "state", INFO)
    for i in range(4):
        pub.publish_snapshot(f"ev-{i}", b"jpeg")
    for i in range(12):
        assert pub.publish_event(sample_event(i)) is not None
    c = pub.counters()
    assert c["outbox_depth"] == 12 and c["outbox_dropped_snapshot"] == 4 and c["events_over_bound"] == 2
    pub.close(0)


def test_subscriber_csv_log_skips_repeats_across_runs(broker: MosquittoBroker, tmp_path: Path) -> None:
    log = tmp_path / "events.csv"
    state = tmp_path / "state"
    pub = MqttPublisher(cfg_for(broker), "dev1", state, INFO)
    pub.start()
    ready = threading.Event()
    got: list[int] = []
    th = threading.Thread(target=lambda: got.append(run_subscriber(
        broker.host, broker.port, device=None, log_path=log, log_format="csv", client_id="ops-1",
        stop_after=3, timeout_s=20, out=io.StringIO(), err=io.StringIO(), ready=ready)))
    th.start()
    assert ready.wait(10)
    for i in range(3):
        pub.publish_event(sample_event(i))
    th.join(20)
    assert got == [3]
    # offline now; a repeat (same id/type/frame) and one new event are queued by the broker
    pub.publish_event(sample_event(1))
    pub.publish_event(sample_event(3))
    assert pub.wait_drained(5)
    out = io.StringIO()
    n = run_subscriber(broker.host, broker.port, device="dev1", as_json=True, log_path=log, log_format="csv",
                       client_id="ops-1", stop_after=1, timeout_s=10, out=out, err=io.StringIO())
    pub.close(1)
    assert n == 1
    lines = log.read_text().splitlines()
    assert lines[0].startswith("received_at,device,id,type")
    assert [ln.split(",")[2] for ln in lines[1:]] == ["ev-000000", "ev-000001", "ev-000002", "ev-000003"]
    printed = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [p["id"] for p in printed if p.get("schema") == "railedge.event/1"] == ["ev-000003"]
