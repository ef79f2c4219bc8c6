#!/usr/bin/env bash
# Validates the SAM template offline: cfn-lint, then `sam validate --lint`. Both must report
# nothing. No AWS account, credentials or network (beyond PyPI for the first install) needed.
#
#   infra/validate.sh           lint the template
#   infra/validate.sh --build   also `sam build` the three functions with cargo-lambda (a release
#                               build with LTO: seconds when nothing changed, about 10 minutes on
#                               2 cores after a change to core/ or functions/; CI does not run it)
#
# Settings (environment):
#   S3DOCK_CACHE      where the tools venv lives (default ~/.cache/s3dock); a working install of
#                     the pinned versions there is reused, never reinstalled
#   S3DOCK_PYTHON     the Python that creates the venv (default python3)
#   CARGO_TARGET_DIR  for --build (default $S3DOCK_CACHE/target, shared with the other builds)
#
# The template's own invariants (encryption, versioning, DLQs, least-privilege IAM) are checked
# by `cargo test -p s3dock-functions --test template`, which `cargo test --workspace` runs.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${S3DOCK_CACHE:-$HOME/.cache/s3dock}
VENV=$CACHE/tools-venv
PYTHON=${S3DOCK_PYTHON:-python3}
REQUIREMENTS=$ROOT/infra/tools-requirements.txt
TEMPLATE=infra/template.yaml

log() { echo "validate.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

BUILD=0
for arg in "$@"; do
    case $arg in
    --build) BUILD=1 ;;
    -h | --help)
        sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument $arg (see --help)" ;;
    esac
done

# The version pinned for package $1 in the requirements file.
pinned() {
    sed -n "s/^$1==\([^ ;#]*\).*/\1/Ip" "$REQUIREMENTS" | head -n 1
}

# True when the venv has every tool at its pinned version.
tools_ready() {
    [ -x "$VENV/bin/python" ] || return 1
    local pkg want have
    for pkg in cfn-lint aws-sam-cli cargo-lambda; do
        want=$(pinned "$pkg")
        [ -n "$want" ] || die "$REQUIREMENTS does not pin $pkg"
        have=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$pkg'))" 2>/dev/null || true)
        [ "$have" = "$want" ] || return 1
    done
    [ -x "$VENV/bin/cfn-lint" ] && [ -x "$VENV/bin/sam" ] && [ -x "$VENV/bin/cargo-lambda" ]
}

if ! tools_ready; then
    log "installing cfn-lint $(pinned cfn-lint), aws-sam-cli $(pinned aws-sam-cli), cargo-lambda $(pinned cargo-lambda) into $VENV (about a minute, once)"
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python 3 (3.11 works) or set S3DOCK_PYTHON"
    mkdir -p "$CACHE"
    "$PYTHON" -m venv "$VENV" || die "cannot create the venv $VENV with $PYTHON"
    "$VENV/bin/pip" install --disable-pip-version-check -q -r "$REQUIREMENTS" ||
        die "pip install -r $REQUIREMENTS failed; check access to PyPI and the Python version ($("$PYTHON" --version 2>&1))"
    tools_ready || die "the tools installed but are not the pinned versions; remove $VENV and try again"
fi

# Offline and anonymous: dummy credentials (nothing here calls AWS), no instance metadata
# lookups, no telemetry, a region because the SAM translator needs one.
run() {
    env -u AWS_PROFILE -u AWS_SESSION_TOKEN \
        AWS_ACCESS_KEY_ID=offline-validation AWS_SECRET_ACCESS_KEY=offline-validation \
        AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" AWS_EC2_METADATA_DISABLED=true \
        SAM_CLI_TELEMETRY=0 PATH="$VENV/bin:$PATH" "$@"
}

cd "$ROOT"
log "cfn-lint $(run cfn-lint --version | awk '{print $2}') $TEMPLATE"
run cfn-lint -- "$TEMPLATE"
log "sam validate --lint ($(run sam --version))"
out=$(run sam validate --lint -t "$TEMPLATE" 2>&1) || {
    echo "$out" >&2
    die "sam validate --lint failed"
}
echo "$out"

if ((BUILD)); then
    command -v cargo >/dev/null || die "cargo not found; --build needs the Rust toolchain"
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
    BUILD_DIR=$CACHE/sam-build
    log "sam build --beta-features (cargo-lambda, release, x86_64) into $BUILD_DIR; CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
    started=$SECONDS
    run sam build --beta-features -t "$TEMPLATE" --build-dir "$BUILD_DIR" --cache-dir "$CACHE/sam-cache"
    for fn in VerifyUploadFunction RecordTagFunction PromotionFanoutFunction; do
        bin=$BUILD_DIR/$fn/bootstrap
        [ -x "$bin" ] || die "$bin was not built"
        # An x86-64 ELF executable: what provided.al2023 with Architectures [x86_64] runs.
        "$VENV/bin/python" - "$bin" <<'EOF' || die "$bin is not an x86-64 ELF executable"
import struct, sys
head = open(sys.argv[1], "rb").read(20)
assert head[:4] == b"\x7fELF" and head[4] == 2, "not a 64-bit ELF file"
assert struct.unpack("<H", head[18:20])[0] == 0x3E, "not x86-64"
EOF
        log "$fn: $(du -h "$bin" | cut -f1) $bin"
    done
    log "sam build took $((SECONDS - started)) s; to deploy these binaries: (cd infra && sam deploy --template-file $BUILD_DIR/template.yaml)"
fi
log "ok"
