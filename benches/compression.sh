#!/usr/bin/env bash
# Compression at rest and on the wire, side by side in one run: one Strata binary serving a disk tier
# that stores blobs as they are ("identity-stored") and one that stores them zstd-compressed
# ("zstd-stored"), each driven by `strata bench` with --compressor identity and zstd. Rounds are
# interleaved, the store that goes first alternates, and medians of RUNS rounds are reported, with the
# two ratios the compression issue asks for. No memory tier: every read comes from the disk log.
#
# Usage: benches/compression.sh STRATA_BINARY    env: RUNS=3 DURATION=5 CONCURRENCY=4 LARGE=64MiB
set -euo pipefail

bin=$(realpath "$1")
runs=${RUNS:-3}
duration=${DURATION:-5}
concurrency=${CONCURRENCY:-4}
large=${LARGE:-64MiB}
work=$(mktemp -d)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

for form in identity zstd; do
    compression=off
    [ "$form" = zstd ] && compression=zstd
    cat >"$work/$form.yaml" <<YAML
storage:
  disk:
    cas: [ { disk: { path: cas, max_size: 16GiB, segment_size: 512MiB, max_record: 128MiB, sync: never, compression: $compression } } ]
    action_cache: [ { memory: { max_size: 64MiB } } ]
instances: [ { name: "", storage: disk, services: [cas, action_cache] } ]
YAML
done

measure() { # stored-form round
    local form=$1 round=$2 port
    port=$(free_port)
    rm -rf "$work/data"
    STRATA_LOG=warn "$bin" serve --config "$work/$form.yaml" --data-dir "$work/data" --listen "127.0.0.1:$port" 2>>"$work/server.log" &
    pid=$!
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
    for scenario in write-large read-large write-small read-small; do
        for compressor in identity zstd; do
            "$bin" bench --endpoint "grpc://127.0.0.1:$port" --scenario "$scenario" --compressor "$compressor" \
                --duration "$duration" --warmup 1 --concurrency "$concurrency" --large-size "$large" --json --quiet |
                sed "s/^{/{\"stored\":\"$form\",\"compressor\":\"$compressor\",\"round\":$round,/" >>"$work/results.jsonl"
        done
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=""
}

for round in $(seq 1 "$runs"); do
    if [ $((round % 2)) -eq 1 ]; then order="identity zstd"; else order="zstd identity"; fi
    for form in $order; do
        echo "round $round: $form-stored" >&2
        measure "$form" "$round"
    done
done

python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
errors = sum(r["errors"] for r in rows)
med = {}
for r in rows:
    med.setdefault((r["scenario"], r["stored"], r["compressor"]), []).append(r)
def m(key, field):
    return statistics.median(r[field] for r in med[key])
print(f"{'scenario':<12} {'stored':<9} {'wire':<9} {'MB/s':>9} {'wire MB/s':>10} {'p50 ms':>9}")
for (scenario, stored, wire) in sorted(med):
    k = (scenario, stored, wire)
    print(f"{scenario:<12} {stored:<9} {wire:<9} {m(k, 'bytes_per_sec') / 1e6:>9.1f} {m(k, 'wire_bytes_per_sec') / 1e6:>10.1f} {m(k, 'p50_ms'):>9.2f}")
for scenario in ["read-large", "read-small"]:
    zz = m((scenario, "zstd", "zstd"), "bytes_per_sec")
    zi = m((scenario, "zstd", "identity"), "bytes_per_sec")
    ii = m((scenario, "identity", "identity"), "bytes_per_sec")
    print(f"{scenario}: zstd-stored read compressed / identity read of it = {zz / zi:.2f}; "
          f"identity read of zstd-stored / of identity-stored = {zi / ii:.2f}")
print(f"errors: {errors} in {len(rows)} runs ({len(rows) // len(med)} rounds)")
PY
