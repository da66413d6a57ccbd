"""Shared fixtures: paths, the real data set (skips with a reason when absent)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAILDEFECT = Path(os.environ.get("RAILEDGE_RAILDEFECT", ROOT.parent / "shared" / "data" / "raildefect"))
RAILEDGE = [sys.executable, "-m", "railedge.cli"]


@pytest.fixture(scope="session")
def raildefect() -> Path:
    if not (RAILDEFECT / "images").is_dir():
        pytest.skip(f"real rail images not present at {RAILDEFECT} (set RAILEDGE_RAILDEFECT); they are not shipped with railedge")
    return RAILDEFECT
