#!/usr/bin/env bash
# Makes (once) and prints the path of a Debian bookworm arm64 root that runs on this
# x86-64 machine under qemu-user (binfmt_misc). Both roots are cached outside the clone
# and reused while present; delete one to make it again.
#
#   arm64-root.sh board   debootstrap --variant=minbase plus openssl: a bare board with no
#                         compiler, no Node.js and no npm (the arm64 smoke test copies it)
#   arm64-root.sh build   the board root plus build-essential and python3: better-sqlite3
#                         is compiled here when no prebuilt arm64 binary can be had
#   arm64-root.sh run DIR CMD...   runs CMD in the root DIR (a copy of one of the above)
#                         with /proc and /dev mounted; --no-network runs it with no network
#
# EDGEFLEET_ARM64_ROOT (default /var/cache/edgefleet/arm64-bookworm-root) names the board
# root; the build root is the same path with -build appended. EDGEFLEET_DEBIAN_MIRROR
# (default http://deb.debian.org/debian) is where debootstrap and apt-get fetch from.
# Needs root, debootstrap, and qemu-user-static registered with binfmt_misc
# (apt-get install -y qemu-user-static binfmt-support debootstrap).
set -euo pipefail

die() { echo "arm64-root: $*" >&2; exit 1; }

KIND=${1:-}
[[ $KIND =~ ^(board|build|run)$ ]] || { echo "usage: arm64-root.sh board|build|run [--no-network] DIR CMD..." >&2; exit 2; }
BOARD=${EDGEFLEET_ARM64_ROOT:-/var/cache/edgefleet/arm64-bookworm-root}
BUILD=$BOARD-build
MIRROR=${EDGEFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}

[ "$(id -u)" = 0 ] || die "needs root (debootstrap and chroot)"
command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install -y debootstrap"
# The F flag makes the kernel keep the interpreter open, so it also works inside a chroot.
if ! grep -qs '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  grep -qs '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
    || die "arm64 binaries cannot run here: qemu-aarch64 is not registered with binfmt_misc (apt-get install -y qemu-user-static binfmt-support)"
fi

# Runs a command in ROOT with /proc, /dev and the host's resolver, unmounting after.
# NET=none runs it in a network namespace of its own with no interface but a loopback.
NET=host
in_root() {
  local root=$1
  shift
  mount -t proc proc "$root/proc"
  mount --bind /dev "$root/dev"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  local rc=0 netns=() child
  [ "$NET" = host ] || netns=(unshare --net sh -c 'ip link set lo up && exec "$@"' sh)
  # In the background so a SIGTERM to this script reaches the command and the mounts
  # are still undone when it has exited.
  "${netns[@]+"${netns[@]}"}" chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@" &
  child=$!
  trap 'kill -TERM $child 2>/dev/null' TERM INT
  wait $child || rc=$?
  # A trapped signal ends the first wait early: wait again for the command's own status.
  while kill -0 $child 2>/dev/null; do rc=0; wait $child || rc=$?; done
  trap - TERM INT
  umount "$root/dev" "$root/proc"
  return $rc
}

if [ "$KIND" = run ]; then
  shift
  if [ "${1:-}" = --no-network ]; then NET=none; shift; fi
  [ $# -ge 2 ] || die "run needs a root folder and a command"
  [ -x "$1/usr/bin/env" ] || die "$1 is not an arm64 root (no usr/bin/env)"
  in_root "$@"
  exit
fi

# Builds into DIR.tmp and renames it, so a root that exists is a complete one.
make_board() {
  local tmp=$BOARD.tmp
  rm -rf "$tmp"
  mkdir -p "$(dirname "$BOARD")"
  echo "arm64-root: debootstrap bookworm arm64 into $BOARD (several minutes under emulation)" >&2
  debootstrap --arch=arm64 --variant=minbase --include=openssl bookworm "$tmp" "$MIRROR" >&2 \
    || die "debootstrap failed (see above); $tmp is left for a look"
  rm -f "$tmp/var/cache/apt/archives/"*.deb
  mv "$tmp" "$BOARD"
}

make_build() {
  local tmp=$BUILD.tmp
  rm -rf "$tmp"
  echo "arm64-root: copying the board root and installing build-essential and python3 into $BUILD" >&2
  cp -a "$BOARD" "$tmp"
  in_root "$tmp" apt-get update -qq >&2
  in_root "$tmp" apt-get install -y -qq --no-install-recommends build-essential python3 >&2 \
    || die "apt-get install in $tmp failed (see above)"
  in_root "$tmp" apt-get clean >&2
  mv "$tmp" "$BUILD"
}

[ -x "$BOARD/usr/bin/openssl" ] || make_board
if [ "$KIND" = build ]; then
  [ -x "$BUILD/usr/bin/g++" ] || make_build
  echo "$BUILD"
else
  echo "$BOARD"
fi
