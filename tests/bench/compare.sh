#!/usr/bin/env bash
# Two s3dock builds on the same image and the same LocalStack, alternating (not a test): full
# push to an empty bucket, then full pull onto an engine without the image, ROUNDS times each.
# Prints wall seconds and peak RSS of each command. For "no slower than before" checks:
#
#   git worktree add /tmp/old <rev> && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release --bin s3dock)
#   OLD=/tmp/old-target/release/s3dock IMAGE=app:tag tests/bench/compare.sh
#
# Settings: OLD (required) and NEW (default: this tree's release build) binaries, IMAGE
# (required: an image `s3dock build` made; no other image may share its layers, or the pulls
# are partial), ROUNDS (default 3).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OLD:?set OLD to the s3dock binary to compare with}"
: "${IMAGE:?set IMAGE to an image s3dock built (app:tag)}"
NEW="${NEW:-${CARGO_TARGET_DIR:-$HOME/.cache/s3dock/target}/release/s3dock}"
ROUNDS="${ROUNDS:-3}"
APP="${IMAGE%%:*}"
export S3DOCK_STATE="$(mktemp -d /tmp/s3dock-compare.XXXXXX)"
trap 'tests/services.sh localstack-stop >/dev/null 2>&1 || true; rm -f "$S3DOCK_STATE"/*.toml' EXIT
tests/services.sh localstack-start >/dev/null
eval "$(tests/services.sh env)"
export AWS_EC2_METADATA_DISABLED=true
AWS="${S3DOCK_CACHE:-$HOME/.cache/s3dock}/localstack-venv/bin/aws"
for r in $(seq 1 "$ROUNDS"); do
    for which in old new; do
        bin=$OLD; [ "$which" = new ] && bin=$NEW
        bucket="s3dock-compare-$which-$r-$$"
        "$AWS" --endpoint-url "$S3DOCK_TEST_S3_ENDPOINT" s3 mb "s3://$bucket" >/dev/null
        export S3DOCK_CONFIG="$S3DOCK_STATE/$which.toml"
        printf '[profiles.default]\nstore = "s3://%s/s3dock"\nendpoint = "%s"\npath_style = true\nregion = "us-east-1"\nevents = "inline"\n' \
            "$bucket" "$S3DOCK_TEST_S3_ENDPOINT" > "$S3DOCK_CONFIG"
        push=$( { /usr/bin/time -f "%e s, %M KiB" "$bin" push "$IMAGE" >/dev/null; } 2>&1 | tail -1)
        "$bin" promote "$IMAGE" production >/dev/null
        docker rmi -f "$IMAGE" >/dev/null
        pull=$( { /usr/bin/time -f "%e s, %M KiB" "$bin" pull "$APP" production >/dev/null; } 2>&1 | tail -1)
        echo "round $r $which: push $push; pull $pull"
        "$AWS" --endpoint-url "$S3DOCK_TEST_S3_ENDPOINT" s3 rb "s3://$bucket" --force >/dev/null
    done
done
