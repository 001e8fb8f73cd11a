#!/usr/bin/env bash
# Install ripeye: `--dev` makes .venv/ in this checkout for development and tests; `--service` installs the
# systemd service under a prefix (default /opt/ripeye) with config in /etc/ripeye. Safe to run twice.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mode=""
root="${DESTDIR:-}"
prefix="/opt/ripeye"
with_mosquitto=0
with_labelstudio=0
uninstall=0
purge=0
extra=""
instances=()
python="${PYTHON:-python3}"
pip_index_args=()  # --extra-index-url: sudo resets the environment, so an exported PIP_EXTRA_INDEX_URL is lost
hw_root="${RIPEYE_HW_ROOT:-}"  # tests stand in a board's /proc, /sys and /etc here (tests/fixtures/hardware)
SUPERVISION_VERSION=0.27.0  # still ships ByteTrack (later releases moved trackers to another package)
# The labelling tool tests/test_labelstudio.py runs (./install.sh --dev --labelstudio), in its own venv: its
# pins (numpy, OpenCV) would downgrade ours. The SDK is the one this Label Studio release pins.
LABEL_STUDIO_VERSION=1.23.2
LABEL_STUDIO_SDK_VERSION=2.1.2

usage() {
  cat <<USAGE
usage: ./install.sh --dev | --service [--mosquitto] [--prefix DIR] [--root DIR] [--extra NAME[,NAME]]
                   [--extra-index-url URL]... [--instance NAME]...
       ./install.sh --uninstall [--purge] [--prefix DIR] [--root DIR]
  --dev         create .venv/ here with everything the tests need (installs mosquitto when missing)
  --labelstudio with --dev: also Label Studio $LABEL_STUDIO_VERSION in .venv-labelstudio/ (about 1 GB), for
                tests/test_labelstudio.py (without it that test is skipped); CI installs it
  --service     install to PREFIX, create the ripeye user, install config and the systemd units (ripeye.service
                and the per-camera template ripeye@.service), enable ripeye.service
  --instance NAME
                with --service: one daemon per camera (repeatable: --instance scene --instance wrist): writes
                /etc/ripeye/NAME.yaml and enables ripeye@NAME instead of ripeye.service
  --mosquitto   also install a local mosquitto broker (always on with --dev)
  --prefix DIR  install location for --service (default /opt/ripeye)
  --root DIR    install into DIR as a staging root (DESTDIR); no users, apt or systemctl are touched
  --extra NAME  runtime extra to install (default: detected: openvino on x86, ncnn on ARM, jetson on Jetson);
                several comma-separated, e.g. ncnn,oakd for an OAK-D depth camera on a Pi
  --extra-index-url URL
                another package index for pip (repeatable), e.g. NVIDIA's Jetson index for onnxruntime-gpu;
                use this rather than PIP_EXTRA_INDEX_URL, which 'sudo' drops
  --uninstall   remove what --service added (keeps /etc/ripeye unless --purge)
USAGE
}

while [ $# -gt 0 ]; do
  case "$1" in
    --dev) mode=dev ;;
    --service) mode=service ;;
    --mosquitto) with_mosquitto=1 ;;
    --labelstudio) with_labelstudio=1 ;;
    --prefix) prefix="$2"; shift ;;
    --root) root="$2"; shift ;;
    --extra) extra="$2"; shift ;;
    --extra-index-url) pip_index_args+=(--extra-index-url "$2"); shift ;;
    --instance)
      # a file name, a unit instance and part of the MQTT device id: keep it to letters, digits, - and _
      if ! [[ "${2:-}" =~ ^[A-Za-z0-9_-]+$ ]]; then echo "install.sh: --instance wants a name of letters, digits, - or _" >&2; exit 2; fi
      instances+=("$2"); shift ;;
    --uninstall) uninstall=1 ;;
    --purge) purge=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

log() { printf 'install.sh: %s\n' "$*"; }

# One line per step on the terminal; the tools' full output goes to $install_log, and its tail is shown on failure.
install_log="${RIPEYE_INSTALL_LOG:-$here/install.log}"
: > "$install_log"
step() {  # step "what" command...
  local what="$1"; shift
  log "$what"
  printf '\n== %s\n$ %s\n' "$what" "$*" >> "$install_log"
  if ! "$@" >> "$install_log" 2>&1; then
    log "FAILED: $what; last lines of $install_log:"
    tail -n 25 "$install_log" | sed 's/^/  | /' >&2
    exit 1
  fi
}

# shellcheck source=.ci/apt-packages.sh
. "$here/.ci/apt-packages.sh"
# apt_get's one "waiting for another apt's lock" line goes to the terminal (fd 3), not into the step's log.
exec 3>&1
APT_NOTICE_FD=3
APT_NOTICE_PREFIX="install.sh: "

