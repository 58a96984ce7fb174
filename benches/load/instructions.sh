#!/usr/bin/env bash
# Instructions deskgate executes per call, counted by valgrind (callgrind):
# a count, not a time, so it comes out the same on a busy machine and a quiet
# one, and two builds can be compared exactly (the load benchmark's req/s
# move ±20 % between rounds here). User space only: system calls count as
# one instruction each, so this measures the gateway's own work, not the
# kernel's.
#
#   benches/load/instructions.sh                      # target/release/deskgate
#   benches/load/instructions.sh OLD_BIN NEW_BIN      # compare two builds
#   N=5000 benches/load/instructions.sh
#   BENCH_RUST_LOG=info benches/load/instructions.sh  # with the access log written
#                                                     # (default: warn, which filters it out)
#
# For each binary: a GET (ticket list) and a POST with a small JSON body
# (ticket create), memory store; the GET again with the Redis store, sent one
# at a time (every batch holds one call) and 16 at once on 16 connections
# (`x16`: batches of up to 16, as under load); and a call refused 429 by a
# tenant whose budget the warm-up used up (Redis store and deny cache, as the
# load benchmark's flood row).
# Each figure is (run with N calls - run with 0 calls) / N, so start-up and
# shutdown cancel out: instructions, then heap allocations (calls to the
# allocator), per call. Needs valgrind, nginx and redis-server (installed from
# Debian if missing); talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-2000}
OUT=target/instructions
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

. benches/load/common.sh
install_missing valgrind:valgrind nginx:nginx-light redis-server:redis-server
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ $# -eq 0 ]; then
    cargo build --release --quiet --bin deskgate
    set -- "$PWD/target/release/deskgate"
fi

P_UP=18281; P_RS=16499
cleanup() {
    [ -f "$OUT/upstream.pid" ] && kill "$(cat "$OUT/upstream.pid")" 2>/dev/null || true
    redis-cli -p $P_RS shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT
upstream_conf "$OUT" $P_UP > "$OUT/upstream.conf"
"$NGINX" -c "$OUT/upstream.conf" -p "$OUT"
redis-server --port $P_RS --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --logfile "$OUT/redis.log"

# instructions.py puts free ports in place of LISTEN_PORT and ADMIN_PORT.
conf() { gateway_conf LISTEN_PORT ADMIN_PORT $P_UP "$1"; }
conf 'store = "memory"' > "$OUT/memory.toml"
conf "store = \"redis\"
redis_url = \"redis://127.0.0.1:$P_RS/0\"" > "$OUT/redis.toml"
# instructions.py warms up with one call on each of 4 connections: the
# flood tenant's budget, so every call after them is refused.
{ cat "$OUT/redis.toml"; printf '[[tenant]]\nname = "flood"\ndomain = "flood.freshdesk.com"\nplan = "trial"\nper_minute = 4\n'; } \
    > "$OUT/flood.toml"

GET=$'GET /api/v2/tickets HTTP/1.1\r\nHost: bench.freshdesk.com\r\nAuthorization: Basic YXBpa2V5Olg=\r\n\r\n'
BODY='{"subject":"Printer on fire","description":"The printer on floor 3 is on fire","email":"a@example.com","priority":1,"status":2}'
POST=$'POST /api/v2/tickets HTTP/1.1\r\nHost: bench.freshdesk.com\r\nAuthorization: Basic YXBpa2V5Olg=\r\nContent-Type: application/json\r\nContent-Length: '"${#BODY}"$'\r\n\r\n'"$BODY"

per_call() { # bin config request — "instructions/allocations" per call
    local base full
    # Each run starts from empty budgets (the flood tenant's is only the warm-up).
    redis-cli -p $P_RS flushall >/dev/null
    read -r base base_allocs < <(python3 benches/load/instructions.py "$1" "$2" 0 "$3")
    redis-cli -p $P_RS flushall >/dev/null
    read -r full full_allocs < <(python3 benches/load/instructions.py "$1" "$2" "$N" "$3")
    printf '%d/%s' $(( (full - base) / N )) "$(awk -v a="$full_allocs" -v b="$base_allocs" -v n="$N" 'BEGIN { printf "%.1f", (a - b) / n }')"
}
printf '%-50s %14s %14s %14s %14s %14s\n' "binary (instructions/allocations per call, N=$N)" "GET memory" \
    "POST memory" "GET redis" "GET redis x16" "GET 429"
for bin in "$@"; do
    printf '%-50s %14s %14s %14s %14s %14s\n' "$bin" "$(per_call "$bin" "$OUT/memory.toml" "$GET")" \
        "$(per_call "$bin" "$OUT/memory.toml" "$POST")" "$(per_call "$bin" "$OUT/redis.toml" "$GET")" \
        "$(WAVE=16 per_call "$bin" "$OUT/redis.toml" "$GET")" \
        "$(EXPECT=429 per_call "$bin" "$OUT/flood.toml" "${GET/bench.freshdesk.com/flood.freshdesk.com}")"
done
