"""Spiking (LIF) patch-feature backbone, with a plain snntorch reference and an optimised, exportable path.

Input and output
    ``forward(x)``: ``x`` float32 (B, 1, H, W), a brightness-normalised grayscale rail crop (values about
    0..1.5, H and W multiples of 8). Direct (static) encoding: the same analog image drives the first
    layer at each of T time steps. Output: patch features (B, F, H/8, W/8) float32; ``.stride == 8``,
    ``.out_channels == F``; ``.feature_slices`` names the channel ranges (layer, kind).

Neuron model (snntorch.Leaky semantics, reset delayed by one step as in snntorch 1.0)
    U[t] = beta*U[t-1] + I[t] - thr*S[t-1]            reset "subtract"
    U[t] = beta*(1 - S[t-1])*U[t-1] + I[t]            reset "zero"
    U[t] = beta*U[t-1] + I[t]                         reset "none"
    S[t] = 1 if U[t] > thr else 0,  U[0] = 0 before the first step.
    The per-step update is done in snntorch's operation order, so for the same input current the
    membranes and spikes are bit-identical to snntorch's; only convolution summation order can differ
    (batching over time), which could flip a spike whose membrane lies within ~1e-6 of the threshold
    (none seen at 512x128). The exported path sums membranes through an identity of the recurrence
    (see ``lif_functional``), equal up to ~1e-6 rounding; spike counts are exact in every path.

Presets
    ``railedge`` (default; SnnConfig.channels = (c1, c2, c3), fc_features = f)::

        x (1, H, W) -> conv1 3x3 s1 (1->c1), full resolution -> max-pool 4 of the CURRENT -> LIF1 [stride 4]
                    -> conv2 3x3 s2 (c1->c2) on spikes                              -> LIF2 [stride 8]
                    -> conv3 3x3 s1 (c2->c3) on spikes                              -> LIF3 [stride 8]
                    -> fc: 1x1 conv (c3->f) = a fully connected layer per patch     -> LIF4 [stride 8]

      conv1 sees the full-resolution image (fine texture; the max-pool keeps the strongest response of
      each 4x4 block, so a 2-3 pixel pit still registers) but conv1(x) and its max-pool are
      time-invariant, so the optimised path computes them once. Every other layer sees spikes and runs
      once per frame on a (T*B, C, h, w) stack (time folded into the batch). Receptive field of a
      stride-8 patch: 30x30 input pixels. Features, per layer: spike rate (count/T) and mean membrane
      potential over the T steps, average-pooled to the stride-8 grid and concatenated: [rates of all
      layers] then [membranes of all layers] (``feature_slices``). Rates lie in [0, 1]; mean membranes
      are unbounded (about -3..+5 on rail crops, layer 1 wider): standardise per channel before kNN.
      Other lengths of ``channels``: one layer pools by 8; otherwise layer 1 pools by 4 (or
      ``layer1_stride``), later layers stride 2 until stride 8, then stride 1.

      Why this layout (2 cores, ONNX Runtime, 512x128, T=8): the cost is the LIF update (about 6
      elementwise operations per neuron and step, memory-bound) plus the convolutions on T-stacks, so
      the number of neurons at fine resolution decides it. LIF1 at stride 2 with 16 channels (262k
      neurons) cost ~12 ms per frame by itself; at stride 4 it is 65k neurons. Channel counts are
      multiples of 16 because ONNX Runtime's blocked (NCHWc, AVX-512) convolutions pad to 16 anyway
      and reorder 8-channel maps through slow paths. Measured per frame, ONNX Runtime, 2 threads:
      (16,16,16)+fc16 (F=128, SnnConfig's default) 2.6 ms; (16,16,32)+fc32 (F=192) 3.2 ms;
      (16,32,64)+fc64 (F=352) 5.7 ms; ResNet-18 to layer3 12.8 ms (an AVX-512 machine; on an AVX2
      AMD EPYC, 2026-12-03: 5.1 ms, -, 14.0 ms and 29.9 ms).

      Weights are untrained and deterministic (``seed``): conv1 is a fixed ON/OFF filter bank
      (brighter/darker than the normalised level 1.0, edges in 4 orientations, spots, lines, both
      polarities), scaled so that zero response sits at the firing onset thr*(1-beta) and a contrast
      of 1/CONV1_GAIN saturates; later layers are zero-mean random (so their mean current does not
      drift with the overall firing rate) with the same bias. The field notes saw default random init
      leave layer 2 nearly silent; with this init every layer fires (rates about 0.55/0.28/0.23/0.25 on
      real rail crops, no silent channel).

    ``seed``: the origin study's network exactly: Conv2d(3,32,3,p=1) -> Leaky -> MaxPool2 ->
      Conv2d(32,64,3,p=1) -> Leaky -> MaxPool2 -> Linear(64*8*8,1000) -> Leaky; beta 0.5, threshold 1,
      subtract reset, fast_sigmoid surrogate, T=50, default (untrained) PyTorch init from ``seed``. The
      input is resized to 32x32 by area averaging (H/32 x W/32 blocks) and replicated to 3 channels;
      no further normalisation. Features: layer-1 spike rate and mean membrane (32+32 = 64 channels) on
      the 32x32 grid, resampled bilinearly (align_corners=False) to the (H/8, W/8) grid so the scorer
      treats both presets alike. ``.stride`` is therefore 8, but the native resolution of the seed
      features is a fixed 32x32 grid, one cell per H/32 x W/32 input pixels (``.native_grid``); for
      512x128 the map is
      upsampled x2 along H and averaged x2 along W. Only layer 1 feeds the features, so the optimised
      ``forward`` skips layers 2-3 (they cannot change the output); ``reference_forward`` runs the whole
      network every step, as the study did; ``record_activity``/``synaptic_ops`` cover all layers.

Paths (identical weights)
    ``reference_forward``: snntorch Leaky neurons, a Python loop over T steps, every layer recomputed
      each step, eager (the tutorials' and the study's way).
    ``forward``: conv1 (+ its max-pool) hoisted, time folded into the batch for stateless layers,
      in-place LIF update into preallocated buffers in eager inference and TorchScript tracing
      (functional ops while exporting to ONNX or training), spike counts and membrane sums
      accumulated in the loop, conv1 through torch's im2col kernel and the max-pool as two exact
      reductions in eager (torch's oneDNN conv for 1 input channel and its NCHW max-pool are slow).
      ``channels_last=True`` is available but measured slower here for eager, so it is off.
      Exports to ONNX (``export_onnx``) and TorchScript (``trace_torchscript``); the spike is
      ``(U > thr).float()`` (Greater + Cast); training uses a fast-sigmoid surrogate autograd function
      that is bypassed under tracing/export and no_grad.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from railedge.config import SnnConfig

__all__ = [
    "SnnBackbone",
    "clear_snntorch_registry",
    "export_onnx",
    "trace_torchscript",
    "E_MAC_PJ",
    "E_AC_PJ",
    "RECOMMENDED_CHANNELS",
    "RECOMMENDED_FC_FEATURES",
]

E_MAC_PJ = 4.6  # 45 nm fp32 multiply-accumulate (3.7 mult + 0.9 add), Horowitz 2014
E_AC_PJ = 0.9  # 45 nm fp32 accumulate
# Proposed SnnConfig defaults (speed/feature trade-off measured on 2 cores; see the module docstring).
RECOMMENDED_CHANNELS = (16, 16, 16)
RECOMMENDED_FC_FEATURES = 16
SURROGATE_SLOPE = 25.0  # snntorch.surrogate.fast_sigmoid default
SEED_SIZE = 32
SEED_TIME_STEPS = 50
SEED_CHANNELS = (32, 64)
SEED_FC = 1000
# conv1 filter-bank gain: a contrast of 1/GAIN (in normalised brightness units) drives a layer-1
# neuron from the firing onset to firing at every step.
CONV1_GAIN = 4.0
NOMINAL_LEVEL = 1.0  # brightness-normalised level of normal rail
# later layers: target standard deviation of the input current (in units of thr) at this input rate
HIDDEN_CURRENT_STD = 0.5
HIDDEN_ASSUMED_RATE = 0.15


# --------------------------------------------------------------------------------------------------
# snntorch registry
# --------------------------------------------------------------------------------------------------
def clear_snntorch_registry(neurons: Any = None) -> int:
    """Clear ``snntorch.SpikingNeuron.instances``, the class-level list that keeps every neuron ever
    built (a leak in a long-running process that rebuilds models). With ``neurons`` (an iterable of
    neuron modules) only those are removed, so other live snntorch models that rely on the list
    (``init_hidden=True``) keep working. Returns the number of entries removed; 0 without snntorch."""
    try:
        import snntorch
    except ImportError:  # pragma: no cover - snntorch is a training extra
        return 0
    reg = snntorch.SpikingNeuron.instances
    before = len(reg)
    if neurons is None:
        reg.clear()
    else:
        ids = {id(n) for n in neurons}
        reg[:] = [n for n in reg if id(n) not in ids]
    return before - len(reg)


# --------------------------------------------------------------------------------------------------
# spike function and LIF dynamics
# --------------------------------------------------------------------------------------------------
class _FastSigmoidSpike(torch.autograd.Function):
    """Heaviside forward, fast-sigmoid surrogate backward: dS/dv = 1 / (slope*|v| + 1)^2 (snntorch's)."""

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, slope: float) -> torch.Tensor:  # noqa: D401
        ctx.save_for_backward(v)
        ctx.slope = slope
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (v,) = ctx.saved_tensors
        return grad / (ctx.slope * v.abs() + 1.0) ** 2, None


