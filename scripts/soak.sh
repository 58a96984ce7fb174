#!/usr/bin/env bash
# Bounded soak of the release binary: a steady mixed load — tenants
# under and over budget, every endpoint class, vanity-host and portal calls —
# with webhooks flowing, a reload (SIGHUP) and, with the Redis store, a Redis
# restart during the run; the gateway's RSS, open fds, threads and tokio tasks
# sampled; then checks that nothing was lost, budgets held exactly (the most
# admitted in any 60 s is the budget), every webhook went out once and
# resources stayed flat.
#
#   scripts/soak.sh                                  # 10 min at 50 calls/s, memory store
#   SOAK_SECONDS=300 scripts/soak.sh                 # 5 min
#   SOAK_STORE=redis SOAK_RATE=100 scripts/soak.sh   # Redis store (needs redis-server)
#
# Prints samples as it goes and a report at the end; exits 1 on any failed check.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${SOAK_SECONDS:-600}
rate=${SOAK_RATE:-50}
store=${SOAK_STORE:-memory}
sample=${SOAK_SAMPLE_SECONDS:-10}
target=${CARGO_TARGET_DIR:-target}

cargo build --release --bin deskgate >&2
exec python3 scripts/soak_driver.py --bin "$target/release/deskgate" \
    --seconds "$seconds" --rate "$rate" --store "$store" --sample "$sample"
