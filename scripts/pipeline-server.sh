#!/usr/bin/env bash
# Local Prefect server + process worker on 127.0.0.1 with the project's settings (telemetry off, state in .prefect).
#   scripts/pipeline-server.sh start   # server on 127.0.0.1:4200, work pool videonsa-local, deployments, worker
#   scripts/pipeline-server.sh stop    # worker first (SIGINT, wait, SIGKILL), then the server
# Then: PREFECT_API_URL=http://127.0.0.1:4200/api ./uvw run prefect deployment run 'videonsa-pipeline-file/tiny' --watch
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/project-env.sh
source "$root/scripts/project-env.sh"
port="${PREFECT_PORT:-4200}"
export PREFECT_API_URL="http://127.0.0.1:${port}/api"
export PREFECT_WORKER_QUERY_SECONDS="${PREFECT_WORKER_QUERY_SECONDS:-2}"
export PREFECT_RUNNER_POLL_FREQUENCY="${PREFECT_RUNNER_POLL_FREQUENCY:-2}"
run_dir="$PREFECT_HOME/run"
mkdir -p "$run_dir"
py="$root/.venv/bin"

stop_pid() {
  local file="$1"
  [ -f "$file" ] || return 0
  local pid
  pid="$(cat "$file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

case "${1:-}" in
  start)
    "$py/prefect" server start --host 127.0.0.1 --port "$port" >"$run_dir/server.log" 2>&1 &
    echo $! >"$run_dir/server.pid"
    for _ in $(seq 1 120); do
      curl -fsS "http://127.0.0.1:${port}/api/health" >/dev/null 2>&1 && break
      sleep 1
    done
    curl -fsS "http://127.0.0.1:${port}/api/health" >/dev/null || { echo "server did not start; see $run_dir/server.log" >&2; exit 1; }
    "$py/prefect" work-pool inspect videonsa-local >/dev/null 2>&1 || "$py/prefect" work-pool create videonsa-local --type process >/dev/null
    "$py/prefect" --no-prompt deploy --all >/dev/null
    "$py/prefect" worker start --pool videonsa-local >"$run_dir/worker.log" 2>&1 &
    echo $! >"$run_dir/worker.pid"
    echo "Prefect server: http://127.0.0.1:${port} (UI), worker pid $(cat "$run_dir/worker.pid"), logs in $run_dir"
    echo "Run: PREFECT_API_URL=$PREFECT_API_URL ./uvw run prefect deployment run 'videonsa-pipeline-file/tiny' --watch"
    ;;
  stop)
    stop_pid "$run_dir/worker.pid"
    stop_pid "$run_dir/server.pid"
    echo "stopped"
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
