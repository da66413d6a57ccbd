#!/usr/bin/env bash
# Set up everything the tests need (venv, packages, Mosquitto) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
rc=0
.venv/bin/python -m pytest -q -ra "$@" || rc=$?
# pytest exits 5 when it collected nothing; that is not a pass here.
if [ "$rc" -eq 5 ]; then echo "test.sh: no tests were collected" >&2; fi
exit "$rc"
