#!/usr/bin/env bash
# Runs the functions under `cargo lambda watch` (a local Lambda Runtime API, on 127.0.0.1
# only) and invokes them with the fixtures through `cargo lambda invoke`, checking each answer.
#
#   functions/tests/lambda-invoke.sh
#
# No network is needed: the payloads are a test event, keys outside the layout, an SQS batch
# whose one owned record meets a closed local port (S3DOCK_S3_ENDPOINT=http://127.0.0.1:9,
# so the store error is retryable and the answer is a partial batch failure), and a payload
# that is no event at all.
#
# Needs cargo-lambda on PATH (pip install cargo-lambda). Settings (environment):
#   LAMBDA_PORT              the Runtime API port (default: a free one)
#   S3DOCK_INVOKE_TIMEOUT    seconds to wait for the first answer, build included (default 900)

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FIX=$ROOT/functions/tests/fixtures
TIMEOUT=${S3DOCK_INVOKE_TIMEOUT:-900}

log() { echo "lambda-invoke.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

command -v cargo-lambda >/dev/null || die "cargo-lambda is not on PATH; pip install cargo-lambda"
command -v python3 >/dev/null || die "python3 is required (free port, JSON checks)"

PORT=${LAMBDA_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
WORK=$(mktemp -d)
WATCH_PID=

cleanup() {
    if [ -n "$WATCH_PID" ] && kill -0 "$WATCH_PID" 2>/dev/null; then
        kill -TERM -- "-$WATCH_PID" 2>/dev/null || kill -TERM "$WATCH_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$WATCH_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL -- "-$WATCH_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# The functions' settings: local endpoints only (a closed port), dummy credentials, the
# LocalStack account for the queue checks.
cd "$ROOT/functions"
setsid cargo lambda watch \
    --invoke-address 127.0.0.1 --invoke-port "$PORT" --ignore-changes \
    --env-var AWS_REGION=us-east-1 \
    --env-var AWS_ACCESS_KEY_ID=test \
    --env-var AWS_SECRET_ACCESS_KEY=test \
    --env-var AWS_EC2_METADATA_DISABLED=true \
    --env-var S3DOCK_S3_ENDPOINT=http://127.0.0.1:9 \
    --env-var S3DOCK_SQS_ENDPOINT=http://127.0.0.1:9 \
    --env-var S3DOCK_ACCOUNT_ID=000000000000 \
    --env-var RUST_LOG=info \
    </dev/null >"$WORK/watch.log" 2>&1 &
WATCH_PID=$!
log "cargo lambda watch on 127.0.0.1:$PORT (pid $WATCH_PID)"

# Waits until the Runtime API answers, bounded.
deadline=$((SECONDS + 60))
until curl -s -o /dev/null -m 2 "http://127.0.0.1:$PORT/" 2>/dev/null; do
    kill -0 "$WATCH_PID" 2>/dev/null || {
        cat "$WORK/watch.log" >&2
        die "cargo lambda watch exited"
    }
    ((SECONDS < deadline)) || die "cargo lambda watch did not listen within 60 s"
    sleep 0.5
done

# invoke FUNCTION FIXTURE_OR_JSON -> the answer on stdout; exit status of cargo lambda invoke.
invoke() {
    local fn=$1 data=$2 args
    if [ -f "$FIX/$data" ]; then args=(--data-file "$FIX/$data"); else args=(--data-ascii "$data"); fi
    timeout "$TIMEOUT" cargo lambda invoke "$fn" --invoke-address 127.0.0.1 --invoke-port "$PORT" \
        --output-format json "${args[@]}"
}

# check NAME PYTHON_EXPRESSION_OVER_r: fails the script unless the expression holds for the
# answer parsed as JSON in `r`.
check() {
    local name=$1 expr=$2 answer=$3
    if python3 -c "import json,sys; r = json.loads(sys.argv[1]); sys.exit(0 if ($expr) else 1)" "$answer"; then
        log "ok: $name -> $answer"
    else
        log "FAILED: $name -> $answer"
        tail -n 40 "$WORK/watch.log" >&2
        exit 1
    fi
}

answer=$(invoke record-tag sqs-test-event.json) || die "record-tag did not answer: $answer"
check "record-tag, s3:TestEvent over SQS" 'r == {"batchItemFailures": []}' "$answer"

answer=$(invoke verify-upload localstack-odd-key.json) || die "verify-upload did not answer: $answer"
check "verify-upload, a key outside the layout" \
    'r["records"][0]["result"] == "skipped" and r["records"][0]["key"] == "incoming/a b+c%d.json"' "$answer"

answer=$(invoke promotion-fanout sqs-s3-events.json) || die "promotion-fanout did not answer: $answer"
check "promotion-fanout, a batch whose pointer event meets an unreachable store" \
    'r == {"batchItemFailures": [{"itemIdentifier": "5d3d0c2a-1b1e-4a8c-9f0e-000000000003"}]}' "$answer"

if answer=$(invoke verify-upload '{"hello":"world"}' 2>&1); then
    die "an unrecognized payload was accepted: $answer"
fi
case $answer in
*UnrecognizedPayload*) log "ok: verify-upload, no event at all -> the invocation fails (S3dock.UnrecognizedPayload)" ;;
*) die "unexpected failure for an unrecognized payload: $answer" ;;
esac

log "all invocations answered as expected"
