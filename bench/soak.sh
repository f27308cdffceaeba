#!/usr/bin/env bash
# Soak test (see bench/soak.py): mixed traffic through a real gateway, its Redis
# restarted half-way; prints requests, statuses, unexpected 5xx, RSS, PASS/FAIL.
#   bench/soak.sh                  # 60 s
#   bench/soak.sh --duration 20
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/setup.sh
exec .venv/bin/python bench/soak.py "$@"
