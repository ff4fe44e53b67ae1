#!/usr/bin/env bash
# Side-by-side benchmark of Strata and BuildGrid 0.4.4 on this machine, in one run, with `strata bench`
# as the client for both. Measures each server alone, after a warm-up: Strata on an in-memory
# configuration like BuildGrid's, Strata on its embedded default (what `strata serve` runs with no
# --config: memory over a disk log with `sync: always`, two host bots; its log filled first, so that
# it is measured full, as a cache that has been running is), then BuildGrid from
# ../shared/peers/buildgrid with its bots; every scenario RUNS times, plus the raw-TCP hashing baseline
# and the process-start baseline (`true` started and waited for, 16 at a time and alone) before each
# server's runs. Stops what it started and writes BENCHMARKS.md (medians). Takes about 20
# minutes with the defaults (35 with STRATA_BEFORE), and 20 GiB of disk for the default's log.
#
# Usage: benches/compare.sh            env: RUNS=3 DURATION=5 CONCURRENCY=8 LARGE_SIZE=16MiB
#                                           BUILDGRID_PEER=<path to shared/peers/buildgrid>
#                                           STRATA_BEFORE=<another strata binary, e.g. built from main>
# With STRATA_BEFORE, that binary is measured too (on both configurations), in the same run and with
# the same client, and the table gains before columns: a change's cost or gain, side by side.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
peer=${BUILDGRID_PEER:-$root/../shared/peers/buildgrid}
runs=${RUNS:-3}
duration=${DURATION:-5}
concurrency=${CONCURRENCY:-8}
large=${LARGE_SIZE:-16MiB}
out=$root/BENCHMARKS.md
results=$(mktemp -d)
# Others may enter it, as a server's data directory usually allows: a root server's bots then run
# their actions as nobody, as they would there (in a directory only root can enter, as root).
chmod 755 "$results"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

echo "== building Strata (release) and setting up BuildGrid"
(cd "$root" && cargo build --release -q)
strata=$root/target/release/strata
before=${STRATA_BEFORE:-}
"$peer/setup.sh" >"$results/setup.log" 2>&1 || { cat "$results/setup.log"; exit 1; }
peer_home=${PEER_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/strata-peers/buildgrid}

strata_port=$(free_port)
bgd_port=$(free_port)
strata_pid=""
bot_pid=""
bgd_started=""
cleanup() {
    [ -n "$strata_pid" ] && kill "$strata_pid" 2>/dev/null || true
    [ -n "$bot_pid" ] && kill "$bot_pid" 2>/dev/null || true
    [ -n "$bgd_started" ] && "$peer/stop.sh" "$bgd_port" >/dev/null 2>&1 || true
    rm -rf "$results"
}
trap cleanup EXIT

# In memory like BuildGrid's, with execution and 8 bot slots in process (BuildGrid gets 8 bot.py bots).
# The CAS holds 2 GiB, as BuildGrid's does (its server.yaml: lru-storage of 2048M): the same budget,
# which both fill and then evict from during the run, as a cache that has been running does.
cat >"$results/strata.yaml" <<YAML
storage:
  memory:
    cas: [ { memory: { max_size: 2GiB, max_blob: 1TiB } } ]
    action_cache: [ { memory: { max_size: 256MiB } } ]
instances: [ { name: "", storage: memory, services: [cas, action_cache, execution] } ]
execution:
  bots: [ { capacity: 8, work_dir: bot } ]
YAML
start_strata() { # [binary] [config: none for the embedded default]
    local config=(--config "$results/strata.yaml")
    [ "${2:-}" = none ] && config=()
    rm -rf "$results/strata-data"
    STRATA_LOG=warn "${1:-$strata}" serve "${config[@]}" --data-dir "$results/strata-data" \
        --listen "127.0.0.1:$strata_port" --http-listen "127.0.0.1:$(free_port)" 2>>"$results/strata.log" &
    strata_pid=$!
    sleep 1
}
start_buildgrid() {
    "$peer/start.sh" "$bgd_port" server.yaml >"$results/bgd-start.log" 2>&1 || { cat "$results/bgd-start.log"; exit 1; }
    bgd_started=1
    "$peer_home/.venv/bin/python" "$peer/bot.py" --remote "http://127.0.0.1:$bgd_port" --bots 8 >"$results/bot.log" 2>&1 &
    bot_pid=$!
}

