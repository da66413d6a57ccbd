"""`railedge replay --run-dir` + `railedge report`: a static page whose every figure exists and is
drawn, opened by headless Chromium (a screenshot that is not blank)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import RAILEDGE, SMALL_MODEL

FIGURES = {
    "score_along_track.png", "latency_histograms.png", "compare_feature_ranges.png", "compare_feature_distributions.png",
    "compare_spikes.png", "compare_membranes.png", "compare_timing.png",
}


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _drawn(path: Path) -> bool:
    img = cv2.imread(str(path))
    return img is not None and img.size > 0 and float(img.std()) > 5.0 and (img < 200).any()


@pytest.fixture(scope="module")
def run_dir(footage, small_model, tmp_path_factory) -> Path:
    truth = json.loads((footage / "defects.json").read_text())
    run = tmp_path_factory.mktemp("report") / "run"
    r = subprocess.run(
        RAILEDGE + ["replay", str(footage / "track.mp4"), "--model", str(small_model), "--run-dir", str(run)] + SMALL_MODEL
        + ["--set", f"position.speed_mps={truth['speed_mps']}", "--set", f"position.start_chainage_m={truth['start_chainage_m']}",
           "--set", f"position.mm_per_px={truth['mm_per_px']}", "--set", f"state_dir={run.parent / 'state'}"],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "railedge report" in r.stdout
    return run


def test_run_directory_holds_what_the_report_needs(run_dir, footage):
    run = json.loads((run_dir / "run.json").read_text())
    assert run["format"] == "railedge.run/1" and run["summary"]["frames"] == 120
    assert run["truth"] and Path(run["truth"]).samefile(footage / "defects.json")
    assert run["config"]["position"]["speed_mps"] == 2.0
    frames = (run_dir / "frames.jsonl").read_text().splitlines()
    assert len(frames) == 120 and json.loads(frames[0])["latency_ms"]["total"] > 0
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events and all(e["snapshot"] and (run_dir / "snapshots" / Path(e["snapshot"]).name).is_file() for e in events)
    assert not (run_dir.parent / "state" / "snapshots").exists()  # the run directory holds this run's snapshots


@pytest.mark.slow
def test_report_renders_every_figure_and_opens_in_chromium(run_dir, tmp_path):
    r = subprocess.run(RAILEDGE + ["report", str(run_dir), "--compare-frames", "2", "--compare-repeat", "1",
                                   "--compare-runtimes", "eager"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    page = run_dir / "report.html"
    text = page.read_text()
    srcs = re.findall(r"<img[^>]*src='([^']+)'", text)
    figs = {Path(s).name for s in srcs if s.startswith("figures/")}
    assert figs == FIGURES
    for s in srcs:  # every picture the page shows is there, relative to the page, and drawn
        assert not s.startswith(("/", "http")), s
        assert _drawn(run_dir / s), s
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    n_defects = len({e["id"] for e in events})
    assert sum(1 for s in srcs if s.startswith("snapshots/")) == n_defects
    assert f"Detected defects ({n_defects})" in text and "chainage" in text
    assert "spikes/frame" in text and "median ms" in text and "membrane" in text
    cmp = json.loads((run_dir / "compare.json").read_text())
    assert cmp["input"] == [256, 64] and set(cmp["timing"]) == {"snn", "resnet"}

    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs it): the page was checked without a browser")
    shot = tmp_path / "shot.png"
    c = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2400",
                        f"--screenshot={shot}", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), c.stderr[-2000:]
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (2400, 1200)
    non_white = (img.min(axis=2) < 230).mean()
    assert non_white > 0.05, f"the screenshot is almost blank ({non_white:.1%} drawn)"
    # the score figure is on screen: its blue score line (BGR 178,114,0) shows up in the top part
    top = img[:900].astype(int)
    blue = (np.abs(top[..., 0] - 178) < 40) & (np.abs(top[..., 1] - 114) < 40) & (top[..., 2] < 60)
    assert blue.sum() > 200


def test_report_without_positions_plots_by_frame(tmp_path):
    from railedge.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({
        "format": "railedge.run/1", "source": "x.mp4", "truth": None, "config": {},
        "model": {"path": "m", "backbone": "snn"},
        "summary": {"frames": 30, "backbone": "snn", "runtime": "onnx", "fps": 10.0, "anomalous_frames": 3, "threshold": 1.0,
                    "defects": 1, "events": 2, "event_types": {"new": 1, "end": 1}},
    }))
    frames = [{"frame_index": i, "score": 0.5 + (1.0 if 10 <= i <= 12 else 0.0), "threshold": 1.0, "stay_level": 0.9,
               "position": None, "latency_ms": {"inference": 5.0 + i % 3, "total": 7.0 + i % 3}} for i in range(30)]
    (run / "frames.jsonl").write_text("".join(json.dumps(f) + "\n" for f in frames))
    ev = {"id": "d-1", "frame_index": 11, "first_frame": 10, "last_frame": 12, "peak_score": 1.5, "bbox": [1, 2, 3, 4],
          "position": None, "snapshot": None, "source": "x.mp4"}
    (run / "events.jsonl").write_text(json.dumps({**ev, "type": "new"}) + "\n" + json.dumps({**ev, "type": "end"}) + "\n")
    page = build_report(run, no_compare=True)
    text = page.read_text()
    assert "by frame (no position was known)" in text and "position unknown" in text and "no snapshot" in text
    assert _drawn(run / "figures" / "score_along_track.png") and _drawn(run / "figures" / "latency_histograms.png")


def test_report_on_a_folder_that_is_no_run_says_how_to_make_one(tmp_path):
    r = subprocess.run(RAILEDGE + ["report", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "--run-dir" in r.stderr
