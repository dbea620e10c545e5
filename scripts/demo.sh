#!/usr/bin/env bash
# The self-healing demo on the embedded default (no server): a 3-step job whose second step goes
# silent once (idle timeout -> soft reset) and whose third step fails the same way twice
# (no progress -> hard reset from verified checkpoints). Exits with the job's status.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
exec .venv/bin/selfheal run examples/demo.toml --state-dir .selfheal/demo "$@"
