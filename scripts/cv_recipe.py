#!/usr/bin/env python3
"""Compare training recipes without touching the test runs: run-grouped cross-validation.

docs/quality.md measures on test runs that nothing may be chosen on. This script is for the
choosing: it splits the *other* runs of a raildefect-style YOLO folder (the quality table's train
and val runs) into folds by recording run, trains `railedge train` on all folds but one and
evaluates with `railedge eval` on the one left out, for every fold, and prints one JSON line per
recipe (per-fold and mean image/tile/pixel AUROC, best box recall at <= 0.2 false alarms per frame
over a threshold sweep, highest recall at any threshold). The left-out fold also calibrates the
threshold and draws the validation curve, so the at-threshold figures would be optimistic: they
are not reported. Folds train side by side, one torch thread each.

    .venv/bin/python scripts/cv_recipe.py base
    .venv/bin/python scripts/cv_recipe.py dil2 --set train.head_dilation=2
    .venv/bin/python scripts/cv_recipe.py r1 --set source.reduce=1 --eval-set source.reduce=1
    .venv/bin/python scripts/cv_recipe.py half --train-fraction 0.5      # a learning-curve point
    .venv/bin/python scripts/cv_recipe.py pre --mode normal              # normal-only (synthetic defects) on each fold,
    .venv/bin/python scripts/cv_recipe.py fine --init-from pre           # then labelled training from those weights

Results are appended to WORK/results.jsonl; docs/training.md lists those measured so far."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from quality_table import TEST_RUNS, run_of  # noqa: E402  (the runs this script never uses)

RAILEDGE = [sys.executable, "-m", "railedge.cli"]
QUIET = ["--set", "log.level=warning", "--set", "mqtt.enabled=false"]
# raildefect: two folds of the quality table's train + val runs, about equal in images (101 / 109),
# each with clean frames, dirt and joints. Fixed before the first recipe was compared.
RAILDEFECT_FOLDS = (("1456470", "1035330", "1037210", "1421570"),
                    ("1028010", "1426220", "1036340", "1459210", "1516400"))


def folds_for(runs: dict[str, int], k: int) -> list[set[str]]:
    """The raildefect folds when the runs are raildefect's, else runs dealt largest first to the fold with fewest images."""
    if k == 2 and set(runs) == {r for f in RAILDEFECT_FOLDS for r in f}:
        return [set(f) for f in RAILDEFECT_FOLDS]
    out: list[set[str]] = [set() for _ in range(k)]
    size = [0] * k
    for r in sorted(runs, key=lambda r: (-runs[r], r)):
        i = size.index(min(size))
        out[i].add(r)
        size[i] += runs[r]
    return out


