"""Publish events, snapshots, stats and status to an MQTT broker without losing events.

Events and snapshots go through the durable outbox (railedge.sinks.outbox): written to SQLite
first, published QoS 1, deleted only on the broker's PUBACK. A missing or restarting broker is
normal operation: one network thread reconnects with exponential backoff and jitter, and on every
connection (and after a process restart on the same state_dir) sends the outbox again from its
oldest row, in order, at most `mqtt.max_inflight` messages awaiting PUBACK at a time.

Topics, under `<prefix>/<device>/`:
    events              QoS 1, not retained, JSON railedge.event/1 (via the outbox)
    snapshot/<event id> QoS 1, not retained, JPEG bytes (via the outbox; first to give way when full)
    stats               QoS 0, not retained, JSON railedge.stats/1 (dropped while disconnected)
    status              QoS 1, retained, JSON railedge.status/1; the last will says 'offline'

Threads: the caller's thread only writes to the outbox and wakes the network thread; the network
thread owns the paho client (an external select() loop over paho's socket and a wake-up socket),
so PUBACKs are matched to outbox rows without locks around paho."""

from __future__ import annotations

import random
import select
import socket
import sqlite3
import ssl
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from railedge import __version__
from railedge.config import MqttConfig, mqtt_password
from railedge.errors import ConfigError
from railedge.logs import RateLimitedLog, get_logger
from railedge.schemas import EVENT_SCHEMA, STATS_SCHEMA, STATUS_SCHEMA
from railedge.sinks.jsonl import to_json_bytes
from railedge.sinks.outbox import Outbox

STATES = ("online", "degraded", "offline")
CONNACK_TIMEOUT_S = 10.0
# Acknowledged rows are deleted in batches: at this many, after this long, or when nothing is in
# flight. A crash before the delete only means those messages are sent once more.
ACK_BATCH = 256
ACK_DELAY_S = 0.05
SPILL_MAX = 100_000
# PUBACK reason codes after which a snapshot can never be delivered as is: drop it, don't retry.
_PERMANENT_REFUSALS = {0x90, 0x95, 0x99}  # topic name invalid, packet too large, payload format invalid


