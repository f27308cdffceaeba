#!/usr/bin/env bash
# Install the Debian packages the tests use, when missing. Idempotent and quiet:
# does nothing when all are present; needs root (or sudo) otherwise.
#   chromium, chromium-driver  the dashboard's browser tests (driven headless by Playwright)
#   nginx                      forward auth behind a real nginx auth_request (tests/test_forward_auth_nginx.py)
#   iproute2                   the pod test's network namespace (ip netns, veth)
#   redis-sentinel             the Sentinel set of tests/test_topologies.py (else redis-server --sentinel)
#   prometheus                 promtool, which checks and unit-tests deploy/'s alert rules
# and checkov, the Kubernetes manifests' policy check, in a venv of its own
# (.venv/tools/checkov): it pins packaging<24, which pytest cannot share.
set -euo pipefail
PACKAGES=(chromium chromium-driver nginx iproute2 redis-sentinel prometheus)
root="$(cd "$(dirname "$0")/.." && pwd)"
checkov="$root/.venv/tools/checkov"
if [ ! -x "$checkov/bin/checkov" ]; then
  mkdir -p "$(dirname "$checkov")"
  echo "system-deps: installing checkov into $checkov" >&2
  if ! { "${PYTHON:-$(command -v python3.11 || command -v python3)}" -m venv "$checkov" &&
    "$checkov/bin/python" -m pip install --quiet --disable-pip-version-check 'checkov==3.3.30'; } \
    >"$checkov.log" 2>&1; then
    echo "system-deps: checkov failed to install; see $checkov.log" >&2
    rm -rf "$checkov"
  fi
fi
missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: apt-get not found; install these yourself: ${missing[*]}" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "system-deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
fi
echo "system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
