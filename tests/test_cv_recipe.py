"""scripts/cv_recipe.py: folds by recording run, never the quality table's test runs, one result line per recipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import cv_recipe  # noqa: E402
from quality_table import TEST_RUNS  # noqa: E402

TINY = ["model.input_height=128", "model.input_width=32", "model.snn.time_steps=4", "train.tile_rows=64", "train.epochs=1",
        "train.tiles_per_image=1", "train.batch_size=8", "train.head_width=16"]


def test_folds_balance_images_and_keep_raildefect_folds():
    runs = {"a": 50, "b": 30, "c": 20, "d": 10, "e": 5}
    folds = cv_recipe.folds_for(runs, 2)
    assert set().union(*folds) == set(runs) and not folds[0] & folds[1]
    sizes = sorted(sum(runs[r] for r in f) for f in folds)
    assert sizes == [55, 60]
    rd = {r: 1 for f in cv_recipe.RAILDEFECT_FOLDS for r in f}
    assert [sorted(f) for f in cv_recipe.folds_for(rd, 2)] == [sorted(f) for f in cv_recipe.RAILDEFECT_FOLDS]
    assert not rd.keys() & set(TEST_RUNS)


def test_cross_validation_end_to_end_skips_test_runs(tmp_path):
    """Synthetic frames renamed into four recording runs plus one of the test runs: the test run is
    in no fold, every fold is evaluated by a model trained on the others."""
    from railedge.synth import make_footage

    src = tmp_path / "src"
    make_footage(src, frames=40, seed=5, normal_frames=8, width=192, height=160)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    (data / "classes.txt").write_text((src / "frames" / "classes.txt").read_text())
    runs = ["2000001", "2000002", "2000003", "2000004", TEST_RUNS[0]]
    for i, img in enumerate(sorted((src / "frames" / "images").iterdir())):
        stem = f"{runs[i % len(runs)]}{i:06d}"
        (data / "images" / f"{stem}.png").symlink_to(img)
        (data / "labels" / f"{stem}.txt").symlink_to(src / "frames" / "labels" / f"{img.stem}.txt")
    work = tmp_path / "work"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "cv_recipe.py"), "tiny", "--data", str(data), "--work", str(work)]
                       + [x for s in TINY for x in ("--set", s)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert line["name"] == "tiny" and len(line["folds"]) == 2
    seen = [run for f in line["folds"] for run in f["runs"]]
    assert sorted(seen) == runs[:4]  # the test run is in no fold
    assert sum(f["frames"] for f in line["folds"]) == 32
    for f in line["folds"]:  # tiny footage: a fold may hold no defect, then an AUROC is undefined (None)
        assert all(f[k] is None or 0.0 <= f[k] <= 1.0 for k in ("image_auroc", "tile_auroc", "pixel_auroc", "max_recall"))
    assert json.loads((work / "results.jsonl").read_text().splitlines()[-1]) == line


def test_train_fraction_keeps_an_even_share_of_each_run(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for run, n in (("3000001", 10), ("3000002", 4), ("3000003", 1)):
        for i in range(n):
            (data / "images" / f"{run}{i:06d}.png").write_bytes(b"")
            (data / "labels" / f"{run}{i:06d}.txt").write_text("")
    runs = {"3000001", "3000002", "3000003"}
    names = lambda d: sorted(p.name for p in (d / "images").iterdir())  # noqa: E731
    assert len(names(cv_recipe.link_split(data, tmp_path / "all", runs))) == 15
    half = names(cv_recipe.link_split(data, tmp_path / "half", runs, 0.5))
    assert half == [f"3000001{i:06d}.png" for i in (1, 3, 5, 7, 9)] + [f"3000002{i:06d}.png" for i in (1, 3)]
    assert len(list((tmp_path / "half" / "labels").iterdir())) == len(half)
