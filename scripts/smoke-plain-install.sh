#!/usr/bin/env bash
# A plain `pip install .` (no test extras) in a fresh virtualenv runs a real job on
# (1) the embedded default, (2) Redis as broker and store, (3) RabbitMQ broker + Redis store,
# and (4) `selfheal web` answering /healthz and /api/jobs over that store.
# Starts its own redis-server and rabbitmq-server on free loopback ports; prints the time of each.
# Needs redis-server and rabbitmq-server (scripts/setup-env.sh with SELFHEAL_NEED_REDIS=1
# SELFHEAL_NEED_RABBITMQ=1 installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_DIR=$PWD
TMP=$(mktemp -d /tmp/selfheal-smoke-XXXXXX)
PIDS=()
RABBIT_ENV=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ ${#RABBIT_ENV[@]} -gt 0 ]; then
    env "${RABBIT_ENV[@]}" /usr/lib/rabbitmq/bin/rabbitmqctl -q -n "$RABBIT_NODE" stop >/dev/null 2>&1 || true
    env "${RABBIT_ENV[@]}" epmd -kill >/dev/null 2>&1 || true
  fi
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {  # PORT SECONDS
  for _ in $(seq 1 $(($2 * 10))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "smoke: nothing listens on port $1 after $2 s" >&2
  return 1
}
now() { date +%s.%N; }
took() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}s')" "$1" "$(now)"; }

echo "smoke: pip install . into a fresh virtualenv" >&2
python3 -m venv "$TMP/venv"
pip_install() { "$TMP/venv/bin/python" -m pip install -q "$@" >>"$TMP/pip.log" 2>&1 || { cat "$TMP/pip.log" >&2; exit 1; }; }
pip_install --upgrade pip
pip_install "$REPO_DIR"
BIN=$TMP/venv/bin

# the job: one step with a shell runtime, in a real git repository
git init -q -b main "$TMP/repo"
git -C "$TMP/repo" -c user.name=smoke -c user.email=smoke@example.com commit -q --allow-empty -m baseline
cat > "$TMP/job.toml" <<EOF
[job]
objective = "smoke test of a plain install"
repo = "$TMP/repo"
ref = "main"
runtime = ["sh", "-c", "echo working; echo done > smoke.txt"]
[[steps]]
id = "only"
instructions = "write smoke.txt"
EOF
# a clean environment: no SELFHEAL_* from the caller, and no config.toml in the working directory
unset "${!SELFHEAL_@}"
cd "$TMP"

run_job() {  # NAME: run the job with the current env, print its time
  local start
  start=$(now)
  timeout 180 "$BIN/selfheal" run job.toml --state-dir "$TMP/state-$1" >"$TMP/$1.out" 2>&1 || {
    echo "smoke: $1 failed:" >&2; cat "$TMP/$1.out" >&2; cat "$TMP/worker-$1.log" 2>/dev/null >&2 || true; exit 1; }
  echo "smoke: $1: job succeeded in $(took "$start")"
}
start_worker() {  # NAME ARGV...: a worker in the background, logging to worker-NAME.log
  local name=$1; shift
  "$@" >"$TMP/worker-$name.log" 2>&1 &
  PIDS+=($!)
}

# (1) the embedded default: `selfheal run` starts its own local worker
run_job embedded

# (2) Redis broker and store, a worker started by `selfheal worker`
REDIS_PORT=$(free_port)
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$TMP" >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$REDIS_PORT" 10
export SELFHEAL_BROKER_URL=redis://127.0.0.1:$REDIS_PORT/0 SELFHEAL_STATE_DIR=$TMP/state-redis
start_worker redis "$BIN/selfheal" worker -c 1 --loglevel WARNING
run_job redis

# (3) RabbitMQ broker + Redis store, a worker started by `celery -A celery_selfheal.app worker`
RABBIT_PORT=$(free_port)
RABBIT_NODE=smoke$$@localhost
mkdir -p "$TMP/rabbit"
echo "[]." > "$TMP/rabbit/enabled_plugins"
RABBIT_ENV=(HOME="$TMP/rabbit" RABBITMQ_NODENAME="$RABBIT_NODE" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  RABBITMQ_NODE_PORT="$RABBIT_PORT" RABBITMQ_DIST_PORT="$(free_port)" ERL_EPMD_PORT="$(free_port)"
  RABBITMQ_MNESIA_BASE="$TMP/rabbit/mnesia" RABBITMQ_LOG_BASE="$TMP/rabbit/log"
  RABBITMQ_CONFIG_FILE="$TMP/rabbit/rabbitmq" RABBITMQ_ENABLED_PLUGINS_FILE="$TMP/rabbit/enabled_plugins")
start=$(now)
env "${RABBIT_ENV[@]}" /usr/lib/rabbitmq/bin/rabbitmq-server >"$TMP/rabbit.log" 2>&1 &
PIDS+=($!)
wait_port "$RABBIT_PORT" 90
echo "smoke: rabbitmq-server up in $(took "$start")"
export SELFHEAL_BROKER_URL=amqp://guest:guest@127.0.0.1:$RABBIT_PORT// SELFHEAL_STATE_DIR=$TMP/state-rabbitmq
export SELFHEAL_STORE_URL=redis://127.0.0.1:$REDIS_PORT/1
start_worker rabbitmq "$BIN/celery" -A celery_selfheal.app worker --pool prefork -c 1 --loglevel WARNING
run_job rabbitmq

# (4) the console from the same plain install: health, and the job just run through the JSON API
WEB_PORT=$(free_port)
SELFHEAL_WEB_TOKEN=smoke-token-0123456789abcdef "$BIN/selfheal" web --port "$WEB_PORT" >"$TMP/web.log" 2>&1 &
PIDS+=($!)
wait_port "$WEB_PORT" 30 || { cat "$TMP/web.log" >&2; exit 1; }
"$TMP/venv/bin/python" - "$WEB_PORT" <<'PY' || { cat "$TMP/web.log" >&2; exit 1; }
import json, sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
assert urllib.request.urlopen(base + "/healthz", timeout=10).status == 200
req = urllib.request.Request(base + "/api/jobs", headers={"Authorization": "Bearer smoke-token-0123456789abcdef"})
jobs = json.load(urllib.request.urlopen(req, timeout=10))["jobs"]
assert jobs and jobs[0]["status"] == "succeeded", jobs
print("smoke: web: /healthz and /api/jobs answer from a plain install")
PY
