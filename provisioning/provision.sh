#!/usr/bin/env bash
# Readies a Debian / Raspberry Pi OS / Jetson Linux board for the edgefleet agent.
# Idempotent: run it again with the same arguments and it changes nothing; change an
# argument and it changes only what that argument decides. It never replaces an existing
# device key. See docs/device-guide.md.
set -euo pipefail
umask 022

usage() {
  cat <<'EOF'
usage: provision.sh --device-id ID [options]

Creates the edgefleet system user and folders, installs the agent into /opt/edgefleet,
writes /etc/edgefleet/agent.json, installs the trust root and TLS files, makes the
device key and a CSR (CN = device id), installs the systemd unit and enables it.

Device:
  --device-id ID          required; ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ (PROTOCOL.md section 1)
  --group NAME            a group (repeatable, or comma-separated), in priority order
Broker (omit --broker for a device that serves local models only):
  --broker URL            mqtts://broker.example:8883 (mqtt://, ws://, wss:// also accepted)
  --topic-root ROOT       default edgefleet
  --trust FILE            the fleet's trust document -> /etc/edgefleet/trust.json
  --ca FILE               the broker CA certificate  -> /etc/edgefleet/ca.pem
  --cert FILE             this device's signed certificate (edgefleet ca sign) -> /etc/edgefleet/device.pem
  --telemetry-delivery M  collector (default: points kept until a collector acknowledges them,
                          PROTOCOL.md section 12) or broker (for a collector older than revision 2)
Local API and models:
  --http-host HOST        default 127.0.0.1
  --http-port PORT        default 8501
  --models-dir DIR        a TensorFlow Serving style model folder to serve as well
  --execution-providers L comma list, e.g. tensorrt,cuda,cpu (default: the agent's)
  --onnxruntime-path DIR  an onnxruntime-node build to load instead of the bundled CPU one
                          (a Jetson's CUDA/TensorRT build; docs/execution-providers.md)
Install:
  --source DIR|TGZ        a release package (edgefleet-agent-VERSION-linux-ARCH.tar.gz from
                          npm run package: Node.js and node_modules inside, nothing is
                          downloaded or compiled), a built agent tree (package.json, dist/,
                          optionally node_modules/) or an `npm pack` tarball; a tree without
                          node_modules gets npm ci --omit=dev (network, and build tools when
                          better-sqlite3 has no prebuilt binary for the board)
  --jetson                also install the Jetson GPU drop-in (systemd/jetson-gpu.conf)
  --node PATH             Node.js binary for ExecStart (default: the package's own,
                          /opt/edgefleet/node/bin/node, else /usr/bin/node, else `command -v node`)
  --no-start              enable the unit but do not start or restart it
  --root DIR              stage everything under DIR instead of /: no user is created,
                          ownership is left alone, systemctl is not run (printed instead)
  -h, --help              this text

Exit status: 0 done, 1 failed, 2 bad usage. The last line says how many things changed.
EOF
}

die() { echo "provision: $*" >&2; exit 1; }
usage_error() { echo "provision: $*" >&2; echo "run 'provision.sh --help' for the options" >&2; exit 2; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
UNIT_SRC=${EDGEFLEET_UNIT_FILE:-$SCRIPT_DIR/../systemd/edgefleet-agent.service}
JETSON_SRC=${EDGEFLEET_JETSON_DROPIN:-$SCRIPT_DIR/../systemd/jetson-gpu.conf}
ID_RE='^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'

DEVICE_ID='' BROKER='' TOPIC_ROOT=edgefleet TRUST='' CA='' CERT='' HTTP_HOST=127.0.0.1 HTTP_PORT=8501
MODELS_DIR='' PROVIDERS='' ORT_PATH='' SOURCE='' DELIVERY=collector JETSON=0 NODE_BIN='' NO_START=0 ROOT=''
GROUPS_LIST=()

need_value() { if [ $# -lt 2 ] || [ -z "$2" ]; then usage_error "$1 needs a value"; fi; }
while [ $# -gt 0 ]; do
  case "$1" in
    --device-id) need_value "$@"; DEVICE_ID=$2; shift 2 ;;
    --group) need_value "$@"; IFS=',' read -r -a g <<<"$2"; for x in "${g[@]}"; do [ -n "$x" ] && GROUPS_LIST+=("$x"); done; shift 2 ;;
    --broker) need_value "$@"; BROKER=$2; shift 2 ;;
    --topic-root) need_value "$@"; TOPIC_ROOT=$2; shift 2 ;;
    --trust) need_value "$@"; TRUST=$2; shift 2 ;;
    --ca) need_value "$@"; CA=$2; shift 2 ;;
    --cert) need_value "$@"; CERT=$2; shift 2 ;;
    --telemetry-delivery) need_value "$@"; DELIVERY=$2; shift 2 ;;
    --http-host) need_value "$@"; HTTP_HOST=$2; shift 2 ;;
    --http-port) need_value "$@"; HTTP_PORT=$2; shift 2 ;;
    --models-dir) need_value "$@"; MODELS_DIR=$2; shift 2 ;;
    --execution-providers) need_value "$@"; PROVIDERS=$2; shift 2 ;;
    --onnxruntime-path) need_value "$@"; ORT_PATH=$2; shift 2 ;;
    --source) need_value "$@"; SOURCE=$2; shift 2 ;;
    --jetson) JETSON=1; shift ;;
    --node) need_value "$@"; NODE_BIN=$2; shift 2 ;;
    --no-start) NO_START=1; shift ;;
    --root) need_value "$@"; ROOT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown option $1" ;;
  esac
