"""The model artifact: it loads when whole, and fails clearly when corrupt, truncated or mismatched."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from railedge.errors import ModelError
from railedge.model import ModelArtifact
from conftest import RAILEDGE


def _copy(model, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(model, dst)
    return dst


def test_fitted_artifact_has_everything(small_model):
    m = ModelArtifact.load(small_model)
    names = set(m.meta["files"])
    assert {"backbone.onnx", "bank.npz", "weights.pt"} <= names
    assert m.meta["format"] == "railedge.model/1" and m.meta["railedge_version"]
    assert m.meta["feature"]["grid"] == [m.preprocess.height // m.stride, m.preprocess.width // m.stride]
    assert m.threshold > 0 and m.meta["calibration"]["holdout_frames"] >= 1
    assert m.meta["config"]["model"]["backbone"] == m.backbone


def test_runtimes_agree_on_decisions(small_model, footage):
    """ONNX Runtime, TorchScript and eager PyTorch give the same above/below-threshold decisions."""
    from railedge.datasets import iter_samples
    from railedge.roi import RailBandLocator
    from railedge.config import RoiConfig

    m = ModelArtifact.load(small_model)
    scorer = m.scorer()
    loc = RailBandLocator(RoiConfig())
    xs = []
    for s in iter_samples(footage / "frames", max_frames=24):
        b = loc.locate(s.image)
        xs.append(m.preprocess(s.image[:, b.x0 : b.x1]))
    x = np.stack(xs)[:, None]
    scores = {}
    for rt in ("onnx", "torchscript", "eager"):
        if not m.has_runtime(rt):
            pytest.fail(f"fit did not export {rt}")
        engine = m.engine(rt, 2)
        scores[rt] = np.array([scorer(engine(xi[None])[0])[1] for xi in x])
    for rt in ("torchscript", "eager"):
        np.testing.assert_array_equal(scores[rt] > m.threshold, scores["onnx"] > m.threshold)
        np.testing.assert_allclose(scores[rt], scores["onnx"], rtol=0.05, atol=0.05)


def test_onnx_pool_threads_do_not_spin_unless_asked(small_model, footage):
    """config 'spinning': ORT's default spin-wait keeps a core busy between camera frames; railedge
    sessions turn it off, and on when asked, with the same outputs either way."""
    from railedge.config import Config, load_config

    m = ModelArtifact.load(small_model)
    x = np.random.default_rng(0).random((1, 1, m.preprocess.height, m.preprocess.width), dtype=np.float32)
    outs = {}
    for spinning in (False, True):
        engine = m.engine("onnx", 2, spinning)
        opts = engine.session.get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spinning else "0")
        assert opts.intra_op_num_threads == 2
        outs[spinning] = engine(x)
    np.testing.assert_array_equal(outs[False], outs[True])
    assert m.engine("onnx", 2).session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert Config().spinning is False
    with pytest.raises(Exception, match="spinning"):
        Config().with_overrides(["spinning=sometimes"])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "model.json").unlink(), "no model.json"),
        (lambda d: (d / "model.json").write_text("{not json"), "model.json is corrupt"),
        (lambda d: (d / "bank.npz").write_bytes((d / "bank.npz").read_bytes()[:100]), "truncated"),
        (lambda d: (d / "backbone.onnx").unlink(), "backbone.onnx is missing"),
        (lambda d: _flip_byte(d / "backbone.onnx"), "SHA-256"),
        (lambda d: _edit_meta(d, format="railedge.model/0"), "format"),
        (lambda d: _edit_meta(d, feature={"stride": 8, "channels": 3, "grid": [1, 1]}), "does not match"),
    ],
)
def test_damaged_artifacts_fail_clearly(small_model, tmp_path, damage, message):
    d = _copy(small_model, tmp_path)
    damage(d)
    with pytest.raises(ModelError, match=message):
        ModelArtifact.load(d)


def test_cli_reports_bad_model_without_traceback(small_model, footage, tmp_path):
    d = _copy(small_model, tmp_path)
    _flip_byte(d / "bank.npz")
    r = subprocess.run(RAILEDGE + ["replay", "--model", str(d), str(footage / "track.mp4"), "--set", "mqtt.enabled=false"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "bank.npz" in r.stderr and "refit" in r.stderr and "Traceback" not in r.stderr


def test_missing_runtime_export_names_the_fix(small_model, tmp_path):
    d = _copy(small_model, tmp_path)
    meta = json.loads((d / "model.json").read_text())
    del meta["files"]["backbone.ts"]
    (d / "backbone.ts").unlink()
    (d / "model.json").write_text(json.dumps(meta))
    m = ModelArtifact.load(d)
    with pytest.raises(ModelError, match="railedge export"):
        m.engine("torchscript")
    r = subprocess.run(RAILEDGE + ["export", "--model", str(d), "--format", "torchscript"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert ModelArtifact.load(d).has_runtime("torchscript")


def _flip_byte(path):
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0xFF
    path.write_bytes(bytes(b))


def _edit_meta(d, **kw):
    meta = json.loads((d / "model.json").read_text())
    meta.update(kw)
    (d / "model.json").write_text(json.dumps(meta))
