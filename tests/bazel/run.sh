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
# With --exec RUNNER (host or bubblewrap), Bazel runs every action remotely (--remote_executor,
# --spawn_strategy=remote, no local fallback) on a `strata bot` process with that runner: the first
# build must run every action remotely and the tests must pass there; the second build (after the
# restart and expunge) must be all cache hits.
#
# Usage: tests/bazel/run.sh [--chain | --exec host|bubblewrap] [path/to/strata]   (default: target/debug/strata)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib/e2e.sh"
chain=""
runner=""
if [ "${1:-}" = "--chain" ]; then chain=1; shift; fi
if [ "${1:-}" = "--exec" ]; then runner=${2:?--exec needs host or bubblewrap}; shift 2; fi
strata=${1:-$here/../../target/debug/strata}
strata=$(realpath "$strata" 2>/dev/null || echo "$strata")
[ -x "$strata" ] || { echo "strata binary not found at $strata (run cargo build first)" >&2; exit 1; }
command -v bazel >/dev/null || { echo "bazel not found: apt-get install bazel-bootstrap" >&2; exit 1; }

work=$(mktemp -d)
# A root bot runs host actions as nobody, who must be able to enter the bot's work directory.
chmod 755 "$work"
strata_pid=""
upstream_pid=""
bot_pid=""
cleanup() {
    [ -n "$bot_pid" ] && kill "$bot_pid" 2>/dev/null && wait "$bot_pid" 2>/dev/null
    [ -n "$strata_pid" ] && kill "$strata_pid" 2>/dev/null && wait "$strata_pid" 2>/dev/null
    [ -n "$upstream_pid" ] && kill "$upstream_pid" 2>/dev/null && wait "$upstream_pid" 2>/dev/null
    (cd "$work/ws" 2>/dev/null && bazel --output_user_root="$work/bazel-root" shutdown >/dev/null 2>&1) || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(free_port)
if [ -n "$chain" ]; then
    upstream_port=$(free_port)
    "$strata" serve --listen "127.0.0.1:$upstream_port" --http-listen "127.0.0.1:$(free_port)" \
        --data-dir "$work/upstream" 2>>"$work/strata.log" &
    upstream_pid=$!
    wait_port "$upstream_port" "$work/strata.log"
    export STRATA_UPSTREAM="grpc://127.0.0.1:$upstream_port"
fi
if [ -n "$runner" ]; then
    # Execution without the in-process bot of the default: a separate `strata bot` runs everything.
    cat >"$work/exec.yaml" <<YAML
storage:
  local:
    cas:
      - memory: { max_size: 256MiB }
      - disk: { path: cas, max_size: 2GiB, segment_size: 64MiB }
    action_cache:
      - disk: { path: ac, max_size: 256MiB, segment_size: 16MiB }
instances:
  - { name: "", storage: local, services: [cas, action_cache, execution] }
YAML
fi
start_strata() {
    if [ -n "$runner" ]; then
        "$strata" serve --config "$work/exec.yaml" --listen "127.0.0.1:$port" --data-dir "$work/data" 2>>"$work/strata.log" &
    elif [ -n "$chain" ]; then
        "$strata" serve --config "$here/../../config/site-cache.yaml" --listen "127.0.0.1:$port" \
            --data-dir "$work/data" 2>>"$work/strata.log" &
    else
        "$strata" serve --listen "127.0.0.1:$port" --http-listen "127.0.0.1:$(free_port)" --data-dir "$work/data" \
            2>>"$work/strata.log" &
    fi
    strata_pid=$!
    wait_port "$port" "$work/strata.log"
    if [ -n "$runner" ] && [ -z "$bot_pid" ]; then
        "$strata" bot --server "grpc://127.0.0.1:$port" --runner "$runner" --capacity 2 \
            --work-dir "$work/bot" 2>>"$work/bot.log" &
        bot_pid=$!
    fi
}
stop_strata() {
    kill -TERM "$strata_pid"
    wait "$strata_pid" || { echo "strata did not exit cleanly" >&2; cat "$work/strata.log" >&2; exit 1; }
    strata_pid=""
}

mkdir "$work/ws"
(cd "$here/workspace" && tar --exclude="./bazel-*" -cf - .) | tar -C "$work/ws" -xf -
cd "$work/ws"
remote=(--remote_cache="grpc://127.0.0.1:$port")
if [ -n "$runner" ]; then
    remote=(--remote_executor="grpc://127.0.0.1:$port" --spawn_strategy=remote --noremote_local_fallback)
fi
bazel_test() {
    bazel --output_user_root="$work/bazel-root" test //... \
        "${remote[@]}" --remote_timeout=60 2>&1 | tee "$work/bazel.log"
}

start_strata
if [ -n "$runner" ]; then
    echo "== first build: every action runs on a strata bot ($runner runner)"
else
    echo "== first build: everything runs locally and is uploaded to Strata"
fi
bazel_test || { echo "bazel failed; strata's log:" >&2; cat "$work/strata.log" "$work/bot.log" >&2 2>/dev/null; exit 1; }
grep -q "Build completed successfully" "$work/bazel.log"
if [ -n "$runner" ]; then
    expect_all_remote "$work/bazel.log"
    grep -q "action finished" "$work/bot.log" || { echo "FAIL: the bot logged no action" >&2; exit 1; }
fi

stop_strata
if [ -n "$chain" ]; then
    rm -rf "$work/data"   # the site cache starts empty: every hit must come through it from upstream
fi
start_strata
bazel --output_user_root="$work/bazel-root" clean --expunge

echo "== second build after a Strata restart and bazel clean --expunge: all remote cache hits"
bazel_test
expect_all_hits "$work/bazel.log" 10
grep -q "1 test passes" "$work/bazel.log"
echo "bazel e2e${chain:+ through a site cache}${runner:+ with remote execution ($runner)}: 1 passed, 0 failed ($BAZEL_HITS remote cache hits)"
