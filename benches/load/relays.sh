#!/usr/bin/env bash
# How far the I/O runtime alone moves a proxy on this set-up: byte relays
# that do no HTTP work, on tokio (epoll, benches/load/relay.rs), tokio-uring,
# monoio and a hand-rolled io_uring loop (benches/load/relays/), beside nginx
# and deskgate (memory store), interleaved over rounds with run.sh's pinning:
# wrk on CPU 0, proxy and upstream sharing CPU 1, one worker each.
#
#   benches/load/relays.sh                  # ROUNDS=3 DURATION=5
#   BIN=PATH_TO_A_BUILD benches/load/relays.sh
#
# Prints each row's median req/s, its ratio to nginx, and the proxy's CPU
# microseconds per request. Installs nginx and wrk from Debian if missing;
# sends traffic only to 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
LOAD_CPU=${LOAD_CPU:-0}
SERVE_CPU=${SERVE_CPU:-1}
OUT=${OUT:-target/relays}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

. benches/load/common.sh
install_missing nginx:nginx-light wrk:wrk
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet --bin deskgate --example relay
    BIN=$PWD/target/release/deskgate
else
    cargo build --release --quiet --example relay
fi
cargo build --release --quiet --manifest-path benches/load/relays/Cargo.toml
RELAYS=$PWD/benches/load/relays/target/release

P_UP=18381; P_NGINX=18382; P_DG=18383; A_DG=19383
declare -A PORT=([nginx]=$P_NGINX [deskgate]=$P_DG [relay-tokio]=18384 [relay-tokio-uring]=18385
    [relay-monoio]=18386 [relay-uring]=18387)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for f in nginx upstream; do [ -f "$OUT/$f.pid" ] && kill "$(cat "$OUT/$f.pid")" 2>/dev/null || true; done
}
trap cleanup EXIT

upstream_conf "$OUT" $P_UP > "$OUT/upstream.conf"
nginx_proxy_conf "$OUT" $P_NGINX $P_UP > "$OUT/nginx.conf"
taskset -c "$SERVE_CPU" "$NGINX" -c "$OUT/upstream.conf" -p "$OUT"
taskset -c "$SERVE_CPU" "$NGINX" -c "$OUT/nginx.conf" -p "$OUT"
gateway_conf $P_DG $A_DG $P_UP 'store = "memory"' > "$OUT/deskgate.toml"

declare -A PID
start() { # name command...
    local name=$1; shift
    taskset -c "$SERVE_CPU" "$@" 2>"$OUT/$name.log" &
    PIDS+=($!)
    PID[$name]=$!
}
start relay-tokio target/release/examples/relay 127.0.0.1:${PORT[relay-tokio]} 127.0.0.1:$P_UP
start relay-tokio-uring "$RELAYS/tokio_uring" 127.0.0.1:${PORT[relay-tokio-uring]} 127.0.0.1:$P_UP
start relay-monoio "$RELAYS/monoio" 127.0.0.1:${PORT[relay-monoio]} 127.0.0.1:$P_UP
start relay-uring "$RELAYS/uring" 127.0.0.1:${PORT[relay-uring]} 127.0.0.1:$P_UP
RUST_LOG=warn DESKGATE_WORKERS=1 start deskgate "$BIN" --config "$OUT/deskgate.toml"
sleep 1.5
PID[nginx]=$(pgrep -P "$(cat "$OUT/nginx.pid")" | head -1)

ROWS=(nginx relay-tokio relay-tokio-uring relay-monoio relay-uring deskgate)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
: > "$OUT/results.txt"
for r in $(seq "$ROUNDS"); do
    for name in "${ROWS[@]}"; do
        t0=$(ticks "${PID[$name]}")
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Host: bench.freshdesk.com" \
            -H "Authorization: Basic YXBpa2V5Olg=" "http://127.0.0.1:${PORT[$name]}/api/v2/tickets" > "$OUT/wrk.txt"
        if grep -q -e Non-2xx -e 'Socket errors' "$OUT/wrk.txt"; then
            echo "warning: $name: $(grep -e Non-2xx -e 'Socket errors' "$OUT/wrk.txt")" >&2
        fi
        rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk.txt")
        n=$(awk '/requests in/ {print $1}' "$OUT/wrk.txt")
        cpu=$(( ($(ticks "${PID[$name]}") - t0) * 1000000 / $(getconf CLK_TCK) / (n > 0 ? n : 1) ))
        echo "$r $name $rps $cpu" | tee -a "$OUT/results.txt"
    done
done

python3 - "$OUT/results.txt" "${ROWS[@]}" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    _, name, rps, cpu = line.split()
    rows.setdefault(name, []).append((float(rps), int(cpu)))
nginx = statistics.median(r for r, _ in rows['nginx'])
print('%-20s %12s %10s %14s' % ('row (median)', 'req/s', 'x nginx', 'proxy us/req'))
for name in sys.argv[2:]:
    rps = statistics.median(r for r, _ in rows[name])
    cpu = statistics.median(c for _, c in rows[name])
    print('%-20s %12.0f %10.2f %14d' % (name, rps, rps / nginx, cpu))
PY
