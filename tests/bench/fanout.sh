#!/usr/bin/env bash
# The promotion fan-out benchmark (not a test): the promotion-fanout handler against LocalStack
# with 1,000 registered agents, each with its own queue. Measures the first delivery of one
# pointer event (read and resolve the pointer, list and read the registrations, take the claim,
# send every message) and a second delivery of the same event, which must send nothing. The
# test behind it asserts one message per queue and the 10 s goal.
#
#   tests/bench/fanout.sh
#
# Settings: BENCH_RUNS (default 3) how many times, S3DOCK_FANOUT_AGENTS (default 1000).
# Uses a LocalStack of its own (tests/services.sh), stopped on exit. The figure goes in
# docs/benchmarks.md by hand, with the machine it ran on.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/s3dock/target}"
export S3DOCK_STATE="$(mktemp -d /tmp/s3dock-bench.XXXXXX)"
trap 'tests/services.sh localstack-stop >/dev/null 2>&1 || true; rm -rf "$S3DOCK_STATE"' EXIT

runs=${BENCH_RUNS:-3}
cargo test -p s3dock-functions --test it --locked --no-run >/dev/null 2>&1 || cargo test -p s3dock-functions --test it --locked --no-run
tests/services.sh localstack-start
eval "$(tests/services.sh env)"
export AWS_EC2_METADATA_DISABLED=true
results=()
for i in $(seq "$runs"); do
    line=$(cargo test -p s3dock-functions --test it --locked fanout::fan_out_to_a_thousand_agents -- \
        --ignored --exact --nocapture 2>/dev/null | sed -n 's/^fan-out-result: //p')
    [ -n "$line" ] || { echo "fanout.sh: run $i failed; run the test by hand to see why" >&2; exit 1; }
    echo "run $i: $line"
    results+=("$line")
done
printf '%s\n' "${results[@]}" | python3 -c '
import json, statistics, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
med = lambda k: statistics.median(r[k] for r in rows)
print(json.dumps({"agents": rows[0]["agents"], "runs": len(rows),
                  "first_delivery_s_median": med("first_delivery_s"),
                  "second_delivery_s_median": med("second_delivery_s"),
                  "first_delivery_s_max": max(r["first_delivery_s"] for r in rows)}))'
