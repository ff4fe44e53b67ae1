#!/usr/bin/env bash
# End to end with the clients Debian sid ships (run in the chroot of tests/sid/chroot.sh, talking to
# Strata on 127.0.0.1): buildbox-worker 1.4.30 behind its own buildbox-casd, recc 1.4.30 and
# Bazel 7.7.1.
#
#   worker   a Strata with execution and no bots of its own; its only bot is buildbox-worker
#            (--concurrent-jobs 2) with buildbox-run-hosttools. recc compiles C files remotely (each
#            object identical to a local compile), then Bazel 7 builds a workspace with every action
#            on the worker, and after `clean --expunge` gets every action from the cache.
#   default  `strata serve` on its embedded default: Bazel 7 with --remote_cache, then with
#            --remote_executor (on the in-process bot), both with --remote_download_minimal and all
#            hits after `clean --expunge`, and with --remote_cache_compression (zstd) in both
#            modes; recc compiles remotely on the in-process bot, and in
#            cache-only mode (a local compile uploaded, then an action cache hit); Bazel 7's
#            --experimental_remote_downloader gets an http_file through Strata, and after the HTTP
#            server is stopped and `clean --expunge`, from Strata alone.
#
# (buildbox-run-bubblewrap makes the input root the sandbox's `/`, so it runs BuildStream's actions,
# whose input root is a whole system, not recc's or Bazel's: tests/buildstream/run.sh runs it.)
#
#   downloader  only the default's remote-downloader part.
#
# Usage: tests/sid/run.sh [worker|default|downloader]... [--strata path/to/strata]
#        (default: worker and default, target/debug/strata)
# The chroot is $STRATA_SID_ROOT (default /var/cache/strata-ci/sid), built by tests/sid/chroot.sh.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib/e2e.sh"
strata=$here/../../target/debug/strata
scenarios=()
while [ $# -gt 0 ]; do
    case "$1" in
        --strata) strata=$2; shift 2 ;;
        worker|default|downloader|auth) scenarios+=("$1"); shift ;;
        *) echo "usage: $0 [worker|default|downloader|auth]... [--strata PATH]" >&2; exit 2 ;;
    esac
