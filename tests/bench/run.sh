#!/usr/bin/env bash
# The push/pull benchmark harness (not a test): s3dock against the classic shell recipe on the
# same machine, image and LocalStack endpoint. Writes docs/benchmarks.md.
#
#   tests/bench/run.sh
#
# Settings: BENCH_SIZE_MB (default 500) the main image, BENCH_BIG_MB (default 1024, 0 = skip)
# the image for the peak-memory check, BENCH_REPORT (default docs/benchmarks.md).
# Needs Docker, /usr/bin/time and python3; installs LocalStack (with awscli) like the tests, and
# pigz for the expert recipe.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/s3dock/target}"
export S3DOCK_STATE="$(mktemp -d /tmp/s3dock-bench.XXXXXX)"
trap 'tests/services.sh localstack-stop >/dev/null 2>&1 || true; rm -rf "$S3DOCK_STATE"' EXIT

if ! command -v pigz >/dev/null 2>&1; then
    echo "bench: installing pigz (the expert recipe)" >&2
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pigz
fi
echo "bench: building the release s3dock" >&2
cargo build --release --locked --bin s3dock
tests/services.sh localstack-start
eval "$(tests/services.sh env)"
export AWS_EC2_METADATA_DISABLED=true
export S3DOCK_BIN="$CARGO_TARGET_DIR/release/s3dock"
export AWS_BIN="${S3DOCK_CACHE:-$HOME/.cache/s3dock}/localstack-venv/bin/aws"
export EMULATOR_PID="$(cat "$S3DOCK_STATE/localstack/pid")"
python3 tests/bench/bench.py
