#!/usr/bin/env bash
# Load benchmark: deskgate against nginx (and haproxy) in ONE run, interleaved
# over several rounds, with this pinning: the load generator on CPU 0,
# proxy and upstream sharing CPU 1, one worker each.
#
#   benches/load/run.sh                 # ROUNDS=3 DURATION=10 by default
#   ROUNDS=5 DURATION=10 benches/load/run.sh
#   BASE_BIN=PATH_TO_OLD_BINARY benches/load/run.sh  # + an older build's rows
#   PACE='math.random(5, 15)' benches/load/run.sh   # light load with calls spread out
#
# Installs nginx, haproxy, wrk and redis-server from Debian if missing. Sends
# traffic only to 127.0.0.1 and stops by itself. Prints a table of req/s,
# p50/p99, ratios to nginx and CPU microseconds per request (the proxy's own
# and the upstream's, from /proc/PID/stat), a light-load latency run at a
# fixed rate, and Redis figures (calls decided per EVALSHA, Redis script
# time and process CPU per call, against a naive sliding-log script).
# `relay` is the ceiling: a byte relay that does no HTTP work
# (benches/load/relay.rs), i.e. what a proxy reaches when its work is free.
# BASE_BIN adds `base-memory` and `base-redis` rows (and a light-load row):
# another deskgate binary, e.g. the build before a change, measured in the
# same rounds as this one, so before/after is a ratio within one run.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
LOAD_CPU=${LOAD_CPU:-0}
SERVE_CPU=${SERVE_CPU:-1}
# Redis shares the proxy's CPU by default (its CPU time then counts against
# the Redis row); REDIS_CPU=0 puts it beside wrk instead, nearer a real
# deployment, where Redis runs on a host of its own.
REDIS_CPU=${REDIS_CPU:-$SERVE_CPU}
OUT=${OUT:-target/load}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

. benches/load/common.sh
install_missing nginx:nginx-light haproxy:haproxy wrk:wrk redis-server:redis-server
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

cargo build --release --quiet --bin deskgate --example relay
BIN=$PWD/target/release/deskgate
RELAY=$PWD/target/release/examples/relay

P_UP=18181; P_NGINX=18182; P_MEM=18183; P_REDIS=18184; P_HA=18185; P_FLOOD=18186; P_RELAY=18187; P_HYPER=18188; P_NOBATCH=18189; P_RS=16399
A_MEM=19183; A_REDIS=19184; A_FLOOD=19186; A_HYPER=19188; A_NOBATCH=19189
P_BMEM=18190; P_BREDIS=18191; A_BMEM=19190; A_BREDIS=19191
BASE_BIN=${BASE_BIN:-}
[ -z "$BASE_BIN" ] || [ -x "$BASE_BIN" ] || { echo "BASE_BIN=$BASE_BIN is not an executable" >&2; exit 2; }
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for f in nginx upstream; do [ -f "$OUT/$f.pid" ] && kill "$(cat "$OUT/$f.pid")" 2>/dev/null || true; done
    redis-cli -p $P_RS shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT

# --- upstream, and nginx as the proxy: two instances, one worker each ---------
# (In one nginx the proxy and the upstream would share an event loop and skip
# the context switches every other proxy here pays.)
upstream_conf "$OUT" $P_UP > "$OUT/upstream.conf"
nginx_proxy_conf "$OUT" $P_NGINX $P_UP > "$OUT/nginx.conf"
taskset -c "$SERVE_CPU" "$NGINX" -c "$OUT/upstream.conf" -p "$OUT"
taskset -c "$SERVE_CPU" "$NGINX" -c "$OUT/nginx.conf" -p "$OUT"

# The ceiling: a byte relay with no HTTP work (benches/load/relay.rs).
taskset -c "$SERVE_CPU" "$RELAY" 127.0.0.1:$P_RELAY 127.0.0.1:$P_UP &
PIDS+=($!)
PID_RELAY=$!

cat > "$OUT/haproxy.cfg" <<HA
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend fe
    bind 127.0.0.1:$P_HA
    default_backend be
backend be
    http-reuse always
    server up 127.0.0.1:$P_UP
HA
taskset -c "$SERVE_CPU" "$HAPROXY" -f "$OUT/haproxy.cfg" -q &
PIDS+=($!)
PID_HA=$!

# --- redis and the gateways ---------------------------------------------------
taskset -c "$REDIS_CPU" redis-server --port $P_RS --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    --logfile "$OUT/redis.log" &
PIDS+=($!)
PID_RS=$!

