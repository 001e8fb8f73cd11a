#!/usr/bin/env bash
# Install ripeye: `--dev` makes .venv/ in this checkout for development and tests; `--service` installs the
# systemd service under a prefix (default /opt/ripeye) with config in /etc/ripeye. Safe to run twice.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mode=""
root="${DESTDIR:-}"
prefix="/opt/ripeye"
with_mosquitto=0
uninstall=0
purge=0
extra=""
python="${PYTHON:-python3}"
SUPERVISION_VERSION=0.27.0  # still ships ByteTrack (later releases moved trackers to another package)

usage() {
  cat <<USAGE
usage: ./install.sh --dev | --service [--mosquitto] [--prefix DIR] [--root DIR] [--extra NAME]
       ./install.sh --uninstall [--purge] [--prefix DIR] [--root DIR]
  --dev         create .venv/ here with everything the tests need (installs mosquitto when missing)
  --service     install to PREFIX, create the ripeye user, install config and the systemd unit, enable it
  --mosquitto   also install a local mosquitto broker (always on with --dev)
  --prefix DIR  install location for --service (default /opt/ripeye)
  --root DIR    install into DIR as a staging root (DESTDIR); no users, apt or systemctl are touched
  --extra NAME  runtime extra to install (default: detected: openvino on x86, ncnn on ARM, jetson on Jetson)
  --uninstall   remove what --service added (keeps /etc/ripeye unless --purge)
USAGE
}

while [ $# -gt 0 ]; do
  case "$1" in
    --dev) mode=dev ;;
    --service) mode=service ;;
    --mosquitto) with_mosquitto=1 ;;
    --prefix) prefix="$2"; shift ;;
    --root) root="$2"; shift ;;
    --extra) extra="$2"; shift ;;
    --uninstall) uninstall=1 ;;
    --purge) purge=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

log() { printf 'install.sh: %s\n' "$*"; }

detect_board() {
  if [ -f /etc/nv_tegra_release ] || grep -qi jetson /proc/device-tree/model 2>/dev/null; then echo jetson
  elif grep -qi "raspberry pi" /proc/device-tree/model 2>/dev/null; then echo pi
  else case "$(uname -m)" in
    x86_64|amd64|i?86) echo x86 ;;
    aarch64|arm*) echo arm ;;
    *) echo other ;;
  esac; fi
}

runtime_extra() {
  case "$(detect_board)" in
    jetson) echo jetson ;;
    pi|arm) echo ncnn ;;
    x86) echo openvino ;;
    *) echo onnxruntime ;;
  esac
}

ensure_mosquitto() {
  if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then return 0; fi
  if [ -n "$root" ]; then log "staging root: not installing mosquitto"; return 0; fi
  log "installing mosquitto (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
}

make_venv() {  # $1 = venv dir, $2 = pip target spec
  local venv="$1" spec="$2"
  if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv"
    "$python" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  log "installing $spec into $venv"
  "$venv/bin/python" -m pip install -q $spec
}

if [ "$mode" = dev ]; then
  ensure_mosquitto
  if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then  # pyrealsense2 (the realsense extra) loads it
    log "installing libusb-1.0-0 (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq libusb-1.0-0 >/dev/null
  fi
  make_venv "$here/.venv" "-e $here[dev,openvino,onnxruntime,ncnn,optimize,tracking,realsense]"
  # pnnx's wheel lists torch (several GB) for a path we don't use; its ONNX→NCNN binary is self-contained.
  # supervision's wheel lists opencv-python, which would clobber the headless OpenCV the daemon uses.
  "$here/.venv/bin/python" -m pip install -q --no-deps pnnx "supervision==$SUPERVISION_VERSION"
  log "done: activate with 'source .venv/bin/activate'; run the tests with '.venv/bin/python -m pytest'"
  exit 0
fi

dest="$root$prefix"
etc="$root/etc/ripeye"
unit_dir="$root/etc/systemd/system"
state="$root/var/lib/ripeye"
cache="$root/var/cache/ripeye"
systemd_ok=0
if [ -z "$root" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then systemd_ok=1; fi

if [ "$uninstall" = 1 ]; then
  if [ "$systemd_ok" = 1 ]; then systemctl disable --now ripeye.service 2>/dev/null || true; fi
  rm -f "$unit_dir/ripeye.service"
  rm -rf "$dest" "$state" "$cache"
  if [ "$purge" = 1 ]; then rm -rf "$etc"; fi
  if [ -z "$root" ] && id ripeye >/dev/null 2>&1; then userdel ripeye 2>/dev/null || true; fi
  if [ "$systemd_ok" = 1 ]; then systemctl daemon-reload; fi
  log "uninstalled${purge:+ }$( [ "$purge" = 1 ] && echo '(config purged)' || echo "(kept $etc)")"
  exit 0
fi

if [ "$mode" != service ]; then usage >&2; exit 2; fi
[ "$with_mosquitto" = 1 ] && ensure_mosquitto
extra="${extra:-$(runtime_extra)}"
log "board: $(detect_board); runtime extra: $extra; prefix: $dest"
mkdir -p "$dest" "$etc" "$unit_dir" "$state" "$cache"
# The app (code + shipped models) is copied, then installed into its own venv.
rm -rf "$dest/app"
mkdir -p "$dest/app"
(cd "$here" && tar --exclude=.venv --exclude=.git --exclude='__pycache__' -cf - daemon models config pyproject.toml README.md) \
  | tar -xf - -C "$dest/app"
make_venv "$dest/venv" "$dest/app[$extra,tracking]"
"$dest/venv/bin/python" -m pip install -q --no-deps "supervision==$SUPERVISION_VERSION"
if [ ! -f "$etc/ripeye.yaml" ]; then
  sed -e "s#^  \# path: /opt/ripeye/models/tomato-yolo11n#  path: $prefix/app/models/tomato-yolo11n#" \
      -e "s#^state_dir: .*#state_dir: /var/lib/ripeye#" \
      -e "s#^  cache_dir: .*#  cache_dir: /var/cache/ripeye#" \
    "$here/config/ripeye.yaml" > "$etc/ripeye.yaml"
  log "installed $etc/ripeye.yaml"
else
  log "kept existing $etc/ripeye.yaml"
fi
sed "s#/opt/ripeye#$prefix#g" "$here/systemd/ripeye.service" > "$unit_dir/ripeye.service"
if [ -z "$root" ]; then
  id ripeye >/dev/null 2>&1 || useradd --system --home-dir /var/lib/ripeye --shell /usr/sbin/nologin --groups video ripeye
  chown -R ripeye: "$state" "$cache"
fi
if [ "$systemd_ok" = 1 ]; then
  systemctl daemon-reload
  systemctl enable --now ripeye.service
  log "service enabled: systemctl status ripeye"
fi
log "done"
