#!/usr/bin/env bash
# RWAPI interoperability with BuildGrid 0.4.4, both ways:
#   1. BuildGrid's Python test bot (bot.py, written against BuildGrid) runs actions on Strata;
#   2. `strata bot` runs actions for a BuildGrid server.
# Each direction executes unique `echo` actions with BuildGrid's own client (exec_latency.py) and
# fails unless all of them complete. Needs the BuildGrid peer folder (setup.sh, start.sh, stop.sh,
# bot.py, exec_latency.py; its setup installs PostgreSQL and a virtualenv from PyPI), so it is run by
# hand, not by .ci/run.
#
# Usage: tests/peers/buildgrid.sh [path/to/strata]     env: BUILDGRID_PEER=<peer folder> N=20
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
peer=${BUILDGRID_PEER:-$root/../shared/peers/buildgrid}
strata=$(realpath "${1:-$root/target/debug/strata}")
n=${N:-20}
[ -x "$peer/start.sh" ] || { echo "no BuildGrid peer at $peer (set BUILDGRID_PEER)" >&2; exit 1; }
"$peer/setup.sh" >/dev/null
py=${PEER_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/strata-peers/buildgrid}/.venv/bin/python

work=$(mktemp -d)
pids=()
bgd_port=""
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -n "$bgd_port" ] && "$peer/stop.sh" "$bgd_port" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
latency() { # port -> prints exec_latency's summary, fails unless all n actions completed
    (cd "$peer" && timeout 120 "$py" exec_latency.py --remote "127.0.0.1:$1" -n "$n" -c 2) | tee "$work/latency.txt"
    grep -q "^n=$n " "$work/latency.txt"
}

echo "== bot.py on Strata"
port=$(free_port)
cat >"$work/strata.yaml" <<YAML
storage:
  memory:
    cas: [ { memory: { max_size: 512MiB } } ]
    action_cache: [ { memory: { max_size: 64MiB } } ]
instances: [ { name: "", storage: memory, services: [cas, action_cache, execution] } ]
YAML
STRATA_LOG=warn "$strata" serve --config "$work/strata.yaml" --listen "127.0.0.1:$port" --data-dir "$work/data" \
    2>"$work/strata.log" &
pids+=($!)
"$py" "$peer/bot.py" --remote "http://127.0.0.1:$port" --bots 2 >"$work/bot.py.log" 2>&1 &
pids+=($!)
latency "$port"

echo "== strata bot on BuildGrid"
bgd_port=$(free_port)
"$peer/start.sh" "$bgd_port" >/dev/null
"$strata" bot --server "grpc://127.0.0.1:$bgd_port" --capacity 2 --work-dir "$work/bot" 2>"$work/strata-bot.log" &
pids+=($!)
latency "$bgd_port"
echo "RWAPI interoperability with BuildGrid: both directions passed"
