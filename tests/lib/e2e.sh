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