# The `flood` tenant (100/min) is run into the ground by the flood row.
gateway() { # listen-port admin-port store-lines
    gateway_conf "$1" "$2" $P_UP "$3"
    printf '[[tenant]]\nname = "flood"\ndomain = "flood.freshdesk.com"\nplan = "trial"\nper_minute = 100\n'
}
gateway $P_MEM $A_MEM 'store = "memory"' > "$OUT/mem.toml"
gateway $P_REDIS $A_REDIS "store = \"redis\"
redis_url = \"redis://127.0.0.1:$P_RS/0\"
store_timeout_ms = 200" > "$OUT/redis.toml"
cp "$OUT/redis.toml" "$OUT/flood.toml"
sed -i "s/$P_REDIS/$P_FLOOD/; s/$A_REDIS/$A_FLOOD/" "$OUT/flood.toml"
# The same memory-store gateway with the fast path off: every call through hyper.
sed "s/$P_MEM/$P_HYPER/; s/$A_MEM/$A_HYPER/; s/^\[server\]\$/[server]\nfast_path = false/" "$OUT/mem.toml" > "$OUT/hyper.toml"
# The same Redis-store gateway without batches: one EVALSHA per call.
sed "s/$P_REDIS/$P_NOBATCH/; s/$A_REDIS/$A_NOBATCH/; s/^\[limiter\]\$/[limiter]\nredis_batch = false/" "$OUT/redis.toml" \
    > "$OUT/nobatch.toml"
# The older build's two gateways (BASE_BIN), configured like mem and redis.
sed "s/$P_MEM/$P_BMEM/; s/$A_MEM/$A_BMEM/" "$OUT/mem.toml" > "$OUT/bmem.toml"
sed "s/$P_REDIS/$P_BREDIS/; s/$A_REDIS/$A_BREDIS/" "$OUT/redis.toml" > "$OUT/bredis.toml"
sleep 0.5
declare -A PID
GATEWAYS=(mem redis flood hyper nobatch)
[ -n "$BASE_BIN" ] && GATEWAYS+=(bmem bredis)
for g in "${GATEWAYS[@]}"; do
    bin=$BIN
    [ "$g" = bmem ] || [ "$g" = bredis ] && bin=$BASE_BIN
    RUST_LOG=warn DESKGATE_WORKERS=1 taskset -c "$SERVE_CPU" "$bin" --log-format json --config "$OUT/$g.toml" \
        2>"$OUT/$g.log" &
    PIDS+=($!)
    PID[$g]=$!
done
sleep 1.5
# nginx's worker processes (the masters only wait).
PID_UP=$(pgrep -P "$(cat "$OUT/upstream.pid")" | head -1)
PID_NGINX=$(pgrep -P "$(cat "$OUT/nginx.pid")" | head -1)

AUTH="Authorization: Basic YXBpa2V5Olg="
# CPU time (user+sys clock ticks) a process has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run_wrk() { # name url host proxy-pid [extra wrk args...]
    local name=$1 url=$2 host=$3 pid=$4; shift 4
    local t0 u0
    t0=$(ticks "$pid"); u0=$(ticks "$PID_UP")
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Host: $host" -H "$AUTH" "$@" "$url" > "$OUT/wrk-$name.txt"
    local rps p50 p99 n cpu ucpu hz
    hz=$(getconf CLK_TCK)
    rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk-$name.txt")
    p50=$(awk '$1=="50%" {print $2}' "$OUT/wrk-$name.txt")
    p99=$(awk '$1=="99%" {print $2}' "$OUT/wrk-$name.txt")
    n=$(awk '/requests in/ {print $1}' "$OUT/wrk-$name.txt")
    # CPU microseconds per request: the proxy's own, and the upstream's.
    cpu=$(( ($(ticks "$pid") - t0) * 1000000 / hz / (n > 0 ? n : 1) ))
    ucpu=$(( ($(ticks "$PID_UP") - u0) * 1000000 / hz / (n > 0 ? n : 1) ))
    echo "$name $rps $p50 $p99 $cpu $ucpu" >> "$OUT/results.txt"
    # Only the flood is meant to be refused; anything else would measure 429s.
    if [ "$name" != deskgate-flood ] && grep -q Non-2xx "$OUT/wrk-$name.txt"; then
        echo "warning: $name: $(awk '/Non-2xx/ {print $5}' "$OUT/wrk-$name.txt") answers were not 2xx" >&2
    fi
}

