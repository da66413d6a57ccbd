"""`railedge compare`: the spiking backbone and ResNet-18 on the same frames, the same rail crop and
the same input size, measured the way the origin study meant to:

* feature values per layer: range, mean, spread and a histogram (SNN: each layer's spike rate and
  mean membrane feature; ResNet-18: the stem and each residual stage, and the patch features);
* SNN spike counts per layer and time step (per frame), firing rates, silent channels;
* SNN membrane potentials per layer: range and histogram over all steps and neurons;
* inference time per frame and runtime (eager torch, ONNX Runtime, optionally TorchScript), batch 1,
  warm-up excluded, median and p99 over many frames.

The origin study fed 32x32 images to its SNN and 224x224 ones to ResNet-18 and timed one pass over a
folder; here both see the crop at one size. Needs torch (the [train] extra)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from railedge.config import Config
from railedge.errors import ConfigError, DataError, ModelError
from railedge.logs import get_logger
from railedge.runtime import resolve_threads
from railedge.sources.reduce import resolve_reduce



def _log():
    """The logger, made when used: this module is imported while the CLI builds its parser, before
    logging is set up, and a logger bound then would write to stdout."""
    return get_logger("railedge.compare")

HIST_BINS = 48
SAMPLES_PER_BATCH = 40_000  # values kept per layer and batch for the histograms
WARMUP = 3


# ---- inputs -------------------------------------------------------------------------------------

def _is_model(p: Path) -> bool:
    return p.is_dir() and (p / "model.json").is_file()


def resolve_inputs(cfg: Config, items: list[str]) -> tuple[dict[str, Any], str]:
    """Split MODEL_OR_SOURCE arguments into fitted models (by backbone) and the footage to use."""
    from railedge.model import ModelArtifact

    models: dict[str, Any] = {}
    sources: list[str] = []
    for it in items:
        p = Path(it)
        if _is_model(p):
            m = ModelArtifact.load(p)
            if m.backbone in models:
                raise ConfigError(f"compare: two {m.backbone} models given ({models[m.backbone].path}, {p}); give one per backbone")
            models[m.backbone] = m
        elif p.exists():
            sources.append(it)
        else:
            raise DataError(f"compare: {it!r} is neither a fitted model directory nor footage (video or image folder)")
    if sources:
        return models, sources[0]
    for m in models.values():
        data = m.meta.get("data")
        if data and Path(data).exists():
            return models, str(data)
    raise DataError("compare: no footage: give a video or image folder besides the models (the models' fit data is gone)")


def load_crops(cfg: Config, source: str, n: int, height: int, width: int) -> tuple[np.ndarray, list[str]]:
    """`n` frames spread over the footage → rail crops → model inputs (n, 1, height, width)."""
    from railedge.datasets import iter_samples
    from railedge.preprocess import Preprocess
    from railedge.roi import RailBandLocator

    locator = RailBandLocator(cfg.roi)
    pre = Preprocess(height, width)
    xs, names = [], []
    reduce = resolve_reduce(cfg.source.reduce, source, cfg.roi, (height, width))
    for s in iter_samples(source, "auto", reduce=reduce, max_frames=n):
        band = locator.locate(s.image, reduce)
        xs.append(pre(s.image[band.y0:band.y1, band.x0:band.x1]))
        names.append(s.name)
    if not xs:
        raise DataError(f"compare: {source!r} gave no frames")
    return np.stack(xs)[:, None].astype(np.float32), names


# ---- statistics -----------------------------------------------------------------------------------

class ValueStats:
    """Exact min/max/mean/std of everything added, plus a random sample for the histogram."""

    def __init__(self, seed: int = 0) -> None:
        self.n = 0
        self.sum = 0.0
        self.sq = 0.0
        self.lo = float("inf")
        self.hi = float("-inf")
        self.zeros = 0
        self._samples: list[np.ndarray] = []
        self._rng = np.random.default_rng(seed)

    def add(self, a: Any) -> None:
        v = np.asarray(a, dtype=np.float64).ravel()
        if v.size == 0:
            return
        self.n += v.size
        self.sum += float(v.sum())
        self.sq += float((v * v).sum())
        self.lo = min(self.lo, float(v.min()))
        self.hi = max(self.hi, float(v.max()))
        self.zeros += int((v == 0).sum())
        k = min(v.size, SAMPLES_PER_BATCH)
        self._samples.append(v if k == v.size else v[self._rng.choice(v.size, k, replace=False)])

    def result(self) -> dict[str, Any]:
        mean = self.sum / max(1, self.n)
        var = max(0.0, self.sq / max(1, self.n) - mean * mean)
        s = np.concatenate(self._samples) if self._samples else np.zeros(1)
        lo, hi = (self.lo, self.hi) if self.n else (0.0, 0.0)
        counts, edges = np.histogram(s, bins=HIST_BINS, range=(lo, hi if hi > lo else lo + 1e-6))
        q = np.percentile(s, [1, 50, 99])
        return {
            "min": lo, "max": hi, "mean": mean, "std": var ** 0.5,
            "p1": float(q[0]), "median": float(q[1]), "p99": float(q[2]),
            "zero_fraction": self.zeros / max(1, self.n), "values": self.n,
            "hist": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
        }


def snn_activity(module: Any, x: np.ndarray, batch: int = 4) -> dict[str, Any]:
    """Per layer spike counts per time step (per frame), firing rates, membrane potentials and
    feature values of an SnnBackbone over inputs `x` (n, 1, h, w)."""
    import torch

    n = x.shape[0]
    steps = int(module.time_steps)
    layers: dict[str, dict[str, Any]] = {}
    mems: dict[str, ValueStats] = {}
    feats: dict[str, ValueStats] = {}
    for i in range(0, n, batch):
        xb = torch.from_numpy(x[i:i + batch])
        act = module.record_activity(xb)
        for name, a in act["layers"].items():
            L = layers.setdefault(name, {"shape": a["shape"], "neurons": a["neurons"], "spike_counts": np.zeros(steps),
                                         "silent": None, "channels": None})
            L["spike_counts"] += np.asarray(a["spike_counts"], dtype=np.float64)
        with torch.no_grad():
            # Membrane potentials of every layer and step (the same maths as record_activity).
            outs, _ = module._run(xb, all_layers=True, keep_mems=True)
            for st, o in zip(module.stages, outs):
                ms = mems.setdefault(st.name, ValueStats(len(mems)))
                for m in o.mems or []:
                    ms.add(m.numpy())
                sp = o.spikes.reshape((steps, xb.shape[0]) + tuple(o.spikes.shape[1:]))
                ch = sp.sum(dim=(0, 1, 3, 4)) if sp.dim() == 5 else sp.sum(dim=(0, 1))
                L = layers[st.name]
                L["channels"] = int(ch.numel())
                L["silent_mask"] = (ch == 0).numpy() if L.get("silent_mask") is None else (L["silent_mask"] & (ch == 0).numpy())
            f = module(xb).numpy()
        for key, sl in module.feature_slices.items():
            feats.setdefault(key, ValueStats(len(feats) + 100)).add(f[:, sl])
    out_layers = {}
    for name, L in layers.items():
        counts = L["spike_counts"] / n
        out_layers[name] = {
            "shape": L["shape"],
            "neurons": L["neurons"],
            "spike_counts_per_step": [float(c) for c in counts],  # mean spikes per frame at each step
            "spikes_per_frame": float(counts.sum()),
            "rate_per_step": [float(c) / L["neurons"] for c in counts],
            "rate": float(counts.sum()) / (L["neurons"] * steps),
            "channels": L["channels"],
            "silent_channels": int(L["silent_mask"].sum()) if L.get("silent_mask") is not None else None,
            "membrane": mems[name].result() if name in mems else None,
        }
    return {"time_steps": steps, "layers": out_layers, "features": {k: v.result() for k, v in feats.items()}}


def resnet_activity(module: Any, x: np.ndarray, batch: int = 4) -> dict[str, Any]:
    """Activation values of ResNet-18's stem and residual stages, and of the patch features."""
    import torch

    stats: dict[str, ValueStats] = {}
    hooks = []

    def hook(name: str) -> Callable:
        def fn(_m: Any, _a: Any, out: Any) -> None:
            stats.setdefault(name, ValueStats(len(stats))).add(out.detach().numpy())
        return fn

    hooks.append(module.stem.register_forward_hook(hook("stem")))
    for name, block in module.blocks.items():
        hooks.append(block.register_forward_hook(hook(name)))
    feats = ValueStats(99)
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch):
                feats.add(module(torch.from_numpy(x[i:i + batch])).numpy())
    finally:
        for h in hooks:
            h.remove()
    layers = {k: v.result() for k, v in stats.items()}
    layers["features"] = feats.result()
    return {"layers": layers, "used_layers": list(module.layers)}


