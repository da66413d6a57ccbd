#!/usr/bin/env bash
# Build the torch-free edge runtime in a fresh venv and report its installed size:
#   scripts/edge_env.sh [VENV_DIR]      (default /tmp/railedge-edge)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-/tmp/railedge-edge}"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q .
if "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  echo "edge_env: torch is installed in the edge venv: the dependency split is broken" >&2
  exit 1
fi
size=$(du -sm "$venv" | cut -f1)
echo "edge venv: $venv  installed size: ${size} MB (target <= 400 MB)"
"$venv/bin/python" -m pip list --format=freeze | grep -iE 'numpy|onnxruntime|opencv|paho|structlog|pyyaml'
