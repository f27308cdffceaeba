#!/usr/bin/env bash
# Set up, then run the whole test suite. Uses the Redis at $REDIS_URL, else the one at
# 127.0.0.1:6379 when it answers, else an embedded redis-server the tests start.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/system-deps.sh || echo "test: system packages missing; the tests needing them fail naming them" >&2
if [ -z "${REDIS_URL:-}" ]; then
  if .venv/bin/python - <<'PY' 2>/dev/null
import socket
s = socket.create_connection(("127.0.0.1", 6379), timeout=1)
s.sendall(b"PING\r\n")
assert s.recv(16).startswith(b"+PONG")
PY
  then
    export REDIS_URL=redis://127.0.0.1:6379/0
    echo "test: using the Redis at $REDIS_URL" >&2
  else
    echo "test: no Redis at 127.0.0.1:6379; tests start an embedded redis-server" >&2
  fi
fi
.venv/bin/ruff check --quiet . || { echo "test: ruff found problems (above)" >&2; exit 1; }
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "test: pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
