#!/usr/bin/env bash
# Run the proxy benchmark (see bench/README.md); arguments go to bench/run.py.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
bench/install-wrk.sh
exec .venv/bin/python bench/run.py "$@"
