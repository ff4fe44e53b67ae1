#!/usr/bin/env bash
# Builds (once) a Debian sid chroot with the clients that bookworm lacks or has too old: buildbox
# (buildbox-worker, buildbox-casd, buildbox-run-hosttools/-bubblewrap, recc, casupload, trexe),
# bubblewrap, Bazel 7 (bazel-bootstrap) and gcc. The archive comes from this machine's own apt
# sources. The chroot shares the host's network, so clients in it reach Strata on 127.0.0.1.
#
# Usage: tests/sid/chroot.sh DIR      builds DIR unless DIR/.strata-ready exists (needs root)
#        tests/sid/chroot.sh --run DIR COMMAND...   runs COMMAND with DIR as / (needs the host's bwrap)
#
# About 2 minutes and 2 GB. CI keeps DIR outside the clone and builds it only when it is missing.
set -euo pipefail

mounts() {
    local dir=$1
    mountpoint -q "$dir/proc" || mount -t proc proc "$dir/proc"
    mountpoint -q "$dir/dev" || mount --rbind /dev "$dir/dev"
}

if [ "${1:-}" = "--run" ]; then
    dir=${2:?--run needs DIR}; shift 2
    # Not chroot(2): the kernel refuses new user namespaces to a chrooted process, and the sandboxes
    # in the chroot (bubblewrap) need them. The host's bwrap gives DIR as / in a mount namespace of
    # its own; the network and /dev are the host's, and the process dies with its caller.
    exec bwrap --bind "$dir" / --dev-bind /dev /dev --bind /proc /proc --die-with-parent --chdir / \
        /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 "$@"
fi

dir=${1:?usage: chroot.sh DIR}
[ -e "$dir/.strata-ready" ] && exit 0
[ "$(id -u)" = 0 ] || { echo "building the chroot needs root (debootstrap, mount)" >&2; exit 1; }

# The archive this machine installs from (deb822 sources first, then the one-line format).
uri=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -v security | head -n1 || true)
if [ -z "$uri" ]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; exit } }' \
        /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$uri" ] || { echo "no Debian archive found in this machine's apt sources" >&2; exit 1; }

tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
(cd "$tools" && { apt-get download -q debootstrap >/dev/null 2>&1 || { apt-get update -q >&2 && apt-get download -q debootstrap >/dev/null; }; })
dpkg -x "$tools"/debootstrap_*.deb "$tools/root"
export DEBOOTSTRAP_DIR="$tools/root/usr/share/debootstrap"

if [ -e "$dir" ]; then
    # A half-built chroot from an interrupted run: start again.
    for m in dev proc; do mountpoint -q "$dir/$m" && umount -l "$dir/$m"; done
    rm -rf --one-file-system "$dir"
fi
mkdir -p "$dir"
echo "== debootstrap sid into $dir" >&2
# debootstrap leaves grpc half-configured in sid; the apt-get -f install below repairs it.
"$tools/root/usr/sbin/debootstrap" --variant=minbase --include=buildbox,bubblewrap sid "$dir" "$uri" >&2 || true
[ -x "$dir/usr/bin/apt-get" ] || { echo "debootstrap failed" >&2; exit 1; }
cp /etc/resolv.conf "$dir/etc/resolv.conf" 2>/dev/null || true
mounts "$dir"
in_root() { chroot "$dir" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root DEBIAN_FRONTEND=noninteractive "$@"; }
in_root apt-get -q -o Acquire::Check-Valid-Until=false update >&2
in_root apt-get -q -y -f install >&2
in_root apt-get -q -y --no-install-recommends install buildbox bubblewrap bazel-bootstrap gcc libc6-dev >&2
in_root apt-get clean
for tool in buildbox-worker buildbox-casd buildbox-run-hosttools buildbox-run-bubblewrap recc bazel bwrap gcc; do
    in_root sh -c "command -v $tool" >/dev/null || { echo "the chroot lacks $tool" >&2; exit 1; }
done
touch "$dir/.strata-ready"
echo "== sid chroot ready" >&2
