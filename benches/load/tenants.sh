#!/usr/bin/env bash
# 10,000 configured tenants: `deskgate check` time, start-up time,
# reload time (SIGHUP → deskgate_config_reloads_total moves), and RSS after
# every tenant has been active on two endpoints (memory store).
#
#   benches/load/tenants.sh            # N=10000 by default
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-10000}
OUT=${OUT:-target/load}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet
BIN=$PWD/target/release/deskgate
P_API=18391; P_ADMIN=18392; P_UP=18393

python3 - "$N" "$OUT/t10k.toml" "$P_API" "$P_ADMIN" "$P_UP" <<'PY'
import sys
n, path, api, admin, up = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
plans = ['growth', 'pro', 'enterprise', 'enterprise_1000']
with open(path, 'w') as f:
    f.write(f'[server]\nlisten = "127.0.0.1:{api}"\n[admin]\nlisten = "127.0.0.1:{admin}"\n[upstream]\nurl = "http://127.0.0.1:{up}"\n\n')
    for i in range(n):
        f.write(f'[[tenant]]\nname = "t{i}"\ndomain = "t{i}.freshdesk.com"\nplan = "{plans[i % 4]}"\nvanity_hosts = ["support.t{i}.com"]\n\n')
PY

# A trivial upstream: the demo's sample helpdesk is not separately runnable,
# so use python's http.server-free approach: nginx if present, else skip calls.
cat > "$OUT/up.conf" <<NGX
worker_processes 1; pid $OUT/up.pid; error_log $OUT/up-error.log warn;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$P_UP; default_type application/json; location / { return 200 '[]'; } } }
NGX
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
"$NGINX" -c "$OUT/up.conf" -p "$OUT"
cleanup() { kill "$GW" 2>/dev/null || true; kill "$(cat "$OUT/up.pid")" 2>/dev/null || true; }
trap cleanup EXIT

now_ms() { date +%s%3N; }
t0=$(now_ms); "$BIN" check --config "$OUT/t10k.toml" >/dev/null; t1=$(now_ms)
echo "check of $N tenants: $((t1 - t0)) ms"

t0=$(now_ms)
RUST_LOG=warn "$BIN" --log-format json --config "$OUT/t10k.toml" 2>"$OUT/t10k.log" &
GW=$!
until curl -sf "http://127.0.0.1:$P_ADMIN/readyz" >/dev/null; do sleep 0.01; done
t1=$(now_ms)
echo "start-up to ready with $N tenants: $((t1 - t0)) ms"
rss() { awk '/VmRSS/ {print $2}' "/proc/$GW/status"; }
echo "RSS after start-up: $(( $(rss) / 1024 )) MB"
sleep 12
echo "RSS 12 s after start-up: $(( $(rss) / 1024 )) MB"

cat > "$OUT/every-tenant.lua" <<LUA
local i = 0
request = function()
  i = i + 1
  local t = math.floor(i / 2) % $N
  local path = (i % 2 == 0) and "/api/v2/tickets" or "/api/v2/contacts"
  return wrk.format("GET", path, { ["Host"] = "t" .. t .. ".freshdesk.com", ["Authorization"] = "Basic eDp4" })
end
LUA
wrk -t1 -c32 -d10s -s "$OUT/every-tenant.lua" "http://127.0.0.1:$P_API" > "$OUT/every-tenant.txt"
echo "calls: $(awk '/requests in/ {print $1}' "$OUT/every-tenant.txt") over 10 s (every tenant, two endpoints)"
echo "RSS after every tenant was active: $(( $(rss) / 1024 )) MB"

reloads() { curl -s "http://127.0.0.1:$P_ADMIN/metrics" | awk '/^deskgate_config_reloads_total\{result="success"\}/ {print $2}'; }
before=$(reloads); t0=$(now_ms); kill -HUP "$GW"
until [ "$(reloads)" != "$before" ]; do sleep 0.005; done
t1=$(now_ms)
echo "reload (SIGHUP to counted) of $N tenants: $((t1 - t0)) ms"
echo "RSS right after reload: $(( $(rss) / 1024 )) MB"
sleep 12
echo "RSS 12 s after reload: $(( $(rss) / 1024 )) MB"
