# The one list of what ripeye's tests need from apt; sourced by `install.sh --dev` and `.ci/run`.
# shellcheck shell=bash
# mosquitto(-clients): the integration tests' real broker; chromium: the live-view test; openssl: the TLS test;
# systemd: systemd-analyze for the unit tests; libusb-1.0-0: pyrealsense2's wheel links it.
TEST_APT_PACKAGES="mosquitto mosquitto-clients chromium openssl systemd libusb-1.0-0"
# The arm64 test (pytest -m arm64): an emulated Debian bookworm root.
ARM64_TEST_APT_PACKAGES="qemu-user-static mmdebstrap"

# Whether dpkg has the package installed (skips apt and its network when everything is there).
apt_package_present() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# Installs the named apt packages that are missing; prints one line.
ensure_apt_packages() {
  local missing=() pkg
  for pkg in "$@"; do apt_package_present "$pkg" || missing+=("$pkg"); done
  if [ ${#missing[@]} -eq 0 ]; then return 0; fi
  printf 'apt: installing %s\n' "${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}
