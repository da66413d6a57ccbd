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


# Small, fast footage and models shared by the end-to-end tests (session scope: built once).
SMALL_MODEL = ["--set", "model.input_height=256", "--set", "model.input_width=64", "--set", "mqtt.enabled=false"]


@pytest.fixture(scope="session")
def footage(tmp_path_factory) -> Path:
    from railedge.synth import make_footage

    out = tmp_path_factory.mktemp("footage")
    make_footage(out, frames=120, seed=3, normal_frames=60)
    return out


@pytest.fixture(scope="session")
def small_model(footage, tmp_path_factory) -> Path:
    import subprocess

    out = tmp_path_factory.mktemp("models") / "snn"
    r = subprocess.run(RAILEDGE + ["fit", "--data", str(footage / "normal"), "--out", str(out)] + SMALL_MODEL,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out