def utc_now_iso() -> str:
    """Current UTC time, ISO-8601 with milliseconds and a Z suffix."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check_topic_part(key: str, value: str, allow_slash: bool = False) -> str:
    bad = "+#\0" if allow_slash else "/+#\0"
    if not value or any(c in value for c in bad) or value != value.strip("/"):
        raise ConfigError(
            f"config key '{key}': {value!r} cannot be used in an MQTT topic; "
            f"use a non-empty name without {' '.join(repr(c) for c in bad if c != chr(0))} or leading/trailing '/'"
        )
    return value


def safe_topic_level(value: str) -> str:
    """`value` with characters MQTT topics reserve ('/', '+', '#', NUL) replaced by '_'."""
    out = "".join("_" if c in "/+#\0" else c for c in str(value))
    return out or "_"


def build_tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """The client TLS context from `mqtt.tls`; raises ConfigError naming the key at fault."""
    t = cfg.tls
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(t, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"config key 'mqtt.tls.{key}': {path!r} does not exist; fix the path or remove the key")
    if t.key_file and not t.cert_file:
        raise ConfigError("config key 'mqtt.tls.key_file' is set without 'mqtt.tls.cert_file'; set both for a client certificate")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = bool(t.verify_hostname)
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        if t.ca_file:
            ctx.load_verify_locations(cafile=t.ca_file)
        else:
            ctx.load_default_certs()
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"config key 'mqtt.tls.ca_file': {t.ca_file!r} is not a PEM CA certificate ({e})") from None
    if t.cert_file:
        try:
            ctx.load_cert_chain(certfile=t.cert_file, keyfile=t.key_file)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(
                f"config keys 'mqtt.tls.cert_file'/'mqtt.tls.key_file': cannot load the client certificate and key ({e}); "
                "they must be PEM files that belong together"
            ) from None
    return ctx


class MqttPublisher:
    """Durable MQTT publisher for one device. Satisfies EventSink (emit = publish_event)."""

    def __init__(self, cfg: MqttConfig, device_id: str, state_dir: str | Path, status_info: dict | None = None) -> None:
        self.cfg = cfg
        self.device_id = _check_topic_part("device.id", device_id)
        prefix = _check_topic_part("mqtt.topic_prefix", cfg.topic_prefix, allow_slash=True)
        self.base_topic = f"{prefix}/{device_id}"
        self.topic_events = f"{self.base_topic}/events"
        self.topic_stats = f"{self.base_topic}/stats"
        self.topic_status = f"{self.base_topic}/status"
        self.client_id = cfg.client_id or f"railedge-{device_id}"
        self._protocol = MQTTProtocolVersion.MQTTv5 if cfg.protocol == "5" else MQTTProtocolVersion.MQTTv311
        self._tls_ctx = build_tls_context(cfg) if cfg.tls.enabled else None
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._outbox = Outbox(self.state_dir / "outbox.sqlite3", cfg.outbox.max_rows, cfg.outbox.synchronous)
        self._status_info = dict(status_info or {})
        self.started_at = utc_now_iso()
        self._t0 = time.monotonic()
        self._log = get_logger("railedge.mqtt", device=device_id)
        self._limited = RateLimitedLog(self._log, interval_s=60.0)
        self._retry_max = float(cfg.reconnect_max_s)
        self._retry_min = min(0.5, self._retry_max)

        # Shared between the caller's threads and the network thread.
        self._status: tuple[str, dict[str, Any]] = ("online", {})  # replaced as a whole: atomic
        self._status_dirty = True
        self._stats_q: deque[bytes] = deque(maxlen=1)
        self._spill: deque[tuple[str, str, bytes, int, bool]] = deque()
        self._spill_lock = threading.Lock()
        self._counts_lock = threading.Lock()
        self._counts: dict[str, int] = {
            k: 0
            for k in (
                "connects", "connect_failures", "auth_failures", "disconnects", "published", "resent",
                "acked", "refused_by_broker", "stats_published", "stats_dropped", "status_published",
                "outbox_write_errors", "spill_dropped",
            )
        }
        self._last_error: str | None = None
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._closed = False
        self._handover = False  # close(handover=True): no 'offline' goodbye (a new publisher takes over)
        self._close_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # True while the network thread may be about to wait in select(): only then does a put
        # need to wake it (saves a syscall and a thread switch per event in bursts).
        self._io_idle = True

        # Owned by the network thread.
        self._inflight: dict[int, tuple[int, str]] = {}  # paho mid -> (outbox seq, kind)
        self._cursor = 0  # highest outbox seq handed to paho on this connection
        self._max_sent = 0  # highest outbox seq ever handed to paho (to count resends)
        self._window = max(1, int(cfg.max_inflight))
        self._acks: list[tuple[int, Any]] = []
        self._done: list[int] = []  # acknowledged outbox seqs not yet deleted (batched deletes)
        self._done_since = 0.0
        self._conn_result: Any = None  # None: waiting for CONNACK; else the reason code
        self._disc_reason: Any = None
        self._goodbye_mid: int | None = None
        self._goodbye_acked = False

    # -- public API ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the network thread; returns at once. A missing broker is retried forever."""
        if self._closed:
            raise RuntimeError("MqttPublisher is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="railedge-mqtt", daemon=True)
            self._thread.start()

    def publish_event(self, event: dict) -> int | None:
        """Queue one event (durable on return) and publish it QoS 1 on <prefix>/<device>/events.
        Adds `schema` and `device` when missing. Returns the outbox sequence number (None only when
        the disk refused the write and the event is held in memory until it accepts it)."""
        body = event if "schema" in event else {"schema": EVENT_SCHEMA, **event}
        if "device" not in body:
            body = {**body, "device": self.device_id}
        return self._enqueue("event", self.topic_events, to_json_bytes(body), 1, False)

    def emit(self, event: dict) -> None:
        """EventSink: same as publish_event."""
        self.publish_event(event)

    def publish_snapshot(self, event_id: str, jpeg: bytes) -> int | None:
        """Queue a JPEG for <prefix>/<device>/snapshot/<event id> (QoS 1). Snapshots give way to
        events when the outbox is full; returns None when this one was refused."""
        topic = f"{self.base_topic}/snapshot/{safe_topic_level(event_id)}"
        return self._enqueue("snapshot", topic, bytes(jpeg), 1, False)

    def publish_stats(self, stats: dict) -> bool:
        """Publish stats QoS 0 now if connected (adds schema, device, ts, outbox_depth when
        missing). Stats are not queued: returns False and counts them dropped while disconnected."""
        if not self._connected.is_set() or self._closed:
            self._count("stats_dropped")
            return False
        body = stats if "schema" in stats else {"schema": STATS_SCHEMA, **stats}
        body = {**body}
        body.setdefault("device", self.device_id)
        body.setdefault("ts", utc_now_iso())
        body.setdefault("outbox_depth", self.depth())
        if len(self._stats_q) == self._stats_q.maxlen:
            self._count("stats_dropped")  # the previous one was not sent yet: the newer wins
        self._stats_q.append(to_json_bytes(body))
        self._wake()
        return True

    def set_status(self, state: str, **extra: Any) -> None:
        """Set the retained status ('online', 'degraded' or 'offline') with extra fields
        (e.g. reason='camera lost'). Sent now if connected, else on the next connect; every
        connect republishes the current status. Extra fields replace those of the previous call."""
        if state not in STATES:
            raise ValueError(f"status state {state!r} is not one of {', '.join(STATES)}")
        self._status = (state, dict(extra))
        self._status_dirty = True
        self._wake()

    def depth(self) -> int:
        """Messages waiting in the outbox (and in memory if the disk refused writes)."""
        return self._outbox.depth() + len(self._spill)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def wait_drained(self, timeout: float) -> bool:
        """Wait until every queued message is acknowledged; False on timeout."""
        end = time.monotonic() + timeout
        while self.depth() > 0:
            if time.monotonic() >= end:
                return False
            time.sleep(0.01)
        return True

    def counters(self) -> dict[str, Any]:
        """Connection and delivery counters, the outbox's (prefixed outbox_), connected, inflight,
        last_error (the last connection problem, never containing the password)."""
        with self._counts_lock:
            out: dict[str, Any] = dict(self._counts)
        for k, v in self._outbox.counters().items():
            out[k if k == "events_over_bound" else f"outbox_{k}"] = v
        out["outbox_depth"] = self.depth()
        out["spilled"] = len(self._spill)
        out["connected"] = self.connected
        out["inflight"] = len(self._inflight)
        out["last_error"] = self._last_error
        return out

    def close(self, timeout_s: float | None = None, *, handover: bool = False) -> None:
        """Stop: while connected, keep sending for up to `timeout_s` (default
        mqtt.flush_timeout_s) until the outbox is empty, publish the retained 'offline' status and
        disconnect. Whatever is unacknowledged stays in the outbox for the next start.

        `handover`: a new publisher takes over the same broker and topics at once (a config reload),
        so no 'offline' is published: subscribers see the device stay up, not flicker offline. The
        disconnect is clean, so the broker does not send the will either."""
        if self._closed:
            return
        self._handover = bool(handover)
        timeout = self.cfg.flush_timeout_s if timeout_s is None else max(0.0, float(timeout_s))
        self._close_deadline = time.monotonic() + timeout
        self._closing.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout + CONNACK_TIMEOUT_S + 5.0)
            if self._thread.is_alive():
                self._log.error("mqtt_thread_did_not_stop", fix="report this; queued events remain in the outbox")
                self._closed = True
                return
        self._closed = True
        if self._spill:
            self._drain_spill()
            if self._spill:
                self._log.error("events_lost_on_close", count=len(self._spill), fix="the disk refused the outbox writes; free space")
        depth = self._outbox.depth()
        self._outbox.close()
        self._wake_r.close()
        self._wake_w.close()
        self._log.info("mqtt_closed", left_in_outbox=depth)

    def __enter__(self) -> "MqttPublisher":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- caller side helpers -------------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[key] = self._counts.get(key, 0) + n

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    def _enqueue(self, kind: str, topic: str, payload: bytes, qos: int, retain: bool) -> int | None:
        if self._closed:
            raise RuntimeError("MqttPublisher is closed")
        seq: int | None = None
        with self._spill_lock:
            if self._spill:  # keep order behind what the disk refused earlier
                self._spill_locked((kind, topic, payload, qos, retain))
            else:
                try:
                    seq = self._outbox.put(kind, topic, payload, qos, retain)
                    # While messages await PUBACK, the next one wakes the network thread, which then
                    # takes this row too; only an idle thread with nothing in flight needs a nudge.
                    if self._io_idle and (not self._inflight or not self._connected.is_set()):
                        self._wake()
                    return seq
                except sqlite3.Error as e:
                    self._count("outbox_write_errors")
                    self._log.error(
                        "outbox_write_failed",
                        error=str(e),
                        kind=kind,
                        fix="the disk refused the write (full or failing?); the message is held in memory and retried",
                    )
                    self._spill_locked((kind, topic, payload, qos, retain))
        self._wake()
        return seq

    def _spill_locked(self, item: tuple[str, str, bytes, int, bool]) -> None:
        if len(self._spill) >= SPILL_MAX:
            self._spill.popleft()
            self._count("spill_dropped")
            self._limited("error", "outbox_spill_overflow", fix="the disk refuses writes for long; free space")
        self._spill.append(item)

    def _drain_spill(self) -> None:
        if not self._spill:
            return
        with self._spill_lock:
            while self._spill:
                kind, topic, payload, qos, retain = self._spill[0]
                try:
                    self._outbox.put(kind, topic, payload, qos, retain)
                except sqlite3.Error as e:
                    self._limited("error", "outbox_write_still_failing", error=str(e), held_in_memory=len(self._spill))
                    return
                self._spill.popleft()

    # -- status payloads -----------------------------------------------------------------------

    def status_body(self, state: str, extra: dict | None = None, will: bool = False) -> dict:
        body: dict[str, Any] = {
            "schema": STATUS_SCHEMA,
            "state": state,
            "device": self.device_id,
            "version": __version__,
            "model": None,
            "backbone": None,
            "started_at": self.started_at,
        }
        body.update(self._status_info)
        if extra:
            body.update(extra)
        if will:
            body["will"] = True
            body.setdefault("reason", "connection lost")
        else:
            body["ts"] = utc_now_iso()
            body["uptime_s"] = round(time.monotonic() - self._t0, 3)
        return body

    # -- network thread ------------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._closing.is_set():
            self._drain_spill()
            client = None
            try:
                client = self._new_client()
                self._conn_result = None
                self._disc_reason = None
                client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive_s, **self._connect_kwargs())
            except ConfigError as e:
                self._note_failure("config", str(e), "error")
            except ssl.SSLCertVerificationError as e:
                self._note_failure(
                    "tls_verify",
                    f"TLS: the broker's certificate was not accepted ({e.verify_message}); check mqtt.tls.ca_file, "
                    "that the certificate names the host in mqtt.host, or mqtt.tls.verify_hostname",
                    "error",
                )
            except ssl.SSLError as e:
                self._note_failure(
                    "tls",
                    f"TLS handshake with {self.cfg.host}:{self.cfg.port} failed ({e.reason or e}); is it a TLS listener, "
                    "and does it need a client certificate (mqtt.tls.cert_file/key_file)?",
                    "error",
                )
            except (OSError, ValueError) as e:
                self._note_failure(
                    "unreachable",
                    f"broker {self.cfg.host}:{self.cfg.port} unreachable ({e.__class__.__name__}: {e}); retrying, events are kept",
                    "warning",
                )
            except Exception as e:  # never let the network thread die: events would wait forever
                self._note_failure("unexpected", f"connecting failed: {e.__class__.__name__}: {e}", "error")
            else:
                was_connected = self._serve(client)
                if was_connected:
                    attempt = 0
            if self._closing.is_set():
                break
            delay = min(self._retry_max, self._retry_min * 2 ** min(attempt, 30)) * (0.5 + 0.5 * random.random())
            attempt += 1
            self._closing.wait(delay)
        self._connected.clear()

    def _connect_kwargs(self) -> dict:
        return {"clean_start": True} if self._protocol == MQTTProtocolVersion.MQTTv5 else {}

    def _new_client(self) -> mqtt.Client:
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else True,
            protocol=self._protocol,
            reconnect_on_failure=False,
        )
        client.connect_timeout = 5.0
        client.max_inflight_messages_set(0)  # the window is ours (self._window); paho must not queue behind it
        if self.cfg.username is not None:
            client.username_pw_set(self.cfg.username, mqtt_password(self.cfg))
        if self._tls_ctx is not None:
            client.tls_set_context(self._tls_ctx)
        will = to_json_bytes(self.status_body("offline", will=True))
        client.will_set(self.topic_status, will, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    # paho callbacks: they run on the network thread, inside loop_read/loop_write.

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._conn_result = reason_code
        if not reason_code.is_failure:
            rmax = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
            window = max(1, int(self.cfg.max_inflight))
            if rmax:  # the status message needs one slot of the broker's receive maximum
                window = max(1, min(window, int(rmax) - 1))
            self._window = window

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._disc_reason = reason_code

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        self._acks.append((mid, reason_code))

    def _note_failure(self, kind: str, message: str, level: str) -> None:
        self._count("connect_failures")
        if kind == "auth":
            self._count("auth_failures")
        self._last_error = message
        self._connected.clear()
        self._limited(level, f"mqtt_connect_failed_{kind}", message=message, pending=self.depth())

    def _connack_refused(self, rc: Any) -> None:
        name = str(rc)
        host = f"{self.cfg.host}:{self.cfg.port}"
        if name in ("Bad user name or password", "Not authorized"):
            # mosquitto answers a wrong password with "Not authorized", so both name every fix
            msg = (
                f"the broker at {host} refused the credentials ({name}) for user {self.cfg.username!r}, client id "
                f"{self.client_id!r}: fix mqtt.username and the password (environment variable {self.cfg.password_env} "
                "or mqtt.password_file), or the broker's users/ACL; events stay in the outbox and are sent once it accepts"
            )
            self._note_failure("auth", msg, "error")
        elif name == "Client identifier not valid":
            self._note_failure("client_id", f"the broker at {host} rejects client id {self.client_id!r}; set mqtt.client_id", "error")
        elif name == "Unsupported protocol version":
            self._note_failure(
                "protocol", f"the broker at {host} does not speak MQTT {self.cfg.protocol}; set mqtt.protocol to 3.1.1", "error"
            )
        else:
            self._note_failure("refused", f"the broker at {host} refused the connection ({name}); retrying", "warning")

    def _serve(self, client: mqtt.Client) -> bool:
        """Run one connection until it ends. Returns True when the broker accepted it."""
        sock = client.socket()
        connack_deadline = time.monotonic() + CONNACK_TIMEOUT_S
        accepted = False
        try:
            while True:
                self._io_idle = True  # before looking for work, so no put goes unnoticed
                if not accepted:
                    rc = self._conn_result
                    if rc is not None and rc.is_failure:
                        self._connack_refused(rc)
                        return False
                    if rc is not None:
                        accepted = True
                        self._on_accepted(client)
                    elif self._closing.is_set() and time.monotonic() > self._close_deadline:
                        return False
                    elif time.monotonic() > connack_deadline:
                        self._note_failure(
                            "no_connack",
                            f"no answer to CONNECT from {self.cfg.host}:{self.cfg.port}; is it an MQTT "
                            f"{'TLS ' if self._tls_ctx else ''}listener (mqtt.tls.enabled must match the port)?",
                            "warning",
                        )
                        return False
                if accepted:
                    self._process_acks()
                    if self._closing.is_set() and self._finish_if_due(client):
                        return True
                    self._send(client)
                rc2 = self._io(client, sock, 0.05 if self._closing.is_set() or self._done else 1.0)
                if rc2 != MQTTErrorCode.MQTT_ERR_SUCCESS or client.socket() is None:
                    self._process_acks()
                    self._lost(rc2, accepted)
                    return accepted
        except Exception as e:  # a bug or a failing disk must not stop delivery for good: log, reconnect
            self._limited("error", "mqtt_loop_error", error=f"{e.__class__.__name__}: {e}", exc_info=True)
            self._last_error = f"{e.__class__.__name__}: {e}"
            self._connected.clear()
            return accepted
        finally:
            try:
                if client.socket() is not None:
                    client.socket().close()  # abandoned without DISCONNECT: the broker sends the will
            except Exception:
                pass
            self._inflight.clear()
            self._acks.clear()
            try:
                self._flush_done(force=True)
            except Exception as e:
                self._log.error("outbox_ack_failed", error=str(e))
                self._done = []
            self._cursor = 0
            self._connected.clear()

    def _io(self, client: mqtt.Client, sock: Any, timeout: float) -> MQTTErrorCode:
        if hasattr(sock, "pending") and sock.pending() > 0:
            timeout = 0.0
        wlist = [sock] if client.want_write() else []
        try:
            rl, wl, _ = select.select([sock, self._wake_r], wlist, [], timeout)
        except (OSError, ValueError):
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        self._io_idle = False
        if self._wake_r in rl:
            try:
                while self._wake_r.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        if sock in rl or (hasattr(sock, "pending") and sock.pending() > 0):
            rc = client.loop_read()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return rc
        if client.socket() is not None and client.want_write():
            rc = client.loop_write()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return rc
        if client.socket() is None:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        return client.loop_misc()

    def _on_accepted(self, client: mqtt.Client) -> None:
        self._count("connects")
        self._last_error = None
        self._cursor = 0
        self._inflight.clear()
        self._status_dirty = True
        self._connected.set()
        self._log.info(
            "mqtt_connected",
            broker=f"{self.cfg.host}:{self.cfg.port}",
            client_id=self.client_id,
            protocol=self.cfg.protocol,
            tls=self._tls_ctx is not None,
            resending=self._outbox.depth(),
            window=self._window,
        )

    def _lost(self, rc: Any, accepted: bool) -> None:
        self._connected.clear()
        if accepted:
            self._count("disconnects")
            reason = self._disc_reason
            name = str(reason) if reason is not None else mqtt.error_string(rc) if isinstance(rc, int) else str(rc)
            fix = None
            if name == "Session taken over":
                fix = f"another client connected with client id {self.client_id!r}; give each device its own mqtt.client_id/device.id"
            self._last_error = f"connection lost ({name})"
            self._limited("warning", "mqtt_connection_lost", reason=name, pending=self.depth(), fix=fix)
        elif self._conn_result is not None and self._conn_result.is_failure:
            self._connack_refused(self._conn_result)
        elif not self._closing.is_set():
            self._note_failure(
                "closed_before_connack",
                f"{self.cfg.host}:{self.cfg.port} closed the connection before answering CONNECT; does the listener need "
                "TLS (mqtt.tls.enabled) or a client certificate, or another mqtt.protocol?",
                "warning",
            )

    def _process_acks(self) -> None:
        if not self._acks:
            self._flush_done()
            return
        acks, self._acks = self._acks, []
        done = self._done
        if not done:
            self._done_since = time.monotonic()
        for mid, rc in acks:
            if mid == self._goodbye_mid:
                self._goodbye_acked = True
            entry = self._inflight.pop(mid, None)
            if entry is None:
                continue
            seq, kind = entry
            if rc is not None and getattr(rc, "is_failure", False):
                self._count("refused_by_broker")
                value = getattr(rc, "value", None)
                if kind != "event" and value in _PERMANENT_REFUSALS:
                    done.append(seq)
                    self._limited("error", "mqtt_message_refused_dropped", kind=kind, reason=str(rc))
                else:
                    self._limited(
                        "error",
                        "mqtt_message_refused",
                        kind=kind,
                        reason=str(rc),
                        fix=f"the broker refused a message on {self.base_topic}/#: check its ACL for user "
                        f"{self.cfg.username!r}; the message stays in the outbox and is retried on the next connection",
                    )
                continue
            done.append(seq)
        self._flush_done()

    def _flush_done(self, force: bool = False) -> None:
        done = self._done
        if not done:
            return
        if force or not self._inflight or len(done) >= ACK_BATCH or time.monotonic() - self._done_since >= ACK_DELAY_S:
            self._done = []
            n = self._outbox.ack_many(done)
            self._count("acked", n)

    def _send(self, client: mqtt.Client) -> None:
        if self._status_dirty:
            self._status_dirty = False
            state, extra = self._status
            info = client.publish(self.topic_status, to_json_bytes(self.status_body(state, extra)), 1, True)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._count("status_published")
        while self._stats_q:
            payload = self._stats_q.popleft()
            if client.publish(self.topic_stats, payload, 0, False).rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._count("stats_published")
        self._drain_spill()
        room = self._window - len(self._inflight)
        if room <= 0 or self._outbox.depth() == 0:
            return
        for row in self._outbox.pending(room, after=self._cursor):
            try:
                info = client.publish(row.topic, row.payload, row.qos, row.retain)
            except ValueError as e:  # e.g. a payload larger than MQTT allows: can never be sent
                self._log.error("mqtt_message_unsendable", kind=row.kind, seq=row.seq, error=str(e))
                self._cursor = row.seq
                if row.kind != "event":
                    self._outbox.ack(row.seq)
                continue
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            self._cursor = row.seq
            self._count("published")
            if row.seq <= self._max_sent:
                self._count("resent")
            else:
                self._max_sent = row.seq
            if row.qos == 0:
                self._outbox.ack(row.seq)
            else:
                self._inflight[info.mid] = (row.seq, row.kind)

    def _finish_if_due(self, client: mqtt.Client) -> bool:
        """While closing: once the outbox is empty or the deadline passed, say goodbye."""
        idle = self._outbox.depth() == 0 and not self._inflight and not self._spill
        if not idle and time.monotonic() < self._close_deadline:
            return False
        if self._handover:  # the next publisher announces the state; nothing to say here
            self._goodbye_mid, self._goodbye_acked = None, True
        else:
            body = to_json_bytes(self.status_body("offline", {**self._status[1], "reason": "shutdown"}))
            info = client.publish(self.topic_status, body, 1, True)
            self._goodbye_mid = info.mid
            self._goodbye_acked = False
        grace_end = time.monotonic() + 1.0
        while not self._goodbye_acked and time.monotonic() < grace_end and client.socket() is not None:
            if self._io(client, client.socket(), 0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            self._process_acks()
        if client.socket() is not None:
            self._count("status_published")
            client.disconnect()
            end = time.monotonic() + 1.0
            while client.socket() is not None and client.want_write() and time.monotonic() < end:
                client.loop_write()
        self._log.info("mqtt_goodbye", handover=self._handover, offline_status_acked=None if self._handover else self._goodbye_acked,
                       left_in_outbox=self._outbox.depth())
        return True
