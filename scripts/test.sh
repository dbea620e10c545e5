#!/usr/bin/env bash
# The whole test suite with real parts: git repos, redis-server, rabbitmq-server, prefork Celery workers, UDP, headless Chromium.
# Installs what is missing (as root via apt-get), makes .venv, runs pytest. Extra args go to pytest.
# pytest's exit 5 (nothing collected) is a failure here, never a pass.
set -euo pipefail
cd "$(dirname "$0")/.."
SELFHEAL_NEED_REDIS=1 SELFHEAL_NEED_RABBITMQ=1 SELFHEAL_NEED_BROWSER=1 SELFHEAL_EXTRAS=test bash scripts/setup-env.sh
set +e
# Most tests wait on subprocesses (workers, servers, a browser): 3 pytest-xdist processes overlap those
# waits, also on 2 cores. --dist loadfile keeps each file on one process, so its module-scoped worker
# is started once.
# SELFHEAL_TEST_PROCS=0 runs everything in this one process.
.venv/bin/python -m pytest -n "${SELFHEAL_TEST_PROCS:-3}" --dist loadfile "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
