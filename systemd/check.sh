#!/usr/bin/env bash
# CI check of the systemd unit: it parses cleanly (systemd-analyze verify), alone and
# with the Jetson drop-in, and its sandbox rates an exposure of at most 2.5
# (systemd-analyze security --offline=true, systemd >= 250). Needs the systemd package;
# systemd need not be running.
set -euo pipefail
cd "$(dirname "$0")"
MAX_EXPOSURE=${EDGEFLEET_MAX_EXPOSURE:-2.5}
UNIT=edgefleet-agent.service

command -v systemd-analyze >/dev/null || { echo "check.sh: systemd-analyze not found: apt-get install -y systemd" >&2; exit 1; }
NODE=$(command -v node) || { echo "check.sh: node not found" >&2; exit 1; }
VERSION=$(systemd-analyze --version | awk 'NR == 1 { print $2 }')
echo "check.sh: systemd $VERSION"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# verify insists that ExecStart's binary exists; CI's node is rarely /usr/bin/node, so the
# copies point at the node on PATH. Nothing else in the unit is changed.
stage() {
  mkdir -p "$1"
  sed "s#^ExecStart=/usr/bin/node #ExecStart=$NODE #" "$UNIT" >"$1/$UNIT"
  grep -q "^ExecStart=$NODE " "$1/$UNIT" || { echo "check.sh: ExecStart does not start with /usr/bin/node" >&2; exit 1; }
}
stage "$TMP/base"
stage "$TMP/jetson"
mkdir -p "$TMP/jetson/$UNIT.d"
cp jetson-gpu.conf "$TMP/jetson/$UNIT.d/"

# Older systemd does not know these two (>= 254) and ignores them: the only warnings allowed.
TOLERATED='Unknown key (name )?.(RestartSteps|RestartMaxDelaySec). in section .Service., ignoring'
failed=0
verify() {
  local out
  out=$(systemd-analyze verify "$1/$UNIT" 2>&1) || { echo "$out" >&2; echo "check.sh: verify failed ($2)" >&2; failed=1; return; }
  local rest
  rest=$(printf '%s\n' "$out" | grep -Ev "$TOLERATED" | grep -v '^$' || true)
  if [ -n "$rest" ]; then
    printf '%s\n' "$rest" >&2
    echo "check.sh: verify warned ($2)" >&2
    failed=1
  else
    echo "check.sh: verify ok ($2)"
  fi
}
verify "$TMP/base" unit
verify "$TMP/jetson" "unit + jetson-gpu.conf"

exposure() {
  local out
  out=$(systemd-analyze security --offline=true "$1/$UNIT" 2>/dev/null) || {
    echo "check.sh: systemd-analyze security --offline=true failed (needs systemd >= 250)" >&2
    return 1
  }
  printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'
}
for variant in base jetson; do
  score=$(exposure "$TMP/$variant") || { failed=1; continue; }
  [ -n "$score" ] || { echo "check.sh: no exposure score in the output ($variant)" >&2; failed=1; continue; }
  if awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'; then
    echo "check.sh: exposure $score <= $MAX_EXPOSURE ($variant)"
  else
    systemd-analyze security --offline=true "$TMP/$variant/$UNIT" 2>/dev/null | grep '✗' >&2 || true
    echo "check.sh: exposure $score is above $MAX_EXPOSURE ($variant)" >&2
    failed=1
  fi
done

exit "$failed"
