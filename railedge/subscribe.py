"""A control-room subscriber: prints events, status and stats of one or all devices, appends events
to a CSV or JSON-lines log, and misses nothing across its own restarts.

It keeps a persistent session (fixed client id; MQTT 5 clean_start False with a session expiry, or
MQTT 3.1.1 clean_session False), so the broker queues QoS 1 events while it is away. Delivery is at
least once, so duplicates are dropped by message identity (id, type, frame_index), remembered in
memory (bounded) and seeded from the tail of the log at start."""

from __future__ import annotations

import csv
import io
import json
import socket
import ssl
import sys
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from railedge.errors import BrokerError

CSV_FIELDS = (
    "received_at", "device", "id", "type", "frame_ts", "frame_index", "source", "score", "threshold",
    "class", "class_score", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "chainage_m", "lat", "lon",
    "backbone", "latency_total_ms", "peak_score", "first_frame", "last_frame", "snapshot",
)
MAX_REMEMBERED = 100_000
SEED_TAIL_BYTES = 32 * 1024 * 1024


def event_key(event: dict) -> str:
    """The identity of an event message: a resend has the same key."""
    return f"{event.get('id')}|{event.get('type')}|{event.get('frame_index')}"


def default_client_id(device: str | None) -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:40]
    return f"railedge-sub-{host}-{device or 'all'}"


class _Dedup:
    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def add(self, key: str) -> bool:
        """True when `key` is new (and remembers it)."""
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self._limit:
            self._seen.popitem(last=False)
        return True


def _tail_lines(path: Path, max_bytes: int = SEED_TAIL_BYTES) -> list[str]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size > max_bytes:
            f.seek(size - max_bytes)
            f.readline()  # drop the partial first line
        return f.read().decode("utf-8", errors="replace").splitlines()


def _seed_from_log(dedup: _Dedup, path: Path, fmt: str) -> int:
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    n = 0
    lines = _tail_lines(path)
    if fmt == "jsonl":
        for line in lines:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict) and "id" in ev:
                dedup.add(event_key(ev))
                n += 1
    else:
        header = next(csv.reader([path.open(encoding="utf-8", errors="replace").readline()]), [])
        if "id" not in header:
            return 0
        for row in csv.DictReader(io.StringIO("\n".join(lines)), fieldnames=header):
            if row.get("id") in (None, "id"):
                continue
            fi = row.get("frame_index")
            frame = int(fi) if fi and fi.isdigit() else (fi or None)
            dedup.add(event_key({"id": row["id"], "type": row.get("type") or None, "frame_index": frame}))
            n += 1
    return n


def _csv_row(ev: dict, received_at: str) -> list[Any]:
    bbox = ev.get("bbox") or [None] * 4
    pos = ev.get("position") or {}
    lat = ev.get("latency_ms") or {}
    values = {
        "received_at": received_at, "device": ev.get("device"), "id": ev.get("id"), "type": ev.get("type"),
        "frame_ts": ev.get("frame_ts"), "frame_index": ev.get("frame_index"), "source": ev.get("source"),
        "score": ev.get("score"), "threshold": ev.get("threshold"), "class": ev.get("class"),
        "class_score": ev.get("class_score"), "bbox_x": bbox[0], "bbox_y": bbox[1], "bbox_w": bbox[2],
        "bbox_h": bbox[3], "chainage_m": pos.get("chainage_m"), "lat": pos.get("lat"), "lon": pos.get("lon"),
        "backbone": ev.get("backbone"), "latency_total_ms": lat.get("total") if isinstance(lat, dict) else None,
        "peak_score": ev.get("peak_score"), "first_frame": ev.get("first_frame"), "last_frame": ev.get("last_frame"),
        "snapshot": ev.get("snapshot"),
    }
    return ["" if values[k] is None else values[k] for k in CSV_FIELDS]


def _fmt_num(v: Any, nd: int = 3) -> str:
    return f"{v:.{nd}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def format_event(ev: dict) -> str:
    parts = [str(ev.get("frame_ts", "?")), str(ev.get("device", "?")), f"DEFECT {str(ev.get('type', '?')).upper():6s}",
             f"id={ev.get('id')}", f"score={_fmt_num(ev.get('score'))}/{_fmt_num(ev.get('threshold'))}"]
    if ev.get("class"):
        parts.append(f"class={ev['class']}" + (f"({_fmt_num(ev.get('class_score'), 2)})" if ev.get("class_score") is not None else ""))
    pos = ev.get("position") or {}
    if pos.get("chainage_m") is not None:
        parts.append(f"chainage={_fmt_num(pos['chainage_m'], 1)}m")
    if pos.get("lat") is not None and pos.get("lon") is not None:
        parts.append(f"at={_fmt_num(pos['lat'], 6)},{_fmt_num(pos['lon'], 6)}")
    parts.append(f"bbox={ev.get('bbox')}")
    parts.append(f"frame={ev.get('frame_index')} src={ev.get('source')}")
    return "  ".join(parts)


