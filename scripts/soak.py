#!/usr/bin/env python3
"""Soak test of `railedge run`: resident memory over many frames, then over many SIGHUP reloads.

    .venv/bin/python scripts/soak.py                         # 20,000 frames, then 100 reloads
    .venv/bin/python scripts/soak.py --frames 2000 --reloads 10 --model models/default
    .venv/bin/python scripts/soak.py --set runtime=eager      # any `railedge run` --set

The daemon runs as a real subprocess (the same command systemd starts) on a video file played as
a camera (source.fps sets the camera rate; the default outruns inference, so live dropping is
exercised too), with a NOTIFY_SOCKET and, when mosquitto is installed, a private broker on a free
port. RSS is read from /proc/<pid>/status; frame counts from the daemon's own "stats" log lines.

Reported: RSS after the warm-up frames and at the end, min/max and the least-squares slope in MB
per 10,000 frames; for the reload phase RSS before the first reload, after the first 10 (allocator
warm-up) and after the last, with the slope in MB per 100 reloads. Each reload rewrites the config
(threshold and mqtt.keepalive_s alternate), so every SIGHUP reloads the model (daemon.reload_model)
and replaces the MQTT publisher: the heaviest reload path."""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


def slope(xs: list[float], ys: list[float]) -> float | None:
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return None if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