done

# ---- validate everything before touching anything ------------------------------------
[ -n "$DEVICE_ID" ] || usage_error "--device-id is required"
[[ $DEVICE_ID =~ $ID_RE ]] || usage_error "--device-id \"$DEVICE_ID\" must match $ID_RE"
for g in "${GROUPS_LIST[@]+"${GROUPS_LIST[@]}"}"; do
  [[ $g =~ $ID_RE ]] || usage_error "--group \"$g\" must match $ID_RE"
done
if [ -n "$BROKER" ]; then
  [[ $BROKER =~ ^(mqtts?|wss?)://[^[:space:]]+$ ]] || usage_error "--broker must be an mqtts://, mqtt://, wss:// or ws:// URL"
fi
[[ $DELIVERY =~ ^(collector|broker)$ ]] || usage_error "--telemetry-delivery must be collector or broker, not \"$DELIVERY\""
[[ $TOPIC_ROOT =~ ^[^#+/[:space:]]+(/[^#+/[:space:]]+)*$ ]] || usage_error "--topic-root \"$TOPIC_ROOT\" must be topic levels without wildcards"
if ! [[ $HTTP_PORT =~ ^[0-9]{1,5}$ ]] || [ "$HTTP_PORT" -gt 65535 ]; then usage_error "--http-port must be 0 to 65535"; fi
[[ $HTTP_HOST =~ ^[A-Za-z0-9.:_-]+$ ]] || usage_error "--http-host \"$HTTP_HOST\" is not a host name or address"
if [ -n "$PROVIDERS" ]; then
  [[ $PROVIDERS =~ ^(tensorrt|cuda|xnnpack|webgpu|cpu)(,(tensorrt|cuda|xnnpack|webgpu|cpu))*$ ]] \
    || usage_error "--execution-providers must be a comma list of tensorrt, cuda, xnnpack, webgpu, cpu"
fi
if [ -n "$MODELS_DIR" ]; then [[ $MODELS_DIR == /* ]] || usage_error "--models-dir must be an absolute path"; fi
if [ -n "$ORT_PATH" ]; then [[ $ORT_PATH == /* ]] || usage_error "--onnxruntime-path must be an absolute path"; fi
for f in "$TRUST" "$CA" "$CERT"; do
  [ -z "$f" ] || [ -f "$f" ] || die "$f: no such file"
done
[ -z "$SOURCE" ] || [ -e "$SOURCE" ] || die "--source $SOURCE: no such file or folder"
[ -f "$UNIT_SRC" ] || die "unit file $UNIT_SRC not found (run provision.sh from an edgefleet checkout or set EDGEFLEET_UNIT_FILE)"
[ "$JETSON" = 0 ] || [ -f "$JETSON_SRC" ] || die "Jetson drop-in $JETSON_SRC not found"
command -v openssl >/dev/null || die "openssl not found: apt-get install -y openssl"
# Node.js writes agent.json: the board's own, or the one a release package carries.
if ! command -v node >/dev/null && [ -z "$SOURCE" ] && [ ! -x "$ROOT/opt/edgefleet/node/bin/node" ]; then
  die "node not found: install from a release package (--source edgefleet-agent-VERSION-linux-ARCH.tar.gz), or install Node.js 20 or later first (see docs/device-guide.md)"
fi
if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT"
  ROOT=$(cd "$ROOT" && pwd)
  [ "$ROOT" != / ] || ROOT=''
fi
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then die "run as root (sudo), or stage into a folder with --root DIR"; fi

ETC=/etc/edgefleet
STATE=/var/lib/edgefleet
OPT=/opt/edgefleet
UNIT_DIR=/etc/systemd/system
CHANGES=0
CHANGED_UNIT=0

changed() { CHANGES=$((CHANGES + 1)); echo "changed: $*"; }
ok() { echo "ok: $*"; }
would() { echo "would run: $*"; }
staged() { [ -n "$ROOT" ]; }

# Sets mode and (on a real system) owner of PATH, counting a change only when one was needed.
fix_attrs() {
  local path=$1 mode=$2 owner=${3:-root:root}
  if [ "$(stat -c %a "$ROOT$path")" != "$mode" ]; then chmod "$mode" "$ROOT$path"; changed "mode $mode on $path"; fi
  if ! staged && [ "$(stat -c %U:%G "$ROOT$path")" != "$owner" ]; then chown "$owner" "$ROOT$path"; changed "owner $owner on $path"; fi
}

ensure_dir() {
  local path=$1 mode=$2 owner=${3:-root:root}
  if [ ! -d "$ROOT$path" ]; then mkdir -p "$ROOT$path"; changed "created $path"; fi
  fix_attrs "$path" "$mode" "$owner"
}

# Installs SRC as PATH (atomically: temp file, then rename) unless it already has that
# content; INSTALLED says which. (It always returns 0: `set -e` must stay in force inside.)
INSTALLED=0
install_file() {
  local src=$1 path=$2 mode=$3 owner=${4:-root:root}
  INSTALLED=0
  if [ -f "$ROOT$path" ] && cmp -s "$src" "$ROOT$path"; then
    ok "$path"
    fix_attrs "$path" "$mode" "$owner"
    return 0
  fi
  local tmp
  tmp=$(mktemp "$ROOT$path.XXXXXX")
  cat "$src" >"$tmp"
  chmod "$mode" "$tmp"
  staged || chown "$owner" "$tmp"
  sync "$tmp" 2>/dev/null || true
  mv -f "$tmp" "$ROOT$path"
  INSTALLED=1
  changed "installed $path"
}

WORK=$(mktemp -d)
# NEW_TREE is the agent being unpacked: a failure part way leaves no half-built copy.
NEW_TREE=''
trap 'rm -rf "$WORK" ${NEW_TREE:+"$NEW_TREE"}' EXIT

# ---- 1. user and folders ---------------------------------------------------------------
if staged; then
  would "useradd --system --user-group --home-dir $STATE --no-create-home --shell /usr/sbin/nologin edgefleet"
elif getent passwd edgefleet >/dev/null; then
  ok "user edgefleet exists"
else
  useradd --system --user-group --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin --comment "edgefleet agent" edgefleet
  changed "created system user edgefleet"
fi
ensure_dir "$ETC" 755
ensure_dir "$STATE" 700 edgefleet:edgefleet
ensure_dir "$UNIT_DIR" 755

# ---- 2. the agent ----------------------------------------------------------------------
source_digest() {
  if [ -f "$1" ]; then
    sha256sum <"$1" | cut -d' ' -f1
  else
    (cd "$1" && find . -path ./.git -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum | sha256sum | cut -d' ' -f1)
  fi
}

# A release package must run here: its Node.js for this arch, and its native modules, which
# need glibc 2.34 and GCC 11's libstdc++ (they are built on Debian 12). Staging (--root) a
# package for another arch, for an image, is allowed untried.
check_package() {
  local tree=$1 arch machine loaded
  arch=$(sed -n 's/.*"arch": *"\([^"]*\)".*/\1/p' "$tree/PACKAGE.json")
  machine=$(uname -m | sed 's/^x86_64$/x64/; s/^aarch64$/arm64/')
  if staged && [ "$arch" != "$machine" ]; then
    echo "provision: note: staging a linux/$arch package on $(uname -m): its Node.js and native modules are not tried here" >&2
    return 0
  fi
  "$tree/node/bin/node" -e 0 2>/dev/null || die "--source $SOURCE is a package for linux/$arch: its Node.js does not run on this $(uname -m) machine"
  if ! loaded=$("$tree/node/bin/node" -e "new (require(process.argv[1]))(':memory:')" "$tree/node_modules/better-sqlite3" 2>&1); then
    die "--source $SOURCE: its better-sqlite3 does not load on this board ($(grep -m1 -oE "[^ ']*GLIBC[^ ']*' not found|Error: .*" <<<"$loaded" || head -n1 <<<"$loaded")); release packages need glibc 2.34 and libstdc++ from GCC 11 or later (Debian 12, Raspberry Pi OS bookworm, Ubuntu 22.04, JetPack 6)"
  fi
}

install_agent() {
  local digest stamp=$ROOT$OPT/.edgefleet-source new=$ROOT$OPT.new old=$ROOT$OPT.old
  digest=$(source_digest "$SOURCE")
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
    ok "agent in $OPT is up to date"
    return
  fi
  rm -rf "$new" "$old"
  NEW_TREE=$new
  mkdir -p "$new"
  if [ -f "$SOURCE" ]; then
    # npm pack tarballs hold everything under package/, release packages under
    # edgefleet-agent-VERSION-linux-ARCH/.
    local strip=0 first
    first=$(tar -tzf "$SOURCE" | head -n1) || true
    if [[ $first =~ ^(package|edgefleet-agent-[^/]+)/ ]]; then strip=1; fi
    tar -xzf "$SOURCE" -C "$new" --strip-components=$strip --no-same-owner || die "--source $SOURCE could not be unpacked (see above)"
  else
    tar -C "$SOURCE" --exclude=./.git -cf - . | tar -C "$new" -xf - --no-same-owner
  fi
  if [ ! -f "$new/package.json" ] || [ ! -f "$new/dist/agent/bin.js" ]; then
    die "--source $SOURCE is not a built agent (needs package.json and dist/agent/bin.js: run npm run build)"
  fi
  if [ -f "$new/PACKAGE.json" ]; then check_package "$new"; fi
  if [ ! -d "$new/node_modules" ]; then
    command -v npm >/dev/null || die "npm not found and --source has no node_modules: use a release package (npm run package), which needs no npm"
    # npm ci installs exactly the lockfile; `npm pack` tarballs carry none.
    local npm_cmd=ci
    [ -f "$new/package-lock.json" ] || npm_cmd=install
    # dist/ is built already; `prepare` would run tsc, a dev dependency npm does not install here.
    (cd "$new" && npm pkg delete scripts.prepare)
    echo "provision: npm $npm_cmd --omit=dev in $OPT (native modules are built for this board;" \
      "where better-sqlite3 has no prebuilt binary, that needs build-essential and python3)"
    (cd "$new" && npm "$npm_cmd" --omit=dev --no-audit --no-fund >&2) || die "npm $npm_cmd --omit=dev failed (see above); $OPT is unchanged"
  fi
  chmod -R u+rwX,go+rX,go-w "$new"
  staged || chown -R root:root "$new"
  echo "$digest" >"$new/.edgefleet-source"
  if [ -e "$ROOT$OPT" ]; then mv "$ROOT$OPT" "$old"; fi
  mv "$new" "$ROOT$OPT"
  NEW_TREE=''
  rm -rf "$old"
  changed "installed the agent into $OPT"
}

if [ -n "$SOURCE" ]; then
  install_agent
else
  ensure_dir "$OPT" 755
  [ -f "$ROOT$OPT/dist/agent/bin.js" ] || echo "provision: note: no --source given and $OPT/dist/agent/bin.js is missing: the agent is not installed yet" >&2
fi

# The Node.js that runs this script's helpers: the board's, else the installed package's.
PACKAGE_NODE=$OPT/node/bin/node
HELPER_NODE=$(command -v node || true)
if [ -z "$HELPER_NODE" ]; then
  [ -x "$ROOT$PACKAGE_NODE" ] || die "node not found, and --source $SOURCE carries no Node.js: use a release package, or install Node.js 20 or later"
  HELPER_NODE=$ROOT$PACKAGE_NODE
fi

# ---- 3. trust root and TLS files -------------------------------------------------------
TLS=0
if [[ $BROKER =~ ^(mqtts|wss):// ]]; then TLS=1; fi
if [ -n "$TRUST" ]; then
  "$HELPER_NODE" -e 'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))' "$TRUST" 2>/dev/null || die "--trust $TRUST is not JSON"
  install_file "$TRUST" "$ETC/trust.json" 644
fi
if [ -n "$CA" ]; then
  openssl x509 -in "$CA" -noout 2>/dev/null || die "--ca $CA is not a PEM certificate"
  install_file "$CA" "$ETC/ca.pem" 644
fi

# The device key: made once, never replaced (the fleet has signed its certificate).
KEY=$ETC/device.key
if [ -f "$ROOT$KEY" ]; then
  ok "device key $KEY exists (kept)"
else
  (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$ROOT$KEY.tmp" 2>/dev/null)
  mv "$ROOT$KEY.tmp" "$ROOT$KEY"
  changed "generated device key $KEY (EC P-256)"
fi
fix_attrs "$KEY" 600 edgefleet:edgefleet

pubkey_of() { openssl "$1" -in "$2" -noout -pubkey 2>/dev/null || true; }
DEVICE_PUB=$(openssl pkey -in "$ROOT$KEY" -pubout)

# The CSR: again only when missing, for another id, or for another key.
CSR=$ETC/device.csr
csr_ok() {
  [ -f "$ROOT$CSR" ] || return 1
  [ "$(openssl req -in "$ROOT$CSR" -noout -subject -nameopt RFC2253 2>/dev/null)" = "subject=CN=$DEVICE_ID" ] || return 1
  [ "$(pubkey_of req "$ROOT$CSR")" = "$DEVICE_PUB" ]
}
if csr_ok; then
  ok "CSR $CSR (CN=$DEVICE_ID)"
else
  printf '[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = %s\n' "$DEVICE_ID" >"$WORK/req.cnf"
  openssl req -new -config "$WORK/req.cnf" -key "$ROOT$KEY" -sha256 -out "$WORK/device.csr"
  install_file "$WORK/device.csr" "$CSR" 644
fi
fix_attrs "$CSR" 644

if [ -n "$CERT" ]; then
  [ "$(pubkey_of x509 "$CERT")" = "$DEVICE_PUB" ] || die "--cert $CERT was not issued for this device's key ($KEY): sign $CSR"
  subject=$(openssl x509 -in "$CERT" -noout -subject -nameopt RFC2253)
  [ "$subject" = "subject=CN=$DEVICE_ID" ] || die "--cert $CERT is for ${subject#subject=}, not CN=$DEVICE_ID"
  install_file "$CERT" "$ETC/device.pem" 644
fi

# ---- 4. agent.json ---------------------------------------------------------------------
GROUPS_CSV=$(IFS=,; echo "${GROUPS_LIST[*]+"${GROUPS_LIST[*]}"}")
# node writes the JSON so every value is escaped correctly; keys per docs/protocol.md section 9.
"$HELPER_NODE" - "$DEVICE_ID" "$GROUPS_CSV" "$BROKER" "$TOPIC_ROOT" "$TLS" "$HTTP_HOST" "$HTTP_PORT" "$MODELS_DIR" "$PROVIDERS" "$ETC" "$STATE" "$DELIVERY" "$ORT_PATH" \
  >"$WORK/agent.json" <<'EOF'
const [deviceId, groups, broker, topicRoot, tls, host, port, modelsDir, providers, etc, state, delivery, ortPath] = process.argv.slice(2);
const config = { deviceId, groups: groups ? groups.split(',') : [], stateDir: state };
if (broker) {
  config.trust = `${etc}/trust.json`;
  config.mqtt = { url: broker, topicRoot };
  if (tls === '1') Object.assign(config.mqtt, { ca: `${etc}/ca.pem`, cert: `${etc}/device.pem`, key: `${etc}/device.key` });
  // The broker's ACL (provisioning/mosquitto/acl) lets the device read its telemetry acks.
  config.telemetry = { delivery };
}
config.http = { host, port: Number(port) };
if (modelsDir) config.models = { dir: modelsDir };
if (providers || ortPath) config.runtime = {};
if (providers) config.runtime.executionProviders = providers.split(',');
if (ortPath) config.runtime.onnxruntimePath = ortPath;
process.stdout.write(`${JSON.stringify(config, null, 2)}\n`);
EOF
install_file "$WORK/agent.json" "$ETC/agent.json" 640 root:edgefleet

# ---- 5. systemd unit -------------------------------------------------------------------
install_file "$UNIT_SRC" "$UNIT_DIR/edgefleet-agent.service" 644
[ "$INSTALLED" = 0 ] || CHANGED_UNIT=1
DROPIN=$UNIT_DIR/edgefleet-agent.service.d
want_dropins=()
if [ "$JETSON" = 1 ]; then want_dropins+=(jetson-gpu.conf); cp "$JETSON_SRC" "$WORK/jetson-gpu.conf"; fi
# A release package runs its own Node.js, whatever the board has.
if [ -z "$NODE_BIN" ] && [ -x "$ROOT$PACKAGE_NODE" ]; then NODE_BIN=$PACKAGE_NODE; fi
if [ -z "$NODE_BIN" ] && ! staged && [ ! -x /usr/bin/node ]; then NODE_BIN=$(command -v node); fi
if [ -n "$NODE_BIN" ] && [ "$NODE_BIN" != /usr/bin/node ]; then
  [[ $NODE_BIN == /* ]] || usage_error "--node must be an absolute path"
  printf '# Written by provision.sh: the agent runs this Node.js, not /usr/bin/node.\n[Service]\nExecStart=\nExecStart=%s %s/dist/agent/bin.js --config %s/agent.json\n' \
    "$NODE_BIN" "$OPT" "$ETC" >"$WORK/node-path.conf"
  want_dropins+=(node-path.conf)
fi
if [ ${#want_dropins[@]} -gt 0 ]; then
  ensure_dir "$DROPIN" 755
  for d in "${want_dropins[@]}"; do
    install_file "$WORK/$d" "$DROPIN/$d" 644
    [ "$INSTALLED" = 0 ] || CHANGED_UNIT=1
  done
fi
# Drop-ins this script wrote before but no longer wants (e.g. --jetson left out now).
for d in jetson-gpu.conf node-path.conf; do
  if [ -f "$ROOT$DROPIN/$d" ] && [[ " ${want_dropins[*]+"${want_dropins[*]}"} " != *" $d "* ]]; then
    rm -f "$ROOT$DROPIN/$d"; CHANGED_UNIT=1; changed "removed $DROPIN/$d"
  fi
done

# ---- 6. what is still missing, then systemctl ------------------------------------------
missing=()
[ -f "$ROOT$OPT/dist/agent/bin.js" ] || missing+=("the agent in $OPT (--source)")
if [ -n "$BROKER" ]; then
  [ -f "$ROOT$ETC/trust.json" ] || missing+=("the trust root $ETC/trust.json (--trust)")
  if [ "$TLS" = 1 ]; then
    [ -f "$ROOT$ETC/ca.pem" ] || missing+=("the broker CA $ETC/ca.pem (--ca)")
    [ -f "$ROOT$ETC/device.pem" ] || missing+=("the device certificate $ETC/device.pem: sign $CSR with 'edgefleet ca sign --ca DIR --csr device.csr --out device.pem' and rerun with --cert device.pem")
  fi
fi
for m in "${missing[@]+"${missing[@]}"}"; do echo "provision: still needed: $m" >&2; done

if staged; then
  would "systemctl daemon-reload"
  would "systemctl enable --now edgefleet-agent.service"
elif [ ! -d /run/systemd/system ]; then
  echo "provision: systemd is not running here: skipped daemon-reload, enable and start" >&2
else
  if [ "$CHANGED_UNIT" = 1 ]; then systemctl daemon-reload; changed "systemctl daemon-reload"; fi
  if systemctl is-enabled --quiet edgefleet-agent.service; then
    ok "edgefleet-agent.service enabled"
  else
    systemctl enable --quiet edgefleet-agent.service
    changed "enabled edgefleet-agent.service"
  fi
  if [ "$NO_START" = 1 ]; then
    echo "provision: --no-start: not starting the agent" >&2
  elif [ ${#missing[@]} -gt 0 ]; then
    if systemctl is-active --quiet edgefleet-agent.service; then
      echo "provision: not restarting the agent (it keeps its old settings) until the above is in place" >&2
    else
      echo "provision: not starting the agent until the above is in place" >&2
    fi
  elif ! systemctl is-active --quiet edgefleet-agent.service; then
    systemctl start edgefleet-agent.service
    changed "started edgefleet-agent.service"
  elif [ "$CHANGES" -gt 0 ]; then
    systemctl restart edgefleet-agent.service
    changed "restarted edgefleet-agent.service"
  else
    ok "edgefleet-agent.service running"
  fi
fi

echo "provision: CSR for the fleet CA: $CSR (CN=$DEVICE_ID)"
if [ "$CHANGES" = 0 ]; then echo "provision: no changes"; else echo "provision: $CHANGES change(s)"; fi
