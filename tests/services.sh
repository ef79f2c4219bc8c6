#!/usr/bin/env bash
# Starts and stops the real S3/SQS emulators the test suites run against, on 127.0.0.1 only.
#
#   tests/services.sh localstack-start   install (once) and start LocalStack, wait until ready
#   tests/services.sh localstack-stop    stop it
#   tests/services.sh moto-start         install (once) and start moto server, wait until ready
#   tests/services.sh moto-stop          stop it
#   tests/services.sh env                print `export ...` lines for the running services:
#                                        eval "$(tests/services.sh env)"
#   tests/services.sh status             say what runs where
#
# Settings (environment):
#   S3DOCK_CACHE          where the Python venvs live (default ~/.cache/s3dock); a working
#                         install there is reused, never reinstalled
#   S3DOCK_STATE          pid files, endpoints, logs and emulator data
#                         (default /tmp/s3dock-test-services)
#   S3DOCK_PYTHON         the Python that creates the venvs (default python3; LocalStack 4.13.1
#                         needs 3.11, newer LocalStack releases need an account token)
#   S3DOCK_START_TIMEOUT  seconds to wait for a service to become ready (default 60)
#   LOCALSTACK_PORT, MOTO_PORT  preferred ports (default 4566 and 5000); a free port is picked
#                         when the preferred one is taken
#
# The emulators keep state for their lifetime only: tests use a unique bucket per test.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${S3DOCK_CACHE:-$HOME/.cache/s3dock}
STATE=${S3DOCK_STATE:-/tmp/s3dock-test-services}
PYTHON=${S3DOCK_PYTHON:-python3}
START_TIMEOUT=${S3DOCK_START_TIMEOUT:-60}
STOP_TIMEOUT=15
HOST=127.0.0.1

