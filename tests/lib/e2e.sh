# Shared by the end-to-end scripts (sourced, not run): ports, starting and stopping processes, and
# reading Bazel's process summary ("INFO: 22 processes: 9 internal, 13 remote.").

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_port PORT LOG: waits until 127.0.0.1:PORT accepts connections, else prints LOG and fails.
wait_port() {
    for _ in $(seq 1 150); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on port $1; log $2:" >&2
    cat "$2" >&2
    return 1
}

# wait_socket PATH LOG: waits until a unix socket exists.
wait_socket() {
    for _ in $(seq 1 150); do
        [ -S "$1" ] && return 0
        sleep 0.1
    done
    echo "no socket at $1; log $2:" >&2
    cat "$2" >&2
    return 1
}

# The process summary of the last Bazel run logged in $1, without "INFO: N processes: ".
bazel_summary() { grep -E '^INFO: [0-9]+ process(es)?: ' "$1" | tail -n 1 | sed -E 's/^INFO: [0-9]+ process(es)?: //; s/\.$//'; }

# expect_all_remote LOG: every action of the build ran remotely (none locally or sandboxed).
expect_all_remote() {
    local summary
    summary=$(bazel_summary "$1")
    echo "process summary: $summary"
    echo "$summary" | grep -qE '(^|, )[0-9]+ remote($|,)' || { echo "FAIL: no action ran remotely: $summary" >&2; return 1; }
    if echo "$summary" | grep -qE 'local|sandbox|worker'; then
        echo "FAIL: actions ran outside the remote executor: $summary" >&2
        return 1
    fi
}

# expect_all_hits LOG MIN: every action was a remote cache hit, at least MIN of them.
expect_all_hits() {
    local summary part hits=0
    summary=$(bazel_summary "$1")
    echo "process summary: $summary"
    IFS=',' read -ra parts <<<"$summary"
    for part in "${parts[@]}"; do
        part=$(echo "$part" | sed -E 's/^ +//')
        case "$part" in
            *" internal") ;;
            *" remote cache hit") hits=${part%% *} ;;
            *) echo "FAIL: actions ran outside the remote cache: '$part'" >&2; return 1 ;;
        esac
    done
    if [ "$hits" -lt "$2" ]; then
        echo "FAIL: expected at least $2 remote cache hits, got $hits" >&2
        return 1
    fi
    BAZEL_HITS=$hits
}

# The functions below work on the caller's globals: $strata (the binary), $work (a scratch directory,
# inside the sid chroot when one is used), $port (Strata's port), the array pids (what cleanup
# kills), $sid_root (the chroot, tests/sid/chroot.sh) and $inside ($work as seen in the chroot).

# fail MESSAGE: says what failed, shows the end of every log in $work, exits 1.
fail() {
    echo "FAIL: $*" >&2
    for log in "$work"/*.log; do echo "--- $log" >&2; tail -n 40 "$log" >&2; done
    exit 1
}

# start_strata [ARGS...]: `strata serve ARGS` on $port with data in $work/data, its HTTP listener on a
# free port (not the default's 9095, which a developer's own server may hold); sets $strata_pid.
start_strata() {
    "$strata" serve "$@" --listen "127.0.0.1:$port" --http-listen "127.0.0.1:$(free_port)" --data-dir "$work/data" \
        2>>"$work/strata.log" &
    strata_pid=$!
    pids+=("$strata_pid")
    wait_port "$port" "$work/strata.log"
}

# stop_strata: SIGTERM, and it must exit cleanly.
stop_strata() {
    kill -TERM "$strata_pid"
    wait "$strata_pid" || fail "strata did not exit cleanly"
}

# in_sid COMMAND...: runs COMMAND in the sid chroot.
in_sid() { "$(dirname "${BASH_SOURCE[0]}")/../sid/chroot.sh" --run "$sid_root" "$@"; }

# start_buildbox_worker RUNNER NAME [WORKER ARGS...]: buildbox-casd and buildbox-worker (with
# /usr/bin/buildbox-RUNNER) in the chroot, as a bot of the server on $port; sets worker_pids and
# logs to $work/NAME-casd.log and $work/NAME-worker.log. casd and the worker each get a mount
# namespace of their own (chroot.sh --run), so a FUSE staging by casd would be invisible to the
# runner: it stages by hard links instead. casd gets the arguments in the array casd_args, if set;
# both speak $remote_scheme (default http; https for a server with TLS).
start_buildbox_worker() {
    local runner=$1 name=$2
    shift 2
    mkdir -p "$work/$name"
    in_sid buildbox-casd --cas-remote="${remote_scheme:-http}://127.0.0.1:$port" "${casd_args[@]}" --bind="unix:$inside/$name/casd.sock" "$inside/$name/cache" \
        >"$work/$name-casd.log" 2>&1 &
    worker_pids=($!)
    wait_socket "$work/$name/casd.sock" "$work/$name-casd.log"
    in_sid buildbox-worker --bots-remote="${remote_scheme:-http}://127.0.0.1:$port" --cas-remote="unix:$inside/$name/casd.sock" \
        --buildbox-run="/usr/bin/buildbox-$runner" --runner-arg=--staging-mode=copy-or-link "$@" "$name" \
        >"$work/$name-worker.log" 2>&1 &
    worker_pids+=($!)
    pids+=("${worker_pids[@]}")
}

# stop_buildbox_worker: ends what start_buildbox_worker started.
stop_buildbox_worker() { kill "${worker_pids[@]}" 2>/dev/null || true; }
