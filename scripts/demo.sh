#!/usr/bin/env bash
# The main job, end to end: make sample footage, fit the SNN detector on its normal stretch,
# replay the track through it, print the events and a latency table. Publishes to the MQTT
# broker in the config (127.0.0.1:1883 by default) when one is reachable; without one, events
# wait in the durable outbox (state/outbox.sqlite) and the run still completes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
RE=.venv/bin/railedge
$RE synth samples --frames 300 --seed 1
$RE fit --data samples/normal --out models/default
mkdir -p runs/demo
$RE replay samples/track.mp4 --model models/default \
  --events-out runs/demo/events.jsonl --frames-out runs/demo/frames.jsonl
echo "events: runs/demo/events.jsonl   per-frame scores: runs/demo/frames.jsonl"
