#!/usr/bin/env bash
# Prepare a fresh Debian/Ubuntu machine: system packages, then a venv in .venv with railedge.
#   scripts/setup.sh            railedge with the training extra (torch) and test tools
#   scripts/setup.sh --edge     the torch-free edge runtime only
set -euo pipefail
cd "$(dirname "$0")/.."
extras="train,test"
[ "${1:-}" = "--edge" ] && extras=""

SUDO=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
need=()
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v mosquitto >/dev/null || need+=(mosquitto)
command -v openssl >/dev/null || need+=(openssl)
# headless browser for the report test (tests/test_report.py opens report.html and screenshots it); not on --edge
if [ -n "$extras" ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then need+=(chromium); fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian starts the broker as a service; tests start their own on free ports.
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install -q -e ".[$extras]"
else
  .venv/bin/python -m pip install -q -e .
fi
echo "setup: .venv ready ($(.venv/bin/python -c 'import railedge; print("railedge", railedge.__version__)'))"