log() { echo "services.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# True when nothing listens on HOST:$1 (binding fails if anything, on 127.0.0.1 or 0.0.0.0, holds it).
port_free() {
    "$PYTHON" - "$1" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

# The preferred port if free, else one the kernel hands out.
pick_port() {
    if port_free "$1"; then
        echo "$1"
        return
    fi
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The version pinned for package $2 in requirements file $1.
pinned_version() {
    sed -n "s/^$2==\([^ ;#]*\).*/\1/Ip" "$1" | head -n 1
}

# Makes sure the venv $1 has package $2 at the version pinned in $3 and that module $4 imports.
# An existing working install is left alone; a missing or broken one is (re)installed.
ensure_venv() {
    local venv=$1 package=$2 requirements=$3 module=$4
    local want have
    want=$(pinned_version "$requirements" "$package")
    [ -n "$want" ] || die "$requirements does not pin $package"
    if [ -x "$venv/bin/python" ]; then
        have=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$package'))" 2>/dev/null || true)
        if [ "$have" = "$want" ] && "$venv/bin/python" -c "import $module" 2>/dev/null; then
            return 0
        fi
        log "$venv has ${package} ${have:-(none)}, want $want: installing"
    else
        log "installing $package $want into $venv (about a minute, once)"
    fi
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python 3.11 or set S3DOCK_PYTHON"
    mkdir -p "$(dirname "$venv")"
    "$PYTHON" -m venv "$venv" || die "cannot create the venv $venv with $PYTHON"
    "$venv/bin/pip" install --disable-pip-version-check -q -r "$requirements" ||
        die "pip install -r $requirements failed; check network access to PyPI and the Python version ($("$PYTHON" --version 2>&1))"
    "$venv/bin/python" -c "import $module" || die "$package installed but 'import $module' fails"
}

# The text that identifies each service's process in /proc/PID/cmdline.
marker() {
    case $1 in
    */localstack) echo localstack.runtime.main ;;
    */moto) echo moto_server ;;
    esac
}

# True when the pid in $1/pid is alive and is still the service started there: a stale pid file
# whose number the kernel has since given to another process must not get that process killed.
running() {
    local dir=$1 pid
    [ -f "$dir/pid" ] || return 1
    pid=$(cat "$dir/pid")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    [ -r "/proc/$pid/cmdline" ] || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$(marker "$dir")"
}

http_code() {
    curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true
}

fail_start() {
    local name=$1 dir=$2
    log "$name did not become ready; last lines of $dir/log:"
    tail -n 40 "$dir/log" >&2 || true
    stop_service "$name" "$dir" >/dev/null 2>&1 || true
    exit 1
}

# Waits until `$3` (a shell function taking the endpoint) succeeds, or the process dies, or the
# timeout passes.
wait_ready() {
    local name=$1 dir=$2 check=$3 endpoint=$4 pid deadline
    pid=$(cat "$dir/pid")
    deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! running "$dir"; then
            log "$name (pid $pid) exited during start-up"
            fail_start "$name" "$dir"
        fi
        if "$check" "$endpoint" "$dir"; then
            return 0
        fi
        sleep 0.5
    done
    log "$name not ready after ${START_TIMEOUT}s"
    fail_start "$name" "$dir"
}

# Kills the service's process group (it runs in its own session), SIGTERM then SIGKILL.
stop_service() {
    local name=$1 dir=$2 pid deadline
    if ! running "$dir"; then
        rm -f "$dir/pid" "$dir/endpoint"
        log "$name is not running"
        return 0
    fi
    pid=$(cat "$dir/pid")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s: killing it"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$dir/pid" "$dir/endpoint"
    log "$name stopped"
}

# Starts `$@` detached in its own session (so stop can kill the whole group), logging to $dir/log.
spawn() {
    local dir=$1
    shift
    : >"$dir/log"
    setsid "$@" </dev/null >>"$dir/log" 2>&1 &
    echo $! >"$dir/pid"
}

# ---- LocalStack -------------------------------------------------------------------------------

LS_DIR=$STATE/localstack
LS_VENV=$CACHE/localstack-venv

# LocalStack's twisted gateway ignores the host part of GATEWAY_LISTEN for IPv4 and binds
# 0.0.0.0 (a TODO in localstack/runtime/server/twisted.py). This entry point makes twisted's
# TCP4ServerEndpoint default to 127.0.0.1, then runs LocalStack's own main, so the emulator is
# reachable from this machine only while keeping the gateway its tests were verified with.
LOCALSTACK_MAIN='
import runpy
from twisted.internet import endpoints

class LoopbackTCP4ServerEndpoint(endpoints.TCP4ServerEndpoint):
    def __init__(self, reactor, port, backlog=50, interface=""):
        super().__init__(reactor, port, backlog, interface or "127.0.0.1")

endpoints.TCP4ServerEndpoint = LoopbackTCP4ServerEndpoint
runpy.run_module("localstack.runtime.main", run_name="__main__", alter_sys=True)
'

# Warns if anything listens on a wildcard address at port $1 (the emulators must stay local).
check_loopback_only() {
    command -v ss >/dev/null || return 0
    if ss -ltnH "sport = :$1" 2>/dev/null | awk '{print $4}' | grep -qvE '^(127\.0\.0\.1|\[::1\]):'; then
        log "warning: something listens on a non-loopback address at port $1:"
        ss -ltnH "sport = :$1" >&2 || true
    fi
}

localstack_ready() {
    local endpoint=$1 dir=$2
    [ "$(http_code "$endpoint/_localstack/health")" = 200 ] && grep -q '^Ready\.' "$dir/log"
}

localstack_start() {
    if running "$LS_DIR" && [ -f "$LS_DIR/endpoint" ]; then
        log "LocalStack already runs at $(cat "$LS_DIR/endpoint") (pid $(cat "$LS_DIR/pid"))"
        return 0
    fi
    ensure_venv "$LS_VENV" localstack-core "$ROOT/tests/infra/localstack-requirements.txt" localstack.runtime.main
    local port endpoint
    port=$(pick_port "${LOCALSTACK_PORT:-4566}")
    endpoint="http://$HOST:$port"
    # Fresh data on every start: tests rely on unique bucket names, not on old state.
    rm -rf "$LS_DIR"
    mkdir -p "$LS_DIR/volume" "$LS_DIR/fs" "$LS_DIR/config"
    # SKIP_SSL_CERT_DOWNLOAD and DISABLE_EVENTS keep start-up offline (no certificate download,
    # no analytics); CONFIG_DIR keeps ~/.localstack profiles out; FILESYSTEM_ROOT keeps its files
    # under the state dir. STS answers GetCallerIdentity (000000000000) for the CLI's inline
    # agent notifications.
    spawn "$LS_DIR" env \
        GATEWAY_LISTEN="$HOST:$port" \
        LOCALSTACK_HOST="$HOST:$port" \
        SERVICES=s3,sqs,sts \
        EAGER_SERVICE_LOADING=1 \
        DNS_ADDRESS=0 \
        SQS_ENDPOINT_STRATEGY=path \
        LOCALSTACK_VOLUME_DIR="$LS_DIR/volume" \
        FILESYSTEM_ROOT="$LS_DIR/fs" \
        CONFIG_DIR="$LS_DIR/config" \
        SKIP_SSL_CERT_DOWNLOAD=1 \
        DISABLE_EVENTS=1 \
        "$LS_VENV/bin/python" -c "$LOCALSTACK_MAIN"
    log "starting LocalStack on $endpoint (pid $(cat "$LS_DIR/pid"), log $LS_DIR/log)"
    wait_ready LocalStack "$LS_DIR" localstack_ready "$endpoint"
    echo "$endpoint" >"$LS_DIR/endpoint"
    check_loopback_only "$port"
    log "LocalStack ready at $endpoint"
}

# ---- moto -------------------------------------------------------------------------------------

MOTO_DIR=$STATE/moto
MOTO_VENV=$CACHE/moto-venv

moto_ready() {
    local code
    code=$(http_code "$1/moto-api/")
    [ -n "$code" ] && [ "$code" != 000 ]
}

moto_start() {
    if running "$MOTO_DIR" && [ -f "$MOTO_DIR/endpoint" ]; then
        log "moto already runs at $(cat "$MOTO_DIR/endpoint") (pid $(cat "$MOTO_DIR/pid"))"
        return 0
    fi
    ensure_venv "$MOTO_VENV" moto "$ROOT/tests/infra/moto-requirements.txt" moto.server
    local port endpoint
    port=$(pick_port "${MOTO_PORT:-5000}")
    endpoint="http://$HOST:$port"
    rm -rf "$MOTO_DIR"
    mkdir -p "$MOTO_DIR"
    spawn "$MOTO_DIR" "$MOTO_VENV/bin/moto_server" -H "$HOST" -p "$port"
    log "starting moto on $endpoint (pid $(cat "$MOTO_DIR/pid"), log $MOTO_DIR/log)"
    wait_ready moto "$MOTO_DIR" moto_ready "$endpoint"
    echo "$endpoint" >"$MOTO_DIR/endpoint"
    check_loopback_only "$port"
    log "moto ready at $endpoint"
}

# ---- env / status -----------------------------------------------------------------------------

print_env() {
    local any=0
    if running "$LS_DIR" && [ -f "$LS_DIR/endpoint" ]; then
        echo "export S3DOCK_TEST_S3_ENDPOINT=$(cat "$LS_DIR/endpoint")"
        any=1
    fi
    if running "$MOTO_DIR" && [ -f "$MOTO_DIR/endpoint" ]; then
        echo "export S3DOCK_TEST_MOTO_ENDPOINT=$(cat "$MOTO_DIR/endpoint")"
        any=1
    fi
    if ((any == 0)); then
        die "no test service runs; start one with: tests/services.sh localstack-start"
    fi
    # The emulators accept any credentials; these keep the SDK's chain away from real ones.
    echo "export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1"
}

status() {
    local name dir
    for name in localstack moto; do
        dir=$STATE/$name
        if running "$dir" && [ -f "$dir/endpoint" ]; then
            echo "$name: running at $(cat "$dir/endpoint") (pid $(cat "$dir/pid"), log $dir/log)"
        else
            echo "$name: stopped"
        fi
    done
}

command -v curl >/dev/null || die "curl is required"
command -v setsid >/dev/null || die "setsid (util-linux) is required"

case "${1:-}" in
localstack-start) localstack_start ;;
localstack-stop) stop_service LocalStack "$LS_DIR" ;;
moto-start) moto_start ;;
moto-stop) stop_service moto "$MOTO_DIR" ;;
env) print_env ;;
status) status ;;
*) usage ;;
esac
