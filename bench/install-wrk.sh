#!/usr/bin/env bash
# Install what the benchmark needs from Debian packages when missing: wrk (the
# load generator) and nginx (the stub upstream). Idempotent; needs root or sudo.
#   bench/install-wrk.sh            # wrk and nginx
#   bench/install-wrk.sh --no-nginx # wrk only (run.py then uses bench/upstream_stub.py)
set -euo pipefail

want_nginx=1
[ "${1:-}" = "--no-nginx" ] && want_nginx=0

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ "$want_nginx" = 1 ] && ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  missing+=(nginx-light)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-wrk: need root to install ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
command -v apt-get >/dev/null 2>&1 || {
  echo "install-wrk: no apt-get; install ${missing[*]} yourself" >&2; exit 1; }

# Keep the nginx package from starting a system-wide server on port 80: the
# benchmark runs its own, on loopback, with a config of its own.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  added_policy=1
fi
cleanup() { [ "$added_policy" = 1 ] && $SUDO rm -f "$policy"; true; }
trap cleanup EXIT

echo "install-wrk: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! timeout 300 $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; then
  timeout 300 $SUDO apt-get update >/dev/null
  timeout 300 $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v wrk >/dev/null 2>&1 || { echo "install-wrk: wrk still missing" >&2; exit 1; }