def format_status(st: dict) -> str:
    extra = ""
    if st.get("reason"):
        extra = f" ({st['reason']})"
    return (f"{st.get('ts', datetime.now(timezone.utc).isoformat(timespec='seconds'))} {st.get('device', '?')} STATUS "
            f"{str(st.get('state', '?')).upper()}{extra}  model={st.get('model')} backbone={st.get('backbone')} "
            f"version={st.get('version')} since={st.get('started_at')}")


def format_stats(s: dict) -> str:
    lat = s.get("latency_ms") or {}
    total = lat.get("total") if isinstance(lat, dict) else None
    p95 = f" total p95={_fmt_num(total.get('p95'), 1)}ms" if isinstance(total, dict) else ""
    return (f"{s.get('ts', '?')} {s.get('device', '?')} STATS  in={_fmt_num(s.get('fps_in'), 1)}fps "
            f"processed={_fmt_num(s.get('fps_processed'), 1)}fps skipped={s.get('frames_skipped')}{p95} "
            f"outbox={s.get('outbox_depth')} rss={_fmt_num(s.get('rss_mb'), 0)}MB up={_fmt_num(s.get('uptime_s'), 0)}s")


def run_subscriber(
    host: str = "127.0.0.1",
    port: int = 1883,
    prefix: str = "railedge",
    device: str | None = None,
    as_json: bool = False,
    log_path: str | Path | None = None,
    log_format: str = "csv",
    client_id: str | None = None,
    *,
    protocol: str = "5",
    username: str | None = None,
    password: str | None = None,
    tls: bool = False,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    verify_hostname: bool = True,
    session_expiry_s: int = 7 * 24 * 3600,
    keepalive_s: int = 30,
    reconnect_max_s: float = 30.0,
    stop_after: int | None = None,
    timeout_s: float | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
    on_event: Callable[[dict], None] | None = None,
) -> int:
    """Subscribe to <prefix>/<device or +>/{events,status,stats} and print one line per message
    (or the payload as one JSON line with as_json). New events are appended to `log_path` (csv or
    jsonl) before they are acknowledged to the broker. Returns the number of new events.

    Runs until `stop_after` new events, `timeout_s`, `stop` is set or Ctrl-C. A broker that is
    down is retried (backoff up to reconnect_max_s). `ready` is set once subscribed."""
    if log_format not in ("csv", "jsonl"):
        raise ValueError("log_format must be 'csv' or 'jsonl'")
    if protocol not in ("5", "3.1.1"):
        raise ValueError("protocol must be '5' or '3.1.1'")
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    prefix = prefix.strip("/")
    dev = device or "+"
    topics = [(f"{prefix}/{dev}/events", 1), (f"{prefix}/{dev}/status", 1), (f"{prefix}/{dev}/stats", 0)]
    client_id = client_id or default_client_id(device)
    v5 = protocol == "5"

    dedup = _Dedup()
    log_file = None
    csv_writer = None
    if log_path is not None:
        lp = Path(log_path)
        lp.parent.mkdir(parents=True, exist_ok=True)
        seeded = _seed_from_log(dedup, lp, log_format)
        new_file = not lp.exists() or lp.stat().st_size == 0
        log_file = open(lp, "a", encoding="utf-8", newline="")
        if log_format == "csv":
            csv_writer = csv.writer(log_file)
            if new_file:
                csv_writer.writerow(CSV_FIELDS)
                log_file.flush()
        if seeded:
            err.write(f"railedge subscribe: {seeded} events already in {lp}; their repeats are skipped\n")

    lock = threading.Lock()
    done = threading.Event()
    count = [0]
    dupes = [0]
    fatal: list[str] = []

    def emit_line(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            name = str(rc)
            if name in ("Bad user name or password", "Not authorized"):
                fatal.append(f"the broker at {host}:{port} refused the connection ({name}); check --username/password and its ACL")
                done.set()
            else:
                err.write(f"railedge subscribe: broker refused the connection ({name}); retrying\n")
            return
        client.subscribe(topics)
        if not flags.session_present:
            err.write(f"railedge subscribe: connected to {host}:{port} as {client_id} (new session)\n")
        else:
            err.write(f"railedge subscribe: reconnected to {host}:{port} as {client_id} (session resumed)\n")

    def on_subscribe(client: Any, userdata: Any, mid: Any, rcs: Any, props: Any) -> None:
        if ready is not None:
            ready.set()

    def on_disconnect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not done.is_set():
            err.write(f"railedge subscribe: disconnected ({rc}); reconnecting\n")

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        rest = msg.topic[len(prefix) + 1:] if msg.topic.startswith(prefix + "/") else msg.topic
        parts = rest.split("/")
        kind = parts[1] if len(parts) > 1 else ""
        try:
            body = json.loads(msg.payload)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            err.write(f"railedge subscribe: ignoring a message on {msg.topic} that is not a JSON object\n")
            return
        with lock:
            if kind == "events":
                if not dedup.add(event_key(body)):
                    dupes[0] += 1
                    return
                received = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                if log_file is not None:
                    if csv_writer is not None:
                        csv_writer.writerow(_csv_row(body, received))
                    else:
                        log_file.write(json.dumps(body, separators=(",", ":"), ensure_ascii=False) + "\n")
                    log_file.flush()
                emit_line(json.dumps(body, separators=(",", ":"), ensure_ascii=False) if as_json else format_event(body))
                if on_event is not None:
                    on_event(body)
                count[0] += 1
                if stop_after is not None and count[0] >= stop_after:
                    done.set()
            elif kind == "status":
                emit_line(json.dumps(body, separators=(",", ":")) if as_json else format_status(body))
            elif kind == "stats":
                emit_line(json.dumps(body, separators=(",", ":")) if as_json else format_stats(body))

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=None if v5 else False,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
    )
    client.reconnect_delay_set(min(0.5, reconnect_max_s), reconnect_max_s)  # type: ignore[arg-type]
    if username is not None:
        client.username_pw_set(username, password)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = verify_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
        if ca_file:
            ctx.load_verify_locations(cafile=ca_file)
        else:
            ctx.load_default_certs()
        if cert_file:
            ctx.load_cert_chain(cert_file, key_file)
        client.tls_set_context(ctx)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    kwargs: dict[str, Any] = {}
    if v5:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(session_expiry_s)
        kwargs = {"clean_start": False, "properties": props}
    client.connect_async(host, port, keepalive_s, **kwargs)
    client.loop_start()
    end = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while not done.is_set():
            if stop is not None and stop.is_set():
                break
            if end is not None and time.monotonic() >= end:
                break
            done.wait(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            client.disconnect()
        except Exception:
            pass
        client.loop_stop()
        if log_file is not None:
            log_file.close()
    if dupes[0]:
        err.write(f"railedge subscribe: skipped {dupes[0]} repeated event messages\n")
    if fatal:
        raise BrokerError(fatal[0])
    return count[0]


def add_parser(sub, config_args, load) -> None:
    """`railedge subscribe`: the control-room subscriber."""
    c = sub.add_parser("subscribe", help="print events, status and stats from the broker (control room)")
    config_args(c)
    c.add_argument("--device", help="only this device (default: all devices under the topic prefix)")
    c.add_argument("--json", action="store_true", help="one JSON line per message")
    c.add_argument("--log", help="append new events to this file (.csv or .jsonl)")
    c.add_argument("--client-id", help="fixed client id for the persistent session (default: per host and user)")
    c.add_argument("--count", type=int, help="exit after this many new events")
    c.add_argument("--timeout", type=float, help="exit after this many seconds")

    def run(args) -> int:
        from railedge.config import mqtt_password

        cfg = load(args)
        m = cfg.mqtt
        log_format = "jsonl" if args.log and args.log.endswith(".jsonl") else "csv"
        run_subscriber(
            m.host, m.port, m.topic_prefix, args.device, args.json, args.log, log_format, args.client_id,
            protocol=m.protocol, username=m.username, password=mqtt_password(m), tls=m.tls.enabled,
            ca_file=m.tls.ca_file, cert_file=m.tls.cert_file, key_file=m.tls.key_file,
            verify_hostname=m.tls.verify_hostname, keepalive_s=m.keepalive_s, reconnect_max_s=m.reconnect_max_s,
            stop_after=args.count, timeout_s=args.timeout,
        )
        return 0

    c.set_defaults(func=run)
