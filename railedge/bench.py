"""`railedge bench`: speed of every backbone and runtime, measured in one run on the same frames.

Reports, after warm-up, per-frame latency p50/p99 and frames/s for each backbone × runtime; the
SNN's speed-up over the straightforward snntorch eager loop (same network, T and input); the
end-to-end replay frames/s of the SNN and ResNet-18 paths (decode, crop, backbone, scoring,
events) and their ratio; replay frames/s against decode-only frames/s; the memory-bank search's
share of frame time; SNN firing rates and the theoretical synaptic-operation energy estimate."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from railedge.config import Config
from railedge.logs import get_logger
from railedge.runtime import resolve_threads

log = get_logger("railedge.bench")


def _percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.median(a)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "fps": round(1000.0 / float(a.mean()), 1), "n": int(a.size)}


def time_per_frame(fn: Callable[[np.ndarray], Any], xs: list[np.ndarray], repeats: int, warmup: int = 5) -> list[float]:
    for i in range(warmup):
        fn(xs[i % len(xs)])
    out = []
    for i in range(repeats):
        x = xs[i % len(xs)]
        t0 = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def paced(fn: Callable[[np.ndarray], Any], xs: list[np.ndarray], n: int, fps: float, warmup: int = 5) -> dict[str, float]:
    """Run `fn` at a camera's frame rate (sleeping out each period): latency p50 and this process's
    CPU time per frame, which counts what threads burn between frames (ORT's spinning pool)."""
    for i in range(warmup):
        fn(xs[i % len(xs)])
    period, lat = 1.0 / fps, []
    c0, t0 = time.process_time(), time.monotonic()
    for k in range(n):
        t = time.perf_counter()
        fn(xs[k % len(xs)])
        lat.append((time.perf_counter() - t) * 1e3)
        time.sleep(max(0.0, t0 + (k + 1) * period - time.monotonic()))
    cpu_ms = (time.process_time() - c0) / n * 1e3
    return {"p50_ms": round(float(np.median(lat)), 3), "cpu_ms_per_frame": round(cpu_ms, 2),
            "cpu_share_of_period": round(cpu_ms / (period * 1e3), 3), "n": n}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def resnet_macs(module, x) -> float:
    """Multiply-accumulates of the ResNet feature extractor's convolutions for one input."""
    import torch

    total = [0.0]

    def hook(m, args, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total[0] += float(out.numel() // out.shape[0]) * k

    hs = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        module(x)
    for h in hs:
        h.remove()
    return total[0]


def run_bench(cfg: Config, source: str, frames: int = 200, fit_frames: int = 40, runtimes: tuple[str, ...] = ("onnx", "torchscript", "eager"),
              ref_frames: int = 10, rounds: int = 3) -> dict[str, Any]:
    import torch

    from railedge.backbones import build_backbone
    from railedge.backbones.export import export_onnx, export_torchscript
    from railedge.datasets import iter_samples
    from railedge.fit import fit
    from railedge.preprocess import Preprocess
    from railedge.replay import replay
    from railedge.roi import RailBandLocator
    from railedge.runtime.onnx import OnnxEngine
    from railedge.runtime.torch_engines import EagerEngine, TorchScriptEngine
    from railedge.sources import open_source

    threads = resolve_threads(cfg.threads)
    torch.set_num_threads(threads)
    h, w = cfg.model.input_height, cfg.model.input_width
    result: dict[str, Any] = {"machine": machine(), "source": source, "input": [h, w], "threads": threads,
                              "time_steps": cfg.model.snn.time_steps}
    # ---- the same frames and crops for every backbone -------------------------------------
    t0 = time.perf_counter()
    from railedge.sources.reduce import resolve_reduce

    reduce = resolve_reduce(cfg.source.reduce, source, cfg.roi, (h, w))
    cfg = replace(cfg, source=replace(cfg.source, reduce=reduce))  # every stage below decodes alike
    result["decode_reduce"] = reduce
    samples = list(iter_samples(source, "plain", reduce=reduce, max_frames=min(frames, 64)))
    loc, pre = RailBandLocator(cfg.roi), Preprocess(h, w)
    xs = []
    for s in samples:
        b = loc.locate(s.image, reduce)
        xs.append(pre(s.image[b.y0 : b.y1, b.x0 : b.x1])[None, None])
    result["frame_size"] = list(samples[0].image.shape[::-1])
    log.info("bench_frames_ready", frames=len(xs), seconds=round(time.perf_counter() - t0, 1))

    tmp = Path(tempfile.mkdtemp(prefix="railedge-bench-"))
    try:
        backbones: dict[str, dict[str, Any]] = {}
        modules = {}
        for name in ("snn", "resnet"):
            torch.manual_seed(0)
            mcfg = replace(cfg.model, backbone=name)
            module = build_backbone(mcfg).eval()
            modules[name] = module
            onnx_p = export_onnx(module, h, w, tmp / f"{name}.onnx")
            engines: dict[str, Any] = {}
            for rt in runtimes:
                if rt == "onnx":
                    engines[rt] = OnnxEngine(onnx_p, threads)
                elif rt == "torchscript":
                    engines[rt] = TorchScriptEngine(export_torchscript(module, h, w, tmp / f"{name}.ts"), threads)
                else:
                    engines[rt] = EagerEngine(module, threads)
            backbones[name] = {}
            for rt, eng in engines.items():
                backbones[name][rt] = _percentiles(time_per_frame(eng, xs, repeats=max(50, frames)))
                log.info("bench_backbone", backbone=name, runtime=rt, **backbones[name][rt])
        result["backbone_latency"] = backbones

        # ---- ONNX Runtime's pool threads at a camera's rate: spin-waiting between frames or not --
        if "onnx" in runtimes:
            pool, cam_fps = max(2, threads), 25.0
            spin = {k: paced(OnnxEngine(tmp / "snn.onnx", pool, spinning=k == "on"), xs, min(frames, 100), cam_fps) for k in ("on", "off")}
            result["onnx_spinning"] = {"threads": pool, "camera_fps": cam_fps, **spin,
                                       "cpu_ratio_on_over_off": round(spin["on"]["cpu_ms_per_frame"] / max(1e-9, spin["off"]["cpu_ms_per_frame"]), 2)}
            log.info("bench_spinning", **{k: v for k, v in result["onnx_spinning"].items() if not isinstance(v, dict)})

        # ---- the straightforward snntorch loop, same network, T and input ---------------------
        snn = modules["snn"]
        with torch.inference_mode():
            ref = time_per_frame(lambda x: snn.reference_forward(torch.from_numpy(x)), xs, repeats=ref_frames, warmup=2)
        ref_stats = _percentiles(ref)
        result["snn_reference_loop"] = ref_stats
        result["snn_speedup_over_snntorch_loop"] = {
            rt: round(ref_stats["p50_ms"] / v["p50_ms"], 2) for rt, v in backbones["snn"].items()
        }

        # ---- activity and the theoretical energy estimate --------------------------------------
        xa = torch.from_numpy(np.concatenate(xs[:8]))
        with torch.no_grad():
            act = snn.record_activity(xa)
            ops = snn.synaptic_ops(xa)
            r_macs = resnet_macs(modules["resnet"], xa[:1])
        result["snn_activity"] = {
            name: {"rate": round(v["rate"], 4), "rate_per_step": [round(r, 4) for r in v["rate_per_step"]],
                   "silent_channels": v["silent_channels"]}
            for name, v in act["layers"].items()
        }
        e_resnet = 4.6 * r_macs
        result["energy_theoretical_45nm"] = {
            "note": "theoretical neuromorphic estimate (Horowitz 2014, 45 nm): not a measurement on this CPU",
            "snn_sops": round(ops["sops_total"]), "snn_energy_uj": round(ops["energy_snn_pj"] / 1e6, 3),
            "resnet_macs": round(r_macs), "resnet_energy_uj": round(e_resnet / 1e6, 3),
            "resnet_over_snn": round(e_resnet / ops["energy_snn_pj"], 2),
        }

        # ---- end to end: decode, crop, backbone, scoring, events, on the same files ------------
        quiet = replace(cfg, mqtt=replace(cfg.mqtt, enabled=False), state_dir=str(tmp / "state"))
        e2e: dict[str, dict[str, Any]] = {}
        configs = {}
        for name in ("snn", "resnet"):
            mdir = tmp / f"model-{name}"
            configs[name] = replace(quiet, model=replace(quiet.model, backbone=name, path=str(mdir)),
                                    scoring=replace(quiet.scoring, max_fit_frames=fit_frames))
            fit(configs[name], source, mdir)
        # Rounds alternate the backbones, so a burst of load from other processes hits both alike;
        # frames/s is the median over rounds.
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
        for _ in range(max(1, rounds)):
            for name, c in configs.items():
                runs[name].append(replay(c, source, max_frames=frames))
                log.info("bench_e2e", backbone=name, fps=runs[name][-1]["fps"])
        for name, rs in runs.items():
            mid = sorted(rs, key=lambda r: r["fps"])[len(rs) // 2]
            lat = mid["latency_ms"]
            e2e[name] = {"fps": mid["fps"], "fps_rounds": [r["fps"] for r in rs], "frames": mid["frames"],
                         "latency_ms": lat,
                         "scoring_share": round(lat["scoring"]["p50"] / max(1e-9, lat["total"]["p50"]), 3)}
        result["replay"] = e2e
        result["replay_fps_ratio_snn_over_resnet"] = round(e2e["snn"]["fps"] / e2e["resnet"]["fps"], 2)

        # ---- decode only ------------------------------------------------------------------------
        src = open_source(source, cfg.source)
        n, t0 = 0, time.perf_counter()
        for _ in src.frames():
            n += 1
            if n >= frames:
                break
        decode_fps = n / (time.perf_counter() - t0)
        result["decode_only_fps"] = round(decode_fps, 1)
        result["replay_over_decode"] = {k: round(v["fps"] / decode_fps, 3) for k, v in e2e.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def format_bench(r: dict[str, Any]) -> str:
    m = r["machine"]
    red = int(r.get("decode_reduce", 1))
    lines = [f"railedge bench on {m['cpu']} ({m['cores']} cores), {r['threads']} threads, input {r['input'][0]}x{r['input'][1]}, "
             f"T={r['time_steps']}, frames {r['frame_size'][0] * red}x{r['frame_size'][1] * red} decoded at 1/{red} "
             f"({r['frame_size'][0]}x{r['frame_size'][1]}) from {r['source']}", "",
             f"{'backbone':<10}{'runtime':<13}{'p50 ms':>9}{'p99 ms':>9}{'frames/s':>10}"]
    for bb, rts in r["backbone_latency"].items():
        for rt, v in rts.items():
            lines.append(f"{bb:<10}{rt:<13}{v['p50_ms']:>9.2f}{v['p99_ms']:>9.2f}{v['fps']:>10.1f}")
    ref = r["snn_reference_loop"]
    lines.append(f"{'snn':<10}{'snntorch loop':<13}{ref['p50_ms']:>9.2f}{ref['p99_ms']:>9.2f}{ref['fps']:>10.1f}")
    lines += ["", "SNN speed-up over the snntorch eager loop (same network, T, input): "
              + ", ".join(f"{k} {v}x" for k, v in r["snn_speedup_over_snntorch_loop"].items()), ""]
    if "onnx_spinning" in r:
        s = r["onnx_spinning"]
        lines += [f"SNN on ONNX Runtime, {s['threads']} threads, paced at {s['camera_fps']:g} frames/s (config 'spinning'):"]
        for k in ("on", "off"):
            lines.append(f"  spinning {k:<4}p50 {s[k]['p50_ms']:.2f} ms   CPU {s[k]['cpu_ms_per_frame']:.2f} ms per frame "
                         f"({s[k]['cpu_share_of_period']:.0%} of a core)")
        lines += [f"  CPU per frame, spinning on / off: {s['cpu_ratio_on_over_off']}x", ""]
    stages = ("decode", "roi", "preprocess", "inference", "scoring", "events")
    lines.append(f"{'end to end':<14}{'frames/s':>10}{'total p50':>11}{'scoring share':>15}   rounds (frames/s)")
    for bb, v in r["replay"].items():
        lat = v["latency_ms"]
        rounds = ", ".join(f"{x:.1f}" for x in v.get("fps_rounds", [v["fps"]]))
        lines.append(f"{bb:<14}{v['fps']:>10.1f}{lat['total']['p50']:>11.2f}{v['scoring_share']:>15.1%}   {rounds}")
    lines.append("stage p50 ms  " + "".join(f"{s:>11}" for s in stages) + "   (decode runs on its own thread)")
    for bb, v in r["replay"].items():
        lines.append(f"{bb:<14}" + "".join(f"{v['latency_ms'].get(s, {}).get('p50', float('nan')):>11.2f}" for s in stages))
    lines.append(f"SNN / ResNet-18 replay frames/s: {r['replay_fps_ratio_snn_over_resnet']}x;  decode only: {r['decode_only_fps']} frames/s "
                 f"(replay/decode: " + ", ".join(f"{k} {v:.2f}" for k, v in r["replay_over_decode"].items()) + ")")
    lines += ["", "SNN firing rate per layer (mean; per time step):"]
    for name, v in r["snn_activity"].items():
        lines.append(f"  {name:<8}{v['rate']:.4f}  [{', '.join(f'{x:.3f}' for x in v['rate_per_step'])}]  silent channels {v['silent_channels']}")
    e = r["energy_theoretical_45nm"]
    lines += ["", f"Energy per frame, {e['note']}:",
              f"  SNN {e['snn_energy_uj']} uJ ({e['snn_sops']:,} SOPs)   ResNet-18 {e['resnet_energy_uj']} uJ ({e['resnet_macs']:,} MACs)   ratio {e['resnet_over_snn']}x"]
    return "\n".join(lines)


def add_parser(sub, config_args, load) -> None:
    c = sub.add_parser("bench", help="measure backbones, runtimes and end-to-end replay on the same frames")
    config_args(c)
    c.add_argument("source", help="image folder or video (real 2048x2000 line-scan frames for the headline figures)")
    c.add_argument("--frames", type=int, default=200, help="frames per measurement")
    c.add_argument("--fit-frames", type=int, default=40, help="frames used to fit the end-to-end models")
    c.add_argument("--rounds", type=int, default=3, help="end-to-end replays per backbone, alternating (median reported)")
    c.add_argument("--json", action="store_true")

    def run(args) -> int:
        cfg = load(args)
        r = run_bench(cfg, args.source, frames=args.frames, fit_frames=args.fit_frames, rounds=args.rounds)
        sys.stdout.write((json.dumps(r) if args.json else format_bench(r)) + "\n")
        return 0

    c.set_defaults(func=run)
