#!/usr/bin/env bash
# The layer-incremental benchmark harness (not a test): a 500 MiB base layer of real files plus
# a 1 MiB top layer, rebuilt with only the top changed; full against incremental push and pull,
# byte counts from a counting proxy in front of LocalStack. Updates docs/benchmarks.md.
#
#   tests/bench/layers.sh
#
# Settings: BENCH_SIZE_MB (default 500) the base layer, BENCH_REPORT (default docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/s3dock/target}"
export S3DOCK_STATE="${S3DOCK_STATE:-$(mktemp -d /tmp/s3dock-bench.XXXXXX)}"
trap 'tests/services.sh localstack-stop >/dev/null 2>&1 || true' EXIT

echo "bench: building the release s3dock" >&2
cargo build --release --locked --bin s3dock
tests/services.sh localstack-start
eval "$(tests/services.sh env)"
export AWS_EC2_METADATA_DISABLED=true
export S3DOCK_BIN="$CARGO_TARGET_DIR/release/s3dock"
export AWS_BIN="${S3DOCK_CACHE:-$HOME/.cache/s3dock}/localstack-venv/bin/aws"
python3 tests/bench/layers.py
