"""`railedge compare`: both backbones on the same crops; per-layer features, spikes per time step,
membranes, and per-runtime timing with warm-up excluded."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from tests.conftest import RAILEDGE

pytest.importorskip("torch")

TINY = ["--set", "model.input_height=64", "--set", "model.input_width=32", "--set", "model.snn.time_steps=4"]


def test_value_stats_are_exact_and_histogram_covers_every_value():
    from railedge.compare import ValueStats

    s = ValueStats()
    s.add(np.array([0.0, 1.0, 2.0, 3.0]))
    s.add(np.array([[-1.0, 5.0]]))
    r = s.result()
    assert (r["min"], r["max"], r["values"]) == (-1.0, 5.0, 6)
    assert r["mean"] == pytest.approx(10 / 6) and r["zero_fraction"] == pytest.approx(1 / 6)
    assert sum(r["hist"]["counts"]) == 6 and r["hist"]["edges"][0] == -1.0 and r["hist"]["edges"][-1] == 5.0


def test_time_engine_excludes_warmup_and_reports_median_p99():
    from railedge.compare import WARMUP, time_engine

    calls = []

    def engine(x):
        calls.append(x.shape)
        return x

    x = np.zeros((5, 1, 8, 8), np.float32)
    r = time_engine(engine, x, repeat=3)
    assert len(calls) == WARMUP + 15 and all(c == (1, 1, 8, 8) for c in calls)  # batch 1
    assert r["frames"] == 15 and len(r["samples_ms"]) == 15 and r["median_ms"] <= r["p99_ms"]


@pytest.mark.slow
def test_compare_cli_json_on_footage(footage, tmp_path):
    out = tmp_path / "cmp.json"
    r = subprocess.run(RAILEDGE + ["compare", str(footage / "track.mp4"), "--frames", "3", "--repeat", "2",
                                   "--runtimes", "eager,onnx", "--json", "--out", str(out)] + TINY,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert json.loads(out.read_text())["frames"] == 3
    assert res["frames"] == 3 and res["input"] == [64, 32]
    snn, rn = res["snn"], res["resnet"]
    # spikes per layer and per time step, for every SNN layer
    assert snn["time_steps"] == 4 and len(snn["layers"]) == 4
    for name, L in snn["layers"].items():
        assert len(L["spike_counts_per_step"]) == 4
        assert 0.0 <= L["rate"] <= 1.0
        assert sum(L["spike_counts_per_step"]) == pytest.approx(L["spikes_per_frame"])
        m = L["membrane"]
        assert m["min"] <= m["mean"] <= m["max"] and m["values"] > 0
    assert any(L["spikes_per_frame"] > 0 for L in snn["layers"].values())
    # feature values per layer for both backbones, with histograms
    assert {"lif1.rate", "lif1.mem"} <= set(snn["features"])
    assert {"stem", "layer2", "layer3", "features"} <= set(rn["layers"])
    for s in list(snn["features"].values()) + list(rn["layers"].values()):
        assert s["min"] <= s["mean"] <= s["max"] and sum(s["hist"]["counts"]) > 0
    assert rn["layers"]["layer2"]["min"] >= 0.0  # after a ReLU
    # timing per backbone and runtime, warm-up excluded, 3 frames x 2 passes
    for bb in ("snn", "resnet"):
        for rt in ("eager", "onnx"):
            t = res["timing"][bb][rt]
            assert t["frames"] == 6 and 0 < t["median_ms"] <= t["p99_ms"]
    # the text form names what was compared
    r2 = subprocess.run(RAILEDGE + ["compare", str(footage / "frames"), "--frames", "2", "--repeat", "1", "--runtimes", "eager"] + TINY,
                        capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "spikes per frame" in r2.stdout and "median" in r2.stdout and "resnet" in r2.stdout


def test_compare_rejects_what_is_neither_model_nor_footage(tmp_path):
    r = subprocess.run(RAILEDGE + ["compare", str(tmp_path / "nothing")], capture_output=True, text=True)
    assert r.returncode == 2 and "neither a fitted model" in r.stderr
