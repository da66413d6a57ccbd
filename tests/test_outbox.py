"""The durable outbox (SQLite) and the JSON-lines sink: order, acks, restarts, SIGKILL, the size
bound policy, thread safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from railedge.sinks import EventSink
from railedge.sinks.jsonl import JsonlWriter, to_json_bytes
from railedge.sinks.outbox import Outbox


@pytest.fixture(params=["group", "full"])
def sync(request: pytest.FixtureRequest) -> str:
    return request.param


def test_put_pending_ack_in_order(tmp_path: Path, sync: str) -> None:
    with Outbox(tmp_path / "o.db", 100, sync) as ob:
        seqs = [ob.put("event", "t/e", f"p{i}".encode(), 1, False) for i in range(5)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        assert ob.depth() == 5
        rows = ob.pending(3)
        assert [r.payload for r in rows] == [b"p0", b"p1", b"p2"]
        assert [r.seq for r in ob.pending(10, after=seqs[2])] == seqs[3:]
        assert ob.ack(seqs[1]) is True
        assert ob.ack(seqs[1]) is False  # already gone
        assert ob.ack_many([seqs[0], seqs[4]]) == 2
        assert [r.payload for r in ob.pending(10)] == [b"p2", b"p3"]
        assert ob.depth() == 2
        c = ob.counters()
        assert c["put_event"] == 5 and c["acked"] == 3 and c["depth"] == 2
        row = ob.pending(1)[0]
        assert (row.kind, row.topic, row.qos, row.retain) == ("event", "t/e", 1, False)
        assert ob.oldest_age_s() is not None


def test_rows_survive_reopen(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", 100)
    for i in range(3):
        ob.put("event", "t", f"{i}".encode())
    ob.ack(ob.pending(1)[0].seq)
    ob.close()
    with Outbox(tmp_path / "o.db", 100) as ob2:
        assert ob2.depth() == 2
        assert [r.payload for r in ob2.pending(10)] == [b"1", b"2"]
        assert ob2.put("event", "t", b"3") > ob2.pending(10)[-1].seq - 1


_KILLER = r"""
import os, signal, sys
from railedge.sinks.outbox import Outbox
ob = Outbox(sys.argv[1], 10000, sys.argv[2])
for i in range(int(sys.argv[3])):
    ob.put("event", "t", b"x" * 300 + str(i).encode())
print("put-all", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_put_is_durable_across_sigkill(tmp_path: Path, sync: str) -> None:
    db = tmp_path / "o.db"
    r = subprocess.run([sys.executable, "-c", _KILLER, str(db), sync, "300"], capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL and "put-all" in r.stdout
    with Outbox(db, 10000) as ob:
        assert ob.depth() == 300
        assert ob.pending(1000)[-1].payload.endswith(b"299")


def test_bound_drops_stats_then_status_then_snapshots_never_events(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_rows=6) as ob:
        ob.put("stats", "s", b"s1", 0)
        ob.put("snapshot", "n", b"n1")
        ob.put("status", "st", b"st1", 1, True)
        ob.put("stats", "s", b"s2", 0)
        ob.put("event", "e", b"e1")
        ob.put("snapshot", "n", b"n2")
        assert ob.depth() == 6
        ob.put("event", "e", b"e2")  # evicts the oldest stats
        ob.put("event", "e", b"e3")  # evicts the other stats
        ob.put("event", "e", b"e4")  # then status
        ob.put("event", "e", b"e5")  # then the oldest snapshot
        assert [r.payload for r in ob.pending(100)] == [b"e1", b"n2", b"e2", b"e3", b"e4", b"e5"]
        # a stats message may evict nothing more important: refused
        assert ob.put("stats", "s", b"s3", 0) is None
        # a snapshot may evict an older snapshot
        assert ob.put("snapshot", "n", b"n3") is not None
        assert [r.payload for r in ob.pending(100)] == [b"e1", b"e2", b"e3", b"e4", b"e5", b"n3"]
        ob.put("event", "e", b"e6")  # evicts n3
        assert ob.put("snapshot", "n", b"n4") is None  # only events left: refused
        # only events remain: events are kept beyond the bound and counted
        ob.put("event", "e", b"e7")
        ob.put("event", "e", b"e8")
        assert ob.depth() == 8
        assert [r.payload for r in ob.pending(100)] == [b"e%d" % i for i in range(1, 9)]
        c = ob.counters()
        assert c["events_over_bound"] == 2
        assert c["dropped_stats"] == 3 and c["dropped_status"] == 1 and c["dropped_snapshot"] == 4
        assert c["dropped_event"] == 0 and c["put_event"] == 8


def test_concurrent_put_and_ack(tmp_path: Path) -> None:
    n = 1500
    with Outbox(tmp_path / "o.db", 100000) as ob:
        done = threading.Event()
        acked: list[int] = []
        errors: list[BaseException] = []

        def producer() -> None:
            try:
                for i in range(n):
                    ob.put("event", "t", str(i).encode())
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)
            finally:
                done.set()

        def consumer() -> None:
            try:
                after = 0
                while len(acked) < n:
                    rows = ob.pending(50, after=after)
                    if not rows:
                        if done.is_set() and not ob.pending(1, after=after):
                            break
                        continue
                    after = rows[-1].seq
                    assert ob.ack_many(r.seq for r in rows) == len(rows)
                    acked.extend(int(r.payload) for r in rows)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert acked == list(range(n))
        assert ob.depth() == 0 and ob.counters()["acked"] == n


def test_corrupt_file_is_set_aside(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    db.write_bytes(b"this is not a database" * 100)
    with Outbox(db, 10) as ob:
        assert ob.depth() == 0
        ob.put("event", "t", b"x")
    assert list(tmp_path.glob("o.db.corrupt-*"))


def test_outbox_rejects_bad_arguments(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", 10) as ob:
        with pytest.raises(ValueError):
            ob.put("nonsense", "t", b"x")
        with pytest.raises(ValueError):
            ob.put("event", "t", b"x", qos=3)
    with pytest.raises(RuntimeError):
        ob.put("event", "t", b"x")


def test_jsonl_writer(tmp_path: Path) -> None:
    import numpy as np

    path = tmp_path / "sub" / "events.jsonl"
    w = JsonlWriter(path)
    assert isinstance(w, EventSink)
    w.emit({"id": "a", "score": np.float32(0.5), "bbox": np.array([1, 2, 3, 4]), "nan": float("nan")})
    w.emit({"schema": "railedge.event/1", "id": "b"})
    assert path.read_text().count("\n") == 2  # flushed per line, before close
    w.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0] == {"schema": "railedge.event/1", "id": "a", "score": 0.5, "bbox": [1, 2, 3, 4], "nan": None}
    assert lines[1]["id"] == "b"
    with pytest.raises(RuntimeError):
        w.emit({"id": "c"})
    assert to_json_bytes({"a": (1, 2)}) == b'{"a":[1,2]}'
    assert os.path.getsize(path) > 0
