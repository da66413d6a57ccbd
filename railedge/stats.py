"""Latency percentiles and rates."""

from __future__ import annotations

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
