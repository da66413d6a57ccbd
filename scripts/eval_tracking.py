#!/usr/bin/env python3
"""Measure defect tracking end to end: footage → fit → replay (events) → match to the truth.

Synthetic mode (default): for each seed, `railedge synth` footage with defects.json, fit on its
normal stretch (--fit-on normal) or on the track footage itself with the labelled anomalies left out
(--fit-on track: separates tracking from how well the detector generalises to another stretch),
replay the track video with the speed, start chainage and pixel size known, and match every event
chain to the anomalies of defects.json. Prints, per seed and in total:

  anomalies      anomalies in defects.json (all classes: defect, dirt, gap), and class 'defect' alone
  one chain      anomalies matched by exactly one complete chain (new ... end)
  missed         anomalies matched by no chain (a detection miss, not a tracking split)
  duplicates     chains beyond the first on the same anomaly, per anomaly
  false chains   chains matching no anomaly (false alarms of the detector, tracked)
  chainage error |event chainage - true chainage| of matched chains (median, max, share within 0.5 m)

A chain matches an anomaly when its reported chainage lies within the anomaly's extent along the
track (bbox_track, +-0.1 m) and its box shares columns with it.

Real mode (--raildefect DIR): fit on the labelled images of every other recording run (labelled
boxes are left out of the bank), replay all images as a line-scan sequence (each image placed along
the track by a position log made from its file number, nominal 1 mm/px: the data set states no pixel
size) and count: frames above threshold, event chains, labelled defects a detection touched, and of
those, how many lie inside a box of an event chain on that image.

    .venv/bin/python scripts/eval_tracking.py --seeds 0 1 2 3 --frames 400
    .venv/bin/python scripts/eval_tracking.py --raildefect ../shared/data/raildefect
Extra config for fit and replay: --set key=value (repeatable); for the fit alone: --fit-set."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from railedge.config import load_config  # noqa: E402
from railedge.logs import setup_logging  # noqa: E402

SMALL = ["mqtt.enabled=false", "model.input_height=256", "model.input_width=64"]
TOL_M = 0.1


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def chains_of(events: list[dict]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for e in events:
        c = out.setdefault(e["id"], {"types": []})
        c["types"].append(e["type"])
        c["last"] = e
    for c in out.values():
        t = c["types"]
        c["complete"] = t[0] == "new" and t[-1] == "end" and t.count("new") == 1 and t.count("end") == 1
    return out


def match_synthetic(events: list[dict], truth: dict) -> dict[str, Any]:
    mm = truth["mm_per_px"]
    start = truth["start_chainage_m"]
    chains = chains_of(events)
    by_defect: dict[int, list[str]] = {d["id"]: [] for d in truth["defects"]}
    unmatched: list[str] = []
    errors: list[float] = []
    for cid, c in chains.items():
        e = c["last"]
        ch = (e.get("position") or {}).get("chainage_m")
        x0, x1 = e["bbox"][0], e["bbox"][0] + e["bbox"][2]
        best, best_d = None, None
        for d in truth["defects"]:
            bx, by, bw, bh = d["bbox_track"]
            lo, hi = start + by * mm / 1000 - TOL_M, start + (by + bh) * mm / 1000 + TOL_M
            if ch is None or not (lo <= ch <= hi) or min(x1, bx + bw) <= max(x0, bx):
                continue
            dist = abs(ch - d["chainage_m"])
            if best_d is None or dist < best_d:
                best, best_d = d, dist
        if best is None:
            unmatched.append(cid)
        else:
            by_defect[best["id"]].append(cid)
            errors.append(best_d)
    return {"chains": chains, "by_defect": by_defect, "false": unmatched, "errors": errors}


def figures(truth_defects: list[dict], by_defect: dict[int, list[str]], chains: dict, errors: list[float]) -> dict[str, Any]:
    n = len(truth_defects)
    one = sum(1 for d in truth_defects if len(by_defect[d["id"]]) == 1 and chains[by_defect[d["id"]][0]]["complete"])
    missed = sum(1 for d in truth_defects if not by_defect[d["id"]])
    dup = sum(max(0, len(by_defect[d["id"]]) - 1) for d in truth_defects)
    return {"anomalies": n, "one_chain": one, "one_chain_pct": 100.0 * one / n if n else 0.0, "missed": missed,
            "duplicates": dup, "duplicate_pct": 100.0 * dup / n if n else 0.0}


def run_synthetic(args: argparse.Namespace) -> dict[str, Any]:
    from railedge.fit import fit
    from railedge.replay import replay
    from railedge.synth import make_footage

    work = Path(args.work)
    rows = []
    all_truth: list[dict] = []
    all_by: dict[str, list[str]] = {}
    all_chains: dict[str, dict] = {}
    all_false: list[str] = []
    all_err: list[float] = []
    anomalous = 0
    for seed in args.seeds:
        d = work / f"seed{seed}"
        t0 = time.perf_counter()
        if not (d / "defects.json").is_file() or json.loads((d / "defects.json").read_text())["frames"] != args.frames:
            make_footage(d, frames=args.frames, seed=seed, normal_frames=args.normal_frames)
        truth = json.loads((d / "defects.json").read_text())
        base = SMALL + list(args.set)
        model = d / f"model-{args.fit_on}"
        if not (model / "model.json").is_file() or args.refit:
            # normal: the separate normal stretch synth writes; track: the footage itself with its labelled
            # anomalies left out of the bank and out of the calibration (isolates tracking from how well
            # the detector generalises to another stretch of rail)
            data = d / "normal" if args.fit_on == "normal" else d / "frames"
            fit(load_config(None, base + list(args.fit_set)), data, model)
        cfg = load_config(None, base + [
            f"model.path={model}", f"state_dir={d / 'state'}",
            f"position.speed_mps={truth['speed_mps']}", f"position.start_chainage_m={truth['start_chainage_m']}",
            f"position.mm_per_px={truth['mm_per_px']}",
        ])
        run = d / f"run-{args.fit_on}"
        s = replay(cfg, str(d / "track.mp4"), run_dir=run)
        events = read_jsonl(run / "events.jsonl")
        m = match_synthetic(events, truth)
        f_all = figures(truth["defects"], m["by_defect"], m["chains"], m["errors"])
        defects_only = [x for x in truth["defects"] if x["class"] == "defect"]
        f_def = figures(defects_only, m["by_defect"], m["chains"], m["errors"])
        rows.append({"seed": seed, "frames": s["frames"], "anomalous_frames": s["anomalous_frames"], "chains": len(m["chains"]),
                     "false_chains": len(m["false"]), "all": f_all, "defect": f_def,
                     "chainage_err_max_m": max(m["errors"]) if m["errors"] else None, "seconds": round(time.perf_counter() - t0, 1)})
        for x in truth["defects"]:
            key = f"{seed}:{x['id']}"
            all_truth.append({**x, "id": key})
            all_by[key] = [f"{seed}:{c}" for c in m["by_defect"][x["id"]]]
        for cid, c in m["chains"].items():
            all_chains[f"{seed}:{cid}"] = c
        all_false += m["false"]
        all_err += m["errors"]
        anomalous += s["anomalous_frames"]
        print(f"seed {seed}: {json.dumps(rows[-1])}", flush=True)
    tot_all = figures(all_truth, all_by, all_chains, all_err)
    tot_def = figures([x for x in all_truth if x["class"] == "defect"], all_by, all_chains, all_err)
    per_class = {}
    for cls in ("defect", "dirt", "gap"):
        per_class[cls] = figures([x for x in all_truth if x["class"] == cls], all_by, all_chains, all_err)
    within = sum(1 for e in all_err if e <= 0.5)
    total = {
        "seeds": list(args.seeds), "frames_per_seed": args.frames, "anomalous_frames": anomalous, "chains": len(all_chains),
        "complete_chains": sum(1 for c in all_chains.values() if c["complete"]), "false_chains": len(all_false),
        "all_classes": tot_all, "class_defect": tot_def, "per_class": per_class,
        "chainage_error_m": {"matched": len(all_err), "median": statistics.median(all_err) if all_err else None,
                             "max": max(all_err) if all_err else None,
                             "within_0.5m_pct": 100.0 * within / len(all_err) if all_err else None},
    }
    total["fit_on"] = args.fit_on
    return {"mode": "synthetic", "per_seed": rows, "total": total}


def print_synthetic(r: dict[str, Any]) -> None:
    t = r["total"]
    a, d = t["all_classes"], t["class_defect"]
    ce = t["chainage_error_m"]
    print("\n== tracking on synthetic footage ==")
    print(f"seeds {t['seeds']}, {t['frames_per_seed']} frames each, fit on the {t['fit_on']} footage; {t['anomalous_frames']} frames above threshold; "
          f"{t['chains']} event chains ({t['complete_chains']} complete new..end)")
    for name, f in (("all anomalies", a), ("class defect", d)):
        print(f"{name:>14}: {f['anomalies']:3d}   exactly one chain {f['one_chain']:3d} ({f['one_chain_pct']:.1f}%)   "
              f"missed {f['missed']}   duplicates {f['duplicates']} ({f['duplicate_pct']:.1f}%)")
    for cls, f in t["per_class"].items():
        print(f"{'  ' + cls:>14}: {f['anomalies']:3d}   one chain {f['one_chain']}   missed {f['missed']}   duplicates {f['duplicates']}")
    print(f"false chains (no anomaly there): {t['false_chains']}")
    if ce["matched"]:
        print(f"chainage error of {ce['matched']} matched chains: median {ce['median']:.3f} m, max {ce['max']:.3f} m, "
              f"{ce['within_0.5m_pct']:.1f}% within 0.5 m")


# ---- real line-scan images ------------------------------------------------------------------------

def _link_folder(src: Path, dst: Path, names: list[str]) -> None:
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "labels").mkdir(parents=True, exist_ok=True)
    for n in names:
        for sub, ext in (("images", ".jpg"), ("labels", ".txt")):
            target = src / sub / (n + ext)
            link = dst / sub / (n + ext)
            if target.exists() and not link.exists():
                os.symlink(target, link)
    if (src / "classes.txt").exists() and not (dst / "classes.txt").exists():
        os.symlink(src / "classes.txt", dst / "classes.txt")


def _labels(path: Path, w: int, h: int) -> list[tuple[int, float, float, float, float]]:
    out = []
    if path.exists():
        for line in path.read_text().split("\n"):
            p = line.split()
            if len(p) == 5:
                c, cx, cy, bw, bh = int(p[0]), *map(float, p[1:])
                out.append((c, (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h))
    return out


def _inter(a: tuple[float, float, float, float], b: list[int]) -> float:
    x0, y0, x1, y1 = a
    bx0, by0, bx1, by1 = b[0], b[1], b[0] + b[2], b[1] + b[3]
    return max(0.0, min(x1, bx1) - max(x0, bx0)) * max(0.0, min(y1, by1) - max(y0, by0))


def run_real(args: argparse.Namespace) -> dict[str, Any]:
    import cv2

    from railedge.datasets import run_id
    from railedge.fit import fit
    from railedge.replay import replay

    src = Path(args.raildefect)
    names = sorted(p.stem for p in (src / "images").glob("*.jpg"))
    if not names:
        raise SystemExit(f"no images in {src / 'images'}")
    runs = sorted({run_id(n) for n in names})
    fit_runs = set(runs[::2])
    work = Path(args.work) / "raildefect"
    fit_dir, seq_dir = work / "fit", work / "sequence"
    _link_folder(src, fit_dir, [n for n in names if run_id(n) in fit_runs])
    _link_folder(src, seq_dir, names)
    h0, w0 = cv2.imread(str(src / "images" / (names[0] + ".jpg")), cv2.IMREAD_GRAYSCALE).shape
    # Position log keyed by file: runs far apart, images placed by their number (nominal 1 mm/px).
    rows = ["source,chainage_m"]
    for n in names:
        rows.append(f"{n}.jpg,{runs.index(run_id(n)) * 100000.0 + int(n[7:]) * h0 / 1000.0:.3f}")
    (work / "positions.csv").write_text("\n".join(rows) + "\n")
    base = ["mqtt.enabled=false", f"source.reduce={args.reduce}"] + list(args.set)
    if not (work / "model" / "model.json").is_file() or args.refit:
        fit(load_config(None, base + list(args.fit_set)), fit_dir, work / "model")
    cfg = load_config(None, base + [f"model.path={work / 'model'}", f"state_dir={work / 'state'}",
                                    "position.linescan=true", "position.mm_per_px=1.0", f"position.csv={work / 'positions.csv'}"])
    s = replay(cfg, str(seq_dir), run_dir=work / "run")
    events = read_jsonl(work / "run" / "events.jsonl")
    frames = read_jsonl(work / "run" / "frames.jsonl")
    chains = chains_of(events)
    confirmed = set(chains)
    result: dict[str, Any] = {"images": len(frames), "fit_runs": sorted(fit_runs), "anomalous_frames": s["anomalous_frames"],
                              "chains": len(chains), "complete_chains": sum(c["complete"] for c in chains.values()),
                              "chains_over_several_images": sum(1 for c in chains.values() if c["last"]["last_frame"] > c["last"]["first_frame"]),
                              "threshold": s["threshold"]}
    for part, keep in (("all", lambda n: True), ("held_out_runs", lambda n: run_id(n) not in fit_runs)):
        labelled = touched = inside = overlapped = centred = 0
        anomalous = raw_boxes = 0
        for fr in frames:
            name = Path(fr["source"]).stem
            if not keep(name):
                continue
            anomalous += fr["score"] > fr["threshold"]
            raw_boxes += len(fr["boxes"])
            raw = fr["boxes"] + [t["bbox"] for t in fr["tracks"]]
            ev_boxes = [t["bbox"] for t in fr["tracks"] if t["id"] in confirmed]
            for c, x0, y0, x1, y1 in _labels(src / "labels" / (name + ".txt"), w0, h0):
                if c != 0:
                    continue
                labelled += 1
                area = max(1.0, (x1 - x0) * (y1 - y0))
                if not any(_inter((x0, y0, x1, y1), b) > 0 for b in raw):
                    continue
                touched += 1
                if any(_inter((x0, y0, x1, y1), b) > 0 for b in ev_boxes):
                    overlapped += 1
                if any(_inter((x0, y0, x1, y1), b) >= 0.9 * area for b in ev_boxes):
                    inside += 1
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                if any(b[0] <= cx <= b[0] + b[2] and b[1] <= cy <= b[1] + b[3] for b in ev_boxes):
                    centred += 1
        ids = {t["id"] for fr in frames if keep(Path(fr["source"]).stem) for t in fr["tracks"] if t["id"] in confirmed}
        result[part] = {"images": sum(1 for fr in frames if keep(Path(fr["source"]).stem)), "anomalous_frames": anomalous,
                        "raw_boxes_above_threshold": raw_boxes, "chains": len(ids), "labelled_defects": labelled,
                        "touched": touched, "touched_and_overlapped_by_event_box": overlapped,
                        "touched_and_centre_in_event_box": centred, "touched_and_inside_event_box": inside}
    return {"mode": "raildefect", "result": result}


def print_real(r: dict[str, Any]) -> None:
    x = r["result"]
    print("\n== tracking on real line-scan images (raildefect) ==")
    print(f"{x['images']} images, threshold {x['threshold']:.4f}; fit on runs {', '.join(x['fit_runs'])}")
    print(f"event chains {x['chains']} ({x['complete_chains']} complete, {x['chains_over_several_images']} over several images)")
    for part in ("all", "held_out_runs"):
        p = x[part]
        print(f"  {part:>14}: {p['images']} images, {p['anomalous_frames']} above threshold ({p['raw_boxes_above_threshold']} boxes), "
              f"{p['chains']} event chains; labelled defects {p['labelled_defects']}, touched by a detection {p['touched']}; of those, "
              f"overlapped by an event box {p['touched_and_overlapped_by_event_box']}, centre inside one "
              f"{p['touched_and_centre_in_event_box']}, >=90% of the label inside one {p['touched_and_inside_event_box']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--frames", type=int, default=400, help="frames per seed (about one anomaly per 44 frames)")
    ap.add_argument("--normal-frames", type=int, default=120)
    ap.add_argument("--fit-on", choices=["normal", "track"], default="normal",
                    help="synthetic mode: fit on the separate normal stretch (default) or on the track footage itself, "
                    "its labelled anomalies excluded")
    ap.add_argument("--work", default="/tmp/railedge-eval-tracking", help="working folder (footage, models, runs)")
    ap.add_argument("--raildefect", help="evaluate on this real data set instead (images/, labels/)")
    ap.add_argument("--reduce", type=int, default=2, help="real mode: decode images at 1/N size")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for fit and replay")
    ap.add_argument("--fit-set", action="append", default=[], metavar="KEY=VALUE", help="config override for the fit only")
    ap.add_argument("--refit", action="store_true", help="fit again even when a model is there")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    setup_logging("warning")
    if args.raildefect:
        r = run_real(args)
        print_real(r)
    else:
        r = run_synthetic(args)
        print_synthetic(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
