"""`railedge run` end to end: a looped video file as the camera, a real NOTIFY_SOCKET made by the
test, a private Mosquitto; plus the notify protocol, the health debounce and the systemd unit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from railedge.daemon import DEGRADED, ONLINE, STARTING, FrameHealth
from railedge.sdnotify import SdNotifier, notify_address, watchdog_interval_s
from railedge.stats import RateMeter, rss_bytes, rss_mb
from conftest import RAILEDGE, ROOT

sys.path.insert(0, str(Path(__file__).parent))
from broker import MessageCollector, MosquittoBroker, have_mosquitto  # noqa: E402

needs_broker = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed (scripts/setup.sh installs it)")


# ---- helpers --------------------------------------------------------------------------------

class NotifyListener:
    """The systemd side of sd_notify: a unix datagram socket that records every message."""

    def __init__(self, address: str) -> None:
        self.env_value = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(notify_address(address))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            t = time.monotonic()
            for line in data.decode().split("\n"):
                self.messages.append((t, line))

    def times(self, line: str) -> list[float]:
        return [t for t, m in list(self.messages) if m == line]

    def lines(self, prefix: str) -> list[str]:
        return [m for _, m in list(self.messages) if m.startswith(prefix)]

    def wait(self, pred, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._stop.set()
        self._t.join(1)
        self.sock.close()


class Run:
    """`railedge run` as a subprocess with NOTIFY_SOCKET and WATCHDOG_USEC, logs to a file."""

    def __init__(self, tmp: Path, notify: NotifyListener, sets: list[str], config: Path | None = None) -> None:
        self.tmp = tmp
        self.log_path = tmp / "daemon.log"
        self.events_path = tmp / "events.jsonl"
        env = dict(os.environ, NOTIFY_SOCKET=notify.env_value, WATCHDOG_USEC="1000000", PYTHONUNBUFFERED="1")
        env.pop("WATCHDOG_PID", None)
        cmd = RAILEDGE + ["run", "--events-out", str(self.events_path)]
        if config is not None:
            cmd += ["--config", str(config)]
        for s in sets:
            cmd += ["--set", s]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=tmp)

    def log_records(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return out

    def events(self) -> list[dict]:
        if not self.events_path.exists():
            return []
        return [json.loads(line) for line in self.events_path.read_text().splitlines() if line.strip()]

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def common_sets(model: Path, uri: str, broker: MosquittoBroker, tmp: Path, device: str) -> list[str]:
    return [
        f"model.path={model}",
        f"source.uri={uri}",
        f"device.id={device}",
        f"state_dir={tmp / 'state'}",
        f"mqtt.port={broker.port}",
        "mqtt.stats_interval_s=1",
        "mqtt.flush_timeout_s=10",
        "source.watchdog_s=1",
        "daemon.recover_s=1",
        "daemon.reopen_max_s=0.5",
        "log.format=json",
    ]


@pytest.fixture
def notify():
    # a short path: unix socket paths are limited to 107 bytes
    d = Path(tempfile.mkdtemp(prefix="rn"))
    n = NotifyListener(str(d / "notify"))
    yield n
    n.close()
    shutil.rmtree(d, ignore_errors=True)


def statuses(col: MessageCollector) -> list[dict]:
    return col.json("/status")


def event_keys(events: list[dict]) -> set[tuple]:
    return {(e["id"], e["type"], e["frame_index"]) for e in events}


def wait_for(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


# ---- end to end -----------------------------------------------------------------------------

@needs_broker
def test_run_ready_watchdog_stopping_and_no_event_lost(small_model, footage, tmp_path, notify):
    """READY=1 after the first frame, WATCHDOG=1 while frames flow, STOPPING=1 and exit 0 on
    SIGTERM; every event the daemon produced reaches the broker; stats and status are valid."""
    jsonschema = pytest.importorskip("jsonschema")
    from railedge.schemas import load_schema

    dev = "dev-life"
    with MosquittoBroker(tmp_path / "broker") as broker, MessageCollector(broker, f"railedge/{dev}/#") as col:
        run = Run(tmp_path, notify, common_sets(small_model, f"file://{footage / 'track.mp4'}", broker, tmp_path, dev))
        try:
            assert notify.wait(lambda: notify.times("READY=1"), 60), run.tail()
            t_ready = notify.times("READY=1")[0]
            assert notify.wait(lambda: len([t for t in notify.times("WATCHDOG=1") if t > t_ready]) >= 3, 15), run.tail()
            # the looped footage holds a defect: wait for its events on the broker, and for stats
            assert col.wait_for(lambda c: any(e["type"] == "new" for e in c.json("/events")), 30), run.tail()
            assert col.wait_for(lambda c: any(s["frames_processed"] > 0 for s in c.json("/stats")), 10), run.tail()
            assert col.wait_for(lambda c: any(s["state"] == "online" for s in statuses(c)), 10)
        finally:
            rc = run.stop()
        assert rc == 0, run.tail()
        assert notify.lines("STOPPING=1"), notify.messages[-10:]
        assert notify.times("STOPPING=1")[0] > notify.times("WATCHDOG=1")[0]
        assert any(m.startswith("STATUS=online") for m in notify.lines("STATUS=")), notify.lines("STATUS=")
        produced = run.events()
        assert produced, "the daemon produced no events"
        # no event lost: every event written to the JSON-lines sink was delivered (at least once)
        assert col.wait_for(lambda c: event_keys(produced) <= event_keys(c.json("/events")), 10), (
            event_keys(produced) - event_keys(col.json("/events")))
        for s in col.json("/stats"):
            jsonschema.validate(s, load_schema("stats"))
        for s in statuses(col):
            jsonschema.validate(s, load_schema("status"))
        last = col.json("/stats")[-1]
        for stage in ("capture", "queue_wait", "preprocess", "inference", "scoring", "publish", "total"):
            assert set(last["latency_ms"][stage]) >= {"p50", "p95", "p99"}, last["latency_ms"].keys()
        assert last["rss_mb"] > 0 and last["uptime_s"] > 0 and last["inference_ms"]["snn"]["p50"] > 0
        assert statuses(col)[-1]["state"] == "offline" and statuses(col)[-1]["reason"] == "shutdown"
        stopped = [r for r in run.log_records() if r.get("event") == "stopped"]
        assert stopped and stopped[0]["outbox_left"] == 0


@needs_broker
def test_camera_vanishes_degraded_watchdog_stops_then_online(small_model, footage, tmp_path, notify):
    """The camera file is renamed away: status 'degraded' once, WATCHDOG=1 stops, the daemon
    keeps running; renamed back: 'online' again and WATCHDOG=1 resumes."""
    video = tmp_path / "camera.mp4"
    shutil.copy(footage / "track.mp4", video)
    dev = "dev-flaky"
    with MosquittoBroker(tmp_path / "broker") as broker, MessageCollector(broker, f"railedge/{dev}/#") as col:
        sets = common_sets(small_model, f"file://{video}", broker, tmp_path, dev) + ["source.fps=60"]
        run = Run(tmp_path, notify, sets)
        try:
            assert notify.wait(lambda: notify.times("READY=1"), 60), run.tail()
            assert col.wait_for(lambda c: any(s["state"] == "online" for s in statuses(c)), 15), run.tail()
            video.rename(tmp_path / "gone.mp4")
            assert col.wait_for(lambda c: statuses(c)[-1]["state"] == "degraded", 20), run.tail()
            degraded = statuses(col)[-1]
            assert "camera" in degraded["reason"] and "reopening" in degraded["reason"]
            assert notify.wait(lambda: any(m.startswith("STATUS=degraded") for m in notify.lines("STATUS=")), 5)
            time.sleep(0.5)  # a ping already on its way may land
            pings = len(notify.times("WATCHDOG=1"))
            time.sleep(2.5)  # 5 watchdog intervals (WATCHDOG_USEC=1 s, pings every 0.5 s when healthy)
            assert len(notify.times("WATCHDOG=1")) == pings, "WATCHDOG=1 continued although no frame flowed"
            assert run.proc.poll() is None, run.tail()
            (tmp_path / "gone.mp4").rename(video)
            assert col.wait_for(lambda c: statuses(c)[-1]["state"] == "online", 20), run.tail()
            assert notify.wait(lambda: len(notify.times("WATCHDOG=1")) > pings, 5)
            assert col.wait_for(lambda c: c.json("/stats")[-1]["degraded_episodes"] >= 1, 5)
        finally:
            rc = run.stop()
        assert rc == 0, run.tail()
        states = [s["state"] for s in statuses(col)]
        # starting (degraded), online, degraded, online, offline. (The debounce itself is tested in
        # test_frame_health_is_debounced; a starved CI machine may add a genuine episode here.)
        assert states[0] == "degraded" and states[-2:] == ["online", "offline"] and states.count("degraded") >= 2, states
        stats = col.json("/stats")[-1]
        assert stats["camera"]["open_failures"] >= 1 and stats["camera"]["reopens"] >= 1
        assert stats["degraded_episodes"] >= 1


@needs_broker
def test_live_drops_and_reports_compare_and_sighup_reload(small_model, footage, tmp_path, notify):
    """A camera faster than inference: frames are dropped and reported. The comparison model runs
    on every 3rd frame. SIGHUP reloads threshold and MQTT settings without losing queued events."""
    dev = "dev-fast"
    with MosquittoBroker(tmp_path / "broker") as broker, MessageCollector(broker, f"railedge/{dev}/#") as col:
        config = tmp_path / "railedge.yaml"
        config.write_text("scoring:\n  threshold: null\nmqtt:\n  keepalive_s: 30\n")
        sets = common_sets(small_model, f"file://{footage / 'track.mp4'}", broker, tmp_path, dev) + [
            "source.fps=1000", f"compare.model_path={small_model}", "compare.every_n=3", "daemon.queue_size=4",
        ]
        run = Run(tmp_path, notify, sets, config=config)
        try:
            assert notify.wait(lambda: notify.times("READY=1"), 60), run.tail()
            assert col.wait_for(lambda c: any(s["frames_skipped"] > 0 and s["fps_skipped"] > 0 for s in c.json("/stats")), 20), run.tail()
            s = [s for s in col.json("/stats") if s["fps_skipped"] > 0][-1]
            assert s["fps_in"] > s["fps_processed"] > 0 and s["live"] is True
            assert s["frames_in"] >= s["frames_processed"] + s["frames_skipped"]
            assert col.wait_for(lambda c: (c.json("/stats")[-1].get("compare") or {}).get("frames", 0) > 0, 10)
            cmp = col.json("/stats")[-1]["compare"]
            primary, other = cmp["backbones"]["snn"], cmp["backbones"]["snn_compare"]
            assert primary["role"] == "primary" and other["role"] == "compare"
            # the same model on the same crops: the same scores and decisions
            assert other["score_last"] == pytest.approx(primary["score_last"], rel=1e-4) and cmp["agreement"] == 1.0
            assert set(col.json("/stats")[-1]["inference_ms"]) == {"snn", "snn_compare"}

            # threshold, MQTT settings (a new publisher) and a source setting (the camera is reopened)
            config.write_text("scoring:\n  threshold: 123.5\nmqtt:\n  keepalive_s: 45\nsource:\n  width: 640\n")
            run.proc.send_signal(signal.SIGHUP)
            assert wait_for(lambda: any(r.get("event") == "config_reloaded" for r in run.log_records()), 20), run.tail()
            assert notify.lines("RELOADING=1")
            assert col.wait_for(lambda c: c.json("/stats")[-1]["threshold"] == 123.5, 10), run.tail()
            rec = [r for r in run.log_records() if r.get("event") == "config_reloaded"][0]
            assert {"scoring", "mqtt", "source"} <= set(rec["changed"]) and rec["reloads"] == 1
            assert col.json("/stats")[-1]["reloads"] == 1
            # a broken config is refused; the service carries on
            config.write_text("scoring: [not, a, mapping\n")
            run.proc.send_signal(signal.SIGHUP)
            assert wait_for(lambda: any(r.get("event") == "reload_rejected" for r in run.log_records()), 20), run.tail()
            n = len(notify.times("WATCHDOG=1"))
            assert notify.wait(lambda: len(notify.times("WATCHDOG=1")) > n, 5)
        finally:
            rc = run.stop()
        assert rc == 0, run.tail()
        produced = run.events()
        assert col.wait_for(lambda c: event_keys(produced) <= event_keys(c.json("/events")), 10)
        # the MQTT reload kept the broker: the new publisher took over without an 'offline' flicker
        assert col.wait_for(lambda c: statuses(c) and statuses(c)[-1]["state"] == "offline", 10)
        assert [x["state"] for x in statuses(col)].count("offline") == 1, [x["state"] for x in statuses(col)]


@needs_broker
def test_broker_absent_then_restarted_daemon_keeps_running(small_model, footage, tmp_path, notify):
    """No broker at start: the daemon still becomes ready and pings the watchdog, events wait in
    the outbox; the broker appears, and later restarts: everything produced is delivered."""
    dev = "dev-nobroker"
    broker = MosquittoBroker(tmp_path / "broker")
    # a control-room subscriber with a persistent session, made before the broker goes away: it
    # gets everything the broker accepts later, whenever it reconnects itself
    broker.start()
    col = MessageCollector(broker, f"railedge/{dev}/#", client_id=f"ctl-{dev}", persistent=True).start()
    broker.stop()
    try:
        sets = common_sets(small_model, f"file://{footage / 'track.mp4'}", broker, tmp_path, dev) + ["mqtt.reconnect_max_s=0.5"]
        run = Run(tmp_path, notify, sets)
        try:
            assert notify.wait(lambda: notify.times("READY=1"), 60), run.tail()
            t_ready = notify.times("READY=1")[0]
            assert notify.wait(lambda: len([t for t in notify.times("WATCHDOG=1") if t > t_ready]) >= 2, 10), run.tail()
            assert wait_for(lambda: len(run.events()) >= 1, 30), run.tail()
            assert notify.wait(lambda: any("(broker down)" in m for m in notify.lines("STATUS=")), 10), notify.lines("STATUS=")
            broker.start()
            assert col.wait_for(lambda c: any(s["state"] == "online" for s in statuses(c)), 15), run.tail()
            assert col.wait_for(lambda c: event_keys(run.events()[:1]) <= event_keys(c.json("/events")), 15), run.tail()
            broker.restart(down_s=1.0)
            n_stats = len(col.json("/stats"))
            assert col.wait_for(lambda c: len(c.json("/stats")) > n_stats + 1, 20), run.tail()
            assert run.proc.poll() is None
        finally:
            rc = run.stop()
        assert rc == 0, run.tail()
        produced = run.events()
        assert col.wait_for(lambda c: event_keys(produced) <= event_keys(c.json("/events")), 15), (
            event_keys(produced) - event_keys(col.json("/events")))
    finally:
        col.stop()
        broker.stop()


def test_replay_never_drops(small_model, footage, tmp_path):
    # recorded footage blocks capture instead of dropping: every frame index arrives, in order
    frames_out = tmp_path / "frames.jsonl"
    r = subprocess.run(RAILEDGE + ["replay", str(footage / "track.mp4"), "--model", str(small_model), "--json",
                                   "--max-frames", "24", "--frames-out", str(frames_out), "--set", "mqtt.enabled=false"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["frames"] == 24
    assert [json.loads(x)["frame_index"] for x in frames_out.read_text().splitlines()] == list(range(24))


def test_run_refuses_image_folder_and_missing_model(small_model, footage, tmp_path):
    r = subprocess.run(RAILEDGE + ["run", "--set", f"model.path={small_model}", "--set", f"source.uri={footage / 'normal'}",
                                   "--set", "mqtt.enabled=false"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "image folder" in r.stderr and "replay" in r.stderr
    r = subprocess.run(RAILEDGE + ["run", "--set", f"model.path={tmp_path / 'nope'}", "--set", "mqtt.enabled=false"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "does not exist" in r.stderr


# ---- units ----------------------------------------------------------------------------------

def test_sd_notify_abstract_socket_and_watchdog_env():
    name = f"@railedge-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifyListener(name)
    try:
        n = SdNotifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "3000000"})
        assert n.enabled and n.watchdog_s == 3.0
        assert n.ready("online: line one\nline two") and n.watchdog() and n.stopping()
        assert listener.wait(lambda: len(listener.messages) >= 4, 5)
        msgs = [m for _, m in listener.messages]
        assert msgs[:4] == ["READY=1", "STATUS=online: line one line two", "WATCHDOG=1", "STOPPING=1"]
        n.close()
    finally:
        listener.close()
    # outside systemd: a no-op; a watchdog meant for another process is not ours
    quiet = SdNotifier({})
    assert not quiet.enabled and not quiet.ready() and quiet.watchdog_s is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "2"}, pid=2) == 0.5
    assert notify_address("@x") == "\0x" and notify_address("/run/systemd/notify") == "/run/systemd/notify"


def test_frame_health_is_debounced():
    h = FrameHealth(watchdog_s=1.0, recover_s=2.0, now=0.0)
    assert h.state == STARTING and h.update(0.5) is None
    h.frame(0.6)
    assert h.update(0.6) == ONLINE
    assert h.update(1.5) is None  # 0.9 s without a frame: still online
    assert h.update(1.7) == DEGRADED and h.degraded_episodes == 1
    # a flapping camera: short bursts of frames with gaps longer than the watchdog
    for t in (2.0, 2.2, 3.5, 3.6, 5.0):
        h.frame(t)
        assert h.update(t + 0.01) is None
    t = 5.0
    while t < 7.0:  # now frames flow steadily
        t += 0.1
        h.frame(t)
        changed = h.update(t)
        if changed:
            break
    assert changed == ONLINE and t >= 7.0 - 1e-9 and h.degraded_episodes == 1
    assert h.degraded_s(t) == pytest.approx(t - 1.7)


def test_rate_meter_and_rss():
    m = RateMeter()
    assert m.sample({"in": 0, "done": 0}, now=10.0) == {"in": 0.0, "done": 0.0}
    assert m.sample({"in": 250, "done": 240}, now=20.0) == {"in": 25.0, "done": 24.0}
    assert m.sample({"in": 5, "done": 240}, now=30.0)["in"] == 0.0  # a counter reset is not negative
    if sys.platform.startswith("linux"):
        assert rss_bytes() > 10 * 2**20 and rss_mb() > 10


def test_model_reload_empties_the_snntorch_registry():
    snntorch = pytest.importorskip("snntorch")
    from railedge.daemon import _release_model_memory

    before = len(snntorch.SpikingNeuron.instances)
    neurons = [snntorch.Leaky(beta=0.5) for _ in range(3)]
    assert len(snntorch.SpikingNeuron.instances) == before + 3
    del neurons
    _release_model_memory()  # what a reload does after dropping the old model
    assert snntorch.SpikingNeuron.instances == []


def test_systemd_unit_verifies():
    unit = ROOT / "systemd" / "railedge.service"
    text = unit.read_text()
    for needle in ("Type=notify", "WatchdogSec=", "ProtectSystem=strict", "NoNewPrivileges=yes", "StateDirectory=railedge",
                   "DeviceAllow=char-video4linux", "SupplementaryGroups=video", "RestrictAddressFamilies=", "ExecReload="):
        assert needle in text, needle
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart exists: point it at this venv's railedge for the check
    exe = Path(sys.executable).parent / "railedge"
    if not exe.exists():
        pytest.skip("the railedge entry point is not installed in this venv")
    with tempfile.TemporaryDirectory() as d:
        copy = Path(d) / "railedge.service"
        copy.write_text(text.replace("/opt/railedge/venv/bin/railedge", str(exe)))
        r = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (r.stdout + r.stderr).splitlines() if "railedge.service" in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
