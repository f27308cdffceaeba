#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install the gateway with its test tools, the embedded
# store (the 'embedded' extra) and the tracing extra (its tests need the OpenTelemetry SDK),
# at the versions of constraints.txt. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PY" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "setup: installing the gateway and its test tools" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
  # constraints.txt pins every package to the versions the suite passed on
  .venv/bin/python -m pip install --quiet -c constraints.txt -e '.[test,embedded,tracing]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
