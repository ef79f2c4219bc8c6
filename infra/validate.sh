#!/usr/bin/env bash
# Validates the SAM template offline. Every step must report nothing:
#
#   1. cfn-lint on the template, and `sam validate --lint`;
#   2. the template translated to plain CloudFormation by the SAM translator
#      (infra/sam-translate.py), linted by cfn-lint: properties of the resources SAM generates
#      (an SQS event's BatchSize, for one) are only checked there. A self-test proves it: a copy
#      with BatchSize 99999 must fail this step;
#   3. checkov, an independent AWS policy suite, on the template and on the translated template,
#      each with the default parameters and with the optional delete trail (AuditDeletes=true).
#      Any finding fails; the few checks that do not apply are skipped in the template, each
#      with its reason, next to the resource it concerns (Metadata: checkov: skip);
#   4. the systemd units (where systemd-analyze exists): `systemd-analyze verify`, an exposure
#      of at most 2.0 for s3dock-agent.service and 2.5 for s3dock-nginx-test.service
#      (`systemd-analyze security`), and no start rate limit on the nginx check, which the agent
#      may start many times in a few seconds.
#
#   infra/validate.sh           all of the above
#   infra/validate.sh --build   also `sam build` the three functions with cargo-lambda (a release
#                               build with LTO: seconds when nothing changed, about 10 minutes on
#                               2 cores after a change to core/ or functions/; CI does not run it)
#
# Settings (environment):
#   S3DOCK_CACHE      where the tool venvs live (default ~/.cache/s3dock): tools-venv (cfn-lint,
#                     SAM CLI, cargo-lambda) and checkov-venv; a working install of the pinned
#                     versions is reused, never reinstalled
#   S3DOCK_PYTHON     the Python that creates the venvs (default python3)
#   CARGO_TARGET_DIR  for --build (default $S3DOCK_CACHE/target, shared with the other builds)
#
# The template's own invariants (encryption, versioning, DLQs, alarms, least-privilege IAM,
# request by request) are checked by `cargo test -p s3dock-functions --test template`, which
# `cargo test --workspace` runs.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${S3DOCK_CACHE:-$HOME/.cache/s3dock}
VENV=$CACHE/tools-venv
CHECKOV_VENV=$CACHE/checkov-venv
PYTHON=${S3DOCK_PYTHON:-python3}
REQUIREMENTS=$ROOT/infra/tools-requirements.txt
CHECKOV_REQUIREMENTS=$ROOT/infra/checkov-requirements.txt
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
        sed -n '2,33p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument $arg (see --help)" ;;
    esac
done

# The version pinned for package $2 in requirements file $1.
pinned() {
    sed -n "s/^$2==\([^ ;#]*\).*/\1/Ip" "$1" | head -n 1
}

# True when venv $1 has every package ($3...) of requirements file $2 at its pinned version.
venv_ready() {
    local venv=$1 reqs=$2 pkg want have
    shift 2
    [ -x "$venv/bin/python" ] || return 1
    for pkg in "$@"; do
        want=$(pinned "$reqs" "$pkg")
        [ -n "$want" ] || die "$reqs does not pin $pkg"
        have=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$pkg'))" 2>/dev/null || true)
        [ "$have" = "$want" ] || return 1
    done
}

# Installs requirements file $2 into venv $1 unless it is ready; $3... are the packages checked.
ensure_venv() {
    local venv=$1 reqs=$2
    venv_ready "$@" && return 0
    shift 2
    local what="" pkg
    for pkg in "$@"; do what+="$pkg $(pinned "$reqs" "$pkg"), "; done
    log "installing ${what%, } into $venv (about a minute, once)"
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python 3 (3.11 works) or set S3DOCK_PYTHON"
    mkdir -p "$CACHE"
    "$PYTHON" -m venv "$venv" || die "cannot create the venv $venv with $PYTHON"
    "$venv/bin/pip" install --disable-pip-version-check -q -r "$reqs" ||
        die "pip install -r $reqs failed; check access to PyPI and the Python version ($("$PYTHON" --version 2>&1))"
    venv_ready "$venv" "$reqs" "$@" || die "the tools installed but are not the pinned versions; remove $venv and try again"
}

ensure_venv "$VENV" "$REQUIREMENTS" cfn-lint aws-sam-cli aws-sam-translator cargo-lambda
[ -x "$VENV/bin/cfn-lint" ] && [ -x "$VENV/bin/sam" ] && [ -x "$VENV/bin/cargo-lambda" ] ||
    die "$VENV lacks cfn-lint, sam or cargo-lambda; remove it and try again"
ensure_venv "$CHECKOV_VENV" "$CHECKOV_REQUIREMENTS" checkov
[ -x "$CHECKOV_VENV/bin/checkov" ] || die "$CHECKOV_VENV lacks checkov; remove it and try again"

