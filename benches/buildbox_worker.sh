#!/usr/bin/env bash
# The round trip of a trivial action through BuildGrid's own worker, Strata vs BuildGrid 0.4.4 side
# by side in one run: buildbox-worker 1.4.30 with buildbox-run-hosttools behind buildbox-casd (from the
# sid chroot of tests/sid/chroot.sh) is the only bot of each server in turn, and `strata bench
# --scenario execute` (Execute of `true`, never cached, one client) measures it.
#
# Usage: benches/buildbox_worker.sh      env: RUNS=3 DURATION=10 STRATA_SID_ROOT BUILDGRID_PEER
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/tests/lib/e2e.sh"
peer=${BUILDGRID_PEER:-$root/../shared/peers/buildgrid}
sid_root=${STRATA_SID_ROOT:-/var/cache/strata-ci/sid}
runs=${RUNS:-3}
duration=${DURATION:-10}
[ -e "$sid_root/.strata-ready" ] || { echo "no sid chroot at $sid_root: run tests/sid/chroot.sh $sid_root" >&2; exit 1; }
(cd "$root" && cargo build --release -q --bin strata)
strata=$root/target/release/strata
"$peer/setup.sh" >/dev/null

work=$(mktemp -d "$sid_root/tmp/strata-bench.XXXXXX")
inside=${work#"$sid_root"}
pids=()
bgd_port=""
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -n "$bgd_port" ] && "$peer/stop.sh" "$bgd_port" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
measure() { # PORT NAME
    for i in $(seq 1 "$runs"); do
        "$strata" bench --endpoint "grpc://127.0.0.1:$1" --scenario execute --concurrency 1 --duration "$duration" --json \
            >"$work/$2-$i.json" 2>>"$work/bench.log" || { cat "$work/bench.log" >&2; exit 1; }
    done
}

cat >"$work/strata.yaml" <<YAML
storage:
  memory:
    cas: [ { memory: { max_size: 1GiB, max_blob: 64MiB } } ]
    action_cache: [ { memory: { max_size: 64MiB } } ]
instances: [ { name: "", storage: memory, services: [cas, action_cache, execution] } ]
YAML
port=$(free_port)
STRATA_LOG=warn start_strata --config "$work/strata.yaml"
start_buildbox_worker run-hosttools strata
sleep 2
measure "$port" strata
stop_buildbox_worker
stop_strata

bgd_port=$(free_port)
"$peer/start.sh" "$bgd_port" server.yaml >"$work/bgd-start.log" 2>&1 || { cat "$work/bgd-start.log"; exit 1; }
port=$bgd_port
start_buildbox_worker run-hosttools buildgrid
sleep 2
measure "$bgd_port" buildgrid

python3 - "$work" "$runs" <<'PY'
import json, statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
med = {}
for name in ("strata", "buildgrid"):
    rows = [json.load(open(f"{work}/{name}-{i}.json")) for i in range(1, runs + 1)]
    med[name] = {k: statistics.median(r[k] for r in rows) for k in ("p50_ms", "p99_ms", "ops_per_sec", "errors")}
print(f"Execute of `true` through buildbox-worker + casd + hosttools, 1 client, median of {runs} runs")
print("| server | round trip p50 | p99 | actions/s | errors |")
print("| --- | ---: | ---: | ---: | ---: |")
for name, m in med.items():
    print(f"| {name} | {m['p50_ms']:.1f} ms | {m['p99_ms']:.1f} ms | {m['ops_per_sec']:.1f} | {m['errors']:.0f} |")
print(f"ratio (BuildGrid p50 / Strata p50): {med['buildgrid']['p50_ms'] / med['strata']['p50_ms']:.1f}x")
PY