bench() { # server endpoint label scenario [extra args...]
    local server=$1 endpoint=$2 label=$3 scenario=$4
    shift 4
    "$strata" bench --endpoint "$endpoint" --scenario "$scenario" --duration "$duration" --warmup 1 \
        --concurrency "$concurrency" --large-size "$large" --json --quiet "$@" \
        >>"$results/$server.$label.jsonl" 2>>"$results/errors.log" \
        || echo "{\"scenario\": \"$scenario\", \"failed\": true}" >>"$results/$server.$label.jsonl"
}

# Each server is measured alone: BuildGrid's scheduler, database and polling bots would otherwise
# take CPU from Strata's runs (and the other way round). The baseline is measured in each phase.
measure() { # server endpoint
    local server=$1 endpoint=$2
    echo "== $server: warming up"
    bench "$server" "$endpoint" warmup mixed --duration 3
    for run in $(seq 1 "$runs"); do
        echo "== $server: run $run of $runs"
        bench local none baseline baseline
        bench local none baseline-spawn baseline-spawn --concurrency 16
        bench local none baseline-spawn-1 baseline-spawn --concurrency 1
        for scenario in write-large read-large write-small read-small find-missing ac-hit mixed; do
            echo "   $server $scenario"
            bench "$server" "$endpoint" "$scenario" "$scenario"
        done
        bench "$server" "$endpoint" ac-hit-64 ac-hit --concurrency 64
        bench "$server" "$endpoint" batch-15 write-small --batch 15 --concurrency 1
        # Throughput with 16 clients keeping the 8 bot slots busy; round trip with one client.
        bench "$server" "$endpoint" execute execute --concurrency 16
        bench "$server" "$endpoint" execute-1 execute --concurrency 1
    done
}
# The embedded default's disk log is measured full, as a cache that has been running is: write-large
# until its first segment has been evicted (its 20 GiB written once). What the fill itself ran at (a
# fresh log: new files, and on a thin-provisioned disk new blocks) is reported apart.
fill_log() { # server endpoint
    local started=$SECONDS
    echo "   $1: filling the disk log"
    while [ -e "$results/strata-data/cas/0000000000.seg" ] && [ $((SECONDS - started)) -lt 900 ]; do
        bench "$1" "$2" fill write-large --duration 15 --warmup 0
    done
    [ -e "$results/strata-data/cas/0000000000.seg" ] && echo "   the disk log did not fill in 15 minutes" || true
}
measure_strata() { # server binary [none: the embedded default]
    echo "== $1 ($2) on $([ "${3:-}" = none ] && echo "its embedded default" || echo "the memory configuration"), port $strata_port"
    start_strata "$2" "${3:-}"
    [ "${3:-}" = none ] && fill_log "$1" "grpc://127.0.0.1:$strata_port"
    measure "$1" "grpc://127.0.0.1:$strata_port"
    kill "$strata_pid"; wait "$strata_pid" 2>/dev/null || true; strata_pid=""
}
measure_strata strata "$strata"
measure_strata default "$strata" none
if [ -n "$before" ]; then
    measure_strata before "$before"
    measure_strata before-default "$before" none
fi
echo "== BuildGrid on port $bgd_port"
start_buildgrid
measure buildgrid "grpc://127.0.0.1:$bgd_port"
kill "$bot_pid" 2>/dev/null || true; bot_pid=""
"$peer/stop.sh" "$bgd_port" >/dev/null 2>&1 || true; bgd_started=""

echo "== memory bound of streamed uploads: Strata on a disk log, write-large of 64 MiB blobs, 4 clients"
mem_port=$(free_port)
cat >"$results/disk.yaml" <<YAML
storage:
  disk:
    cas: [ { disk: { path: cas, max_size: 8GiB, segment_size: 256MiB, sync: never } } ]
    action_cache: [ { memory: { max_size: 16MiB } } ]
instances: [ { name: "", storage: disk, services: [cas, action_cache] } ]
YAML
STRATA_LOG=warn "$strata" serve --config "$results/disk.yaml" --listen "127.0.0.1:$mem_port" \
    --data-dir "$results/data" 2>>"$results/strata.log" &
