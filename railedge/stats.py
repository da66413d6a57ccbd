"""Latency percentiles, rates over an interval, and the process's resident memory."""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict, deque

import numpy as np


class LatencyStats:
    """Per-stage latency samples in ms (the last `window` per stage; None keeps all)."""

    def __init__(self, window: int | None = None) -> None:
        self._samples: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=window))
        self._order: list[str] = []

    def add(self, stages: dict[str, float]) -> None:
        for k, v in stages.items():
            if k not in self._samples:
                self._order.append(k)
            self._samples[k].append(float(v))

    def count(self) -> int:
        return max((len(v) for v in self._samples.values()), default=0)

    def percentiles(self) -> dict[str, dict[str, float]]:
        out = {}
        for k in self._order:
            a = np.fromiter(self._samples[k], dtype=np.float64)
            if a.size:
                p50, p95, p99 = np.percentile(a, [50, 95, 99])
                out[k] = {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}
        return out

    def reset(self) -> None:
        self._samples.clear()
        self._order.clear()


def format_latency_table(latency: dict[str, dict[str, float]]) -> str:
    rows = [f"{'stage':<12}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}"]
    for k, v in latency.items():
        rows.append(f"{k:<12}{v['p50']:>10.2f}{v['p95']:>10.2f}{v['p99']:>10.2f}")
    return "\n".join(rows)


class RateMeter:
    """Per-second rates of monotonically growing counters, between successive `sample` calls.

        m = RateMeter(); m.sample({"in": 0, "done": 0})
        ... later: m.sample({"in": 250, "done": 240}) -> {"in": 25.0, "done": 24.0} over 10 s"""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}
        self._t: float | None = None

    def sample(self, totals: dict[str, float], now: float | None = None) -> dict[str, float]:
        now = self._clock() if now is None else now
        dt = None if self._t is None else now - self._t
        out = {}
        for k, v in totals.items():
            prev = self._last.get(k)
            if dt is None or dt <= 0 or prev is None:
                out[k] = 0.0
            else:
                out[k] = round(max(0.0, (v - prev) / dt), 3)  # a counter reset never gives a negative rate
        self._last = dict(totals)
        self._t = now
        return out


def rss_bytes() -> int | None:
    """Resident memory of this process now (Linux /proc; None where it cannot be read)."""
    return rss_bytes_of(os.getpid())


def rss_bytes_of(pid: int) -> int | None:
    """Resident memory of process `pid` (VmRSS from /proc/<pid>/status), None when unknown."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if pid == os.getpid() and sys.platform == "darwin":  # pragma: no cover - peak, not current
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return None


def rss_mb() -> float | None:
    b = rss_bytes()
    return None if b is None else round(b / 2**20, 1)