# "calls usec" of EVALSHA (cumulative since the last resetstat).
redis_stat() { redis-cli -p $P_RS info commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_evalsha/ {print $3, $5}'; }
# A Redis-store row, and what it cost Redis: requests, EVALSHA calls, script
# time and the redis-server process's CPU time (user+sys, so reading and
# answering the calls too), all in µs.
redis_row() { # name port gateway-pid
    local before b_calls b_usec r0 after reqs hz
    before=$(redis_stat); b_calls=${before%% *}; b_usec=${before##* }
    r0=$(ticks "$PID_RS")
    run_wrk "$1" "http://127.0.0.1:$2$URL" bench.freshdesk.com "$3"
    after=$(redis_stat); hz=$(getconf CLK_TCK)
    reqs=$(awk '/requests in/ {print $1}' "$OUT/wrk-$1.txt")
    echo "redis-calls $1 $reqs $(( ${after%% *} - ${b_calls:-0} )) $(( ${after##* } - ${b_usec:-0} )) $(( ($(ticks "$PID_RS") - r0) * 1000000 / hz ))" >> "$OUT/results.txt"
}

# A ticket created: a small JSON body (the fast path carries it; the
# `-hyper` gateway streams it through hyper).
cat > "$OUT/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"subject":"Printer on fire","description":"The printer on floor 3 is on fire","email":"a@example.com","priority":1,"status":2}'
wrk.headers["Content-Type"] = "application/json"
LUA

: > "$OUT/results.txt"
URL=/api/v2/tickets
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS"
    run_wrk upstream "http://127.0.0.1:$P_UP$URL" bench.freshdesk.com "$PID_UP"
    run_wrk relay "http://127.0.0.1:$P_RELAY$URL" bench.freshdesk.com "$PID_RELAY"
    run_wrk nginx "http://127.0.0.1:$P_NGINX$URL" bench.freshdesk.com "$PID_NGINX"
    run_wrk haproxy "http://127.0.0.1:$P_HA$URL" bench.freshdesk.com "$PID_HA"
    run_wrk deskgate-memory "http://127.0.0.1:$P_MEM$URL" bench.freshdesk.com "${PID[mem]}"
    run_wrk deskgate-memory-hyper "http://127.0.0.1:$P_HYPER$URL" bench.freshdesk.com "${PID[hyper]}"
    [ -z "$BASE_BIN" ] || run_wrk base-memory "http://127.0.0.1:$P_BMEM$URL" bench.freshdesk.com "${PID[bmem]}"
    run_wrk nginx-post "http://127.0.0.1:$P_NGINX$URL" bench.freshdesk.com "$PID_NGINX" -s "$OUT/post.lua"
    run_wrk deskgate-memory-post "http://127.0.0.1:$P_MEM$URL" bench.freshdesk.com "${PID[mem]}" -s "$OUT/post.lua"
    run_wrk deskgate-memory-hyper-post "http://127.0.0.1:$P_HYPER$URL" bench.freshdesk.com "${PID[hyper]}" -s "$OUT/post.lua"
    redis_row deskgate-redis $P_REDIS "${PID[redis]}"
    redis_row deskgate-redis-nobatch $P_NOBATCH "${PID[nobatch]}"
    [ -z "$BASE_BIN" ] || redis_row base-redis $P_BREDIS "${PID[bredis]}"
    before=$(redis_stat); before_calls=${before%% *}; before_calls=${before_calls:-0}
    run_wrk deskgate-flood "http://127.0.0.1:$P_FLOOD$URL" flood.freshdesk.com "${PID[flood]}"
    after=$(redis_stat)
    reqs=$(awk '/requests in/ {print $1}' "$OUT/wrk-deskgate-flood.txt")
    non2xx=$(awk '/Non-2xx/ {print $5}' "$OUT/wrk-deskgate-flood.txt")
    echo "flood-calls $reqs $(( ${after%% *} - before_calls )) ${non2xx:-0}" >> "$OUT/results.txt"
done

# --- light load: ~2,000 req/s (20 connections, one call per 10 ms each) -------
# A fixed 10 ms keeps the 20 connections in step: they send in bursts of 20,
# and the median then includes waiting behind the rest of the burst.
# PACE='math.random(5, 15)' spreads the calls out at the same mean rate, so
# the median is one lone call's way through (BENCHMARKS.md, "Light load").
cat > "$OUT/pace.lua" <<LUA
function delay() return ${PACE:-10} end
LUA
LIGHT=("upstream $P_UP $PID_UP" "relay $P_RELAY $PID_RELAY" "nginx $P_NGINX $PID_NGINX"
    "deskgate-memory $P_MEM ${PID[mem]}" "deskgate-redis $P_REDIS ${PID[redis]}")
[ -z "$BASE_BIN" ] || LIGHT+=("base-memory $P_BMEM ${PID[bmem]}")
for r in $(seq 1 "$ROUNDS"); do
    for t in "${LIGHT[@]}"; do
        set -- $t
        CONNS=20 run_wrk "light-$1" "http://127.0.0.1:$2$URL" bench.freshdesk.com "$3" -s "$OUT/pace.lua"
    done
done

# --- the naive sliding-log script, for Redis CPU per decision -----------------
NAIVE='local now=tonumber(ARGV[1]) for i=1,2 do redis.call("ZREMRANGEBYSCORE",KEYS[i],0,now-60000000) end
if redis.call("ZCARD",KEYS[1]) < 1000000 and redis.call("ZCARD",KEYS[2]) < 1000000 then
for i=1,2 do redis.call("ZADD",KEYS[i],now,ARGV[2]) redis.call("PEXPIRE",KEYS[i],60000) end return 1 end return 0'
SHA=$(redis-cli -p $P_RS script load "$NAIVE")
redis-cli -p $P_RS config resetstat >/dev/null
r0=$(ticks "$PID_RS")
taskset -c "$LOAD_CPU" redis-benchmark -p $P_RS -n 200000 -c 16 -r 100000000 -q \
    evalsha "$SHA" 2 '{naive}:a' '{naive}:e' 1700000000000000 __rand_int__ > /dev/null
after=$(redis_stat)
echo "naive-script ${after%% *} $(( ${after##* } / ${after%% *} )) $(( ($(ticks "$PID_RS") - r0) * 1000000 / $(getconf CLK_TCK) / ${after%% *} ))" >> "$OUT/results.txt"

python3 - "$OUT/results.txt" <<'PY'
import sys, statistics as st, collections
rows = collections.defaultdict(list)
extra = collections.defaultdict(list)
def ms(v):
    if v is None: return float('nan')
    for suf, f in (('us', 1e-3), ('ms', 1.0), ('s', 1e3)):
        if v.endswith(suf): return float(v[:-len(suf)]) * f
    return float(v)
for line in open(sys.argv[1]):
    p = line.split()
    if p[0] in ('redis-calls', 'flood-calls', 'naive-script'):
        extra[p[0]].append(p[1:])
    else:
        rows[p[0]].append((float(p[1]), ms(p[2]), ms(p[3]), float(p[4]), float(p[5])))
med = {k: tuple(st.median(r[i] for r in v) for i in range(5)) for k, v in rows.items()}
ng = med.get('nginx', (float('nan'),))[0]
print(f"\n{'target':<24}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'x nginx':>9}{'CPU us/req':>12}{'upstream us':>13}   (medians of {len(rows['nginx'])} rounds)")
for k in ['upstream', 'relay', 'nginx', 'haproxy', 'deskgate-memory', 'deskgate-memory-hyper', 'base-memory', 'deskgate-redis', 'deskgate-redis-nobatch', 'base-redis', 'deskgate-flood']:
    if k in med:
        r, p50, p99, cpu, ucpu = med[k]
        print(f"{k:<24}{r:>10.0f}{p50:>9.3f}{p99:>9.3f}{r / ng:>9.2f}{cpu:>12.0f}{ucpu:>13.0f}")
print("POST /api/v2/tickets with a 126-byte JSON body (ratios to nginx-post)")
ngp = med.get('nginx-post', (float('nan'),))[0]
for k in ['nginx-post', 'deskgate-memory-post', 'deskgate-memory-hyper-post']:
    if k in med:
        r, p50, p99, cpu, ucpu = med[k]
        print(f"{k:<28}{r:>6.0f}{p50:>9.3f}{p99:>9.3f}{r / ngp:>9.2f}{cpu:>12.0f}{ucpu:>13.0f}")
print("\nlight load (~2,000 req/s): median latency and what each proxy adds to the upstream alone")
base = med.get('light-upstream', (0, 0, 0))[1]
for k in ['light-upstream', 'light-relay', 'light-nginx', 'light-deskgate-memory', 'light-deskgate-redis', 'light-base-memory']:
    if k in med:
        r, p50, p99, _, _ = med[k]
        print(f"{k:<24}{r:>10.0f} req/s  p50 {p50:.3f} ms  p99 {p99:.3f} ms  added p50 {p50 - base:+.3f} ms")
for name, reqs, calls, usec, cpu in extra['redis-calls']:
    n, c = max(1, int(reqs)), max(1, int(calls))
    print(f"{name}: {reqs} requests, {calls} EVALSHA ({n / c:.1f} calls decided per EVALSHA); "
          f"Redis per call: script {int(usec) / n:.1f} us (INFO commandstats), process CPU {int(cpu) / n:.1f} us")
for reqs, calls, non2xx in extra['flood-calls']:
    print(f"flood: {reqs} requests, {non2xx} non-2xx, {calls} EVALSHA calls (1 per {int(reqs) / max(1, int(calls)):.0f} requests)")
for v in extra['naive-script']:
    print(f"naive ZSET sliding-log script (redis-benchmark -c 16, one decision per call): {v[0]} calls, "
          f"script {v[1]} us/call (INFO commandstats), process CPU {v[2]} us/call")
PY