mem_pid=$!
sleep 1
rss_before=$(awk '/VmRSS/ {print $2}' "/proc/$mem_pid/status")
"$strata" bench --endpoint "grpc://127.0.0.1:$mem_port" --scenario write-large --large-size 64MiB \
    --concurrency 4 --duration "$duration" --json --quiet >"$results/memory.json" 2>>"$results/errors.log" || true
rss_peak=$(awk '/VmHWM/ {print $2}' "/proc/$mem_pid/status")
kill "$mem_pid"; wait "$mem_pid" 2>/dev/null || true
echo "{\"rss_before_kib\": $rss_before, \"rss_peak_kib\": $rss_peak, \"streams\": 4}" >"$results/rss.json"

python3 - "$results" "$out" "$(nproc)" "$concurrency" "$duration" "$runs" "$large" "$before" <<'PY'
import json, os, statistics, sys, datetime
results, out, cores, conc, duration, runs, large, before = sys.argv[1:]

def load(server, label):
    path = os.path.join(results, f"{server}.{label}.jsonl")
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path) if line.strip()]

def median(rows, key):
    vals = [r[key] for r in rows if not r.get("failed")]
    return statistics.median(vals) if vals else None

def errors(rows):
    return sum(r.get("errors", 0) for r in rows if not r.get("failed"))

base = median(load("local", "baseline"), "bytes_per_sec")
spawn = median(load("local", "baseline-spawn"), "items_per_sec")
spawn_p50 = median(load("local", "baseline-spawn-1"), "p50_ms")
rows = [
    ("write-large", "MB/s", "bytes_per_sec", 1e6),
    ("read-large", "MB/s", "bytes_per_sec", 1e6),
    ("write-small", "blobs/s", "items_per_sec", 1),
    ("read-small", "blobs/s", "items_per_sec", 1),
    ("find-missing", "digests/s", "items_per_sec", 1),
    ("ac-hit", "ops/s", "items_per_sec", 1),
    ("ac-hit-64", "ops/s", "items_per_sec", 1),
    ("execute", "actions/s", "items_per_sec", 1),
    ("execute-1", "p50 ms", "p50_ms", 1),
    ("mixed", "steps/s", "items_per_sec", 1),
    ("batch-15", "p50 ms", "p50_ms", 1),
]
fmt = lambda v, scale: "n/a" if v is None else (f"{v / scale:,.0f}" if v / scale >= 100 else f"{v / scale:,.2f}")
lines = [
    "# Benchmarks: Strata and BuildGrid side by side",
    "",
    f"Measured {datetime.date.today()} on this machine ({cores} cores), by `benches/compare.sh`: every server on 127.0.0.1,",
    f"each measured alone, `strata bench` as the client for all, {conc} concurrent clients",
    f"(64 for ac-hit-64, 16 for execute, 1 for batch-15 and execute-1), {duration} s per run after a 1 s warm-up, median of {runs} runs.",
    "Strata runs twice: on an in-memory configuration like BuildGrid's (a 2 GiB CAS, as BuildGrid's 2048M LRU;",
    "8 bot slots in process), and on its",
    "embedded default, what `strata serve` runs with no --config (memory over a disk log with `sync: always`:",
    "every write acknowledged after its fdatasync; one host bot slot per core).",
    f"Large blobs are {large}; small blobs 4 KiB in batches of 1000 (batch-15: batches of 15, one client);",
    "find-missing asks 10,000 digests, half present. The baseline (measured before each server's runs) pushes the same",
    "large blobs over raw TCP on 127.0.0.1 and hashes them with SHA-256 on arrival: the most this machine can do for a",
    "verified upload.",
    "",
    f"Raw-TCP hashing baseline: {fmt(base, 1e6)} MB/s. Process-start baseline (`strata bench --scenario baseline-spawn`:",
    f"`true`, the command of execute, started and waited for with no server): {fmt(spawn, 1)} processes/s with 16 at a time,",
    f"p50 {fmt(spawn_p50, 1)} ms alone; for execute, the baseline columns give the share of that rate.",
    "",
    "| scenario | unit | Strata memory | Strata default | BuildGrid (memory) | memory / BuildGrid | default / BuildGrid |"
    " memory / baseline | default / baseline | p99 ms (memory / default / BuildGrid) | errors |"
    + (" before: memory | after / before | before: default | after / before |" if before else ""),
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: | ---: | ---: |" if before else ""),
]
def versus(v, other, key):
    if v is None or other in (None, 0):
        return "n/a"
    return f"{other / v:.1f}x faster" if key == "p50_ms" else f"{v / other:.1f}x"
