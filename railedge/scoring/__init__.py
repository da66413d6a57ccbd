"""Memory bank, anomaly maps and thresholds (numpy only)."""

from railedge.scoring.anomaly import AnomalyScorer, calibrate_threshold
from railedge.scoring.memory_bank import ColumnMemoryBank

__all__ = ["AnomalyScorer", "ColumnMemoryBank", "calibrate_threshold"]
