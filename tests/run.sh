#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it:
#
#   tests/run.sh
#
# 1. formatting and lints (cargo fmt --check, cargo clippy -D warnings);
# 2. starts its own LocalStack (S3 + SQS) and moto server on 127.0.0.1, installing them into
#    ~/.cache/s3dock the first time (tests/services.sh), and stops them on exit;
# 3. cargo test --workspace: unit tests, the storage contract suite on every store, the Docker
#    engine, nginx and LocalStack end-to-end tests, the Lambda pipeline, the template invariants;
# 4. validates the SAM template offline (infra/validate.sh: cfn-lint and sam validate --lint on
#    the template, cfn-lint on the SAM-translated template, and the checkov policy suite on both;
#    any finding fails).
#
# Needs: a Docker engine, nginx, a static busybox at /bin/busybox (Debian: busybox-static), git,
# python3 with venv, and the Rust toolchain. With CI set, a missing service fails the tests
# instead of skipping them. Extra arguments go to cargo test (e.g. tests/run.sh -p s3dock-core).
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/s3dock/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# The suite's own emulators, apart from any a developer runs: their own state directory.
export S3DOCK_STATE="${S3DOCK_TEST_STATE:-$(mktemp -d /tmp/s3dock-run.XXXXXX)}"

step() { printf '\n==> %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

missing=()
for tool in docker nginx git python3 cargo; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ -x /bin/busybox ] || missing+=("/bin/busybox (busybox-static)")
if [ ${#missing[@]} -gt 0 ]; then
    echo "tests/run.sh: missing: ${missing[*]} (.ci/run installs them on Debian)" >&2
    exit 1
fi

stop_services() {
    tests/services.sh localstack-stop >/dev/null 2>&1 || true
    tests/services.sh moto-stop >/dev/null 2>&1 || true
    rm -rf "$S3DOCK_STATE"
}
trap stop_services EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "starting LocalStack and moto on 127.0.0.1"
tests/services.sh localstack-start
tests/services.sh moto-start
eval "$(tests/services.sh env)"
export AWS_EC2_METADATA_DISABLED=true

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test --workspace"
cargo test --workspace --locked "$@"

step "validating the SAM template (cfn-lint, sam validate, translated-template lint, checkov)"
infra/validate.sh

step "all green"