def time_engine(engine: Callable[[np.ndarray], np.ndarray], x: np.ndarray, repeat: int) -> dict[str, Any]:
    """Per-frame wall time (ms) of `engine` at batch 1 over every frame of `x`, `repeat` passes,
    after WARMUP untimed frames."""
    for i in range(WARMUP):
        engine(x[i % x.shape[0]][None])
    ms = []
    for _ in range(repeat):
        for i in range(x.shape[0]):
            t0 = time.perf_counter()
            engine(x[i][None])
            ms.append((time.perf_counter() - t0) * 1e3)
    a = np.asarray(ms)
    return {"frames": int(a.size), "median_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "min_ms": float(a.min()), "warmup_frames": WARMUP, "samples_ms": [round(v, 3) for v in ms]}


def _engines(name: str, module: Any, height: int, width: int, runtimes: list[str], threads: int, tmp: Path,
             spinning: bool = False) -> dict[str, Any]:
    from railedge.runtime.torch_engines import EagerEngine

    out: dict[str, Any] = {}
    for rt in runtimes:
        try:
            if rt == "eager":
                out[rt] = EagerEngine(module, threads)
            elif rt == "onnx":
                from railedge.backbones.export import export_onnx
                from railedge.runtime.onnx import OnnxEngine

                out[rt] = OnnxEngine(export_onnx(module, height, width, tmp / f"{name}.onnx"), threads, spinning)
            elif rt == "torchscript":
                from railedge.backbones.export import export_torchscript
                from railedge.runtime.torch_engines import TorchScriptEngine

                out[rt] = TorchScriptEngine(export_torchscript(module, height, width, tmp / f"{name}.ts"), threads)
            else:
                raise ConfigError(f"compare: runtime {rt!r} is not one of eager, onnx, torchscript")
        except (RuntimeError, ModelError) as e:  # an export that fails is reported, not fatal
            _log().warning("compare_runtime_unavailable", backbone=name, runtime=rt, error=str(e)[:200])
            out[rt] = None
    return out


def compare(cfg: Config, items: list[str], frames: int = 32, runtimes: list[str] | None = None,
            repeat: int | None = None, timing_frames: int | None = None) -> dict[str, Any]:
    """Run both backbones on the same crops; see the module docstring. `items`: fitted model
    directories and/or footage. Without a model of a backbone, it is built from `cfg.model`."""
    try:
        import torch
    except ImportError:
        raise ModelError("railedge compare needs torch: pip install 'railedge[train]'") from None
    from railedge.backbones import build_backbone

    threads = resolve_threads(cfg.threads)
    torch.set_num_threads(threads)
    runtimes = runtimes or ["eager", "onnx"]
    models, source = resolve_inputs(cfg, items)
    first = next(iter(models.values()), None)
    height, width = (first.preprocess.height, first.preprocess.width) if first else (cfg.model.input_height, cfg.model.input_width)
    modules: dict[str, Any] = {}
    configs: dict[str, Any] = {}
    for bb in ("snn", "resnet"):
        if bb in models:
            modules[bb] = models[bb].build_module()
            configs[bb] = models[bb].meta.get("model_config", {}).get(bb)
        else:
            mc = replace(cfg.model, backbone=bb)
            torch.manual_seed(0)
            modules[bb] = build_backbone(mc).eval()
            configs[bb] = dataclasses.asdict(getattr(mc, bb))
    x, names = load_crops(cfg, source, frames, height, width)
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "source": source,
        "frames": int(x.shape[0]),
        "frame_names": names,
        "input": [height, width],
        "crop": f"rail band ({cfg.roi.mode}), resized to {height}x{width}, brightness-normalised",
        "threads": threads,
        "models": {bb: str(m.path) for bb, m in models.items()},
        "config": {bb: _plain(c) for bb, c in configs.items()},
        "snn": snn_activity(modules["snn"], x),
        "resnet": resnet_activity(modules["resnet"], x),
        "timing": {},
    }
    result["snn"]["preset"] = getattr(modules["snn"], "preset", None)
    if hasattr(modules["snn"], "synaptic_ops"):
        try:
            ops = modules["snn"].synaptic_ops(torch.from_numpy(x[:1]))
            result["snn"]["synaptic_ops"] = {k: v for k, v in ops.items() if k != "layers"}
        except Exception as e:  # an estimate only: never fail the comparison over it
            _log().warning("synaptic_ops_failed", error=str(e)[:200])
    xt = x[: timing_frames] if timing_frames else x
    rep = repeat if repeat is not None else max(1, -(-64 // xt.shape[0]))  # at least 64 timed frames
    with tempfile.TemporaryDirectory(prefix="railedge-compare-") as tmp:
        for bb, module in modules.items():
            result["timing"][bb] = {}
            for rt, eng in _engines(bb, module, height, width, runtimes, threads, Path(tmp), cfg.spinning).items():
                result["timing"][bb][rt] = None if eng is None else time_engine(eng, xt, rep)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    _log().info("compare_done", frames=result["frames"], seconds=result["seconds"])
    return result


def _plain(c: Any) -> Any:
    if isinstance(c, dict):
        return {k: _plain(v) for k, v in c.items()}
    if isinstance(c, (list, tuple)):
        return [_plain(v) for v in c]
    return c


def format_text(r: dict[str, Any]) -> str:
    """The comparison as tables for a terminal."""
    h, w = r["input"]
    lines = [f"SNN ({r['snn'].get('preset')}, T={r['snn']['time_steps']}) vs ResNet-18 on {r['frames']} frames of {r['source']}, "
             f"crop {h}x{w}, {r['threads']} threads", "", "feature values per layer"]
    lines.append(f"  {'backbone':<8}{'layer':<14}{'min':>10}{'max':>10}{'mean':>10}{'std':>10}{'zeros':>8}")
    for key, s in r["snn"]["features"].items():
        lines.append(f"  {'snn':<8}{key:<14}{s['min']:>10.4f}{s['max']:>10.4f}{s['mean']:>10.4f}{s['std']:>10.4f}{s['zero_fraction']:>8.1%}")
    for key, s in r["resnet"]["layers"].items():
        lines.append(f"  {'resnet':<8}{key:<14}{s['min']:>10.4f}{s['max']:>10.4f}{s['mean']:>10.4f}{s['std']:>10.4f}{s['zero_fraction']:>8.1%}")
    lines += ["", "SNN spikes per frame, per layer and time step"]
    for name, L in r["snn"]["layers"].items():
        steps = " ".join(f"{c:.0f}" for c in L["spike_counts_per_step"])
        lines.append(f"  {name:<6} {L['neurons']:>8} neurons  rate {L['rate']:.3f}  silent channels {L['silent_channels']}/{L['channels']}  steps: {steps}")
    lines += ["", "SNN membrane potentials per layer"]
    for name, L in r["snn"]["layers"].items():
        m = L["membrane"]
        if m:
            lines.append(f"  {name:<6} min {m['min']:.3f}  max {m['max']:.3f}  mean {m['mean']:.3f}  p1 {m['p1']:.3f}  p99 {m['p99']:.3f}")
    lines += ["", "inference time per frame (batch 1, warm-up excluded)"]
    for bb, rts in r["timing"].items():
        for rt, t in rts.items():
            if t is None:
                lines.append(f"  {bb:<8}{rt:<12} unavailable")
            else:
                lines.append(f"  {bb:<8}{rt:<12} median {t['median_ms']:8.2f} ms   p99 {t['p99_ms']:8.2f} ms   ({t['frames']} frames)")
    ops = r["snn"].get("synaptic_ops")
    if ops:
        lines += ["", f"SNN theoretical energy (45 nm, neuromorphic hardware; not a CPU figure): {ops['energy_snn_pj'] / 1e6:.2f} uJ "
                      f"vs {ops['energy_ann_pj'] / 1e6:.2f} uJ as an ANN"]
    return "\n".join(lines) + "\n"


def cmd_compare(args: argparse.Namespace, load: Callable) -> int:
    cfg = load(args)
    runtimes = [s.strip() for s in args.runtimes.split(",") if s.strip()]
    r = compare(cfg, args.inputs, frames=args.frames, runtimes=runtimes, repeat=args.repeat)
    if args.out:
        Path(args.out).write_text(json.dumps(r))
    if args.json:
        sys.stdout.write(json.dumps(r) + "\n")
    else:
        sys.stdout.write(format_text(r))
    return 0


def add_parser(sub: Any, config_args: Callable, load: Callable) -> None:
    c = sub.add_parser("compare", help="SNN vs ResNet-18 on the same frames: feature values, spikes, membranes, timing")
    config_args(c)
    c.add_argument("inputs", nargs="+", metavar="MODEL_OR_SOURCE",
                   help="fitted model directories (their backbones) and/or footage (video or image folder)")
    c.add_argument("--frames", type=int, default=32, help="frames spread over the footage (default 32)")
    c.add_argument("--runtimes", default="eager,onnx", help="comma-separated: eager, onnx, torchscript")
    c.add_argument("--repeat", type=int, help="timed passes over the frames (default: enough for 64 timed frames)")
    c.add_argument("--out", help="also write the full result as JSON to this file")
    c.add_argument("--json", action="store_true", help="print the full result as one JSON object")
    c.set_defaults(func=lambda a: cmd_compare(a, load))
