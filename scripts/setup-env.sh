#!/usr/bin/env bash
# Shared by demo.sh and test.sh: system packages (when missing and we are root) and a virtualenv
# with the package installed. Idempotent; quiet when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v git >/dev/null 2>&1 || need+=(git)
if [ "${SELFHEAL_NEED_REDIS:-0}" = 1 ]; then command -v redis-server >/dev/null 2>&1 || need+=(redis-server); fi
# tests run Debian's scripts directly (tests/rabbitmq_server.py), not the /usr/sbin wrappers
if [ "${SELFHEAL_NEED_RABBITMQ:-0}" = 1 ]; then [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server); fi
# the console's browser tests: Debian's Chromium and its matching chromedriver (no browser download)
if [ "${SELFHEAL_NEED_BROWSER:-0}" = 1 ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need[*]} with apt-get" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing: ${need[*]} (install them, e.g. apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
extras=${SELFHEAL_EXTRAS:-}
stamp=".venv/.installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