# The device-tree model: /sys/firmware stays visible inside the service sandbox (ProcSubset=pid hides /proc's).
device_tree_model() {
  local f
  for f in "$hw_root/sys/firmware/devicetree/base/model" "$hw_root/proc/device-tree/model"; do
    if [ -r "$f" ]; then tr -d '\0' < "$f"; return 0; fi
  done
}

# The same rule as daemon/hardware.py is_jetson(): a non-empty /etc/nv_tegra_release, or an ARM device-tree model
# naming Jetson/NVIDIA.
detect_board() {
  local machine model
  machine="$(uname -m)"
  model="$(device_tree_model)"
  case "$machine" in
    aarch64|arm64|armv*) ;;
    *) model="" ;;
  esac
  if [ "${machine#armv[67]}" != "$machine" ]; then echo arm32  # 32-bit userland, even on a Pi 4/5 board
  elif [ -s "$hw_root/etc/nv_tegra_release" ] || printf '%s' "$model" | grep -qiE 'jetson|nvidia'; then echo jetson
  elif printf '%s' "$model" | grep -qi "raspberry pi"; then echo pi
  else case "$machine" in
    x86_64|amd64|i?86) echo x86 ;;
    aarch64|arm64|armv8l) echo arm ;;
    *) echo other ;;
  esac; fi
}

runtime_extra() {
  case "$1" in
    jetson) echo jetson ;;
    pi|arm) echo ncnn ;;
    x86) echo openvino ;;
    *) echo onnxruntime ;;
  esac
}

# apt is for the real machine only: a staging root (--root) never touches the host's packages.
apt_install() {  # apt_install "why" packages...
  local why="$1"; shift
  if [ -n "$root" ]; then log "staging root: not installing $* ($why)"; return 0; fi
  step "apt: installing $* ($why)" ensure_apt_packages "$@"
}

ensure_mosquitto() {
  if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then return 0; fi
  apt_install "local MQTT broker" mosquitto mosquitto-clients
}

# `python3 -m venv` needs apt's python3-venv (ensurepip), absent on stock Debian, Ubuntu and JetPack images.
ensure_venv_module() {
  if "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then return 0; fi
  local ver
  ver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [ -n "$root" ]; then log "FAILED: $python has no venv/ensurepip; install python3-venv (or python$ver-venv)"; exit 1; fi
  apt_install "python3 -m venv needs it" "python$ver-venv"
}

