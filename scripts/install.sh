#!/usr/bin/env bash
# Install railedge as a systemd service on Debian, Ubuntu, Raspberry Pi OS (64-bit) or JetPack 6.
#
#   sudo scripts/install.sh --model /path/to/fitted/model          # install, enable, start
#   sudo scripts/install.sh --config my.yaml --model models/default --no-start
#   scripts/install.sh --dry-run                                    # print what would be done
#
# What it does (run it again to upgrade; it keeps an existing /etc/railedge/config.yaml):
#   1. system packages: python3-venv (and python3-opencv with --system-opencv, the default on JetPack)
#   2. a system user 'railedge' (no login, no home), in the 'video' group for the camera
#   3. a venv in /opt/railedge/venv with railedge from this checkout; torch-free unless --with-train
#   4. /etc/railedge/config.yaml from --config, else configs/jetson.yaml on JetPack, configs/rpi.yaml
#      on a Raspberry Pi, configs/default.yaml elsewhere (with state_dir and model.path set)
#   5. the model (--model DIR) in /var/lib/railedge/models/default
#   6. /etc/systemd/system/railedge.service (+ a Jetson drop-in for nvarguscamerasrc), verified,
#      enabled and (re)started when a model is present
#
# Options:
#   --model DIR        fitted model directory to install (railedge fit / train output)
#   --config FILE      config to install as /etc/railedge/config.yaml (an existing one is kept; the
#                      new one is written next to it as config.yaml.new)
#   --prefix DIR       install root for the venv and docs (default /opt/railedge)
#   --with-train       also install torch, snntorch and the exporters (large; not needed to run)
#   --system-opencv    use the distribution's OpenCV (with GStreamer: CSI/libcamera pipelines)
#                      instead of the PyPI wheel (default on JetPack)
#   --no-start         install and enable, but do not start
#   --dry-run          print the commands instead of running them
# Environment (for packaging and tests): RAILEDGE_USER, RAILEDGE_ETC, RAILEDGE_STATE, SYSTEMD_DIR,
# RAILEDGE_PYTHON (default /usr/bin/python3).
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX=/opt/railedge
MODEL=""
CONFIG=""
WITH_TRAIN=0
SYSTEM_OPENCV=""
START=1
DRY=0
USER_NAME="${RAILEDGE_USER:-railedge}"
ETC="${RAILEDGE_ETC:-/etc/railedge}"
STATE="${RAILEDGE_STATE:-/var/lib/railedge}"
UNIT_DIR="${SYSTEMD_DIR:-/etc/systemd/system}"

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }
run() {
  if [ "$DRY" = 1 ]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="${2:?--model needs a directory}"; shift 2 ;;
    --config) CONFIG="${2:?--config needs a file}"; shift 2 ;;
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --with-train) WITH_TRAIN=1; shift ;;
    --system-opencv) SYSTEM_OPENCV=1; shift ;;
    --no-start) START=0; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[ "$DRY" = 1 ] || [ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 ...), or with --dry-run to see the steps"
[ -f "$SRC/pyproject.toml" ] && [ -f "$SRC/systemd/railedge.service" ] || die "run this from a railedge checkout ($SRC has no pyproject.toml)"
[ -z "$MODEL" ] || [ -f "$MODEL/model.json" ] || die "--model $MODEL is not a fitted model directory (no model.json); fit one with 'railedge fit'"
[ -z "$CONFIG" ] || [ -f "$CONFIG" ] || die "--config $CONFIG does not exist"

# ---- platform ---------------------------------------------------------------------------------
[ -r /etc/os-release ] || die "no /etc/os-release: this script supports Debian, Ubuntu, Raspberry Pi OS and JetPack"
# shellcheck disable=SC1091
. /etc/os-release
case " ${ID:-} ${ID_LIKE:-} " in
  *" debian "*|*" ubuntu "*|*" raspbian "*) ;;
  *) die "${PRETTY_NAME:-this system} is not Debian-based; install by hand (see docs/daemon.md)" ;;
esac
PLATFORM=generic
if [ -f /etc/nv_tegra_release ] || dpkg-query -W -f='${Status}' nvidia-l4t-core 2>/dev/null | grep -q "ok installed"; then
  PLATFORM=jetson