class LogTail:
    """Incremental reader of the daemon's JSON log lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.stats: dict | None = None
        self.reloads = 0
        self.rejected = 0
        self.errors: list[str] = []
        self.ready = False

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        self.pos += end + 1
        for line in data[: end + 1].splitlines():
            if not line.startswith(b"{"):
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            ev = rec.get("event")
            if ev == "stats":
                self.stats = rec
            elif ev == "config_reloaded":
                self.reloads += 1
            elif ev == "reload_rejected":
                self.rejected += 1
            elif ev == "ready":
                self.ready = True
            if rec.get("level") == "error" and len(self.errors) < 20:
                self.errors.append(ev)


class Notify:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.counts: dict[str, int] = {}
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            except OSError:
                return
            for line in data.split("\n"):
                key = line.split("=", 1)[0] if not line.startswith("STATUS=") else "STATUS"
                self.counts[key] = self.counts.get(key, 0) + 1

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def start_broker(work: Path) -> tuple[subprocess.Popen | None, int | None]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).is_file():
        return None, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = work / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false", f"log_dest file {work / 'mosquitto.log'}"]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None, None


def write_config(path: Path, i: int) -> None:
    # alternate two values so that every reload changes the threshold and the MQTT settings
    thr = "null" if i % 2 == 0 else "1000.0"
    path.write_text(f"scoring:\n  threshold: {thr}\nmqtt:\n  keepalive_s: {30 + i % 2}\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20000, help="frames through the pipeline (default 20000)")
    ap.add_argument("--warmup", type=int, default=1000, help="frames before the first RSS figure (default 1000)")
    ap.add_argument("--reloads", type=int, default=100, help="SIGHUP reloads after the frames (default 100)")
    ap.add_argument("--fps", type=float, default=400.0, help="camera rate of the looped video (default 400)")
    ap.add_argument("--model", help="a fitted model directory (default: fit a small one on synthetic footage)")
    ap.add_argument("--video", help="the video played as a camera (default: synthetic footage)")
    ap.add_argument("--no-broker", action="store_true", help="run without MQTT even when mosquitto is installed")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra `railedge run --set` overrides")
    ap.add_argument("--json", help="also write the report to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = ap.parse_args()

    py = sys.executable
    work = Path(tempfile.mkdtemp(prefix="railedge-soak-"))
    broker = None
    try:
        video = Path(args.video) if args.video else None
        if video is None:
            from railedge.synth import make_footage

            make_footage(work / "footage", frames=120, seed=3, normal_frames=60)
            video = work / "footage" / "track.mp4"
        model = Path(args.model) if args.model else None
        if model is None:
            model = work / "model"
            r = subprocess.run([py, "-m", "railedge.cli", "fit", "--data", str(work / "footage" / "normal"), "--out", str(model),
                                # small and fast: the soak measures the service, not the model
                                "--set", "model.input_height=128", "--set", "model.input_width=32",
                                "--set", "scoring.bank_size=256", "--set", "mqtt.enabled=false"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                sys.stderr.write(r.stderr[-3000:])
                return 1
        port = None
        if not args.no_broker:
            broker, port = start_broker(work)
        config = work / "config.yaml"
        write_config(config, 0)
        notify = Notify(str(work / "notify"))
        sets = [
            f"model.path={model}", f"source.uri=file://{video.resolve()}", f"source.fps={args.fps}",
            f"state_dir={work / 'state'}", "log.format=json", "mqtt.stats_interval_s=2", "daemon.status_interval_s=2",
            f"mqtt.enabled={'true' if port else 'false'}", f"mqtt.port={port or 1883}", "device.id=soak",
        ] + args.sets
        cmd = [py, "-m", "railedge.cli", "run", "--config", str(config)]
        for s in sets:
            cmd += ["--set", s]
        env = dict(os.environ, NOTIFY_SOCKET=str(work / "notify"), WATCHDOG_USEC="4000000")
        log_path = work / "daemon.log"
        logf = open(log_path, "wb")
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=work)
        tail = LogTail(log_path)
        print(f"soak: pid {proc.pid}, {args.frames} frames at camera rate {args.fps:g} fps, then {args.reloads} reloads; "
              f"broker {'127.0.0.1:%d' % port if port else 'none'}; work {work}", flush=True)

        samples: list[tuple[float, int, float]] = []  # (elapsed s, frames processed, rss MB)
        last_print = 0.0
        while proc.poll() is None:
            time.sleep(1.0)
            tail.poll()
            st = tail.stats
            if st is None:
                continue
            n = int(st["frames_processed"])
            rss = rss_mb(proc.pid)
            if rss is not None and (not samples or samples[-1][1] != n):
                samples.append((time.monotonic() - t0, n, rss))
            if time.monotonic() - last_print > 30:
                last_print = time.monotonic()
                print(f"  {n:>6} frames  {st['fps_processed']:6.1f} fps processed  {st['fps_skipped']:6.1f} skipped/s  "
                      f"rss {rss:.1f} MB", flush=True)
            if n >= args.frames:
                break
        if proc.poll() is not None:
            sys.stderr.write(f"soak: the daemon exited early ({proc.returncode}); log {log_path}\n")
            args.keep = True
            return 1
        final_stats = dict(tail.stats or {})
        post = [(n, r) for _, n, r in samples if n >= args.warmup]
        soak = {
            "frames": final_stats.get("frames_processed"),
            "frames_in": final_stats.get("frames_in"),
            "frames_skipped": final_stats.get("frames_skipped"),
            "seconds": round(time.monotonic() - t0, 1),
            "rss_first_mb": round(post[0][1], 1) if post else None,
            "rss_first_at_frame": post[0][0] if post else None,
            "rss_last_mb": round(post[-1][1], 1) if post else None,
            "rss_last_at_frame": post[-1][0] if post else None,
            "rss_min_mb": round(min(r for _, r in post), 1) if post else None,
            "rss_max_mb": round(max(r for _, r in post), 1) if post else None,
            "rss_slope_mb_per_10k_frames": None,
            "samples": len(post),
            "watchdog_pings": notify.counts.get("WATCHDOG", 0),
        }
        sl = slope([n for n, _ in post], [r for _, r in post])
        if sl is not None:
            soak["rss_slope_mb_per_10k_frames"] = round(sl * 10000, 3)

        reload_rss: list[tuple[int, float]] = [(0, rss_mb(proc.pid) or 0.0)]
        t_reload = time.monotonic()
        for i in range(1, args.reloads + 1):
            write_config(config, i)
            proc.send_signal(signal.SIGHUP)
            end = time.monotonic() + 60
            while tail.reloads + tail.rejected < i and time.monotonic() < end and proc.poll() is None:
                time.sleep(0.05)
                tail.poll()
            if tail.reloads + tail.rejected < i:
                sys.stderr.write(f"soak: reload {i} did not finish; log {log_path}\n")
                args.keep = True
                break
            reload_rss.append((i, rss_mb(proc.pid) or 0.0))
        rel = {
            "reloads": tail.reloads,
            "rejected": tail.rejected,
            "seconds": round(time.monotonic() - t_reload, 1),
            "rss_before_mb": round(reload_rss[0][1], 1),
            "rss_after_10_mb": round(reload_rss[min(10, len(reload_rss) - 1)][1], 1),
            "rss_after_last_mb": round(reload_rss[-1][1], 1),
            "rss_max_mb": round(max(r for _, r in reload_rss), 1),
            "rss_slope_mb_per_100_reloads_after_10": None,
        }
        tail_part = [(i, r) for i, r in reload_rss if i >= 10]
        sl = slope([i for i, _ in tail_part], [r for _, r in tail_part])
        if sl is not None:
            rel["rss_slope_mb_per_100_reloads_after_10"] = round(sl * 100, 3)

        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        logf.close()
        tail.poll()
        notify.close()
        step = max(1, len(samples) // 100)
        soak["rss_series"] = [[n, round(r, 1)] for _, n, r in samples[::step]]
        rel["rss_series"] = [[i, round(r, 1)] for i, r in reload_rss]
        report = {
            "command": " ".join(sys.argv),
            "daemon_command": " ".join(cmd),
            "soak": soak,
            "reload": rel,
            "exit_code": rc,
            "stopping_sent": notify.counts.get("STOPPING", 0) > 0,
            "error_events": tail.errors,
            "final_stats": {k: final_stats.get(k) for k in ("fps_in", "fps_processed", "fps_skipped", "latency_ms", "rss_mb", "camera")},
        }
        print(json.dumps(report, indent=2))
        print(
            f"\nsoak: {soak['frames']} frames in {soak['seconds']} s ({soak['frames_skipped']} skipped at camera rate {args.fps:g}); "
            f"RSS {soak['rss_first_mb']} MB at frame {soak['rss_first_at_frame']} -> {soak['rss_last_mb']} MB at frame "
            f"{soak['rss_last_at_frame']} (min {soak['rss_min_mb']}, max {soak['rss_max_mb']}, slope "
            f"{soak['rss_slope_mb_per_10k_frames']} MB/10k frames)\n"
            f"reload: {rel['reloads']} SIGHUP reloads ({rel['rejected']} rejected) in {rel['seconds']} s; RSS {rel['rss_before_mb']} MB "
            f"before -> {rel['rss_after_10_mb']} after 10 -> {rel['rss_after_last_mb']} MB after the last (slope after 10: "
            f"{rel['rss_slope_mb_per_100_reloads_after_10']} MB/100 reloads); exit code {rc}"
        )
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return 0 if rc == 0 else 1
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)
        if args.keep:
            print(f"soak: work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
