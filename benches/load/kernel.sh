#!/usr/bin/env bash
# Where a proxy's CPU goes on the kernel's side: per request, the CPU time,
# system calls and context switches of the proxy process and of the upstream
# (and of Redis for the Redis row), counted by `perf stat` while wrk drives
# the proxy with the pinning of run.sh (wrk on CPU 0; proxy, upstream and
# Redis on CPU 1). One row after the other, not interleaved: the counts per
# request are what this compares, and they move far less than req/s does.
#
#   benches/load/kernel.sh              # DURATION=6
#
# Rows: nginx as the proxy, the no-work relay, deskgate with the memory
# store, deskgate with the Redis store, and deskgate refusing a flood (a
# tenant far over its budget: 429s from the deny cache, as run.sh's flood).
# BIN=path measures another deskgate build. Installs nginx, wrk,
# redis-server and perf from Debian if missing. Sends traffic only to
# 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-6}
OUT=${OUT:-target/kernel}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

. benches/load/common.sh
install_missing nginx:nginx-light wrk:wrk redis-server:redis-server perf:linux-perf
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release --quiet --bin deskgate --example relay
BIN=${BIN:-$PWD/target/release/deskgate}
RELAY=$PWD/target/release/examples/relay

P_UP=18381; P_NGINX=18382; P_MEM=18383; P_REDIS=18384; P_FLOOD=18385; P_RELAY=18387; P_RS=16599
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for f in nginx upstream; do [ -f "$OUT/$f.pid" ] && kill "$(cat "$OUT/$f.pid")" 2>/dev/null || true; done
}
trap cleanup EXIT

upstream_conf "$OUT" $P_UP > "$OUT/upstream.conf"
nginx_proxy_conf "$OUT" $P_NGINX $P_UP > "$OUT/nginx.conf"
taskset -c 1 "$NGINX" -c "$OUT/upstream.conf" -p "$OUT"
taskset -c 1 "$NGINX" -c "$OUT/nginx.conf" -p "$OUT"
taskset -c 1 "$RELAY" 127.0.0.1:$P_RELAY 127.0.0.1:$P_UP &
PIDS+=($!); PID_RELAY=$!
taskset -c 1 redis-server --port $P_RS --bind 127.0.0.1 --save "" --appendonly no --logfile "$OUT/redis.log" &
PIDS+=($!); PID_RS=$!
gateway_conf $P_MEM 19383 $P_UP 'store = "memory"' > "$OUT/mem.toml"
gateway_conf $P_REDIS 19384 $P_UP "store = \"redis\"
redis_url = \"redis://127.0.0.1:$P_RS/0\"" > "$OUT/redis.toml"
{ gateway_conf $P_FLOOD 19385 $P_UP "store = \"redis\"
redis_url = \"redis://127.0.0.1:$P_RS/0\""
    printf '[[tenant]]\nname = "flood"\ndomain = "flood.freshdesk.com"\nplan = "trial"\nper_minute = 100\n'; } > "$OUT/flood.toml"
for g in mem redis flood; do
    RUST_LOG=warn DESKGATE_WORKERS=1 taskset -c 1 "$BIN" --config "$OUT/$g.toml" 2>"$OUT/$g.log" &
    PIDS+=($!)
done
PID_MEM=${PIDS[2]}; PID_REDIS=${PIDS[3]}; PID_FLOOD=${PIDS[4]}
sleep 1.5
PID_UP=$(pgrep -P "$(cat "$OUT/upstream.pid")" | head -1)
PID_NGINX=$(pgrep -P "$(cat "$OUT/nginx.pid")" | head -1)

# count PID NAME — perf stat of PID for DURATION-1 s, into $OUT/NAME.txt
count() { perf stat -e task-clock,context-switches,raw_syscalls:sys_enter -p "$1" -o "$OUT/$2.txt" -- sleep $((DURATION - 1)); }
# per FILE REQ/S — "CPU µs, context switches, system calls" per request
per() {
    awk -v r="$2" -v d=$((DURATION - 1)) '
        /task-clock/ {gsub(",", "", $1); t = $1}
        /context-switches/ {gsub(",", "", $1); c = $1}
        /sys_enter/ {gsub(",", "", $1); s = $1}
        END {printf "%8.1f %6.2f %6.2f", t * 1000 / (r * d), c / (r * d), s / (r * d)}' "$1"
}
printf '%-18s %9s | %-24s | %-24s | %s\n' "" "req/s" "proxy: µs    cs   calls" "upstream: µs  cs  calls" "redis: µs  cs  calls"
for row in "nginx $P_NGINX $PID_NGINX" "relay $P_RELAY $PID_RELAY" "deskgate-memory $P_MEM $PID_MEM" \
    "deskgate-redis $P_REDIS $PID_REDIS" "deskgate-flood $P_FLOOD $PID_FLOOD flood"; do
    read -r name port pid tenant <<<"$row"
    count "$pid" "p-$name" & c1=$!
    count "$PID_UP" "u-$name" & c2=$!
    c3=
    if [ "$name" = deskgate-redis ] || [ "$name" = deskgate-flood ]; then count "$PID_RS" "r-$name" & c3=$!; fi
    taskset -c 0 wrk -t1 -c64 -d"${DURATION}s" -H "Host: ${tenant:-bench}.freshdesk.com" -H "Authorization: Basic YXBpa2V5Olg=" \
        "http://127.0.0.1:$port/api/v2/tickets" > "$OUT/wrk-$name.txt"
    wait $c1 $c2 $c3
    rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk-$name.txt")
    redis=
    [ -n "$c3" ] && redis=$(per "$OUT/r-$name.txt" "$rps")
    printf '%-18s %9.0f | %s | %s | %s\n' "$name" "$rps" "$(per "$OUT/p-$name.txt" "$rps")" \
        "$(per "$OUT/u-$name.txt" "$rps")" "$redis"
done