# Offline and anonymous: dummy credentials (nothing here calls AWS), no instance metadata
# lookups, no telemetry, a region because the SAM translator needs one; checkov without its
# platform (no API key, no download of its guideline mapping).
run() {
    env -u AWS_PROFILE -u AWS_SESSION_TOKEN -u BC_API_KEY \
        AWS_ACCESS_KEY_ID=offline-validation AWS_SECRET_ACCESS_KEY=offline-validation \
        AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" AWS_EC2_METADATA_DISABLED=true \
        SAM_CLI_TELEMETRY=0 BC_SKIP_MAPPING=TRUE PATH="$VENV/bin:$PATH" "$@"
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3dock-validate.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# The SAM template $1 translated to plain CloudFormation in $2.
translate() {
    run "$VENV/bin/python" "$ROOT/infra/sam-translate.py" "$1" "$2"
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

log "cfn-lint on the translated template (SAM translator $(pinned "$REQUIREMENTS" aws-sam-translator))"
translate "$TEMPLATE" "$WORK/translated.json" || die "the SAM translator refused $TEMPLATE"
run cfn-lint -- "$WORK/translated.json" || die "the translated template has lint errors (above; line numbers refer to the translated JSON)"

# Self-test: an out-of-range property of a generated resource must fail the step above.
grep -q '^            BatchSize: 10$' "$TEMPLATE" || die "self-test: no 'BatchSize: 10' in $TEMPLATE to break; update this self-test"
sed 's/^            BatchSize: 10$/            BatchSize: 99999/' "$TEMPLATE" >"$WORK/out-of-range.yaml"
translate "$WORK/out-of-range.yaml" "$WORK/out-of-range.json" || die "self-test: the SAM translator refused the out-of-range copy"
if lint=$(run cfn-lint -- "$WORK/out-of-range.json" 2>&1); then
    die "self-test: BatchSize 99999 passed the translated-template lint; it no longer catches out-of-range properties"
fi
grep -q "99999 is greater than the maximum" <<<"$lint" || {
    echo "$lint" >&2
    die "self-test: the translated-template lint failed on BatchSize 99999, but not for its range"
}
log "self-test: BatchSize 99999 fails the translated-template lint, as it must"

# checkov on each variant. The delete trail's resources only exist with AuditDeletes=true.
sed 's/^    Default: "false"$/    Default: "true"/' "$TEMPLATE" >"$WORK/with-delete-trail.yaml"
grep -A2 '^  AuditDeletes:' "$WORK/with-delete-trail.yaml" | grep -q 'Default: "true"' ||
    die "cannot make the AuditDeletes=true variant (its Default line changed?); update validate.sh"
translate "$WORK/with-delete-trail.yaml" "$WORK/with-delete-trail.json" || die "the SAM translator refused the AuditDeletes=true variant"
log "checkov $("$CHECKOV_VENV/bin/checkov" --version)"
failed=0
for variant in "$TEMPLATE" "$WORK/with-delete-trail.yaml" "$WORK/translated.json" "$WORK/with-delete-trail.json"; do
    name=${variant#"$WORK/"}
    rc=0
    out=$(run "$CHECKOV_VENV/bin/checkov" -f "$variant" --framework cloudformation --compact --skip-download \
        --output cli 2>&1) || rc=$?
    summary=$(grep -m1 'Passed checks' <<<"$out" || true)
    if ((rc == 0)) && [ -n "$summary" ]; then
        log "checkov $name: $summary"
    else
        grep -v 'PASSED for resource' <<<"$out" | grep -B1 -A1 'FAILED for resource\|rror' >&2 || echo "$out" >&2
        log "checkov $name: ${summary:-did not run} (exit $rc). Fix each finding above, or skip a check that does not apply in the resource's Metadata (checkov: skip: - id: CKV_..., comment: why)"
        failed=1
    fi
done
((failed == 0)) || die "checkov reported findings"

# The systemd units: their exposure may only go down.
if command -v systemd-analyze >/dev/null 2>&1; then
    for unit_max in s3dock-agent.service:20 s3dock-nginx-test.service:25; do
        unit=infra/${unit_max%%:*} max=${unit_max##*:}
        out=$(systemd-analyze verify "$unit" 2>&1 | grep -v -e 'is not executable' -e 'Failed to .*[Cc]onnect' || true)
        [ -z "$out" ] || {
            echo "$out" >&2
            die "systemd-analyze verify $unit reports problems"
        }
        score=$(systemd-analyze security --offline=true "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
        systemd-analyze security --offline=true --threshold="$max" "$unit" >/dev/null 2>&1 ||
            die "$unit: systemd-analyze security rates it ${score:-?}, above $((max / 10)).$((max % 10)); harden it back"
        log "$unit: exposure $score (at most $((max / 10)).$((max % 10)))"
    done
    sed -n '/^\[Unit\]/,/^\[/p' infra/s3dock-nginx-test.service | grep -qx 'StartLimitIntervalSec=0' ||
        die "infra/s3dock-nginx-test.service: [Unit] needs StartLimitIntervalSec=0 (systemd refuses a sixth start within 10 s)"
else
    log "systemd-analyze not found: the systemd units are not checked (apt-get install systemd)"
fi

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
