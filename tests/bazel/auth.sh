#!/usr/bin/env bash
# Bazel with bearer tokens against Strata on config/auth.yaml (the access split CI writes,
# developers read). Bazel without a token is refused; the CI identity builds and populates the
# cache; the developer identity is told by Capabilities that it may not write results (Bazel then
# insists on --noremote_upload_local_results), and after a restart and `clean --expunge` gets every
# action as a remote cache hit; a change only the developer built is not cached, and is a hit once
# CI has built it. Last, `strata bot` without a token is refused, and with --token-file it runs the
# developer's remote build.
#
# The Bazel to run is $BAZEL (default: bazel, Debian's 4.2.3); $BAZEL_RUN may prefix every Bazel
# command (tests/sid/run.sh runs Bazel 7 in the sid chroot), with $STRATA_WORK_ROOT a directory
# both sides see; $STRATA_BAZEL_WORKSPACE is the workspace to build and $STRATA_CHANGE_FILE the
# file in it the developer changes.
#
# Usage: tests/bazel/auth.sh [path/to/strata]   (default: target/debug/strata)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib/e2e.sh"
strata=${1:-$here/../../target/debug/strata}
strata=$(realpath "$strata")
[ -x "$strata" ] || { echo "strata binary not found at $strata (run cargo build first)" >&2; exit 1; }
bazel=${BAZEL:-bazel}
run=${BAZEL_RUN:-}
work_root=${STRATA_WORK_ROOT:-}

if [ -n "$work_root" ]; then work=$(mktemp -d "$work_root/tmp/strata-auth.XXXXXX"); inside=${work#"$work_root"}; else work=$(mktemp -d); inside=$work; fi
# A root bot runs actions as nobody, who must be able to enter the bot's work directory.
chmod 755 "$work"
pids=()
cleanup() {
    $run sh -c "cd $inside/ws 2>/dev/null && $bazel --output_user_root=$inside/bazel-root shutdown" >/dev/null 2>&1 || true
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/tokens"
for name in ci dev bot; do
    python3 -c 'import secrets; print(secrets.token_hex(32))' >"$work/tokens/$name.token"
done
export STRATA_TOKEN_DIR=$work/tokens
port=$(free_port)
endpoint=grpc://127.0.0.1:$port

mkdir "$work/ws"
(cd "${STRATA_BAZEL_WORKSPACE:-$here/workspace}" && tar --exclude="./bazel-*" -cf - .) | tar -C "$work/ws" -xf -

# bazel_as IDENTITY ARGS...: a Bazel command with IDENTITY's token (none for "anonymous").
bazel_as() {
    local who=$1; shift
    local header=""
    [ "$who" = anonymous ] || header="'--remote_header=Authorization=Bearer $(cat "$work/tokens/$who.token")'"
    $run sh -c "cd $inside/ws && $bazel --output_user_root=$inside/bazel-root $* --remote_cache=$endpoint --remote_timeout=60 $header 2>&1"
}
build_as() {
    local who=$1; shift
    bazel_as "$who" build //... "$@" >"$work/bazel.log" || fail "bazel as $who failed"
    grep -q "Build completed successfully" "$work/bazel.log" || fail "bazel as $who did not build"
}
expunge() { $run sh -c "cd $inside/ws && $bazel --output_user_root=$inside/bazel-root clean --expunge" >/dev/null 2>&1; }

start_strata --config "$here/../../config/auth.yaml"

echo "== without a token: refused"
if bazel_as anonymous build //... >"$work/bazel.log"; then
    # A Bazel that falls back to local execution must at least have been told why.
    grep -q UNAUTHENTICATED "$work/bazel.log" || fail "anonymous Bazel was not refused"
else
    grep -q UNAUTHENTICATED "$work/bazel.log" || fail "anonymous Bazel failed for another reason"
fi
expunge

echo "== CI builds and populates the cache"
build_as ci
grep -q "PERMISSION_DENIED\|UNAUTHENTICATED" "$work/bazel.log" && fail "CI was refused something"

stop_strata
start_strata --config "$here/../../config/auth.yaml"
expunge
echo "== the developer: Bazel hears it may not write results, and reads them"
# Bazel 4 stops with this error, Bazel 7 warns and builds without uploading results.
bazel_as dev build //... >"$work/bazel.log" || true
grep -q "not authorized to write local results" "$work/bazel.log" || fail "Bazel was not told the developer may not write results"
expunge
echo "== the developer after a restart and clean --expunge: all remote cache hits"
build_as dev --noremote_upload_local_results
expect_all_hits "$work/bazel.log" 5 || fail "the developer's build was not all hits"
hits=$BAZEL_HITS

echo "== a change only the developer built is not cached by them"
echo '// changed by the developer' >>"$work/ws/${STRATA_CHANGE_FILE:-src/mathlib.c}"
build_as dev --noremote_upload_local_results
expunge
build_as dev --noremote_upload_local_results
summary=$(bazel_summary "$work/bazel.log")
echo "$summary" | grep -qE '[0-9]+ (local|linux-sandbox|processwrapper-sandbox)' || fail "the developer's own result was cached: $summary"
echo "== once CI built it, the developer hits it"
expunge
build_as ci
expunge
build_as dev --noremote_upload_local_results
expect_all_hits "$work/bazel.log" 5 || fail "the developer did not hit CI's result"
echo "== strata bot: refused without a token, serving with --token-file"
"$strata" bot --server "$endpoint" --work-dir "$work/anonymous-bot" 2>"$work/anonymous-bot.log" &
pids+=($!)
for _ in $(seq 1 50); do grep -q "needs the bot permission" "$work/anonymous-bot.log" && break; sleep 0.2; done
grep -q "needs the bot permission" "$work/anonymous-bot.log" || fail "strata bot without a token was not refused"
kill "${pids[-1]}"
"$strata" bot --server "$endpoint" --token-file "$work/tokens/bot.token" --capacity 2 --work-dir "$work/bot" 2>"$work/bot.log" &
pids+=($!)
echo "== the developer builds remotely on it"
expunge
build_as dev --noremote_upload_local_results --remote_executor="$endpoint" --spawn_strategy=remote --noremote_local_fallback \
    --noremote_accept_cached
expect_all_remote "$work/bazel.log" || fail "the developer's remote build ran something elsewhere"
grep -q "action finished" "$work/bot.log" || fail "the bot logged no action"
echo "bazel with tokens: anonymous refused, CI wrote, developer $hits hits after clean --expunge and could not write; remote build on strata bot --token-file"
