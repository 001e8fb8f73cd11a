# The one list of what ripeye's tests need from apt; sourced by `install.sh --dev` and `.ci/run`.
# shellcheck shell=bash
# mosquitto(-clients): the integration tests' real broker; chromium + chromium-driver: the live-view browser tests
# (selenium drives it); openssl: the TLS test;
# systemd: systemd-analyze for the unit tests; libusb-1.0-0: pyrealsense2's wheel links it.
TEST_APT_PACKAGES="mosquitto mosquitto-clients chromium chromium-driver openssl systemd libusb-1.0-0"
# The arm64 test (pytest -m arm64): an emulated Debian bookworm root.
ARM64_TEST_APT_PACKAGES="qemu-user-static mmdebstrap"

# Whether dpkg has the package installed (skips apt and its network when everything is there).
apt_package_present() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# A fresh Raspberry Pi OS runs apt itself right after boot (unattended-upgrades, packagekit): wait for its locks, for
# at most RIPEYE_APT_LOCK_TIMEOUT seconds in all, rather than failing at once. apt >= 1.9.11 waits for dpkg's lock
# with -o DPkg::Lock::Timeout=N; `apt-get update`'s lock on /var/lib/apt/lists is not covered by that option (apt
# 2.6 fails at once on it), so a run that failed on a lock is run again until the same deadline.
APT_LOCK_TIMEOUT="${RIPEYE_APT_LOCK_TIMEOUT:-300}"
# Where the one "waiting" line goes: install.sh points this at the terminal (its steps' output goes to a log).
APT_NOTICE_FD="${APT_NOTICE_FD:-2}"
APT_NOTICE_PREFIX="${APT_NOTICE_PREFIX:-}"
APT_LOCK_NOTED=""  # set once the line was printed

apt_get() {  # apt_get ARGS...: apt-get ARGS with a bounded wait for another apt (output: stdout, or stderr if failed)
  local deadline=$((SECONDS + APT_LOCK_TIMEOUT)) out rc
  out="$(mktemp)"
  while :; do
    rc=0
    DEBIAN_FRONTEND=noninteractive apt-get -q -o "DPkg::Lock::Timeout=$((deadline > SECONDS ? deadline - SECONDS : 0))" \
      "$@" 2>&1 | apt_lock_watch > "$out" || rc=${PIPESTATUS[0]}
    if grep -q 'Could not get lock' "$out"; then APT_LOCK_NOTED=1; fi
    # again only when it failed on a lock (its last error), while time is left
    if [ "$rc" -ne 0 ] && grep '^E:' "$out" | tail -n 1 | grep -qi 'lock' && [ "$SECONDS" -lt "$deadline" ]; then
      sleep 5
      continue
    fi
    if [ "$rc" -eq 0 ]; then cat "$out"; else cat "$out" >&2; fi
    rm -f "$out"
    return "$rc"
  done
}

apt_lock_watch() {  # copies apt's output; at its first "Could not get lock", one line (once per run): who, how long
  local line noted="$APT_LOCK_NOTED" held
  while IFS= read -r line; do
    printf '%s\n' "$line"
    if [ -z "$noted" ] && [[ "$line" == *"Could not get lock"* ]]; then
      held="${line#*Could not get lock }"
      printf '%sapt: another apt holds its lock (%s); waiting up to %s s for it (RIPEYE_APT_LOCK_TIMEOUT)\n' \
        "$APT_NOTICE_PREFIX" "${held%...}" "$APT_LOCK_TIMEOUT" >&"$APT_NOTICE_FD"
      noted=1
    fi
  done
}

# Installs the named apt packages that are missing; prints one line.
ensure_apt_packages() {
  local missing=() pkg
  for pkg in "$@"; do apt_package_present "$pkg" || missing+=("$pkg"); done
  if [ ${#missing[@]} -eq 0 ]; then return 0; fi
  printf 'apt: installing %s\n' "${missing[*]}"
  apt_get update >/dev/null
  apt_get install -y "${missing[@]}" >/dev/null
}
