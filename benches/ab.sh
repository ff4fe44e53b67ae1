#!/usr/bin/env bash
# A/B benchmark of two Strata binaries on one in-memory configuration, in one run with the same
# `strata bench` client: each round starts A, measures every scenario, stops it, then the same for B;
# RUNS rounds, medians reported. Interleaving the rounds spreads the machine's noise over both, and
# even rounds run B first: the second server of a round measured up to 12% slower on find-missing
# in an A/A run (the same binary twice), an order bias that alternation cancels.
# Used for the cost of one change (e.g. metrics: A built before it, B after, with its HTTP listener on).
# AUTH=1 measures the cost of authentication instead: B runs with an `auth` section of one static
# token (all permissions) and the client sends it; A runs without (pass the same binary twice).
# FULL=1 runs both on the embedded default instead, each with its 20 GiB disk log filled first
# (write-large of 16 MiB blobs until its first segment is evicted): a disk log as it runs for good.
#
# Usage: benches/ab.sh A_BINARY B_BINARY     env: RUNS=3 DURATION=5 SCENARIOS="ac-hit ac-hit-64 find-missing" AUTH= FULL=
# (scenarios are strata bench's, plus ac-hit-64: 64 clients, and batch-15: write-small of 15 blobs, 1 client)
set -euo pipefail

a=$(realpath "$1")
b=$(realpath "$2")
runs=${RUNS:-3}
duration=${DURATION:-5}
scenarios=${SCENARIOS:-ac-hit ac-hit-64 find-missing}
work=$(mktemp -d)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cat >"$work/memory.yaml" <<YAML
storage:
  memory:
    cas: [ { memory: { max_size: 2GiB, max_blob: 1TiB } } ]
    action_cache: [ { memory: { max_size: 256MiB } } ]
instances: [ { name: "", storage: memory, services: [cas, action_cache] } ]
YAML
# B gets an HTTP listener when it has one (metrics on); A is run as it is.
cp "$work/memory.yaml" "$work/memory-http.yaml"
echo "http: { listen: 127.0.0.1:$(free_port) }" >>"$work/memory-http.yaml"

if [ -n "${AUTH:-}" ]; then
    python3 -c 'import secrets; print(secrets.token_hex(32))' >"$work/bench.token"
    cp "$work/memory.yaml" "$work/memory-auth.yaml"
    printf 'auth:\n  identities:\n    - { name: bench, token_file: %s, permissions: [read, write, write_ac, execute] }\n' \
        "$work/bench.token" >>"$work/memory-auth.yaml"
fi
measure() { # label binary config [bench args...]
    local label=$1 binary=$2 config=$3
    shift 3
    local extra=("$@")
    set -- "$label" "$binary" "$config"
    local port
    port=$(free_port)
    local config_args=(--config "$3")
    [ "$3" = none ] && config_args=(--http-listen "127.0.0.1:$(free_port)")
    rm -rf "$work/data-$1"
    STRATA_LOG=warn "$2" serve "${config_args[@]}" --data-dir "$work/data-$1" --listen "127.0.0.1:$port" 2>>"$work/server.log" &
    pid=$!
    sleep 1
    if [ "$3" = none ]; then
        while [ -e "$work/data-$1/cas/0000000000.seg" ]; do
            "$b" bench --endpoint "grpc://127.0.0.1:$port" --scenario write-large --large-size 16MiB --duration 10 \
                --warmup 0 --json --quiet >/dev/null
        done
    fi
    for scenario in $scenarios; do
        local name=$scenario args=(--concurrency 8 --large-size 16MiB)
        if [ "$scenario" = ac-hit-64 ]; then name=ac-hit; args=(--concurrency 64); fi
        if [ "$scenario" = batch-15 ]; then name=write-small; args=(--concurrency 1 --batch 15); fi
        "$b" bench --endpoint "grpc://127.0.0.1:$port" --scenario "$name" --duration "$duration" --warmup 1 \
            --json --quiet "${args[@]}" "${extra[@]}" | sed "s/^{/{\"label\":\"$1\",\"case\":\"$scenario\",/" >>"$work/results.jsonl"
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    rm -rf "$work/data-$1"
}
for run in $(seq 1 "$runs"); do
    echo "== round $run of $runs"
    b_config=$work/memory.yaml b_args=()
    if "$b" serve --help | grep -q -- --http-listen; then b_config=$work/memory-http.yaml; fi
    if [ -n "${AUTH:-}" ]; then b_config=$work/memory-auth.yaml b_args=(--token-file "$work/bench.token"); fi
    a_config=$work/memory.yaml
    if [ -n "${FULL:-}" ]; then a_config=none b_config=none; fi
    if [ $((run % 2)) -eq 0 ]; then
        measure B "$b" "$b_config" "${b_args[@]}"
        measure A "$a" "$a_config"
    else
        measure A "$a" "$a_config"
        measure B "$b" "$b_config" "${b_args[@]}"
    fi
done
python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cases = list(dict.fromkeys(r["case"] for r in rows))
print(f"| scenario | A (median) | B (median) | B / A | A runs | B runs | A p99 ms | B p99 ms |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for case in cases:
    pick = lambda label, key: [r[key] for r in rows if r["case"] == case and r["label"] == label]
    a, b = statistics.median(pick("A", "items_per_sec")), statistics.median(pick("B", "items_per_sec"))
    ap, bp = statistics.median(pick("A", "p99_ms")), statistics.median(pick("B", "p99_ms"))
    runs = lambda label: " ".join(f"{v:,.0f}" for v in pick(label, "items_per_sec"))
    print(f"| {case} | {a:,.0f}/s | {b:,.0f}/s | {b / a:.3f} | {runs('A')} | {runs('B')} | {ap:.2f} | {bp:.2f} |")
PY