def _exporting() -> bool:
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    if torch.onnx.is_in_onnx_export():
        return True
    comp = getattr(torch, "compiler", None)
    if comp is not None:
        for name in ("is_exporting", "is_compiling"):
            fn = getattr(comp, name, None)
            if fn is not None and fn():
                return True
    return False


def spike(u: torch.Tensor, threshold: float) -> torch.Tensor:
    """S = (u > threshold) as float. With autograd active (training) the fast-sigmoid surrogate gives
    the gradient; under no_grad, tracing or export it is the plain comparison (Greater + Cast)."""
    if u.requires_grad and not _exporting():
        return _FastSigmoidSpike.apply(u - threshold, SURROGATE_SLOPE)
    return (u > threshold).to(u.dtype)


@dataclass
class _LifOut:
    spikes: torch.Tensor  # (T*B, ...) time folded, step t = rows [t*B, (t+1)*B)
    counts: torch.Tensor | None  # (B, ...) spike count over the T steps
    mem_sum: torch.Tensor | None  # (B, ...) sum over steps of U[t]
    mems: list[torch.Tensor] | None  # per-step U[t] when kept


def _time_sum(stack: torch.Tensor, steps: int, like: torch.Tensor) -> torch.Tensor:
    """Sum over the T steps of a time-folded (T*B, ...) stack as ones(1, T) @ (T, N): one GEMM pass,
    cheaper in ONNX Runtime (2 threads) than T-1 Adds or a ReduceSum. Sums of 0/1 spikes are exact."""
    ones = torch.ones(1, steps, dtype=stack.dtype, device=stack.device)
    return torch.matmul(ones, stack.reshape(steps, -1)).reshape(like.shape)


