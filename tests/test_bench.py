"""`railedge bench` end to end on short synthetic footage: every figure it promises is measured and
consistent (the full-size run on real line-scan frames is for the README, not a test)."""

from __future__ import annotations

import json
import subprocess

from conftest import RAILEDGE


def test_bench_json_has_every_measurement(footage):
    r = subprocess.run(
        RAILEDGE + ["bench", str(footage / "frames"), "--frames", "12", "--fit-frames", "10", "--rounds", "2", "--json",
                    "--set", "model.input_height=128", "--set", "model.input_width=32", "--set", "threads=1"],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    b = json.loads(r.stdout)
    assert b["threads"] == 1 and b["input"] == [128, 32] and b["decode_reduce"] == 2  # 288 rows / 2 >= 0.9 x 128
    for bb in ("snn", "resnet"):
        for rt in ("onnx", "torchscript", "eager"):
            v = b["backbone_latency"][bb][rt]
            assert 0 < v["p50_ms"] <= v["p99_ms"] and v["fps"] > 0
        e = b["replay"][bb]
        assert e["frames"] == 12 and len(e["fps_rounds"]) == 2 and min(e["fps_rounds"]) <= e["fps"] <= max(e["fps_rounds"])
        assert {"decode", "inference", "scoring", "total"} <= set(e["latency_ms"])
    ref = b["snn_reference_loop"]["p50_ms"]
    for rt, x in b["snn_speedup_over_snntorch_loop"].items():
        assert abs(x - ref / b["backbone_latency"]["snn"][rt]["p50_ms"]) < 0.02 * x + 0.01
    assert abs(b["replay_fps_ratio_snn_over_resnet"] - b["replay"]["snn"]["fps"] / b["replay"]["resnet"]["fps"]) < 0.02
    assert b["decode_only_fps"] > 0
    s = b["onnx_spinning"]  # a pool of 2 even when inference runs on 1 thread: that is where it spins
    assert s["threads"] == 2 and s["camera_fps"] == 25
    for k in ("on", "off"):
        assert s[k]["n"] == 12 and s[k]["p50_ms"] > 0 and s[k]["cpu_ms_per_frame"] > 0
        assert abs(s[k]["cpu_share_of_period"] - s[k]["cpu_ms_per_frame"] / 40) < 0.002
    assert abs(s["cpu_ratio_on_over_off"] - s["on"]["cpu_ms_per_frame"] / s["off"]["cpu_ms_per_frame"]) < 0.02
    layers = b["snn_activity"]
    assert len(layers) == 4 and all(0 <= v["rate"] <= 1 and len(v["rate_per_step"]) == 8 for v in layers.values())
    e = b["energy_theoretical_45nm"]
    assert e["snn_sops"] > 0 and e["resnet_macs"] > 0 and "theoretical" in e["note"]
    # the table form prints the same run's figures
    from railedge.bench import format_bench

    text = format_bench(b)
    assert "snntorch loop" in text and "SNN / ResNet-18 replay frames/s" in text and "stage p50 ms" in text
    assert "spinning on / off" in text