# CUDA on a Jetson opens /dev/nvmap (a misc device, so no class to allow) and, on JetPack 6, /dev/nvgpu/*/* (whose
# class name is not stable): allow the nodes this board has, by path.
write_jetson_dropin() {  # $1 = drop-in directory
  local node lines=""
  for node in "$hw_root"/dev/nvmap "$hw_root"/dev/nvgpu/*/* "$hw_root"/dev/nvhost-*; do
    [ -e "$node" ] && lines+="DeviceAllow=${node#"$hw_root"} rw"$'\n'
  done
  mkdir -p "$1"
  printf '# Written by install.sh for this Jetson: the GPU nodes CUDA and TensorRT open.\n[Service]\n%s' \
    "$lines" > "$1/jetson.conf"
  log "installed $1/jetson.conf ($(printf '%s' "$lines" | grep -c DeviceAllow) GPU device nodes)"
}

# The numpy that apt's packages were built against (picamera2's simplejpeg and libcamera bindings on a Pi,
# JetPack's OpenCV on a Jetson): a newer numpy from pip in the venv breaks them at import ("numpy.dtype size
# changed"). Such venvs see the system packages and pin numpy to the system's version with a pip constraint.
system_numpy_constraint() {  # $1 = constraints file; true when one was written
  local v
  v="$("$python" -c 'import numpy; print(numpy.__version__)' 2>/dev/null)" || return 1
  [ -n "$v" ] || return 1
  echo "numpy==$v" > "$1"
}

make_venv() {  # $1 = venv dir, $2 = "system" to see the system site-packages, then pip install arguments
  local venv="$1" system="$2"; shift 2
  local venv_args=() pin_args=()
  if [ "$system" = system ]; then
    venv_args+=(--system-site-packages)
    if system_numpy_constraint "$venv.constraints.txt"; then
      pin_args=(-c "$venv.constraints.txt")
      log "using the system numpy ($(cut -d= -f3 "$venv.constraints.txt")) so apt's packages keep working"
    fi
  fi
  if [ ! -x "$venv/bin/python" ]; then
    ensure_venv_module
    step "creating $venv${venv_args:+ (with the system site-packages)}" "$python" -m venv "${venv_args[@]}" "$venv"
  fi
  step "upgrading pip in $venv" "$venv/bin/python" -m pip install --upgrade pip
  step "installing $* into $venv (pip output: $install_log)" \
    "$venv/bin/python" -m pip install "${pip_index_args[@]}" "${pin_args[@]}" "$@"
}

if [ "$with_labelstudio" = 1 ] && [ "$mode" != dev ]; then echo "install.sh: --labelstudio goes with --dev" >&2; exit 2; fi

# Label Studio in its own venv, and its database migrated once into a template beside it: migrating a fresh SQLite
# takes minutes, so the test starts from a copy of it (and migrates from scratch when it is missing).
install_labelstudio() {
  local ls_venv="${RIPEYE_LABELSTUDIO_VENV:-$here/.venv-labelstudio}" template migrate_dir
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    log "FAILED: Label Studio $LABEL_STUDIO_VERSION needs Python 3.10 or newer; set PYTHON=python3.11 (or newer)"
    exit 1
  fi
  # sentry-sdk 3.0 refuses the `send_default_pii` option Label Studio 1.23 passes it (TypeError at start-up, seen
  # 2026-12-07): keep the 2.x it was released against (it asks only for >= 2.16)
  make_venv "$ls_venv" plain "label-studio==$LABEL_STUDIO_VERSION" "label-studio-sdk==$LABEL_STUDIO_SDK_VERSION" \
    "sentry-sdk>=2.16,<3"
  template="$ls_venv/ripeye-empty-$LABEL_STUDIO_VERSION.sqlite3"
  if [ ! -s "$template" ]; then
    migrate_dir="$(mktemp -d)"
    # `label-studio user` migrates the database, then looks a user up (none: it says so) and exits
    step "migrating an empty Label Studio database (the test's template; minutes)" \
      env LATEST_VERSION_CHECK=false "$ls_venv/bin/label-studio" user --data-dir "$migrate_dir" --username none
    cp "$migrate_dir/label_studio.sqlite3" "$template.part" && mv "$template.part" "$template"
    rm -rf "$migrate_dir"
  fi
  log "Label Studio $LABEL_STUDIO_VERSION in $ls_venv ($(du -sm "$ls_venv" | cut -f1) MB)"
}

if [ "$mode" = dev ]; then
  # shellcheck disable=SC2086  # the list is words
  apt_install "what the tests need" $TEST_APT_PACKAGES
  dev_venv="${RIPEYE_DEV_VENV:-$here/.venv}"
  make_venv "$dev_venv" plain -e "$here[dev,openvino,onnxruntime,ncnn,optimize,tracking,realsense,oakd]"
  # pnnx's wheel lists torch (several GB) for a path we don't use; its ONNX→NCNN binary is self-contained.
  # supervision's wheel lists opencv-python, which would clobber the headless OpenCV the daemon uses.
  step "installing pnnx and supervision (without their dependencies)" \
    "$dev_venv/bin/python" -m pip install "${pip_index_args[@]}" --no-deps pnnx "supervision==$SUPERVISION_VERSION"
  if [ "$with_labelstudio" = 1 ]; then install_labelstudio; fi
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
  if [ "$systemd_ok" = 1 ]; then
    systemctl disable --now ripeye.service 2>/dev/null || true
    for link in "$unit_dir"/*.wants/ripeye@*.service; do
      [ -e "$link" ] || [ -L "$link" ] || continue
      systemctl disable --now "$(basename "$link")" 2>/dev/null || true
    done
  fi
  rm -f "$unit_dir/ripeye.service" "$unit_dir/ripeye@.service"
  rm -rf "$unit_dir/ripeye.service.d" "$unit_dir/ripeye@.service.d"
  rm -rf "$dest" "$state" "$cache"
  if [ "$purge" = 1 ]; then rm -rf "$etc"; fi
  if [ -z "$root" ] && id ripeye >/dev/null 2>&1; then userdel ripeye 2>/dev/null || true; fi
  if [ "$systemd_ok" = 1 ]; then systemctl daemon-reload; fi
  log "uninstalled${purge:+ }$( [ "$purge" = 1 ] && echo '(config purged)' || echo "(kept $etc)")"
  exit 0
fi

if [ "$mode" != service ]; then usage >&2; exit 2; fi
board="$(detect_board)"
if [ "$board" = arm32 ]; then
  # Checked on PyPI for cp311 linux armv7l: only ncnn has a wheel; onnxruntime, openvino, numpy and
  # opencv-python-headless have none, so pip would stop half-way building them from source.
  log "32-bit ARM ($(uname -m)) is not supported: onnxruntime, openvino, numpy and OpenCV publish no armv7l wheels"
  log "on PyPI. Install the 64-bit Raspberry Pi OS (aarch64); ripeye runs there with NCNN."
  exit 3
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
  log "$python is Python $("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo '?')"
  log "ripeye needs Python 3.9 or newer (on a Jetson: JetPack 6, Python 3.10; JetPack 5's Python 3.8 is not supported)"
  exit 3
fi
[ "$with_mosquitto" = 1 ] && ensure_mosquitto
extra="${extra:-$(runtime_extra "$board")}"
log "board: $board; runtime extra: $extra; prefix: $dest; pip output: $install_log"
venv_kind=plain
case "$board" in
  pi)
    # Raspberry Pi OS ships picamera2 (and libcamera's bindings) only through apt: the venv must see them.
    "$python" -c 'import picamera2' >/dev/null 2>&1 || apt_install "the CSI camera's library" python3-picamera2
    venv_kind=system ;;
  jetson)
    # JetPack's own OpenCV is built with GStreamer (nvarguscamerasrc); pip's headless OpenCV has none.
    venv_kind=system
    if [[ ",$extra," == *,jetson,* ]] && [ ${#pip_index_args[@]} -eq 0 ] && [ -z "${PIP_EXTRA_INDEX_URL:-}" ]; then
      log "note: PyPI has no aarch64 onnxruntime-gpu for JetPack; pass --extra-index-url with NVIDIA's Jetson"
      log "      index for your JetPack (see README, Jetson), or doctor will report inference on the CPU"
    fi ;;
esac
mkdir -p "$dest" "$etc" "$unit_dir" "$state" "$cache"
# The app (code + shipped models) is copied, then installed into its own venv.
rm -rf "$dest/app"
mkdir -p "$dest/app"
(cd "$here" && tar --exclude=.venv --exclude=.git --exclude='__pycache__' -cf - daemon models config pyproject.toml README.md) \
  | tar -xf - -C "$dest/app"
make_venv "$dest/venv" "$venv_kind" "$dest/app[$extra,tracking]"
step "installing supervision (without its dependencies)" \
  "$dest/venv/bin/python" -m pip install "${pip_index_args[@]}" --no-deps "supervision==$SUPERVISION_VERSION"
if [ "$board" = jetson ] && "$python" -c 'import cv2' >/dev/null 2>&1; then
  # pip's headless OpenCV (a dependency) would shadow JetPack's GStreamer-enabled one from the system site-packages.
  step "using JetPack's OpenCV (GStreamer) instead of pip's headless one" \
    "$dest/venv/bin/python" -m pip uninstall -y opencv-python-headless
fi
install_config() {  # $1 = config file name, $2 = its state dir (never overwrites a file that is there)
  if [ ! -f "$etc/$1" ]; then
    sed -e "s#^  \# path: /opt/ripeye/models/tomato-yolo11n#  path: $prefix/app/models/tomato-yolo11n#" \
        -e "s#^state_dir: .*#state_dir: $2#" \
        -e "s#^  cache_dir: .*#  cache_dir: /var/cache/ripeye#" \
      "$here/config/ripeye.yaml" > "$etc/$1"
    log "installed $etc/$1"
  else
    log "kept existing $etc/$1"
  fi
}
install_config ripeye.yaml /var/lib/ripeye
# Per camera (ripeye@NAME): own config, device id (<hostname>-NAME by default) and state dir; shared models, cache.
for name in "${instances[@]}"; do
  install_config "$name.yaml" "/var/lib/ripeye/$name"
  mkdir -p "$state/$name"
done
# USB depth cameras (RealSense, OAK-D): their /dev/bus/usb nodes to the video group
mkdir -p "$root/etc/udev/rules.d"
cp "$here/systemd/99-ripeye-depth-cameras.rules" "$root/etc/udev/rules.d/"
if [ -z "$root" ] && command -v udevadm >/dev/null 2>&1 && [ -d /run/udev ]; then
  udevadm control --reload-rules && udevadm trigger --subsystem-match=usb || log "udev reload failed: replug the camera"
fi
for unit in ripeye.service ripeye@.service; do
  sed "s#/opt/ripeye#$prefix#g" "$here/systemd/$unit" > "$unit_dir/$unit"
  if [ "$board" = jetson ]; then write_jetson_dropin "$unit_dir/$unit.d"; fi
done
if [ -z "$root" ]; then
  id ripeye >/dev/null 2>&1 || useradd --system --home-dir /var/lib/ripeye --shell /usr/sbin/nologin ripeye
  # video: V4L2 and CSI cameras (and Jetson's /dev/nv*); render: the GPU's render nodes.
  for group in video render; do
    if getent group "$group" >/dev/null; then usermod -a -G "$group" ripeye; fi
  done
  chown -R ripeye: "$state" "$cache"
fi
if [ "$systemd_ok" = 1 ]; then
  systemctl daemon-reload
  if [ ${#instances[@]} -eq 0 ]; then
    systemctl enable --now ripeye.service
    log "service enabled: systemctl status ripeye"
  else
    for name in "${instances[@]}"; do systemctl enable --now "ripeye@$name.service"; done
    log "services enabled: systemctl status 'ripeye@*' (ripeye.service left as it was)"
  fi
fi
log "done"
