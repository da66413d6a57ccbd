"""`railedge train`: a tiny model trained for a few steps on tiny synthetic footage; resume and seeds
reproduce it exactly; the artifact runs through ONNX Runtime with class output; classes reach events."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import RAILEDGE
from railedge.config import load_config
from railedge.errors import DataError
from railedge.model import ModelArtifact

TINY = ["model.input_height=128", "model.input_width=32", "model.snn.time_steps=4", "train.tile_rows=64",
        "train.epochs=1", "train.tiles_per_image=1", "train.batch_size=8", "train.checkpoint_every=2",
        "train.head_width=16", "mqtt.enabled=false", "log.level=warning"]


def tiny_cfg(*extra: str):
    return load_config(None, TINY + list(extra))


def _state(model_dir: Path) -> dict:
    import torch

    return torch.load(model_dir / "weights.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> Path:
    """Smaller than the shared fixture: 40 small frames train in a few seconds."""
    from railedge.synth import make_footage

    out = tmp_path_factory.mktemp("tiny_footage")
    make_footage(out, frames=40, seed=5, normal_frames=24, width=192, height=160)
    return out


@pytest.fixture(scope="module")
def trained(footage, tmp_path_factory) -> Path:
    from railedge.train.trainer import train

    out = tmp_path_factory.mktemp("trained") / "snn"
    s = train(tiny_cfg(), footage / "frames", out)
    assert s["mode"] == "labelled" and s["scoring"] == "head"
    return out


def test_artifact_has_head_and_runs_in_onnx_runtime(trained, footage):
    from railedge.runtime.onnx import OnnxEngine
    from railedge.train.data import load_frames

    m = ModelArtifact.load(trained)
    assert m.has_head and m.head_classes == ["normal", "defect", "dirt", "gap"]
    assert m.bank is None and {"backbone.onnx", "weights.pt", "training.json", "training_curve.png"} <= set(m.meta["files"])
    assert 0.0 < m.threshold < 1.0 and m.meta["calibration"]["holdout_frames"] > 0
    fs = load_frames(footage / "frames", "yolo", m.preprocess, tiny_cfg().roi)
    x = np.stack([f.x for f in fs.frames[:6]])[:, None]
    onnx = OnnxEngine(trained / "backbone.onnx")
    probs = np.concatenate([onnx(x[i: i + 1]) for i in range(len(x))])  # frame by frame, as at the edge
    assert probs.shape == (6, 4, 128 // 8, 32 // 8)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    scorer = m.scorer()
    amap, score = scorer(probs[0])
    assert amap.shape == (16, 4) and score == pytest.approx(float(amap.max()))
    cls, cs = scorer.classify(probs[0], np.ones((16, 4), bool))
    assert cls in ("defect", "dirt", "gap") and 0.0 <= cs <= 1.0
    # the eager module (weights.pt) gives the same probabilities as the exported graph
    eager = np.concatenate([m.engine("eager")(x[i: i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(eager, probs, atol=0.05)
    assert (np.abs(eager - probs) < 1e-3).mean() > 0.95
    assert m.has_runtime("torchscript")
    ts = np.concatenate([m.engine("torchscript")(x[i: i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(ts, probs, atol=0.05)
    curve = json.loads((trained / "training.json").read_text())["curve"]
    assert curve["epochs"] and curve["epochs"][0]["val_loss"] > 0 and len(curve["steps"]) == curve["epochs"][-1]["step"]


def test_resume_after_interruption_equals_uninterrupted_run(footage, tmp_path):
    """A run stopped at step 5 and resumed gives the same weights, bit for bit, as one that was
    never stopped; both are separate runs of the same seed, so the seed reproduces the model."""
    from railedge.train.trainer import TrainingStopped, train

    cfg = tiny_cfg("train.epochs=2")  # 8 steps: stop inside the second epoch
    with pytest.raises(TrainingStopped) as e:
        train(cfg, footage / "frames", tmp_path / "a", stop_after=5)
    assert e.value.step == 5 and e.value.checkpoint.is_file()
    train(cfg, footage / "frames", tmp_path / "a")
    assert not (tmp_path / "a.train").exists()  # the checkpoint goes once the model is written
    train(cfg, footage / "frames", tmp_path / "b")
    sa, sb = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert sa.keys() == sb.keys()
    for k in sa:
        assert np.array_equal(sa[k].numpy(), sb[k].numpy()), k
    ca = json.loads((tmp_path / "a" / "training.json").read_text())["curve"]
    cb = json.loads((tmp_path / "b" / "training.json").read_text())["curve"]
    assert ca["steps"] == cb["steps"]


def test_other_seed_differs_and_foreign_checkpoint_is_refused(footage, tmp_path, trained):
    from railedge.train.trainer import TrainingStopped, train

    with pytest.raises(TrainingStopped):
        train(tiny_cfg("train.seed=1"), footage / "frames", tmp_path / "c", stop_after=2)
    with pytest.raises(DataError, match="--restart"):
        train(tiny_cfg("train.seed=2"), footage / "frames", tmp_path / "c", stop_after=2)
    with pytest.raises(TrainingStopped):
        train(tiny_cfg("train.seed=2"), footage / "frames", tmp_path / "c", stop_after=2, restart=True)
    import torch

    ck = torch.load(tmp_path / "c.train" / "checkpoint.pt", weights_only=False)["model"]
    ref = _state(trained)
    assert any(not torch.equal(ck[k], ref[k]) for k in ref if ref[k].dtype.is_floating_point)


def test_cli_train_progress_stop_and_resume(footage, tmp_path):
    args = RAILEDGE + ["train", "--data", str(footage / "frames"), "--out", str(tmp_path / "m")]
    for s in TINY:
        args += ["--set", s]
    r = subprocess.run(args + ["--stop-after", "3"], capture_output=True, text=True)
    assert r.returncode == 3 and "run the same command again to resume" in r.stderr, r.stderr
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming at step 3" in r.stderr and "step 4/4" in r.stderr  # progress bar
    assert "epoch  train loss" in r.stdout and "training_curve.png" in r.stdout
    assert ModelArtifact.load(tmp_path / "m").has_head


def test_head_dilation_is_rebuilt_from_the_artifact(footage, tmp_path):
    """train.head_dilation changes no weight shape, so a loader that ignored it would load the weights
    silently and compute something else: the eager rebuild must match the exported graph."""
    from railedge.train.data import load_frames
    from railedge.train.trainer import train

    train(tiny_cfg("train.head_dilation=2"), footage / "frames", tmp_path / "d")
    m = ModelArtifact.load(tmp_path / "d")
    assert m.scoring["head"]["dilation"] == 2
    fs = load_frames(footage / "frames", "yolo", m.preprocess, tiny_cfg().roi)
    x = fs.frames[3].x[None, None]
    onnx, eager = m.engine("onnx")(x), m.engine("eager")(x)
    assert (np.abs(eager - onnx) < 1e-3).mean() > 0.95


@pytest.mark.parametrize("scoring", ["head", "bank"])
def test_normal_only_mode(footage, tmp_path, scoring):
    from railedge.train.trainer import train

    s = train(tiny_cfg(f"train.normal_scoring={scoring}"), footage / "normal", tmp_path / "n")
    assert s["mode"] == "normal" and s["scoring"] == scoring
    m = ModelArtifact.load(tmp_path / "n")
    if scoring == "head":
        assert m.head_classes == ["normal", "defect"]
    else:
        assert not m.has_head and m.bank is not None and m.bank.dim == m.meta["feature"]["channels"]
    assert m.meta["trained"]["mode"] == "normal"


def test_classes_reach_events(trained, footage, tmp_path):
    """With a class head every event carries class, class_score and alarm; classes outside
    events.alarm_classes are published with alarm false. The events stay schema-valid."""
    import jsonschema

    from railedge.schemas import __file__ as schemas_init

    schema = json.loads((Path(schemas_init).parent / "event.json").read_text())
    ev_file = tmp_path / "ev.jsonl"
    args = RAILEDGE + ["replay", "--model", str(trained), str(footage / "track.mp4"), "--events-out", str(ev_file),
                       "--set", "scoring.threshold=0.02", "--set", "events.alarm_classes=[dirt]",
                       "--set", "snapshots.enabled=false", "--set", "mqtt.enabled=false", "--max-frames", "40"]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in ev_file.read_text().splitlines()]
    assert events, "a near-zero threshold must give events"
    for ev in events:
        jsonschema.validate(ev, schema)
        assert ev["class"] in ("defect", "dirt", "gap") and 0.0 <= ev["class_score"] <= 1.0
        assert ev["alarm"] is (ev["class"] == "dirt")


def test_labelled_training_needs_labels(footage, tmp_path):
    from railedge.train.trainer import train

    with pytest.raises(DataError, match="no labels"):
        train(tiny_cfg(), footage / "normal", tmp_path / "x", mode="labelled")


def test_synthetic_defects_are_deterministic_and_masked():
    from railedge.synthetic_defects import KINDS, paste

    rng = np.random.default_rng(0)
    x = (0.5 + 0.03 * rng.standard_normal((128, 32))).astype(np.float32)
    for kind in KINDS:
        a, ma, ka = paste(x, np.random.default_rng(7), kinds=(kind,))
        b, mb, _ = paste(x, np.random.default_rng(7), kinds=(kind,))
        assert ka == kind and np.array_equal(a, b) and np.array_equal(ma, mb)
        assert ma.any(), kind
        changed = np.abs(a - x) > 0.06 * 0.5
        assert (ma[changed] > 0).mean() > 0.5, kind  # the mask covers what visibly changed
        assert changed[ma == 0].mean() < 0.05, kind  # and little changes outside it


def test_split_by_run_holds_out_whole_runs():
    from railedge.train.data import LabelledFrame, split_by_run
    from railedge.values import Band

    names = [f"{r}{i:06d}.jpg" for r, n in (("1000001", 10), ("1000002", 6), ("1000003", 4)) for i in range(n)]
    frames = [LabelledFrame(n, np.zeros((8, 8), np.float32), None, None, Band(0, 8, 0, 8), 1.0, (8, 8)) for n in names]
    tr, ho = split_by_run(frames, 0.2)
    assert {frames[i].run for i in ho} == {"1000003"} and len(tr) == 16
    assert not {frames[i].run for i in tr} & {frames[i].run for i in ho}


def test_cell_targets_soft_and_ignored():
    from railedge.train.data import IGNORE, cell_targets

    lm = np.zeros((16, 16), np.uint8)
    lm[0:8, 0:8] = 1  # one cell fully defect
    lm[8:10, 0:8] = 2  # a quarter of a cell dirt -> fully dirt
    lm[8:16, 8:16] = IGNORE
    t, w = cell_targets(lm, 3, 8)
    assert t.shape == (4, 2, 2)
    np.testing.assert_allclose(t.sum(0), 1.0)
    assert t[1, 0, 0] == 1.0 and t[2, 1, 0] == 1.0 and t[0, 0, 1] == 1.0
    assert w[1, 1] == 0.0 and w[0, 0] == 1.0


def test_recalibrate_reproduces_the_trained_threshold(trained, tmp_path):
    """`railedge train --recalibrate` runs the same calibration as the end of training: unchanged
    settings give the same threshold; the artifact still loads (checksums rewritten)."""
    import shutil

    from railedge.train.trainer import recalibrate

    d = tmp_path / "m"
    shutil.copytree(trained, d)
    before = ModelArtifact.load(d).threshold
    r = recalibrate(tiny_cfg(), d)
    m = ModelArtifact.load(d)
    assert r["threshold"] == pytest.approx(before, abs=1e-6) and m.threshold == pytest.approx(before, abs=1e-6)
    assert m.meta["calibration"]["recalibrated"]


def test_resample_augmentation_is_off_by_default_and_keeps_labels():
    from railedge.train.trainer import _augment

    rng_img = np.random.default_rng(3)
    x = (0.5 + 0.2 * rng_img.standard_normal((64, 32))).astype(np.float32)
    lm = np.zeros((64, 32), np.uint8)
    lm[20:30, 5:15] = 1
    off_a = _augment(x, lm, np.random.default_rng([1, 2]), 0.5)
    off_b = _augment(x, lm, np.random.default_rng([1, 2]), 0.5, 0.0)
    np.testing.assert_array_equal(off_a[0], off_b[0])  # resample 0 draws nothing: default runs reproduce
    on = _augment(x, lm, np.random.default_rng([1, 2]), 0.5, 1.0)
    assert on[0].shape == x.shape and on[0].dtype == np.float32
    np.testing.assert_array_equal(on[1], off_a[1])  # the labels move with the geometry only
    assert not np.allclose(on[0], off_a[0])
    # the round trip through a smaller size removes fine texture
    hf = lambda a: float(np.abs(np.diff(a, axis=0)).mean())  # noqa: E731
    assert hf(on[0]) < hf(off_a[0])


def test_copy_paste_cuts_labelled_instances_and_pastes_them_with_their_class():
    from railedge.train.copy_paste import MARGIN, cut_instances, paste
    from railedge.train.data import IGNORE, LabelledFrame
    from railedge.values import Band

    rng_img = np.random.default_rng(4)
    x = (0.5 + 0.05 * rng_img.standard_normal((96, 32))).astype(np.float32)
    lm = np.zeros(x.shape, np.uint8)
    x[10:20, 8:16] = 0.1  # a dark "defect" (class 1)
    lm[10:20, 8:16] = 1
    x[60:64, 0:32] = 0.05  # a joint across the rail (class 3)
    lm[60:64, 0:32] = 3
    lm[80:90, 0:4] = IGNORE
    src = LabelledFrame("1000001000001.jpg", x, lm, [], Band(0, 32, 0, 96), 1.0, (96, 32))
    ins = cut_instances([src])
    assert sorted(i.cls for i in ins) == [1, 3]
    d = next(i for i in ins if i.cls == 1)
    assert d.x.shape == (10 + 2 * MARGIN, 8 + 2 * MARGIN) and d.alpha[MARGIN:-MARGIN, MARGIN:-MARGIN].min() == 1.0
    assert d.alpha[0, 0] < 0.5 and int((d.lm == 1).sum()) == 80  # the margin is rail, not label

    tile = np.full((64, 32), 0.5, np.float32)
    tl = np.zeros(tile.shape, np.uint8)
    a, la = paste(tile, tl, ins, np.random.default_rng([3, 1]), 2)
    b, lb = paste(tile, tl, ins, np.random.default_rng([3, 1]), 2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert tile.max() == 0.5 and not tl.any()  # inputs untouched
    assert la.any() and set(np.unique(la)) <= {0, 1, 3}
    assert a[la > 0].mean() < 0.3  # the labelled pixels are the dark instance pixels
    assert np.abs(a[la == 0] - 0.5).mean() < 0.05  # the rest stays rail-like (feathered margin)


def test_copy_paste_is_off_by_default_and_reaches_training_tiles(footage):
    from railedge.train.data import load_frames
    from railedge.train.trainer import TileSampler
    from railedge.preprocess import Preprocess

    cfg = tiny_cfg()
    fs = load_frames(footage / "frames", "auto", Preprocess(cfg.model.input_height, cfg.model.input_width), cfg.roi)
    off = TileSampler(fs.frames, len(fs.classes), cfg, 8, False)
    assert off._instances == []
    on_cfg = tiny_cfg("train.copy_paste=1.0", "train.copy_paste_max=3")
    on = TileSampler(fs.frames, len(fs.classes), on_cfg, 8, False)
    assert on._instances
    labelled = lambda s: sum(float(s.tile(0, j)[1][1:].sum()) for j in range(8))  # noqa: E731
    assert labelled(on) > labelled(off)  # more labelled cells per tile with instances pasted in
    np.testing.assert_array_equal(on.tile(0, 3)[0], on.tile(0, 3)[0])  # still a function of (seed, epoch, tile)


def test_init_fine_tunes_from_a_trained_model_and_refuses_other_backbones(footage, tmp_path, trained):
    import torch

    from railedge.errors import ModelError
    from railedge.train.trainer import train

    # zero steps of training would be nothing to test: one epoch at lr 0 keeps the weights as they start
    out = tmp_path / "fine"
    train(tiny_cfg(f"train.init={trained}", "train.lr=0.0", "train.weight_decay=0.0", "train.seed=9"), footage / "frames", out)
    a, b = _state(trained), _state(out)
    for k in a:
        if k.startswith("backbone.") and a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], msg=k)  # started from the given weights, not seed 9's
    fresh = tmp_path / "fresh"
    train(tiny_cfg("train.lr=0.0", "train.weight_decay=0.0", "train.seed=9"), footage / "frames", fresh)
    c = _state(fresh)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.startswith("backbone.") and a[k].is_floating_point())
    # a normal-only head (2 classes) starts a labelled one (4 classes): the class layer is new, the rest is taken
    normal = tmp_path / "normal"
    train(tiny_cfg(), footage / "normal", normal, mode="normal")
    s = train(tiny_cfg(f"train.init={normal}"), footage / "frames", tmp_path / "from_normal")
    assert s["mode"] == "labelled"
    # a fitted memory-bank model has a backbone only: the whole head is new
    from railedge.fit import fit

    fit(tiny_cfg(), footage / "normal", tmp_path / "fitted")
    train(tiny_cfg(f"train.init={tmp_path / 'fitted'}", "train.lr=0.0", "train.weight_decay=0.0"), footage / "frames", tmp_path / "from_fit")
    f_state, ff = torch.load(tmp_path / "fitted" / "weights.pt", weights_only=True), _state(tmp_path / "from_fit")
    for k, v in f_state.items():
        if v.is_floating_point():
            torch.testing.assert_close(ff["backbone." + k], v, msg=k)
    with pytest.raises(ModelError, match=r"model\.snn\.time_steps"):
        train(tiny_cfg(f"train.init={trained}", "model.snn.time_steps=3"), footage / "frames", tmp_path / "bad")
    with pytest.raises(ModelError, match="train.init"):
        train(tiny_cfg(f"train.init={tmp_path / 'nowhere'}"), footage / "frames", tmp_path / "bad2")
    # checked before the data is read: a wrong init is named even when the data is wrong too
    with pytest.raises(ModelError, match=r"model\.snn\.time_steps"):
        train(tiny_cfg(f"train.init={trained}", "model.snn.time_steps=3"), tmp_path / "no_data_here", tmp_path / "bad3")