MEM_IDENTITY_MAX_BETA = 0.9  # above this 1/(1-beta) amplifies rounding: accumulate instead


def lif_functional(
    cur: torch.Tensor,
    steps: int,
    beta: float,
    thr: float,
    reset: str,
    *,
    const: bool,
    want_counts: bool = True,
    want_mem: bool = True,
    keep_mems: bool = False,
) -> _LifOut:
    """LIF over ``steps`` with pure functional ops (exportable, differentiable).

    ``cur``: the input current, (B, ...) when ``const`` (the same at every step) else (T*B, ...).
    Spike counts are a time sum of the spike stack. The membrane sum uses the identity of the
    recurrence (summing U[t] = beta*U[t-1] + I[t] - thr*S[t-1] over t = 1..T):
        (1 - beta) * sum(U) = sum(I) - thr*(sum(S) - S[T]) - beta*U[T]
    so no per-step accumulation is needed (reset "subtract"/"none", beta <= 0.9; otherwise the
    membranes are summed step by step). Mathematically the same sum; rounding differs by ~1e-7."""
    # per-step rows by narrow (one Slice each; unbind adds a Squeeze per step, split(B) makes
    # torch.export specialise the batch size)
    b = cur.shape[0] if const else cur.shape[0] // steps
    identity = want_mem and not keep_mems and reset in ("subtract", "none") and beta <= MEM_IDENTITY_MAX_BETA
    u: torch.Tensor | None = None
    s: torch.Tensor | None = None
    out: list[torch.Tensor] = []
    mems: list[torch.Tensor] = []
    msum: torch.Tensor | None = None
    for t in range(steps):
        c = cur if const else cur.narrow(0, t * b, b)
        if u is None or s is None:
            u = c  # beta*0 + I - 0*thr == I exactly
        else:
            if reset == "zero":
                u = (1.0 - s) * u
            u = beta * u + c
            if reset == "subtract":
                u = u - (s if thr == 1.0 else s * thr)
        s = spike(u, thr)
        out.append(s)
        if want_mem and not identity:
            msum = u if msum is None else msum + u
        if keep_mems:
            mems.append(u)
    assert u is not None and s is not None
    spikes = torch.cat(out, 0)
    cnt = _time_sum(spikes, steps, s) if (want_counts or identity) else None
    if identity:
        assert cnt is not None
        isum = cur * float(steps) if const else _time_sum(cur, steps, s)
        if reset == "subtract":
            isum = isum - (cnt - s if thr == 1.0 else (cnt - s) * thr)
        msum = (isum - beta * u) * (1.0 / (1.0 - beta))
    return _LifOut(spikes, cnt if want_counts else None, msum, mems if keep_mems else None)


def lif_inplace(
    cur: torch.Tensor,
    steps: int,
    beta: float,
    thr: float,
    reset: str,
    *,
    const: bool,
    want_counts: bool = True,
    want_mem: bool = True,
) -> _LifOut:
    """The same dynamics in snntorch's operation order (bit-identical membranes and spikes), as a
    fused in-place update into preallocated buffers, spike counts and membrane sums accumulated in
    the loop (keeps ``cur``'s memory format): eager inference and TorchScript tracing only."""
    b = cur.shape[0] if const else cur.shape[0] // steps
    first = cur if const else cur[:b]
    u = first.clone()  # preserve_format: channels_last stays channels_last
    spikes = torch.empty((steps * b,) + tuple(first.shape[1:]), dtype=cur.dtype, device=cur.device)
    if first.dim() == 4 and u.is_contiguous(memory_format=torch.channels_last) and not u.is_contiguous():
        spikes = spikes.contiguous(memory_format=torch.channels_last)
    msum = u.clone() if want_mem else None
    cnt: torch.Tensor | None = None
    for t in range(steps):
        if t:
            prev = spikes[(t - 1) * b: t * b]
            if reset == "zero":
                u.mul_(1.0 - prev)
            u.mul_(beta).add_(cur if const else cur[t * b: (t + 1) * b])
            if reset == "subtract":
                if thr == 1.0:
                    u.sub_(prev)
                else:
                    u.sub_(prev, alpha=thr)
            if msum is not None:
                msum.add_(u)
        s = spikes[t * b: (t + 1) * b]
        torch.gt(u, thr, out=s)
        if want_counts:
            if cnt is None:
                cnt = s.clone()
            else:
                cnt.add_(s)
    return _LifOut(spikes, cnt, msum, None)