for label, unit, key, scale in rows:
    s, d, b = load("strata", label), load("default", label), load("buildgrid", label)
    sv, dv, bv = median(s, key), median(d, key), median(b, key)
    limit = base if key == "bytes_per_sec" else spawn if label == "execute" else None
    frac = lambda v: f"{v / limit:.0%}" if v and limit else ""
    p99 = " / ".join(fmt(median(r, "p99_ms"), 1) for r in (s, d, b))
    row = (f"| {label} | {unit} | {fmt(sv, scale)} | {fmt(dv, scale)} | {fmt(bv, scale)} | {versus(sv, bv, key)} | "
           f"{versus(dv, bv, key)} | {frac(sv)} | {frac(dv)} | {p99} | {errors(s)} / {errors(d)} / {errors(b)} |")
    if before:
        for now, then in ((sv, "before"), (dv, "before-default")):
            pv = median(load(then, label), key)
            change = "n/a" if now is None or not pv else (f"{pv / now:.2f}x faster" if key == "p50_ms" else f"{now / pv:.2f}x")
            row += f" {fmt(pv, scale)} | {change} |"
    lines.append(row)
rss = json.load(open(os.path.join(results, "rss.json")))
growth = (rss["rss_peak_kib"] - rss["rss_before_kib"]) / 1024
mem = json.load(open(os.path.join(results, "memory.json"))) if os.path.getsize(os.path.join(results, "memory.json")) else {}
lines += ["", f"Memory during streamed uploads (Strata on a disk log, write-large of 64 MiB blobs, {rss['streams']} clients, "
          f"{mem.get('bytes_per_sec', 0) / 1e6:,.0f} MB/s): peak RSS grew by {growth:,.0f} MiB, "
          f"{growth / rss['streams']:,.1f} MiB per concurrent stream."]
errors = os.path.join(results, "errors.log")
failures = open(errors).read().strip() if os.path.exists(errors) else ""
# The first 15 s of the fill write into a fresh log only (new files; 20 GiB takes longer to fill).
fills = [(name, median(load(server, "fill")[:1], "bytes_per_sec")) for name, server in (("Strata", "default"), ("before", "before-default"))]
lines += ["", "The default's disk log is measured full, as a cache that has been running is: before its runs, write-large "
          "filled it until its first segment was evicted. In the first 15 s of that fill, into a fresh log of new files, "
          "write-large ran at " + ", ".join(f"{fmt(v, 1e6)} MB/s ({name})" for name, v in fills if v is not None) + "."]
if before:
    lines += ["", "Strata before: the binary given as STRATA_BEFORE, measured in the same run with the same client and configurations."]
lines += ["", "execute runs `true` (no inputs, `do_not_cache`, `skip_cache_lookup`): on 8 bot slots for Strata memory",
          "(its bot in process, host runner) and BuildGrid (8 bot.py bots), on the default's host bot (one slot per core);",
          "execute-1 is the round trip of one client. Run as root (as here), Strata's bots run the actions as nobody.",
          "", "n/a: every run failed."]
# What a run that counted errors saw first (the client keeps one message per run), so that a count in
# the table can be told from the server's fault, the client's check or the peer's.
first_errors = [f"{server} {label}: {r['first_error'][:300]}" for label, *_ in rows
                for server in ("strata", "default", "buildgrid", "before", "before-default")
                for r in load(server, label) if r.get("errors") and r.get("first_error")]
if first_errors:
    lines += ["", "The first error of each run that counted errors:", "", "```", *first_errors[:30], "```"]
if failures:
    lines += ["", "Errors reported by the client during the run:", "", "```", failures[-3000:], "```"]
# Sections measured by other scripts (## Compression, from benches/compression.sh) are kept.
kept = ""
if os.path.exists(out):
    text = open(out).read()
    at = text.find("\n## Compression")
    kept = text[at:] if at >= 0 else ""
open(out, "w").write("\n".join(lines) + "\n" + kept)
print("\n".join(lines))
PY
