#!/usr/bin/env bash
# Bazel end to end: Debian's Bazel 4 builds and tests the offline workspace next to this script with
# --remote_cache pointing at a real `strata serve`. Strata is restarted between the two builds (the
# cache must come back from its disk log), Bazel's own state is expunged, and the second build must
# run nothing locally: every action a remote cache hit.
#
# With --chain, Bazel talks to a site cache (config/site-cache.yaml) chained to an upstream Strata,
# and the site cache is restarted with an empty data directory between the builds: the second build's
# hits must come from the upstream, through the site cache.
#
# Usage: tests/bazel/run.sh [--chain] [path/to/strata]   (default: target/debug/strata)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
chain=""
if [ "${1:-}" = "--chain" ]; then chain=1; shift; fi
strata=${1:-$here/../../target/debug/strata}
strata=$(realpath "$strata" 2>/dev/null || echo "$strata")
[ -x "$strata" ] || { echo "strata binary not found at $strata (run cargo build first)" >&2; exit 1; }
command -v bazel >/dev/null || { echo "bazel not found: apt-get install bazel-bootstrap" >&2; exit 1; }

work=$(mktemp -d)
strata_pid=""
upstream_pid=""
cleanup() {
    [ -n "$strata_pid" ] && kill "$strata_pid" 2>/dev/null && wait "$strata_pid" 2>/dev/null
    [ -n "$upstream_pid" ] && kill "$upstream_pid" 2>/dev/null && wait "$upstream_pid" 2>/dev/null
    (cd "$work/ws" 2>/dev/null && bazel --output_user_root="$work/bazel-root" shutdown >/dev/null 2>&1) || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "strata did not start on port $1; its log:" >&2; cat "$work/strata.log" >&2; exit 1
}
if [ -n "$chain" ]; then
    upstream_port=$(free_port)
    "$strata" serve --listen "127.0.0.1:$upstream_port" --data-dir "$work/upstream" 2>>"$work/strata.log" &
    upstream_pid=$!
    wait_port "$upstream_port"
    export STRATA_UPSTREAM="grpc://127.0.0.1:$upstream_port"
fi
start_strata() {
    if [ -n "$chain" ]; then
        "$strata" serve --config "$here/../../config/site-cache.yaml" --listen "127.0.0.1:$port" \
            --data-dir "$work/data" 2>>"$work/strata.log" &
    else
        "$strata" serve --listen "127.0.0.1:$port" --data-dir "$work/data" 2>>"$work/strata.log" &
    fi
    strata_pid=$!
    wait_port "$port"
}
stop_strata() {
    kill -TERM "$strata_pid"
    wait "$strata_pid" || { echo "strata did not exit cleanly" >&2; cat "$work/strata.log" >&2; exit 1; }
    strata_pid=""
}

mkdir "$work/ws"
(cd "$here/workspace" && tar --exclude="./bazel-*" -cf - .) | tar -C "$work/ws" -xf -
cd "$work/ws"
bazel_test() {
    bazel --output_user_root="$work/bazel-root" test //... \
        --remote_cache="grpc://127.0.0.1:$port" --remote_timeout=60 2>&1 | tee "$work/bazel.log"
}

start_strata
echo "== first build: everything runs locally and is uploaded to Strata"
bazel_test
grep -q "Build completed successfully" "$work/bazel.log"

stop_strata
if [ -n "$chain" ]; then
    rm -rf "$work/data"   # the site cache starts empty: every hit must come through it from upstream
fi
start_strata
bazel --output_user_root="$work/bazel-root" clean --expunge

echo "== second build after a Strata restart and bazel clean --expunge: all remote cache hits"
bazel_test
summary=$(grep -E '^INFO: [0-9]+ processes: ' "$work/bazel.log" | tail -n 1)
echo "process summary: $summary"
kinds=$(echo "$summary" | sed -E 's/^INFO: [0-9]+ processes: //; s/\.$//')
hits=0
IFS=',' read -ra parts <<<"$kinds"
for part in "${parts[@]}"; do
    part=$(echo "$part" | sed -E 's/^ +//')
    case "$part" in
        *" internal") ;;
        *" remote cache hit") hits=${part%% *} ;;
        *) echo "FAIL: the second build ran actions outside the remote cache: '$part'" >&2; exit 1 ;;
    esac
done
if [ "$hits" -lt 10 ]; then
    echo "FAIL: expected at least 10 remote cache hits, got $hits" >&2
    exit 1
fi
grep -q "1 test passes" "$work/bazel.log"
echo "bazel e2e${chain:+ through a site cache}: 1 passed, 0 failed ($hits remote cache hits)"