def _max_pool_exact(y: torch.Tensor, k: int) -> torch.Tensor:
    """k x k max-pool (stride k) as two reductions: the same values as F.max_pool2d (a max is exact),
    several times faster than torch's NCHW CPU max_pool2d kernel."""
    b, c, h, w = y.shape
    return y.reshape(b, c, h // k, k, w).amax(3).reshape(b, c, h // k, w // k, k).amax(4)


def _conv3x3_cpu(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """conv1 on one input channel: torch's im2col+GEMM kernel (same result as F.conv2d here, about 4x
    faster than the oneDNN path for 1 input channel); F.conv2d where that kernel is unavailable."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and conv.groups == 1 and conv.dilation == (1, 1):
        try:
            return torch.ops.aten._slow_conv2d_forward(x.contiguous(), conv.weight, list(conv.kernel_size),
                                                       conv.bias, list(conv.stride), list(conv.padding))
        except (RuntimeError, AttributeError):  # pragma: no cover - kernel missing in this build
            pass
    return conv(x)


# --------------------------------------------------------------------------------------------------
# conv1 filter bank
# --------------------------------------------------------------------------------------------------
def _filter_bank() -> list[tuple[torch.Tensor, float]]:
    """(3x3 kernel, offset) pairs in priority order; zero-mean kernels have positive weights summing
    to 1, so the response to a step of contrast h is about h. Offset: subtracted response level."""
    t = lambda rows: torch.tensor(rows, dtype=torch.float32)  # noqa: E731
    mean = torch.full((3, 3), 1.0 / 9.0)
    sobel_x = t([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 4.0
    diag = t([[0, 1, 2], [-1, 0, 1], [-2, -1, 0]]) / 4.0
    spot = t([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]) / 8.0
    hline = t([[-1, -1, -1], [2, 2, 2], [-1, -1, -1]]) / 6.0
    base = [
        (mean, NOMINAL_LEVEL),  # brighter / darker than the normalised rail level
        (sobel_x, 0.0),  # vertical edges (along the scan direction)
        (sobel_x.t().contiguous(), 0.0),  # horizontal edges (across the rail: joints, cracks)
        (spot, 0.0),  # bright / dark spots (squats, pits)
        (diag, 0.0),
        (diag.flip(1).contiguous(), 0.0),
        (hline, 0.0),  # thin horizontal lines (cracks across the rail)
        (hline.t().contiguous(), 0.0),  # thin lines along the rail (scratches, edges of the band)
    ]
    out: list[tuple[torch.Tensor, float]] = []
    for k, off in base:  # both polarities: spikes are non-negative
        out.append((k, off))
        out.append((-k, -off))
    return out


# --------------------------------------------------------------------------------------------------
# the backbone
# --------------------------------------------------------------------------------------------------
class _Stage(nn.Module):
    """One spiking layer: synapse (pooling/conv/linear applied to its input), then LIF."""

    def __init__(self, name: str, synapse: nn.Module, stride: int, analog: bool, feature: bool) -> None:
        super().__init__()
        self.name = name
        self.synapse = synapse
        self.stride = stride  # of this layer's neurons, in input pixels (seed: in 32x32 pixels)
        self.analog = analog  # input is the real-valued image (time-invariant current)
        self.feature = feature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.synapse(x)


class SnnBackbone(nn.Module):
    """Spiking patch-feature backbone; see the module docstring for the layout and both paths."""

    stride = 8

    def __init__(
        self,
        cfg: SnnConfig | None = None,
        *,
        seed: int = 0,
        channels_last: bool = False,
        inplace: bool = True,
        layer1_stride: int | None = None,
    ) -> None:
        super().__init__()
        cfg = cfg or SnnConfig()
        self.cfg = cfg
        self.preset = cfg.preset
        self.channels_last = channels_last
        self.inplace = inplace
        self._ref_neurons: tuple | None = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if cfg.preset == "seed":
                self._build_seed()
            else:
                self._build_railedge(cfg, layer1_stride)
                self._init_railedge(seed)
        self.eval()

    # ---------------------------------------------------------------- construction
    def _build_seed(self) -> None:
        self.beta, self.threshold, self.reset = 0.5, 1.0, "subtract"
        self.time_steps = SEED_TIME_STEPS
        self.features_kind = "both"
        c1, c2 = SEED_CHANNELS
        self.stages = nn.ModuleList([
            _Stage("lif1", nn.Conv2d(3, c1, 3, padding=1), 1, analog=True, feature=True),
            _Stage("lif2", nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(c1, c2, 3, padding=1)), 2, False, False),
            _Stage("lif3", nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(c2 * 8 * 8, SEED_FC)), 0, False, False),
        ])
        self.native_grid: tuple[int, int] | None = (SEED_SIZE, SEED_SIZE)  # features resampled from it

    def _build_railedge(self, cfg: SnnConfig, layer1_stride: int | None) -> None:
        if not cfg.channels:
            raise ValueError("SnnConfig.channels must name at least one layer")
        self.beta, self.threshold, self.reset = float(cfg.beta), float(cfg.threshold), cfg.reset
        self.time_steps = int(cfg.time_steps)
        self.features_kind = cfg.features
        chans = tuple(int(c) for c in cfg.channels)
        n = len(chans)
        pool1 = layer1_stride or (8 if n == 1 else 4)
        if pool1 not in (1, 2, 4, 8):
            raise ValueError(f"layer1_stride must be 1, 2, 4 or 8, got {pool1}")
        first: nn.Module = nn.Conv2d(1, chans[0], 3, padding=1)
        if pool1 > 1:
            first = nn.Sequential(first, nn.MaxPool2d(pool1))
        stages: list[_Stage] = [_Stage("lif1", first, pool1, analog=True, feature=True)]
        stride = pool1
        for i in range(1, n):
            s = 2 if stride < 8 else 1
            stride *= s
            stages.append(_Stage(f"lif{i + 1}", nn.Conv2d(chans[i - 1], chans[i], 3, stride=s, padding=1),
                                 stride, False, True))
        if stride != 8:
            raise ValueError(f"{n} layers with layer1_stride {pool1} reach stride {stride}, not 8")
        stages.append(_Stage(f"lif{n + 1}", nn.Conv2d(chans[-1], int(cfg.fc_features), 1), 8, False, True))
        self.stages = nn.ModuleList(stages)
        self.native_grid = None  # features are computed on the stride-8 grid itself

    @torch.no_grad()
    def _init_railedge(self, seed: int) -> None:
        thr, beta = self.threshold, self.beta
        onset = thr * (1.0 - beta)  # constant current that just never fires
        gen = torch.Generator().manual_seed(seed + 1)
        conv1 = next(m for m in self.stages[0].synapse.modules() if isinstance(m, nn.Conv2d))
        bank = _filter_bank()
        for o in range(conv1.out_channels):
            if o < len(bank):
                k, off = bank[o]
            else:
                k = torch.randn(3, 3, generator=gen)
                k = k - k.mean()
                k = k / k.clamp(min=0).sum()
                off = 0.0
            conv1.weight[o, 0] = CONV1_GAIN * thr * k
            conv1.bias[o] = onset - CONV1_GAIN * thr * off
        for st in self.stages[1:]:
            conv: nn.Conv2d = st.synapse
            w = torch.randn(conv.weight.shape, generator=gen)
            w = w - w.mean(dim=(1, 2, 3), keepdim=True)
            w = w / w.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt()  # unit norm per output channel
            sigma = HIDDEN_CURRENT_STD * thr / math.sqrt(HIDDEN_ASSUMED_RATE * (1 - HIDDEN_ASSUMED_RATE))
            conv.weight.copy_(w * sigma)
            conv.bias.fill_(onset)

    # ---------------------------------------------------------------- introspection
    @property
    def feature_stages(self) -> list[_Stage]:
        return [s for s in self.stages if s.feature]

    @property
    def _kinds(self) -> list[str]:
        return {"spikes": ["rate"], "membrane": ["mem"], "both": ["rate", "mem"]}[self.features_kind]

    @property
    def feature_slices(self) -> dict[str, slice]:
        """Channel ranges of the output, keyed 'layer.rate' / 'layer.mem' (e.g. 'lif2.rate')."""
        out: dict[str, slice] = {}
        i = 0
        for kind in self._kinds:
            for st in self.feature_stages:
                n = self._stage_channels(st)
                out[f"{st.name}.{kind}"] = slice(i, i + n)
                i += n
        return out

    @property
    def out_channels(self) -> int:
        return sum(s.stop - s.start for s in self.feature_slices.values())

    @staticmethod
    def _stage_channels(st: _Stage) -> int:
        mods = [m for m in st.synapse.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        m = mods[-1]
        return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"SnnBackbone expects (B, 1, H, W) grayscale input, got {tuple(x.shape)}")
        if not _exporting() and (x.shape[2] % 8 or x.shape[3] % 8):
            raise ValueError(f"input height and width must be multiples of 8, got {tuple(x.shape[2:])}")

    # ---------------------------------------------------------------- optimised path
    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.preset == "seed":
            x = F.adaptive_avg_pool2d(x, (SEED_SIZE, SEED_SIZE))
        return x

    def _analog_current(self, x1: torch.Tensor, fast: bool) -> torch.Tensor:
        """Layer-1 current from the prepared 1-channel image, computed once (time-invariant)."""
        st = self.stages[0]
        if self.preset == "seed":
            conv: nn.Conv2d = st.synapse
            # conv over 3 identical channels == conv with the channel-summed kernel
            cur = F.conv2d(x1, conv.weight.sum(dim=1, keepdim=True), conv.bias, padding=1)
        elif fast:
            mods = list(st.synapse.children()) if isinstance(st.synapse, nn.Sequential) else [st.synapse]
            cur = _conv3x3_cpu(x1, mods[0])
            if len(mods) > 1:
                cur = _max_pool_exact(cur, st.stride)
        else:
            cur = st.synapse(x1)
        if fast and self.channels_last:
            cur = cur.contiguous(memory_format=torch.channels_last)
        return cur

    def _fast_eager(self, keep_mems: bool) -> bool:
        """In-place LIF and the fast eager kernels: inference in eager mode or under TorchScript
        tracing, never while exporting to ONNX or when autograd is needed."""
        if not self.inplace or keep_mems:
            return False
        if torch.onnx.is_in_onnx_export() or torch.jit.is_scripting():
            return False
        comp = getattr(torch, "compiler", None)
        if comp is not None and any(getattr(comp, n, lambda: False)() for n in ("is_exporting", "is_compiling")):
            return False
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))

    def _run(self, x: torch.Tensor, *, all_layers: bool, keep_mems: bool = False,
             keep_inputs: bool = False) -> tuple[list[_LifOut], list[torch.Tensor]]:
        steps, beta, thr, reset = self.time_steps, self.beta, self.threshold, self.reset
        fast = self._fast_eager(keep_mems)
        want_counts = "rate" in self._kinds or all_layers
        want_mem = "mem" in self._kinds or all_layers

        def lif(cur: torch.Tensor, const: bool) -> _LifOut:
            if fast:
                return lif_inplace(cur, steps, beta, thr, reset, const=const, want_counts=want_counts,
                                   want_mem=want_mem)
            return lif_functional(cur, steps, beta, thr, reset, const=const, want_counts=want_counts,
                                  want_mem=want_mem, keep_mems=keep_mems)

        stages = list(self.stages)
        if not all_layers:  # later layers cannot change the features: stop after the last feature layer
            stages = stages[: max(i for i, s in enumerate(stages) if s.feature) + 1]
        x1 = self._prepare(x)
        inputs: list[torch.Tensor] = [x1]
        o = lif(self._analog_current(x1, fast), True)
        outs: list[_LifOut] = [o]
        for st in stages[1:]:
            if keep_inputs:
                inputs.append(o.spikes)
            o = lif(st.synapse(o.spikes), False)
            outs.append(o)
        return outs, inputs

    def _features(self, outs: list[_LifOut], x: torch.Tensor, fast: bool = False) -> torch.Tensor:
        inv_t = 1.0 / self.time_steps
        rates: list[torch.Tensor] = []
        mems: list[torch.Tensor] = []
        want_rate = "rate" in self._kinds
        want_mem = "mem" in self._kinds
        for st, o in zip(self.stages, outs):
            if not st.feature:
                continue
            parts = []
            if want_rate:
                assert o.counts is not None
                parts.append(o.counts)
            if want_mem:
                assert o.mem_sum is not None
                parts.append(o.mem_sum)
            f = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
            f = f * inv_t
            if self.preset != "seed":
                k = 8 // st.stride
                if k == 2 and fast:  # same values as avg_pool2d, ~3x faster than torch's NCHW CPU kernel
                    f = (f[:, :, 0::2, 0::2] + f[:, :, 0::2, 1::2] + f[:, :, 1::2, 0::2] + f[:, :, 1::2, 1::2]) * 0.25
                elif k > 1:
                    f = F.avg_pool2d(f, k)
            n = self._stage_channels(st)
            if want_rate:
                rates.append(f[:, :n])
            if want_mem:
                mems.append(f[:, f.shape[1] - n:])
        feats = torch.cat(rates + mems, 1)
        if self.preset == "seed":
            feats = F.interpolate(feats, size=(x.shape[2] // 8, x.shape[3] // 8), mode="bilinear",
                                  align_corners=False)
        return feats.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Optimised path: (B, 1, H, W) -> (B, F, H/8, W/8)."""
        self._check_input(x)
        outs, _ = self._run(x, all_layers=False)
        return self._features(outs, x, self._fast_eager(False))

    # ---------------------------------------------------------------- reference path (snntorch)
    def _reference_neurons(self) -> tuple:
        if self._ref_neurons is None:
            import snntorch as snn
            from snntorch import surrogate

            neurons = tuple(
                snn.Leaky(beta=self.beta, threshold=self.threshold, spike_grad=surrogate.fast_sigmoid(slope=25),
                          reset_mechanism=self.reset)
                for _ in self.stages
            )
            clear_snntorch_registry(neurons)  # the class-level list would keep them forever
            self._ref_neurons = neurons  # a tuple: not registered, not in state_dict, not exported
        return self._ref_neurons

    def _reference_run(self, x: torch.Tensor, all_layers: bool = True) -> tuple[list[_LifOut], list]:
        """The straightforward snntorch loop: every layer recomputed at every step, eager."""
        neurons = self._reference_neurons()
        steps = self.time_steps
        if self.preset == "seed":  # data prep, as the study: resize, replicate to 3 channels
            data = F.adaptive_avg_pool2d(x, (SEED_SIZE, SEED_SIZE)).repeat(1, 3, 1, 1)
        else:
            data = x
        mems = []
        for lif in neurons:
            lif.to(x.device)
            mems.append(lif.reset_mem())
        spk_rec: list[list[torch.Tensor]] = [[] for _ in self.stages]
        mem_rec: list[list[torch.Tensor]] = [[] for _ in self.stages]
        for _t in range(steps):
            inp = data
            for i, (st, lif) in enumerate(zip(self.stages, neurons)):
                cur = st.synapse(inp)
                spk, mems[i] = lif(cur, mems[i])
                spk_rec[i].append(spk)
                mem_rec[i].append(mems[i])
                inp = spk
        outs = []
        for i in range(len(self.stages)):
            msum, cnt = mem_rec[i][0], spk_rec[i][0]
            for m, sp in zip(mem_rec[i][1:], spk_rec[i][1:]):
                msum = msum + m
                cnt = cnt + sp
            outs.append(_LifOut(torch.cat(spk_rec[i], 0), cnt, msum, mem_rec[i]))
        return outs, []

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The snntorch way (for parity checks and the speed baseline): same weights, same maths."""
        self._check_input(x)
        outs, _ = self._reference_run(x)
        return self._features(outs, x)

    @torch.no_grad()
    def reference_spike_counts(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per layer spike counts over T, shape (B, C, h, w) (or (B, N)), from the snntorch loop."""
        outs, _ = self._reference_run(x)
        return [self._counts(o) for o in outs]

    @torch.no_grad()
    def spike_counts(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per layer spike counts over T from the optimised path (all layers)."""
        outs, _ = self._run(x, all_layers=True)
        return [self._counts(o) for o in outs]

    @staticmethod
    def _counts(o: _LifOut) -> torch.Tensor:
        assert o.counts is not None
        return o.counts

    # ---------------------------------------------------------------- activity and energy
    @torch.no_grad()
    def record_activity(self, x: torch.Tensor) -> dict:
        """Per layer activity over all layers (optimised path, functional ops), batch summed.

        Returns {"time_steps", "batch", "layers": {name: {...}}, "features": {"layer.kind": {...}}}
        with, per layer: ``spike_counts`` (T,) summed over neurons and batch, ``neurons`` (per frame),
        ``rate_per_step`` (T,) = counts / (neurons*batch) in [0, 1], ``rate`` (mean),
        ``silent_channels`` (channels that never fired), ``mem_min``/``mem_max``/``mem_mean`` over
        steps and neurons; per feature block: ``min``/``max``/``mean`` of the output features."""
        self._check_input(x)
        b = x.shape[0]
        steps = self.time_steps
        outs, _ = self._run(x, all_layers=True, keep_mems=True)
        layers: dict[str, dict] = {}
        for st, o in zip(self.stages, outs):
            sp = o.spikes.reshape((steps, b) + tuple(o.spikes.shape[1:]))
            per_step = sp.reshape(steps, -1).sum(1)
            n = sp[0, 0].numel()
            mem = torch.stack(o.mems or [])
            if sp.dim() == 5:
                ch_counts = sp.sum(dim=(0, 1, 3, 4))
            else:
                ch_counts = sp.sum(dim=(0, 1))
            layers[st.name] = {
                "shape": list(sp.shape[2:]),
                "neurons": int(n),
                "spike_counts": [float(v) for v in per_step],
                "rate_per_step": [float(v) / (n * b) for v in per_step],
                "rate": float(per_step.sum()) / (n * b * steps),
                "silent_channels": int((ch_counts == 0).sum()),
                "mem_min": float(mem.min()),
                "mem_max": float(mem.max()),
                "mem_mean": float(mem.mean()),
            }
        feats = self._features(outs, x)
        fstats = {}
        for key, sl in self.feature_slices.items():
            f = feats[:, sl]
            fstats[key] = {"min": float(f.min()), "max": float(f.max()), "mean": float(f.mean())}
        return {"time_steps": steps, "batch": b, "layers": layers, "features": fstats,
                "feature_shape": list(feats.shape[1:])}

    @torch.no_grad()
    def synaptic_ops(self, x: torch.Tensor) -> dict:
        """Synaptic operations and a theoretical 45 nm energy estimate, per frame (batch averaged).

        Convention (field notes; Horowitz 2014): ``macs`` = multiply-accumulates of the equivalent ANN
        (the same layers run once on real values; pooling, biases and neuron updates not counted).
        The first layer sees the real-valued, time-invariant image: it is counted as MACs once
        (the optimised path computes it once). Every later layer receives binary spikes:
        SOPs = (firing rate of its input) x T x MACs, each SOP an accumulate. Energy:
        E_SNN = E_MAC x MACs(first layer) + E_AC x sum(SOPs), E_ANN = E_MAC x sum(MACs), with
        E_MAC = 4.6 pJ, E_AC = 0.9 pJ. A theoretical neuromorphic figure: on a CPU or GPU every
        spike layer runs as dense MACs on T steps (T x MACs), so these numbers do not predict runtime
        energy there."""
        self._check_input(x)
        b = x.shape[0]
        steps = self.time_steps
        outs, inputs = self._run(x, all_layers=True, keep_inputs=True)
        layers: dict[str, dict] = {}
        macs_first = 0.0
        sops = 0.0
        macs_all = 0.0
        for i, st in enumerate(self.stages):
            if i == 0:
                inp = inputs[0]
                if self.preset == "seed":
                    inp = inp.expand(-1, 3, -1, -1)
                macs, in_rate = self._layer_macs(st, inp, 1, b), None
            else:
                spikes = inputs[i]
                macs, in_rate = self._layer_macs(st, spikes, steps, b)
            entry = {"macs": macs}
            if i == 0:
                entry.update({"input": "analog", "sops": 0.0, "energy_pj": E_MAC_PJ * macs})
                macs_first += macs
            else:
                s = in_rate * steps * macs
                entry.update({"input": "spikes", "input_rate": in_rate, "sops": s, "energy_pj": E_AC_PJ * s})
                sops += s
            macs_all += macs
            layers[st.name] = entry
        e_snn = E_MAC_PJ * macs_first + E_AC_PJ * sops
        e_ann = E_MAC_PJ * macs_all
        return {
            "convention": "45 nm (Horowitz 2014): E_MAC 4.6 pJ, E_AC 0.9 pJ; first (real-valued) layer as MACs "
                          "once; SOPs = input firing rate x T x MACs; theoretical neuromorphic figure",
            "time_steps": steps,
            "layers": layers,
            "macs_total": macs_all,
            "sops_total": sops,
            "energy_snn_pj": e_snn,
            "energy_ann_pj": e_ann,
            "energy_ratio_ann_over_snn": e_ann / e_snn if e_snn > 0 else float("inf"),
        }

    def _layer_macs(self, st: _Stage, inp: torch.Tensor, steps: int, batch: int) -> Any:
        """MACs per frame of the stage's conv/linear for ONE step; with steps>1 also the firing rate
        of the tensor entering that conv/linear (after any pooling of spikes)."""
        found: dict[str, Any] = {}

        def hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            a = args[0]
            fan_in = m.weight[0].numel()
            found["macs"] = out.numel() / (steps * batch) * fan_in
            found["rate"] = float(a.float().mean())

        mods = [m for m in st.synapse.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        h = mods[-1].register_forward_hook(hook)
        try:
            st.synapse(inp)
        finally:
            h.remove()
        if steps == 1 and st.analog:
            return found["macs"]
        return found["macs"], found["rate"]


# --------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------
def export_onnx(
    model: SnnBackbone,
    path: str | Path,
    *,
    height: int = 512,
    width: int = 128,
    batch: int = 1,
    dynamo: bool = True,
    opset: int = 18,
    dynamic_batch: bool = False,
) -> Path:
    """Export ``model.forward`` to one self-contained ONNX file (weights embedded, no .onnx.data).
    Input ``image`` (B, 1, height, width) float32, output ``features`` (B, F, height/8, width/8)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    # a dynamic batch needs an example batch > 1 (torch.export specialises sizes 0 and 1)
    x = torch.rand(max(batch, 2) if dynamic_batch else batch, 1, height, width)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            kw: dict[str, Any] = {}
            if dynamic_batch:
                kw["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=1024)},)
            prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, input_names=["image"],
                                     output_names=["features"], external_data=False, **kw)
            prog.save(str(path), external_data=False)
        else:
            kw = {}
            if dynamic_batch:
                kw["dynamic_axes"] = {"image": {0: "batch"}, "features": {0: "batch"}}
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=["features"], do_constant_folding=True, **kw)
    data = path.with_name(path.name + ".data")
    if data.exists():  # pragma: no cover - guarded by external_data=False
        raise RuntimeError(f"ONNX export wrote external weights {data}; expected one self-contained file")
    return path


def trace_torchscript(model: SnnBackbone, example: torch.Tensor | None = None, path: str | Path | None = None):
    """``torch.jit.trace`` of the optimised forward (plain Greater+Cast spikes, no snntorch autograd
    functions in the graph); saved to ``path`` when given. TorchScript is deprecated in torch 2.14
    (a FutureWarning, silenced here) but still works through tracing."""
    model = model.eval()
    if example is None:
        example = torch.rand(1, 1, 512, 128)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.trace(model, (example,), check_trace=False)
        ts = torch.jit.freeze(ts)
        if path is not None:
            torch.jit.save(ts, str(path))
    return ts