def link_split(data: Path, dst: Path, runs: set[str], fraction: float = 1.0) -> Path:
    """A YOLO folder of symlinks to the images (and labels) of `runs`; with `fraction` < 1, that share
    of each run's images, spread evenly along the run (a learning curve)."""
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "images").mkdir(parents=True)
    (dst / "labels").mkdir()
    if (data / "classes.txt").is_file():
        (dst / "classes.txt").write_text((data / "classes.txt").read_text())
    seen: dict[str, int] = {}
    for p in sorted((data / "images").iterdir()):
        r = run_of(p.name)
        if r in runs:
            i = seen[r] = seen.get(r, -1) + 1
            if int((i + 1) * fraction) == int(i * fraction):  # keeps round(n * fraction) of n, evenly spaced
                continue
            (dst / "images" / p.name).symlink_to(p.resolve())
            lab = data / "labels" / (p.stem + ".txt")
            if lab.is_file():
                (dst / "labels" / lab.name).symlink_to(lab.resolve())
    return dst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="a name for this recipe (models go to WORK/models/NAME_k)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "raildefect"))
    ap.add_argument("--work", default="/tmp/railedge-cv")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for training (repeatable)")
    ap.add_argument("--train-fraction", type=float, default=1.0,
                    help="train on this share of each training run's images (evenly spaced): a learning curve")
    ap.add_argument("--mode", choices=["auto", "labelled", "normal"], default="auto", help="railedge train --mode")
    ap.add_argument("--init-from", metavar="RECIPE",
                    help="start each fold from the model of an earlier recipe on the same fold (WORK/models/RECIPE_k): pretraining")
    ap.add_argument("--eval-set", action="append", default=[], metavar="KEY=VALUE", help="config override for evaluation (repeatable)")
    a = ap.parse_args()
    data, work = Path(a.data), Path(a.work)
    if not (data / "images").is_dir():
        raise SystemExit(f"{data} is not a YOLO folder with images/ (set --data)")
    runs: dict[str, int] = {}
    for p in (data / "images").iterdir():
        r = run_of(p.name)
        if r not in TEST_RUNS:
            runs[r] = runs.get(r, 0) + 1
    folds = folds_for(runs, a.folds)
    if any(not f for f in folds):
        raise SystemExit(f"{len(runs)} runs outside the test runs cannot make {a.folds} folds")
    held = [link_split(data, work / "split" / f"fold{i}", f) for i, f in enumerate(folds)]
    if not 0.0 < a.train_fraction <= 1.0:
        raise SystemExit(f"--train-fraction {a.train_fraction}: expected a share in (0, 1]")
    rest = [link_split(data, work / "split" / f"not{i}_{a.name}", set(runs) - f, a.train_fraction) for i, f in enumerate(folds)]
    sets = [x for kv in a.set for x in ("--set", kv)]
    t0 = time.monotonic()
    procs = []
    for i in range(len(folds)):
        out = work / "models" / f"{a.name}_{i}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(out.with_name(out.name + ".train"), ignore_errors=True)
        cmd = RAILEDGE + ["train", "--data", str(rest[i]), "--val", str(held[i]), "--out", str(out), "--json", *QUIET,
                          "--set", "train.threads=1", "--set", "threads=1", "--mode", a.mode, *sets]
        if a.init_from:
            init = work / "models" / f"{a.init_from}_{i}"
            if not (init / "model.json").is_file():
                raise SystemExit(f"--init-from {a.init_from}: no model at {init}; run that recipe first")
            cmd += ["--init", str(init)]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(work / f"{a.name}_{i}.log", "w")))
    for i, p in enumerate(procs):
        if p.wait():
            raise SystemExit(f"training fold {i} failed; see {work / f'{a.name}_{i}.log'}")
    train_s = time.monotonic() - t0
    per = []
    for i in range(len(folds)):
        r = subprocess.run(RAILEDGE + ["eval", "--model", str(work / "models" / f"{a.name}_{i}"), "--data", str(held[i]),
                                       "--json", *QUIET, *[x for kv in a.eval_set for x in ("--set", kv)]],
                           cwd=ROOT, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"eval of fold {i} failed:\n{r.stderr[-2000:]}")
        ev = json.loads(r.stdout.strip().splitlines()[-1])
        fa = ev["at_fa_target"] or {}
        per.append({"runs": sorted(folds[i]), "frames": ev["frames"], "image_auroc": ev["image_auroc"], "tile_auroc": ev["tile_auroc"],
                    "pixel_auroc": ev["pixel_auroc"], "recall_at_0.2": fa.get("recall"),
                    "max_recall": max((s["recall"] or 0.0) for s in ev["pr_sweep"])})
    keys = ("image_auroc", "tile_auroc", "pixel_auroc", "recall_at_0.2", "max_recall")
    mean = {k: (round(sum(v) / len(v), 4) if (v := [p[k] for p in per if p[k] is not None]) else None) for k in keys}
    line = {"name": a.name, "set": a.set, "mode": a.mode, "init_from": a.init_from, "eval_set": a.eval_set, "train_fraction": a.train_fraction,
            "train_images": [len(list((r / "images").iterdir())) for r in rest], "train_s": round(train_s), "mean": mean, "folds": per}
    with open(work / "results.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
