"""Append events to a JSON-lines file: one compact JSON object per line, flushed per line."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from railedge.schemas import EVENT_SCHEMA


def to_json_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON. numpy scalars/arrays and paths are converted; NaN and infinities,
    which JSON cannot carry, become null."""
    try:
        text = _ENCODER.encode(obj)
    except ValueError:
        text = _ENCODER.encode(_finite(obj))
    return text.encode("utf-8")


def _default(o: Any) -> Any:
    if hasattr(o, "tolist"):  # numpy arrays and scalars
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_default)


def _finite(o: Any) -> Any:
    if isinstance(o, float):
        return o if o == o and o not in (float("inf"), float("-inf")) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if hasattr(o, "tolist"):
        return _finite(o.tolist())
    return o


class JsonlWriter:
    """EventSink writing one line per event to `path` (appending; parent folders are created).

    Each line is flushed to the OS as it is written, so a crash loses at most the line in progress."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "ab")
        self._lock = threading.Lock()
        self.count = 0

    def emit(self, event: dict) -> None:
        if "schema" not in event:
            event = {"schema": EVENT_SCHEMA, **event}
        line = to_json_bytes(event) + b"\n"
        with self._lock:
            if self._f.closed:
                raise RuntimeError(f"JsonlWriter for {str(self.path)!r} is closed")
            self._f.write(line)
            self._f.flush()
            self.count += 1

    write = emit

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
