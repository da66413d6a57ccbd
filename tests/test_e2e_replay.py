"""End to end through the CLI: replay publishes to a real Mosquitto; events survive broker
outages and a SIGKILL of the replaying process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from broker import MessageCollector, MosquittoBroker
from conftest import RAILEDGE, SMALL_MODEL
from railedge.schemas import load_schema


def _replay_cmd(model: Path, source: Path, broker: MosquittoBroker, state: Path, events: Path, *extra: str) -> list[str]:
    # SMALL_MODEL turns MQTT off; later --set overrides win, so it goes first.
    return RAILEDGE + [
        "replay", "--model", str(model), str(source), "--events-out", str(events), *SMALL_MODEL,
        "--set", "mqtt.enabled=true", "--set", f"mqtt.port={broker.port}", "--set", f"state_dir={state}",
        "--set", "device.id=e2e", "--set", "mqtt.flush_timeout_s=20", "--set", "mqtt.reconnect_max_s=1",
        *extra,
    ]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _keys(events: list[dict]) -> list[tuple]:
    return [(e["id"], e["type"], e["frame_index"]) for e in events]


def _dedup(events: list[dict]) -> list[dict]:
    seen, out = set(), []
    for e in events:
        k = (e["id"], e["type"], e["frame_index"])
        if k not in seen:
            seen.add(k)
            out.append(e)
    return out


def test_replay_cli_summary_frames_and_events(small_model, footage, tmp_path):
    events, frames = tmp_path / "e.jsonl", tmp_path / "f.jsonl"
    r = subprocess.run(RAILEDGE + ["replay", "--model", str(small_model), str(footage / "track.mp4"), "--json",
                                   "--events-out", str(events), "--frames-out", str(frames)] + SMALL_MODEL,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["frames"] == 120 and s["fps"] > 0
    assert {"decode", "roi", "preprocess", "inference", "scoring", "events", "total"} <= set(s["latency_ms"])
    assert all({"p50", "p95", "p99"} == set(v) for v in s["latency_ms"].values())
    recs = _jsonl(frames)
    assert [r["frame_index"] for r in recs] == list(range(120))
    assert all({"source", "frame_index", "score", "boxes", "latency_ms"} <= set(r) for r in recs)
    assert any(r["boxes"] for r in recs), "synthetic defects produced no boxes"
    evs = _jsonl(events)
    assert len(evs) == s["events"] > 0
    schema = load_schema("event")
    for e in evs:
        jsonschema.validate(e, schema)
    # every chain opens with new and closes with end
    for i in {e["id"] for e in evs}:
        kinds = [e["type"] for e in evs if e["id"] == i]
        assert kinds[0] == "new" and kinds[-1] == "end" and kinds.count("new") == 1


def test_replay_publishes_what_it_writes(small_model, footage, tmp_path):
    with MosquittoBroker(tmp_path / "broker") as broker, \
            MessageCollector(broker, "railedge/e2e/#", client_id="cr-1", persistent=True) as sub:
        events = tmp_path / "e.jsonl"
        r = subprocess.run(_replay_cmd(small_model, footage / "track.mp4", broker, tmp_path / "state", events),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        written = _jsonl(events)
        assert written
        assert sub.wait_for(lambda c: len(_dedup(c.json("/events"))) >= len(written), timeout=20)
        assert _keys(_dedup(sub.json("/events"))) == _keys(written)
        statuses = [json.loads(p) for t, p, _ in sub.messages if t.endswith("/status")]
        assert statuses[0]["state"] == "online" and statuses[-1]["state"] == "offline"


def test_broker_outage_mid_replay_loses_nothing(small_model, footage, tmp_path):
    """The broker is down for about 10 s in the middle of a real-time replay."""
    with MosquittoBroker(tmp_path / "broker") as broker, \
            MessageCollector(broker, "railedge/e2e/events", client_id="cr-2", persistent=True) as sub:
        events = tmp_path / "e.jsonl"
        cmd = _replay_cmd(small_model, footage / "track.mp4", broker, tmp_path / "state", events,
                          "--pace", "realtime", "--set", "source.loop=true", "--max-frames", "500")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(4.0)
        before = len(_jsonl(events)) if events.exists() else 0
        broker.stop()
        time.sleep(10.0)
        during = len(_jsonl(events))
        broker.start()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        written = _jsonl(events)
        assert during > before, "no events were produced while the broker was down: the test proves nothing"
        assert sub.wait_for(lambda c: len(_dedup(c.json("/events"))) >= len(written), timeout=30), broker.log_tail()
        assert _keys(_dedup(sub.json("/events"))) == _keys(written)


def test_sigkill_mid_replay_then_restart_delivers_everything(small_model, footage, tmp_path):
    """Events accepted before a SIGKILL are delivered by the next run on the same state dir."""
    state = tmp_path / "state"
    with MosquittoBroker(tmp_path / "broker") as broker, \
            MessageCollector(broker, "railedge/e2e/#", client_id="cr-3", persistent=True) as sub:
        events = tmp_path / "e1.jsonl"
        proc = subprocess.Popen(_replay_cmd(small_model, footage / "track.mp4", broker, state, events,
                                            "--pace", "realtime", "--set", "source.loop=true", "--max-frames", "400"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert sub.wait_for(lambda c: any(json.loads(p).get("state") == "online"
                                          for t, p, _ in c.messages if t.endswith("/status")), timeout=60)
        broker.pause()  # the broker hangs: what is published from now on is never acknowledged
        n0 = len(_jsonl(events)) if events.exists() else 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_jsonl(events)) < n0 + 3:
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        broker.resume()
        killed_run = _jsonl(events)
        assert len(killed_run) >= 3
        # The retained status turns offline: the broker publishes the will of the dead client.
        assert sub.wait_for(lambda c: any(json.loads(p).get("state") == "offline"
                                          for t, p, _ in c.messages if t.endswith("/status")), timeout=30)
        # restart on the same state dir with a short, different footage run
        events2 = tmp_path / "e2.jsonl"
        r = subprocess.run(_replay_cmd(small_model, footage / "track.mp4", broker, state, events2, "--max-frames", "30"),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        want = _keys(killed_run)
        got_ok = sub.wait_for(lambda c: set(want) <= set(_keys(c.json("/events"))), timeout=30)
        assert got_ok, f"missing after restart: {set(want) - set(_keys(sub.json('/events')))}"
        got = [k for k in _keys(_dedup(sub.json("/events"))) if k in set(want)]
        assert got == want, "order of the recovered events changed"
        states = [json.loads(p)["state"] for t, p, _ in sub.messages if t.endswith("/status")]
        assert "online" in states[states.index("offline"):]
