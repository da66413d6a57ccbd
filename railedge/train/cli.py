"""`railedge train`: the command line (argument parsing and the progress bar only)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable


class _Bar:
    """One progress line on stderr: redrawn in place on a terminal, every 10% of an epoch otherwise."""

    def __init__(self, stream=sys.stderr) -> None:
        self.s = stream
        self.tty = stream.isatty()
        self.total = 1
        self.spe = 1
        self.t0 = time.monotonic()
        self.start_step = 0

    def __call__(self, kind: str, **kw: Any) -> None:
        if kind == "start":
            self.total, self.spe, self.start_step = kw["total"], kw["steps_per_epoch"], kw["step"]
            self.t0 = time.monotonic()
            resumed = f", resuming at step {kw['step']}" if kw["step"] else ""
            self.s.write(f"training ({kw['mode']}): {kw['train_frames']} frames, {kw['val_frames']} held out; "
                         f"{kw['epochs']} epochs x {kw['steps_per_epoch']} steps{resumed}\n")
        elif kind == "step":
            step = kw["step"]
            done = (step - self.start_step) or 1
            eta = (time.monotonic() - self.t0) / done * (self.total - step)
            frac = step / self.total
            bar = "#" * int(frac * 30) + "." * (30 - int(frac * 30))
            line = (f"[{bar}] step {step}/{self.total} epoch {(step - 1) // self.spe + 1} "
                    f"loss {kw['loss_ema']:.4f} {kw['seconds']:.2f} s/step eta {eta / 60:.1f} min")
            if self.tty:
                self.s.write("\r" + line)
            elif step % max(1, self.spe // 10) == 0:
                self.s.write(line + "\n")
        elif kind == "epoch":
            au = kw.get("val_image_auroc")
            cu = kw.get("val_cell_auroc")
            self.s.write(("\n" if self.tty else "") +
                         f"epoch {kw['epoch']}: train loss {kw['train_loss']:.4f}, val loss {kw['val_loss']:.4f}, "
                         f"val image AUROC {au if au is not None else 'n/a'}, val cell AUROC {cu if cu is not None else 'n/a'} "
                         f"({kw['elapsed_s']} s)\n")
        self.s.flush()


def cmd_train(args: argparse.Namespace, load: Callable) -> int:
    extra = [f"model.backbone={args.backbone}"] if args.backbone else []
    if args.seed is not None:
        extra.append(f"train.seed={args.seed}")
    if args.epochs is not None:
        extra.append(f"train.epochs={args.epochs}")
    if args.init is not None:
        extra.append(f"train.init={args.init}")
    cfg = load(args, extra)
    from railedge.train.trainer import TrainingStopped, recalibrate, train

    if args.recalibrate:
        r = recalibrate(cfg, args.out, args.val, args.format)
        sys.stdout.write(json.dumps(r) + "\n" if args.json else
                         f"recalibrated {r['model']}: threshold {r['threshold']:.4f} on {r['holdout_frames']} held-out frames\n")
        return 0

    if not args.data:
        sys.stderr.write("railedge train: error: --data is required (the training footage)\n")
        return 2
    try:
        s = train(cfg, args.data, args.out, fmt=args.format, mode=args.mode, val=args.val, restart=args.restart,
                  progress=None if args.quiet else _Bar(), stop_after=args.stop_after)
    except TrainingStopped as e:
        sys.stderr.write(f"stopped at step {e.step}; run the same command again to resume from {e.checkpoint}\n")
        return 3
    if args.json:
        sys.stdout.write(json.dumps(s) + "\n")
        return 0
    rows = "\n".join(
        f"  {e['epoch']:>5}  {e['train_loss']:>10.4f}  {e['val_loss']:>8.4f}  {str(e['val_image_auroc']):>9}  {str(e['val_cell_auroc']):>8}"
        for e in s["epochs"])
    sys.stdout.write(
        f"trained {s['backbone']} ({s['mode']}, scoring {s['scoring']}) -> {s['model']} in {s['train_seconds']} s of training\n"
        f"  {s['train_frames']} training frames, {s['val_frames']} held out (runs {', '.join(s['val_runs'])}); "
        f"threshold {s['threshold']:.4f}\n"
        f"  epoch  train loss  val loss  val AUROC  cell AUROC\n{rows}\n"
        f"curve: {s['model']}/training_curve.png, {s['model']}/training.json\n"
    )
    return 0


def add_parser(sub: Any, config_args: Callable, load: Callable) -> None:
    c = sub.add_parser("train", help="train the backbone and a per-patch head (labelled or normal-only)",
                       description="Train on labelled boxes/masks (classes: defect, dirt, gap...) or, without labels, "
                                   "on normal footage with synthetic defects pasted in. Writes the same model artifact "
                                   "as 'railedge fit'. Re-running an interrupted command resumes from its checkpoint.")
    config_args(c)
    c.add_argument("--data", help="(required) YOLO folder, mask folder (images/+masks/ or MVTec-style), image folder or video")
    c.add_argument("--out", required=True, help="model directory to write")
    c.add_argument("--backbone", choices=["snn", "resnet"])
    c.add_argument("--format", choices=["auto", "yolo", "masks", "plain"], default="auto")
    c.add_argument("--mode", choices=["auto", "labelled", "normal"], default="auto",
                   help="labelled: learn the labelled classes; normal: synthetic defects on normal footage (auto: labelled when labels exist)")
    c.add_argument("--val", help="held-out data (whole runs) for validation and threshold calibration (default: train.val_fraction of the runs)")
    c.add_argument("--seed", type=int, help="override train.seed")
    c.add_argument("--epochs", type=int, help="override train.epochs")
    c.add_argument("--init", metavar="MODEL", help="override train.init: start from this model's weights (fine-tuning)")
    c.add_argument("--restart", action="store_true", help="discard a checkpoint of an earlier, interrupted run")
    c.add_argument("--recalibrate", action="store_true",
                   help="no training: recompute the threshold of the trained model --out on --val (default: its recorded "
                        "held-out frames) with the current settings (events.alarm_classes, train.val_false_alarms_per_frame)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    c.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # tests: stop (as if interrupted) after N steps
    c.set_defaults(func=lambda a: cmd_train(a, load))
