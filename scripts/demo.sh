#!/usr/bin/env bash
# Set up, then run the gateway on its embedded store in front of the bundled demo upstream.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/gateway demo "$@"
