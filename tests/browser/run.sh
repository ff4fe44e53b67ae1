#!/usr/bin/env bash
# The status page in a real browser: `strata serve` on the embedded default configuration (its
# in-process bots run the actions), Debian's Bazel 4 builds //gen/... with remote execution, then
# again after `clean --expunge` (all cache hits, so the hit ratios have something to show). Headless
# Chromium loads the status page and the action page of the genrule that printed to stdout; the test
# checks the rendered DOM for the instance, the tiers, the hit ratios, the exit code and the stdout,
# and takes a screenshot of each page (into $STRATA_SCREENSHOTS if set, e.g. docs/).
#
# Usage: tests/browser/run.sh [path/to/strata]   (default: target/debug/strata)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib/e2e.sh"
strata=$(realpath "${1:-$here/../../target/debug/strata}")
screenshots=${STRATA_SCREENSHOTS:+$(realpath "$STRATA_SCREENSHOTS")}
chromium=$(command -v chromium || command -v chromium-browser || true)
[ -n "$chromium" ] || { echo "chromium not found: apt-get install chromium" >&2; exit 1; }
command -v bazel >/dev/null || { echo "bazel not found: apt-get install bazel-bootstrap" >&2; exit 1; }

work=$(mktemp -d)
strata_pid=""
cleanup() {
    [ -n "$strata_pid" ] && kill "$strata_pid" 2>/dev/null && wait "$strata_pid" 2>/dev/null
    (cd "$work/ws" 2>/dev/null && bazel --output_user_root="$work/bazel-root" shutdown >/dev/null 2>&1) || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(free_port)
http_port=$(free_port)
"$strata" serve --listen "127.0.0.1:$port" --http-listen "127.0.0.1:$http_port" --data-dir "$work/data" 2>>"$work/strata.log" &
strata_pid=$!
wait_port "$port" "$work/strata.log"
wait_port "$http_port" "$work/strata.log"

mkdir "$work/ws"
(cd "$here/../bazel/workspace" && tar --exclude="./bazel-*" -cf - .) | tar -C "$work/ws" -xf -
cd "$work/ws"
build() {
    bazel --output_user_root="$work/bazel-root" build //gen/... --remote_executor="grpc://127.0.0.1:$port" \
        --spawn_strategy=remote --noremote_local_fallback --remote_timeout=60 \
        --incompatible_strict_action_env 2>&1 | tee "$work/bazel.log" >/dev/null
    grep -q "Build completed successfully" "$work/bazel.log" || { cat "$work/bazel.log" "$work/strata.log" >&2; exit 1; }
}
echo "== Bazel builds //gen/... on the default configuration's bots, then again from the cache"
build
expect_all_remote "$work/bazel.log"
bazel --output_user_root="$work/bazel-root" clean --expunge
build
expect_all_hits "$work/bazel.log" 3

browse() { # browse URL NAME: the rendered DOM on stdout, a screenshot as NAME.png
    "$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$work/chromium" \
        --window-size=1280,1700 --screenshot="$work/$2.png" "$1" >/dev/null 2>&1
    "$chromium" --headless --no-sandbox --disable-gpu --user-data-dir="$work/chromium" --dump-dom "$1" 2>/dev/null
}
expect() { # expect FILE TEXT...: each TEXT occurs in FILE
    local file=$1; shift
    for text in "$@"; do
        grep -qF -- "$text" "$file" || { echo "FAIL: '$text' is not on the page ($file):" >&2; cat "$file" >&2; exit 1; }
    done
}

base="http://127.0.0.1:$http_port"
browse "$base/" status >"$work/status.html"
expect "$work/status.html" 'Instance <code>""</code>' 'Instance <code>"hermetic"</code>' \
    storage.local.cas[0] storage.local.cas[1] storage.local.action_cache[1] \
    'action cache' 'hits /' 'Recent operations' 'local-'

# The genrule's action: the one operation whose action page shows its stdout.
digests=$("$strata" admin --json --server "grpc://127.0.0.1:$port" operations --limit 100 |
    python3 -c 'import json,sys; print("\n".join(sorted({o["action_digest"]["hash"]+"/"+str(o["action_digest"]["size_bytes"]) for o in json.load(sys.stdin) if o["stage"]=="COMPLETED"})))')
found=""
for d in $digests; do
    if curl -fsS "$base/action?digest=$d" | grep -q "greeting for the status page"; then found=$d; break; fi
done
[ -n "$found" ] || { echo "FAIL: no operation's action page shows the genrule's stdout" >&2; exit 1; }
browse "$base/action?digest=$found" action >"$work/action.html"
expect "$work/action.html" "Action <code>$found</code>" 'exit code <span class="ok">0</span>' \
    'greeting for the status page' 'Output files' 'gen/greeting.txt' 'from the action cache'
[ -s "$work/status.png" ] && [ -s "$work/action.png" ] || { echo "FAIL: chromium took no screenshot" >&2; exit 1; }
if [ -n "$screenshots" ]; then
    cp "$work/status.png" "$screenshots/status-page.png"
    cp "$work/action.png" "$screenshots/action-page.png"
fi
echo "browser e2e: the status page and the action page of $found render in Chromium with the expected text"