elif grep -qa "Raspberry Pi" /proc/device-tree/model 2>/dev/null; then
  PLATFORM=rpi
fi
ARCH="$(uname -m)"
case "$ARCH" in
  x86_64|aarch64) ;;
  armv7l|armv6l) die "32-bit ARM ($ARCH): ONNX Runtime publishes no wheels for it; install the 64-bit Raspberry Pi OS" ;;
  *) say "warning: untested architecture $ARCH" ;;
esac
[ -n "$SYSTEM_OPENCV" ] || { [ "$PLATFORM" = jetson ] && SYSTEM_OPENCV=1 || SYSTEM_OPENCV=0; }
say "platform: ${PRETTY_NAME:-unknown} ($PLATFORM, $ARCH); prefix $PREFIX; system OpenCV: $SYSTEM_OPENCV"

# The distribution's interpreter: the service user must be able to run it (a pyenv or conda
# python under /root or /home is not reachable with ProtectHome=yes). RAILEDGE_PYTHON overrides.
PY="${RAILEDGE_PYTHON:-/usr/bin/python3}"
[ -x "$PY" ] || [ "$DRY" = 1 ] || die "$PY is missing: apt-get install python3 (or set RAILEDGE_PYTHON)"
case "$(readlink -f "$PY" 2>/dev/null || echo "$PY")" in
  /root/*|/home/*) say "warning: $PY lives under /root or /home, which the service cannot read (ProtectHome=yes)" ;;
esac
if [ "$DRY" = 0 ]; then
  "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "railedge needs Python >= 3.10 ($($PY -V 2>&1) found; JetPack 5 / Ubuntu 20.04 is too old: use JetPack 6)"
fi

# ---- 1. packages ------------------------------------------------------------------------------
need=()
"$PY" -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ "$SYSTEM_OPENCV" = 1 ] && ! "$PY" -c 'import cv2' 2>/dev/null; then
  need+=(python3-opencv)
fi
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  run apt-get update -qq
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

# ---- 2. user ----------------------------------------------------------------------------------
if ! getent passwd "$USER_NAME" >/dev/null; then
  say "creating system user $USER_NAME"
  run useradd --system --user-group --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin \
    --comment "railedge rail-defect detection" "$USER_NAME"
fi
if getent group video >/dev/null; then
  run usermod -a -G video "$USER_NAME"
fi
GROUP_NAME="$(id -gn "$USER_NAME" 2>/dev/null || echo "$USER_NAME")"

# ---- 3. venv ----------------------------------------------------------------------------------
VENV="$PREFIX/venv"
venv_args=()
[ "$SYSTEM_OPENCV" = 1 ] && venv_args+=(--system-site-packages)
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  run mkdir -p "$PREFIX"
  run "$PY" -m venv "${venv_args[@]}" "$VENV"
fi
run "$VENV/bin/python" -m pip install -q --upgrade pip
target="$SRC"
[ "$WITH_TRAIN" = 1 ] && target="$SRC[train]"
say "installing railedge from $SRC into $VENV ($([ "$WITH_TRAIN" = 1 ] && echo 'with the training extra' || echo 'torch-free runtime'))"
run "$VENV/bin/python" -m pip install -q --upgrade "$target"
if [ "$SYSTEM_OPENCV" = 1 ]; then
  # the PyPI wheel would shadow the system OpenCV (the one with GStreamer)
  run "$VENV/bin/python" -m pip uninstall -y -q opencv-python-headless opencv-python || true
  if [ "$DRY" = 0 ]; then
    "$VENV/bin/python" -c 'import cv2, sys; ok = cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER); print("install.sh: OpenCV", cv2.__version__, "GStreamer:", "yes" if ok else "NO")'
  fi
fi
run mkdir -p "$PREFIX/share/docs"
run install -m 0644 "$SRC/docs/daemon.md" "$PREFIX/share/docs/daemon.md"

# ---- 4. config --------------------------------------------------------------------------------
if [ -z "$CONFIG" ]; then
  case "$PLATFORM" in
    jetson) CONFIG="$SRC/configs/jetson.yaml" ;;
    rpi) CONFIG="$SRC/configs/rpi.yaml" ;;
    *) CONFIG="$SRC/configs/default.yaml" ;;
  esac
fi
run mkdir -p "$ETC"
dest="$ETC/config.yaml"
if [ -e "$dest" ]; then
  dest="$ETC/config.yaml.new"
  say "keeping the existing $ETC/config.yaml; the new one is $dest (compare and merge by hand)"
fi
tmp_cfg="$(mktemp)"
# systemd paths win over the file's own: the outbox under the state directory, the model installed below
sed -e "s#^state_dir:.*#state_dir: $STATE#" "$CONFIG" > "$tmp_cfg"
grep -q '^state_dir:' "$tmp_cfg" || printf '\nstate_dir: %s\n' "$STATE" >> "$tmp_cfg"
run install -m 0640 -o root -g "$GROUP_NAME" "$tmp_cfg" "$dest"
rm -f "$tmp_cfg"
if [ "$DRY" = 0 ]; then
  "$VENV/bin/railedge" check-config "$dest" --set "model.path=$STATE/models/default" >/dev/null \
    || die "$dest does not validate; fix it and run install.sh again"
fi

# ---- 5. model ---------------------------------------------------------------------------------
run install -d -m 0750 -o "$USER_NAME" -g "$GROUP_NAME" "$STATE" "$STATE/models"
if [ -n "$MODEL" ]; then
  say "installing the model $MODEL as $STATE/models/default"
  run rm -rf "$STATE/models/default.new"
  run cp -a "$MODEL" "$STATE/models/default.new"
  run chown -R "$USER_NAME:$GROUP_NAME" "$STATE/models/default.new"
  run rm -rf "$STATE/models/default"
  run mv "$STATE/models/default.new" "$STATE/models/default"
fi
HAVE_MODEL=0
[ -f "$STATE/models/default/model.json" ] && HAVE_MODEL=1

# ---- 6. systemd -------------------------------------------------------------------------------
unit="$UNIT_DIR/railedge.service"
tmp_unit="$(mktemp)"
sed -e "s#/opt/railedge#$PREFIX#g" -e "s#/etc/railedge#$ETC#g" -e "s#/var/lib/railedge#$STATE#g" \
    -e "s#^User=railedge#User=$USER_NAME#" -e "s#^Group=railedge#Group=$GROUP_NAME#" \
    "$SRC/systemd/railedge.service" > "$tmp_unit"
run mkdir -p "$UNIT_DIR"
run install -m 0644 "$tmp_unit" "$unit"
rm -f "$tmp_unit"
if [ "$PLATFORM" = jetson ]; then
  dropin="$UNIT_DIR/railedge.service.d"
  run mkdir -p "$dropin"
  if [ "$DRY" = 1 ]; then
    echo "+ write $dropin/10-jetson.conf"
  else
    cat > "$dropin/10-jetson.conf" <<'EOF'
# Written by railedge's install.sh on JetPack: nvarguscamerasrc talks to nvargus-daemon through
# /tmp/argus_socket and uses the Tegra devices (/dev/nvhost-*, /dev/nvmap, /dev/nvgpu/*), whose
# names differ between JetPack releases: the device allow-list is lifted, the rest stays hardened.
[Service]
PrivateTmp=no
DevicePolicy=auto
DeviceAllow=
EOF
  fi
fi

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  run systemctl daemon-reload
  if command -v systemd-analyze >/dev/null && [ "$DRY" = 0 ]; then
    systemd-analyze verify "$unit" || say "warning: systemd-analyze verify reported the problems above"
  fi
  run systemctl enable railedge.service
  if [ "$START" = 1 ] && [ "$HAVE_MODEL" = 1 ]; then
    run systemctl restart railedge.service
    say "started; follow it with: systemctl status railedge; journalctl -u railedge -f"
  elif [ "$HAVE_MODEL" = 0 ]; then
    say "enabled but not started: no model in $STATE/models/default (install.sh --model DIR, then systemctl start railedge)"
  else
    say "enabled, not started (--no-start): systemctl start railedge"
  fi
else
  say "systemd is not running here (a container?): unit installed as $unit, not enabled or started"
fi
say "done. config $ETC/config.yaml, state $STATE, venv $VENV; uninstall with scripts/uninstall.sh"