done
[ ${#scenarios[@]} -gt 0 ] || scenarios=(worker default auth)
casd_args=()
strata=$(realpath "$strata")
sid_root=${STRATA_SID_ROOT:-/var/cache/strata-ci/sid}
[ -x "$strata" ] || { echo "strata binary not found at $strata (run cargo build first)" >&2; exit 1; }
[ -e "$sid_root/.strata-ready" ] || { echo "no sid chroot at $sid_root: run tests/sid/chroot.sh $sid_root" >&2; exit 1; }

# The work directory is inside the chroot, so that both sides see it: $work on the host, $inside in it.
work=$(mktemp -d "$sid_root/tmp/strata-e2e.XXXXXX")
inside=${work#"$sid_root"}
pids=()
cleanup() {
    in_sid sh -c "cd $inside/ws 2>/dev/null && bazel --output_user_root=$inside/bazel-root shutdown" >/dev/null 2>&1 || true
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

port=$(free_port)
endpoint=grpc://127.0.0.1:$port

# recc compiles sources in $inside/src remotely; each object must be what a local compile makes,
# or (with --any-compiler, when the bot's compiler is another one) at least define its function.
recc_compiles() {
    local check=${1:-}
    rm -rf "$work/src"
    mkdir -p "$work/src/include"
    echo '#define BASE 40' >"$work/src/include/base.h"
    for i in 1 2 3 4; do
        printf '#include "include/base.h"\nint f%s(int x) { return x * BASE + %s; }\n' "$i" "$i" >"$work/src/f$i.c"
    done
    for i in 1 2 3 4; do
        in_sid sh -c "cd $inside/src && ${recc_env:-RECC_SERVER=http://127.0.0.1:$port} RECC_VERBOSE=1 recc gcc -c f$i.c -o f$i.o" \
            >"$work/recc-$i.log" 2>&1 || fail "recc exited non-zero"
        grep -q "Remote execution finished with exit code 0" "$work/recc-$i.log" || fail "recc did not compile f$i.c remotely"
        if [ "$check" = --any-compiler ]; then
            in_sid sh -c "nm $inside/src/f$i.o" | grep -q " T f$i" || fail "f$i.o does not define f$i"
        else
            in_sid sh -c "cd $inside/src && gcc -c f$i.c -o local-f$i.o && cmp f$i.o local-f$i.o" || fail "f$i.o differs from a local compile"
        fi
    done
    echo "recc: 4 remote compiles, outputs right"
}

# Bazel 7 builds the workspace twice: remotely (every action remote, or uploaded with --cache), then
# after a Strata restart and `clean --expunge`, every action a remote cache hit.
bazel_twice() { # exec|cache [extra flags...]
    local mode=$1; shift
    # A new workspace and Bazel server each time: nothing is left of an earlier build.
    in_sid sh -c "cd $inside/ws 2>/dev/null && bazel --output_user_root=$inside/bazel-root shutdown" >/dev/null 2>&1 || true
    rm -rf "$work/ws" "$work/bazel-root"
    cp -r "$here/workspace" "$work/ws"
    # Debian's Bazel looks for zstd-jni (for --remote_cache_compression) only in its own directory,
    # where libzstd-jni1 does not put it: point it at the library under the name it asks for.
    local jni
    jni=$(cd "$sid_root" && ls usr/lib/x86_64-linux-gnu/libzstd-jni.so.* 2>/dev/null | head -n 1)
    if [ -n "$jni" ]; then
        mkdir -p "$work/jni"
        ln -sf "/$jni" "$work/jni/libzstd-jni.so"
        echo "startup --host_jvm_args=-Djava.library.path=/usr/share/bazel:$inside/jni" >>"$work/ws/.bazelrc"
    fi
    local flags=(--remote_timeout=60 "$@") first=()
    if [ "$mode" = exec ]; then
        flags+=(--remote_executor="$endpoint" --spawn_strategy=remote --noremote_local_fallback)
        first=(--noremote_accept_cached) # run every action, even if an earlier build cached it
    else
        flags+=(--remote_cache="$endpoint")
    fi
    bazel7() { in_sid sh -c "cd $inside/ws && bazel --output_user_root=$inside/bazel-root $* 2>&1" ; }
    bazel7 build //... "${flags[@]}" "${first[@]}" >"$work/bazel.log" || fail "bazel 7 failed"
    grep -q "Build completed successfully" "$work/bazel.log" || fail "bazel 7 did not build"
    if [ "$mode" = exec ]; then expect_all_remote "$work/bazel.log" || fail "not every action ran remotely"; fi
    case " $* " in
        *" --remote_download_minimal "*) ;; # outputs stay remote
        *) in_sid cat "$inside/ws/bazel-bin/summary.txt" | grep -qx 'an input file' || fail "summary.txt is wrong" ;;
    esac
    stop_strata
    start_strata "${strata_args[@]}"
    bazel7 clean --expunge >/dev/null
    bazel7 build //... "${flags[@]}" >"$work/bazel.log" || fail "bazel 7 failed after clean --expunge"
    expect_all_hits "$work/bazel.log" 5 || fail "the rebuild was not all cache hits"
    echo "bazel 7 ($mode${*:+ $*}): $BAZEL_HITS remote cache hits after clean --expunge"
}

scenario_worker() {
    echo "== buildbox-worker (hosttools) as the only bot of Strata"
    cat >"$work/exec.yaml" <<YAML
storage:
  local:
    cas:
      - memory: { max_size: 256MiB, max_blob: 16MiB }
      - disk: { path: cas, max_size: 2GiB, segment_size: 64MiB }
    action_cache:
      - disk: { path: ac, max_size: 256MiB, segment_size: 16MiB }
instances:
  - { name: "", storage: local, services: [cas, action_cache, execution] }
YAML
    strata_args=(--config "$work/exec.yaml")
    start_strata "${strata_args[@]}"
    start_buildbox_worker run-hosttools e2e-worker --concurrent-jobs=2 --platform OSFamily=linux --platform ISA=x86-64
    recc_compiles
    bazel_twice exec
    stop_strata
    stop_buildbox_worker
}

# recc in cache-only mode: the first compile runs locally and is uploaded, the second is a hit.
recc_cache_only() {
    mkdir -p "$work/cache-only"
    echo 'int cached(void) { return 7; }' >"$work/cache-only/c.c"
    local env="RECC_SERVER=http://127.0.0.1:$port RECC_CACHE_ONLY=1 RECC_CACHE_UPLOAD_LOCAL_BUILD=1 RECC_VERBOSE=1"
    in_sid sh -c "cd $inside/cache-only && $env recc gcc -c c.c -o c.o" >"$work/recc-cache-1.log" 2>&1 || fail "recc (cache-only) failed"
    grep -q "Action cache updated" "$work/recc-cache-1.log" || fail "recc did not upload its local build"
    rm "$work/cache-only/c.o"
    in_sid sh -c "cd $inside/cache-only && $env recc gcc -c c.c -o c.o" >"$work/recc-cache-2.log" 2>&1 || fail "recc (cache-only) failed"
    grep -q "Action Cache hit" "$work/recc-cache-2.log" || fail "recc's second compile was not a cache hit"
    [ -s "$work/cache-only/c.o" ] || fail "the cached object file is missing"
    echo "recc cache-only: local build uploaded, then an action cache hit"
}

# Bazel 7's downloader through Strata's Remote Asset API: an http_file from a local HTTP server.
bazel_downloader() {
    mkdir -p "$work/origin"
    head -c 200000 /dev/urandom | base64 >"$work/origin/payload.txt"
    local sha http_port
    sha=$(sha256sum "$work/origin/payload.txt" | cut -d' ' -f1)
    http_port=$(free_port)
    python3 -m http.server "$http_port" --bind 127.0.0.1 --directory "$work/origin" >"$work/origin.log" 2>&1 &
    local origin=$!
    pids+=("$origin")
    wait_port "$http_port" "$work/origin.log"
    rm -rf "$work/dl" "$work/dl-root"
    cp -r "$here/downloader" "$work/dl"
    sed -e "s|@URL@|http://127.0.0.1:$http_port/payload.txt|" -e "s|@SHA256@|$sha|" "$work/dl/WORKSPACE.in" >"$work/dl/WORKSPACE"
    # No repository cache: every fetch must go to the downloader (which Bazel uses only beside a
    # gRPC --remote_cache).
    local flags=(--experimental_remote_downloader="$endpoint" --remote_cache="$endpoint" --repository_cache= --remote_timeout=60)
    dl() { in_sid sh -c "cd $inside/dl && bazel --output_user_root=$inside/dl-root $* 2>&1" ; }
    dl build //:copy "${flags[@]}" >"$work/bazel-dl.log" || fail "bazel 7 with the remote downloader failed"
    grep -q "downloaded for a FetchBlob" "$work/strata.log" || fail "Strata did not download the http_file"
    grep -q "GET /payload.txt" "$work/origin.log" || fail "the HTTP server was never asked"
    kill "$origin"
    wait "$origin" 2>/dev/null || true
    dl clean --expunge >/dev/null
    dl build //:copy "${flags[@]}" >"$work/bazel-dl.log" || fail "bazel 7 failed once the HTTP server was gone"
    cmp "$work/origin/payload.txt" "$work/dl/bazel-bin/copy.txt" 2>/dev/null \
        || in_sid cmp "$inside/origin/payload.txt" "$inside/dl/bazel-bin/copy.txt" || fail "the downloaded file is wrong"
    in_sid sh -c "cd $inside/dl && bazel --output_user_root=$inside/dl-root shutdown" >/dev/null 2>&1 || true
    echo "bazel 7 downloader: http_file fetched through Strata, and again from Strata alone after the origin stopped"
}

# config/auth.yaml: Bazel 7 with tokens (tests/bazel/auth.sh), then buildbox-worker as a bot over TLS
# (buildbox sends tokens over TLS only, and Debian's Bazel 7 cannot speak TLS: recc is the client
# there), refused without a token and serving with --bots-access-token.
scenario_auth() {
    echo "== bearer tokens: Bazel 7 as CI and as a developer"
    BAZEL_RUN="$here/chroot.sh --run $sid_root" STRATA_WORK_ROOT=$sid_root STRATA_BAZEL_WORKSPACE=$here/workspace \
        STRATA_CHANGE_FILE=input.txt "$here/../bazel/auth.sh" "$strata" || fail "Bazel 7 with tokens"
    # buildbox sends tokens over TLS only: config/auth.yaml with a certificate for 127.0.0.1.
    echo "== buildbox-worker as a bot of config/auth.yaml, over TLS"
    mkdir -p "$work/tokens"
    for name in ci dev bot; do python3 -c 'import secrets; print(secrets.token_hex(32))' >"$work/tokens/$name.token"; done
    export STRATA_TOKEN_DIR=$work/tokens
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=127.0.0.1 \
        -addext subjectAltName=IP:127.0.0.1 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
    { cat "$here/../../config/auth.yaml"; echo "tls: { certificate: $work/cert.pem, key: $work/key.pem }"; } >"$work/auth-tls.yaml"
    strata_args=(--config "$work/auth-tls.yaml")
    start_strata "${strata_args[@]}"
    remote_scheme=https
    local saved_endpoint=$endpoint
    endpoint=grpcs://127.0.0.1:$port
    # Without a token buildbox-casd cannot start (Capabilities is refused), nor can the worker
    # open a bot session (its casd has the token here).
    mkdir -p "$work/no-token"
    if timeout 20 "$here/chroot.sh" --run "$sid_root" buildbox-casd --cas-remote="https://127.0.0.1:$port" \
        --cas-server-cert="$inside/cert.pem" --bind="unix:$inside/no-token/casd.sock" "$inside/no-token/cache" \
        >"$work/no-token-casd.log" 2>&1; then
        fail "buildbox-casd without a token started"
    fi
    grep -q "needs the read permission" "$work/no-token-casd.log" || fail "buildbox-casd was not refused for want of a token"
    casd_args=(--cas-server-cert="$inside/cert.pem" --cas-access-token="$inside/tokens/bot.token")
    start_buildbox_worker run-hosttools anonymous-worker --bots-server-cert="$inside/cert.pem" \
        --platform OSFamily=linux --platform ISA=x86-64
    for _ in $(seq 1 50); do grep -q "needs the bot permission" "$work/anonymous-worker-worker.log" && break; sleep 0.2; done
    grep -q "needs the bot permission" "$work/anonymous-worker-worker.log" || fail "buildbox-worker without a token was not refused"
    stop_buildbox_worker
    start_buildbox_worker run-hosttools token-worker --bots-server-cert="$inside/cert.pem" \
        --bots-access-token="$inside/tokens/bot.token" --concurrent-jobs=2 --platform OSFamily=linux --platform ISA=x86-64
    casd_args=()
    recc_env="RECC_SERVER=https://127.0.0.1:$port RECC_SERVER_CERT=$inside/cert.pem RECC_ACCESS_TOKEN_PATH=$inside/tokens/ci.token"
    recc_compiles
    recc_env=""
    stop_strata
    stop_buildbox_worker
    remote_scheme=http
    endpoint=$saved_endpoint
}

scenario_default() {
    echo "== strata serve on its embedded default"
    strata_args=()
    start_strata
    bazel_twice cache --remote_download_minimal
    bazel_twice cache --remote_cache_compression
    bazel_twice exec --remote_download_minimal --remote_cache_compression
    grep -q "action finished" "$work/strata.log" || fail "the in-process bot logged no action"
    recc_compiles --any-compiler
    recc_cache_only
    bazel_downloader
    stop_strata
}

scenario_downloader() {
    echo "== Bazel 7's remote downloader on the embedded default"
    start_strata
    bazel_downloader
    stop_strata
}

for s in "${scenarios[@]}"; do
    "scenario_$s"
    rm -rf "$work/data"
done
echo "sid clients: ${#scenarios[@]} passed, 0 failed"
