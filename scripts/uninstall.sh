#!/usr/bin/env bash
# Remove the railedge service installed by scripts/install.sh.
#
#   sudo scripts/uninstall.sh            stop and remove the service and the venv; keep the config,
#                                        the models and the outbox (/etc/railedge, /var/lib/railedge)
#   sudo scripts/uninstall.sh --purge    also remove those and the 'railedge' user
#   scripts/uninstall.sh --dry-run       print what would be done
#
# Events still in the outbox (/var/lib/railedge/state or state_dir) are lost with --purge: the
# service flushes on stop for mqtt.flush_timeout_s, and the script says how many were left.
# Options: --prefix DIR (default /opt/railedge). Environment: RAILEDGE_USER, RAILEDGE_ETC,
# RAILEDGE_STATE, SYSTEMD_DIR (as for install.sh).
set -euo pipefail

PREFIX=/opt/railedge
PURGE=0
DRY=0
USER_NAME="${RAILEDGE_USER:-railedge}"
ETC="${RAILEDGE_ETC:-/etc/railedge}"
STATE="${RAILEDGE_STATE:-/var/lib/railedge}"
UNIT_DIR="${SYSTEMD_DIR:-/etc/systemd/system}"

die() { echo "uninstall.sh: error: $*" >&2; exit 1; }
say() { echo "uninstall.sh: $*"; }
run() {
  if [ "$DRY" = 1 ]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --purge) PURGE=1; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[ "$DRY" = 1 ] || [ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 ...), or with --dry-run"

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  if systemctl list-unit-files railedge.service >/dev/null 2>&1; then
    say "stopping railedge (it finishes queued frames and flushes the outbox)"
    run systemctl disable --now railedge.service || true
  fi
fi
run rm -f "$UNIT_DIR/railedge.service"
run rm -rf "$UNIT_DIR/railedge.service.d"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  run systemctl daemon-reload
  run systemctl reset-failed railedge.service 2>/dev/null || true
fi
run rm -rf "$PREFIX/venv" "$PREFIX/share/docs/daemon.md"
run rmdir --ignore-fail-on-non-empty "$PREFIX/share/docs" "$PREFIX/share" "$PREFIX" 2>/dev/null || true

if [ "$PURGE" = 1 ]; then
  left=""
  for db in "$STATE"/outbox.sqlite3 "$STATE"/*/outbox.sqlite3; do
    [ -f "$db" ] || continue
    if command -v sqlite3 >/dev/null; then
      n="$(sqlite3 "$db" 'SELECT count(*) FROM outbox' 2>/dev/null || echo '?')"
      left="$left $db: $n queued;"
    else
      left="$left $db;"
    fi
  done
  [ -z "$left" ] || say "removing outbox(es) with undelivered messages:$left"
  run rm -rf "$ETC" "$STATE"
  user_note="user $USER_NAME kept (not created by install.sh)"
  if getent passwd "$USER_NAME" >/dev/null && [ "$USER_NAME" = railedge ]; then
    if run userdel "$USER_NAME"; then user_note="user removed"; else user_note="could not remove user $USER_NAME"; fi
  fi
  say "purged: service, venv, config, models and outbox removed; $user_note"
else
  say "removed the service and the venv; kept $ETC (config) and $STATE (models, outbox); --purge removes them"
fi
