"""SnnBackbone: shapes, reference-vs-optimised parity, export (ONNX, TorchScript), seed preset, registry leak,
activity and energy figures. Small inputs and few time steps keep the whole file well under a minute."""

from __future__ import annotations

import contextlib
import io
import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
snntorch = pytest.importorskip("snntorch")

from torch import nn  # noqa: E402

from railedge.backbones.snn import (  # noqa: E402
    E_AC_PJ,
    E_MAC_PJ,
    SnnBackbone,
    clear_snntorch_registry,
    export_onnx,
    trace_torchscript,
)
from railedge.config import SnnConfig  # noqa: E402


def rail_like(batch: int = 1, h: int = 64, w: int = 32, seed: int = 0) -> torch.Tensor:
    """A structured input: a bright band with streaks along the scan direction, noise, dark pits and
    a joint line; values about 0..1.5 like a brightness-normalised crop."""
    g = torch.Generator().manual_seed(seed)
    cols = torch.linspace(-1, 1, w)
    band = 1.1 / (1 + (cols / 0.6) ** 8)  # bright rail head, dark ballast at the sides
    streaks = 0.15 * torch.randn(w, generator=g)
    img = (band + streaks).expand(h, w).clone()
    img += 0.08 * torch.randn(h, w, generator=g)
    img[h // 3: h // 3 + 4, w // 2 - 3: w // 2 + 2] *= 0.2  # a dark pit
    img[2 * h // 3, :] = 0.05  # a gap / joint across the rail
    img = img.clamp(0, 1.5)
    return img.expand(batch, 1, h, w).contiguous() + 0.02 * torch.rand(batch, 1, h, w, generator=g)


def random_input(batch: int = 2, h: int = 64, w: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, h, w, generator=g) * 1.5


SMALL = SnnConfig(channels=(16, 16, 32), fc_features=32, time_steps=6)


# ------------------------------------------------------------------ shapes and stride
@pytest.mark.parametrize("features,factor", [("spikes", 1), ("membrane", 1), ("both", 2)])
def test_shapes_and_stride(features: str, factor: int) -> None:
    cfg = SnnConfig(channels=(16, 16, 32), fc_features=24, time_steps=3, features=features)
    m = SnnBackbone(cfg)
    x = random_input(2, 64, 32)
    with torch.no_grad():
        y = m(x)
    assert m.stride == 8
    assert m.out_channels == factor * (16 + 16 + 32 + 24)
    assert y.shape == (2, m.out_channels, 8, 4)
    assert y.dtype == torch.float32
    slices = m.feature_slices
    assert sum(s.stop - s.start for s in slices.values()) == m.out_channels
    assert set(k.split(".")[0] for k in slices) == {"lif1", "lif2", "lif3", "lif4"}


@pytest.mark.parametrize("channels", [(16,), (8, 16), (8, 16, 16, 16)])
def test_other_depths_reach_stride_8(channels: tuple[int, ...]) -> None:
    m = SnnBackbone(SnnConfig(channels=channels, fc_features=8, time_steps=2))
    with torch.no_grad():
        y = m(random_input(1, 32, 16))
    assert y.shape == (1, m.out_channels, 4, 2)


def test_bad_input_rejected() -> None:
    m = SnnBackbone(SMALL)
    with pytest.raises(ValueError):
        m(torch.rand(1, 3, 64, 32))
    with pytest.raises(ValueError):
        m(torch.rand(1, 1, 60, 32))


# ------------------------------------------------------------------ parity
def _assert_counts_agree(m: SnnBackbone, x: torch.Tensor) -> None:
    with torch.no_grad():
        ref = m.reference_spike_counts(x)
        opt = m.spike_counts(x)
    assert len(ref) == len(opt)
    # layer 1: identical input current in both paths -> identical spikes
    assert torch.equal(ref[0], opt[0])
    for r, o in zip(ref, opt):
        assert r.shape == o.shape
        mismatched = (r != o).float().mean().item()
        assert mismatched <= 1e-3, f"{mismatched:.2%} of neurons differ in spike count"
        assert (r - o).abs().max().item() <= 2


@pytest.mark.parametrize("make", [random_input, rail_like])
@pytest.mark.parametrize(
    "cfg",
    [
        SMALL,
        SnnConfig(channels=(16, 16, 32), fc_features=16, time_steps=5, beta=0.9, threshold=0.7, reset="zero"),
        SnnConfig(channels=(8, 16), fc_features=16, time_steps=4, beta=0.8, reset="none"),
    ],
)
def test_reference_and_optimised_spike_counts_agree(make, cfg: SnnConfig) -> None:
    m = SnnBackbone(cfg)
    _assert_counts_agree(m, make())


@pytest.mark.parametrize("make", [random_input, rail_like])
def test_reference_and_optimised_features_agree(make) -> None:
    m = SnnBackbone(SMALL)
    x = make()
    with torch.no_grad():
        ref = m.reference_forward(x)
        opt = m(x)
    assert ref.shape == opt.shape
    # a spike flip near threshold changes a rate by 1/T in one neuron, averaged over the pool
    assert (ref - opt).abs().max().item() <= 1.0 / SMALL.time_steps + 1e-5
    assert (ref - opt).abs().mean().item() < 1e-4


def test_inplace_and_functional_paths_agree() -> None:
    """Eager in-place path vs the functional (export/training) path: identical spikes and counts; the
    functional membrane sum comes from the recurrence identity, so it differs only by rounding."""
    m = SnnBackbone(SMALL)
    x = rail_like(2)
    with torch.no_grad():
        a = m(x)
        counts_a = m.spike_counts(x)
        m.inplace = False
        b = m(x)
        counts_b = m.spike_counts(x)
        m.inplace = True
        m.channels_last = True
        c = m(x)
    for ca, cb in zip(counts_a, counts_b):
        assert torch.equal(ca, cb)
    rate = np.concatenate([np.arange(s.start, s.stop) for k, s in m.feature_slices.items() if k.endswith(".rate")])
    assert torch.equal(a[:, rate], b[:, rate])
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    assert (a - c).abs().max().item() <= 1.0 / SMALL.time_steps + 1e-5


@pytest.mark.parametrize("reset,beta", [("subtract", 0.5), ("none", 0.8), ("zero", 0.5), ("subtract", 0.95)])
def test_membrane_sum_identity_matches_accumulation(reset: str, beta: float) -> None:
    from railedge.backbones.snn import lif_functional, lif_inplace

    g = torch.Generator().manual_seed(7)
    cur = torch.randn(6 * 2, 4, 5, 3, generator=g) * 1.5
    for const, c in ((False, cur), (True, cur[:2])):
        a = lif_functional(c, 6, beta, 0.9, reset, const=const)
        b = lif_inplace(c, 6, beta, 0.9, reset, const=const)
        assert torch.equal(a.spikes, b.spikes) and torch.equal(a.counts, b.counts)
        assert torch.allclose(a.mem_sum, b.mem_sum, rtol=1e-5, atol=1e-5)


def test_membranes_match_snntorch_layer1_exactly() -> None:
    """Layer-1 membranes: the optimised LIF uses snntorch's operation order -> bit-identical."""
    m = SnnBackbone(SnnConfig(channels=(16, 16), fc_features=8, time_steps=5, beta=0.9, threshold=0.8))
    x = rail_like()
    with torch.no_grad():
        ref_outs, _ = m._reference_run(x)
        opt_outs, _ = m._run(x, all_layers=True, keep_mems=True)
    for a, b in zip(ref_outs[0].mems, opt_outs[0].mems):
        assert torch.equal(a, b)


def test_training_path_has_surrogate_gradient() -> None:
    m = SnnBackbone(SnnConfig(channels=(8, 16), fc_features=8, time_steps=3))
    m.train()
    x = rail_like()
    y = m(x)
    y.sum().backward()
    g = m.stages[1].synapse.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    with torch.no_grad():
        assert torch.allclose(m(x), y.detach(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ export
@pytest.fixture(scope="module")
def export_model() -> SnnBackbone:
    return SnnBackbone(SnnConfig(channels=(16, 16, 32), fc_features=16, time_steps=4))


@pytest.mark.parametrize("dynamo", [True, False])
def test_onnx_export_runs_in_onnxruntime(tmp_path, export_model: SnnBackbone, dynamo: bool) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    path = tmp_path / "snn.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        export_onnx(export_model, path, height=64, width=32, dynamo=dynamo, opset=18 if dynamo else 17,
                    dynamic_batch=dynamo)
    assert path.is_file()
    assert not list(tmp_path.glob("*.data")), "weights must be embedded in the one .onnx file"
    import onnx

    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 17
    ops = {n.op_type for n in model.graph.node}
    assert "Greater" in ops and "Conv" in ops
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for x in (rail_like(1, 64, 32), random_input(1, 64, 32, seed=3)):
        (got,) = sess.run(None, {"image": x.numpy()})
        with torch.no_grad():
            want = export_model(x).numpy()
        assert got.shape == want.shape == (1, export_model.out_channels, 8, 4)
        T = export_model.time_steps
        rates = export_model.feature_slices
        rate_cols = np.concatenate([np.arange(s.start, s.stop) for k, s in rates.items() if k.endswith(".rate")])
        diff = np.abs(got - want)
        assert diff[:, rate_cols].max() <= 1.0 / T + 1e-5  # at most a flip near threshold
        assert diff.mean() < 1e-4
        # spike-count-derived features agree almost everywhere
        assert (diff[:, rate_cols] > 1e-5).mean() < 0.01
    if dynamo:  # exported with a dynamic batch axis
        xb = torch.cat([rail_like(1, 64, 32), random_input(1, 64, 32, seed=3)])
        (got,) = sess.run(None, {"image": xb.numpy()})
        with torch.no_grad():
            want = export_model(xb).numpy()
        assert got.shape == want.shape == (2, export_model.out_channels, 8, 4)
        assert np.abs(got - want).mean() < 1e-4


def test_torchscript_trace_saves_and_loads(tmp_path) -> None:
    m = SnnBackbone(SnnConfig(channels=(16, 16, 32), fc_features=16, time_steps=4))
    x = rail_like(1, 64, 32)
    path = tmp_path / "snn.pt"
    ts = trace_torchscript(m, x, path)
    graph = str(ts.inlined_graph if hasattr(ts, "inlined_graph") else ts.graph)
    assert "ATan" not in graph and "PythonOp" not in graph
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in torch 2.14
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        want = m(x)
        got = loaded(x)
        got2 = loaded(rail_like(1, 64, 32, seed=5))
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1.0 / 4 + 1e-5
    assert (got - want).abs().mean().item() < 1e-4
    assert got2.shape == want.shape


# ------------------------------------------------------------------ seed preset
def test_seed_preset_matches_the_study() -> None:
    m = SnnBackbone(SnnConfig(preset="seed"))
    assert m.time_steps == 50
    assert (m.beta, m.threshold, m.reset) == (0.5, 1.0, "subtract")
    s1, s2, s3 = m.stages
    c1 = s1.synapse
    assert isinstance(c1, nn.Conv2d)
    assert (c1.in_channels, c1.out_channels, c1.kernel_size, c1.padding, c1.stride) == (3, 32, (3, 3), (1, 1), (1, 1))
    pool2, c2 = s2.synapse
    assert isinstance(pool2, nn.MaxPool2d) and pool2.kernel_size == 2
    assert (c2.in_channels, c2.out_channels, c2.kernel_size, c2.padding) == (32, 64, (3, 3), (1, 1))
    pool3, flat, fc = s3.synapse
    assert isinstance(pool3, nn.MaxPool2d) and pool3.kernel_size == 2 and isinstance(flat, nn.Flatten)
    assert isinstance(fc, nn.Linear) and (fc.in_features, fc.out_features) == (64 * 8 * 8, 1000)
    neurons = m._reference_neurons()
    assert len(neurons) == 3
    for n in neurons:
        assert isinstance(n, snntorch.Leaky)
        assert float(n.beta) == 0.5 and float(n.threshold) == 1.0 and n.reset_mechanism == "subtract"
        assert n.spike_grad.__name__ == "inner"  # snntorch.surrogate.fast_sigmoid() closure
    # layer-by-layer shapes on the 32x32, 3-channel input the study used
    with torch.no_grad():
        h = torch.rand(1, 3, 32, 32)
        a = s1.synapse(h)
        b = s2.synapse((a > 0).float())
        c = s3.synapse((b > 0).float())
    assert a.shape == (1, 32, 32, 32) and b.shape == (1, 64, 16, 16) and c.shape == (1, 1000)


def test_seed_preset_features_on_stride8_grid() -> None:
    m = SnnBackbone(SnnConfig(preset="seed"))
    x = rail_like(1, 128, 32)
    with torch.no_grad():
        y = m(x)
        r = m.reference_forward(x)
    assert m.stride == 8 and m.out_channels == 64
    assert y.shape == (1, 64, 16, 4) and r.shape == y.shape
    assert (y - r).abs().mean().item() < 1e-4
    with torch.no_grad():
        ref = m.reference_spike_counts(x)
        opt = m.spike_counts(x)
    assert torch.equal(ref[0], opt[0])
    assert ref[0].shape == (1, 32, 32, 32)


# ------------------------------------------------------------------ registry leak
def test_building_models_does_not_grow_the_snntorch_registry() -> None:
    import snntorch as snn

    clear_snntorch_registry()
    before = len(snn.SpikingNeuron.instances)
    cfg = SnnConfig(channels=(8, 8), fc_features=8, time_steps=2)
    x = random_input(1, 16, 16)
    for i in range(50):
        m = SnnBackbone(cfg, seed=i)
        with torch.no_grad():
            m.reference_forward(x)  # builds its snntorch neurons
    assert len(snn.SpikingNeuron.instances) == before
    snn.Leaky(beta=0.5)
    assert len(snn.SpikingNeuron.instances) == before + 1
    assert clear_snntorch_registry() == before + 1
    assert snn.SpikingNeuron.instances == []


# ------------------------------------------------------------------ activity and energy
def test_record_activity_is_consistent() -> None:
    m = SnnBackbone(SMALL)
    x = rail_like(2)
    act = m.record_activity(x)
    T = SMALL.time_steps
    assert act["time_steps"] == T and act["batch"] == 2
    assert list(act["layers"]) == ["lif1", "lif2", "lif3", "lif4"]
    counts = m.spike_counts(x)
    for (name, layer), c in zip(act["layers"].items(), counts):
        assert len(layer["spike_counts"]) == T and len(layer["rate_per_step"]) == T
        assert layer["neurons"] == c[0].numel()
        assert sum(layer["spike_counts"]) == pytest.approx(float(c.sum()))
        for n_spk, rate in zip(layer["spike_counts"], layer["rate_per_step"]):
            assert 0.0 <= rate <= 1.0
            assert rate == pytest.approx(n_spk / (layer["neurons"] * 2))
        assert 0.0 <= layer["rate"] <= 1.0
        assert layer["mem_min"] <= layer["mem_mean"] <= layer["mem_max"]
    assert set(act["features"]) == set(m.feature_slices)
    for key, st in act["features"].items():
        assert st["min"] <= st["mean"] <= st["max"]
        if key.endswith(".rate"):
            assert 0.0 <= st["min"] and st["max"] <= 1.0


def test_record_activity_seed_covers_all_layers() -> None:
    m = SnnBackbone(SnnConfig(preset="seed"))
    act = m.record_activity(rail_like(1, 64, 32))
    assert [v["neurons"] for v in act["layers"].values()] == [32 * 32 * 32, 64 * 16 * 16, 1000]
    assert all(len(v["spike_counts"]) == 50 for v in act["layers"].values())


def test_synaptic_ops_convention() -> None:
    cfg = SnnConfig(channels=(16, 16, 32), fc_features=16, time_steps=4)
    m = SnnBackbone(cfg)
    x = rail_like(1, 64, 32)
    ops = m.synaptic_ops(x)
    L = ops["layers"]
    assert L["lif1"]["macs"] == 64 * 32 * 16 * 9  # full-resolution conv1, counted once
    assert L["lif1"]["sops"] == 0.0
    assert L["lif2"]["macs"] == 8 * 4 * 16 * (16 * 9)  # stride-2 conv on the stride-4 grid
    assert L["lif4"]["macs"] == 8 * 4 * 16 * 32
    act = m.record_activity(x)
    assert L["lif2"]["input_rate"] == pytest.approx(act["layers"]["lif1"]["rate"], rel=1e-6)
    for name in ("lif2", "lif3", "lif4"):
        e = L[name]
        assert 0.0 <= e["input_rate"] <= 1.0
        assert e["sops"] == pytest.approx(e["input_rate"] * 4 * e["macs"])
    sops = sum(e["sops"] for e in L.values())
    macs = sum(e["macs"] for e in L.values())
    assert ops["energy_snn_pj"] == pytest.approx(E_MAC_PJ * L["lif1"]["macs"] + E_AC_PJ * sops)
    assert ops["energy_ann_pj"] == pytest.approx(E_MAC_PJ * macs)
    assert "theoretical" in ops["convention"]
    assert math.isfinite(ops["energy_ratio_ann_over_snn"])
