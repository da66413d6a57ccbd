"""`railedge eval`: metrics checked on constructed cases with known answers, through the CLI too."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import RAILEDGE
from railedge.config import load_config
from railedge.evaluate import FrameResult, _box_stats, _confusion, auroc, box_match, evaluate

FIXED_ROI = ["roi.mode=fixed", "roi.x=100", "roi.width=100", "log.level=warning", "mqtt.enabled=false"]


def test_auroc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 6, 40).astype(float)
    neg = rng.integers(0, 5, 30).astype(float)
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(pos, neg) == pytest.approx(brute)
    assert auroc([2, 3], [0, 1]) == 1.0 and auroc([0, 1], [2, 3]) == 0.0 and auroc([1, 1], [1]) == 0.5
    assert auroc([], [1.0]) is None


def test_box_match_rules():
    g = (100, 100, 200, 150)
    assert box_match((110, 105, 190, 145), g)  # inside, IoU 0.64
    assert not box_match((300, 300, 400, 400), g)  # apart
    assert box_match((0, 0, 300, 300), (100, 100, 150, 150)) is False  # a huge box does not "find" a small one...
    assert box_match((90, 90, 170, 170), (100, 100, 150, 150))  # ...a box of similar size around it does
    assert box_match((120, 110, 140, 130), (0, 0, 400, 400))  # a fragment lying on a labelled defect points at it


def _fr(gt, name="f"):
    return FrameResult(name, np.zeros((2, 2)), np.zeros((2, 2)), None, None, gt, None, 0.0, 0.0)


def test_box_stats_and_confusion_on_a_constructed_case():
    frames = [
        _fr([("defect", 0, 0, 100, 100), ("dirt", 300, 300, 400, 400)]),
        _fr([("defect", 0, 500, 100, 600), ("gap", 0, 800, 400, 900)]),
        _fr([]),
    ]
    boxes = [
        [{"xyxy": (5, 5, 95, 95), "score": 0.9, "class": "defect", "alarm": True},  # finds the defect
         {"xyxy": (300, 300, 400, 400), "score": 0.8, "class": "dirt", "alarm": False}],  # dirt, logged only
        [{"xyxy": (0, 800, 400, 900), "score": 0.7, "class": "defect", "alarm": True}],  # a joint called defect: false alarm
        [{"xyxy": (10, 10, 50, 50), "score": 0.6, "class": "defect", "alarm": True}],  # on clean rail: false alarm
    ]
    st = _box_stats(frames, boxes, ["defect"])
    assert st["defect_boxes"] == 2 and st["found"] == 1 and st["recall"] == 0.5
    assert st["alarm_boxes"] == 3 and st["false_alarms"] == 2 and st["false_alarms_per_frame"] == pytest.approx(2 / 3, abs=1e-4)
    assert st["precision"] == pytest.approx(1 / 3, abs=1e-4)
    m = _confusion(frames, boxes, ["defect", "dirt", "gap"], ["defect", "dirt", "gap"])
    # rows defect, dirt, gap, background; cols missed, defect, dirt, gap
    assert m == [[1, 1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 1, 0, 0]]


# ------------------------------------------------------------------ a model whose answer is known
def _rail(h=400, w=300, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(30, 4, (h, w))
    img[:, 100:200] = 170 + rng.normal(0, 3, (h, 100))
    return img


@pytest.fixture(scope="module")
def constructed(tmp_path_factory):
    """Ten frames; dark 60x60 squares (defects) in five; a labelled 'dirt' patch that is not dark in two.
    The model: P(defect) = how dark a cell is. It must find every defect and raise nothing else."""
    import torch
    from torch import nn

    from railedge.backbones.export import export_onnx
    from railedge.model import write_meta

    root = tmp_path_factory.mktemp("constructed")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    (data / "masks").mkdir()
    (data / "classes.txt").write_text("defect\ndirt\ngap\n")
    for i in range(10):
        img, lines = _rail(seed=i), []
        mask = np.zeros(img.shape, np.uint8)
        if i % 2 == 0:
            y = 40 + 30 * i
            img[y: y + 60, 120:180] = 20
            mask[y: y + 60, 120:180] = 1
            lines.append(f"0 {150 / 300:.6f} {(y + 30) / 400:.6f} {60 / 300:.6f} {60 / 400:.6f}")
        if i in (3, 7):
            lines.append(f"1 {150 / 300:.6f} {300 / 400:.6f} {40 / 300:.6f} {40 / 400:.6f}")
            mask[280:320, 130:170] = 2
        cv2.imwrite(str(data / "images" / f"{i:07d}.png"), np.clip(img, 0, 255).astype(np.uint8))
        (data / "labels" / f"{i:07d}.txt").write_text("\n".join(lines) + "\n")
        cv2.imwrite(str(data / "masks" / f"{i:07d}.png"), mask)

    class Darkness(nn.Module):
        stride = 8
        out_channels = 4

        def forward(self, x):
            d = torch.clamp(nn.functional.avg_pool2d(torch.relu(0.35 - x), 8) * 20.0, 0.0, 1.0)
            z = torch.zeros_like(d)
            return torch.cat([1.0 - d, d, z, z], 1)

    model = root / "model"
    model.mkdir()
    export_onnx(Darkness(), 128, 32, model / "backbone.onnx")
    meta = {"backbone": "snn", "threshold": 0.5, "smoothing_sigma": 0.0,
            "feature": {"stride": 8, "channels": 4, "grid": [16, 4]},
            "preprocess": {"height": 128, "width": 32, "level": 0.5, "clip": 3.0},
            "scoring": {"mode": "head", "classes": ["normal", "defect", "dirt", "gap"], "normal_channel": 0, "defect_channel": 1},
            "classes": ["defect", "dirt", "gap"], "model_config": {}}
    write_meta(model, meta)
    return data, model


def test_eval_on_a_model_with_a_known_answer(constructed):
    data, model = constructed
    s = evaluate(load_config(None, FIXED_ROI), model, data, fmt="yolo")
    assert s["frames"] == 10 and s["frames_with_defect"] == 5 and s["scoring"] == "head"
    assert s["image_auroc"] == 1.0 and s["tile_auroc"] == 1.0 and s["pixel_auroc"] > 0.95
    at = s["at_threshold"]
    assert at["recall"] == 1.0 and at["found"] == 5 and at["false_alarms"] == 0 and at["precision"] == 1.0
    assert s["misses"] == [] and s["false_alarm_boxes"] == []
    c = s["confusion"]
    assert c["rows"] == ["defect", "dirt", "gap", "background"] and c["cols"] == ["missed", "defect", "dirt", "gap"]
    assert c["counts"] == [[0, 5, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert s["at_fa_target"]["recall"] == 1.0
    # a threshold above every map value finds nothing
    s2 = evaluate(load_config(None, FIXED_ROI), model, data, fmt="yolo", threshold=1.5)
    assert s2["at_threshold"]["recall"] == 0.0 and s2["at_threshold"]["alarm_boxes"] == 0
    # pixel masks (images/ + masks/, value = class id + 1) give the same answer as the boxes
    s3 = evaluate(load_config(None, FIXED_ROI), model, data, fmt="masks")
    assert s3["image_auroc"] == 1.0 and s3["at_threshold"]["recall"] == 1.0 and s3["at_threshold"]["false_alarms"] == 0


def test_eval_cli_json_and_plots(constructed, tmp_path):
    data, model = constructed
    base = RAILEDGE + ["eval", "--model", str(model), "--data", str(data)]
    for s in FIXED_ROI:
        base += ["--set", s]
    r = subprocess.run(base + ["--json", "--plots", str(tmp_path / "plots")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["image_auroc"] == 1.0 and s["inference_ms"]["median"] > 0
    names = {Path(p).name for p in s["plots"]}
    assert names == {"roc.png", "pr.png", "froc.png", "confusion.png"}
    for p in s["plots"]:
        img = cv2.imread(p)
        assert img is not None and img.shape[0] > 100 and img.std() > 5
    r = subprocess.run(base, capture_output=True, text=True)  # human-readable form
    assert r.returncode == 0 and "image AUROC" in r.stdout and "confusion" in r.stdout


def test_eval_memory_bank_model_and_unlabelled_data(small_model, footage):
    cfg = load_config(None, ["log.level=warning"])
    names = sorted(p.name for p in (footage / "frames" / "images").iterdir())[:30]
    s = evaluate(cfg, small_model, footage / "frames", names=names)
    assert s["frames"] == 30
    assert s["scoring"] == "bank" and s["confusion"]["cols"] == ["missed", "anomaly"]
    assert s["image_auroc"] is None or 0.0 <= s["image_auroc"] <= 1.0
    from railedge.errors import DataError

    with pytest.raises(DataError, match="no labels"):
        evaluate(cfg, small_model, footage / "normal")


def test_raildefect_labels_land_on_the_rail_band(raildefect):
    """The real data set's boxes map into the located band (else training would learn ballast)."""
    from railedge.preprocess import Preprocess
    from railedge.train.data import load_frames

    names = sorted(p.name for p in (raildefect / "images").iterdir())[::20]
    fs = load_frames(raildefect, "yolo", Preprocess(512, 128), load_config().roi, reduce=4, names=names)
    assert fs.classes == ["defect", "dirt", "gap"]
    inside = []
    for f in fs.frames:
        for _c, x0, _y0, x1, _y1 in f.boxes:
            b0, b1 = f.band.x0 * f.scale, f.band.x1 * f.scale
            inside.append(max(0.0, min(x1, b1) - max(x0, b0)) / (x1 - x0))
        assert set(np.unique(f.label_map)) <= {0, 1, 2, 3}
    assert np.mean(np.array(inside) > 0.5) > 0.9
