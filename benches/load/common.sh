# Shared by the load scripts (sourced, not run): installing what is missing,
# the upstream they all measure against, and the gateway config.

# install_missing COMMAND:PACKAGE ... — installs from Debian the packages
# whose command is on neither PATH nor /usr/sbin.
install_missing() {
    local need=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
    done
    if ((${#need[@]})); then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

# upstream_conf DIR PORT — a one-worker nginx (pid and error log in DIR)
# that answers every path with a small JSON array, keeping connections alive.
upstream_conf() {
    cat <<NGX
worker_processes 1;
pid $1/upstream.pid;
error_log $1/upstream-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$2;
        default_type application/json;
        location / { return 200 '[{"id":1,"subject":"Printer on fire","status":2}]'; }
    }
}
NGX
}

# nginx_proxy_conf DIR PORT UPSTREAM_PORT — nginx as the keep-alive reverse
# proxy the gateways are compared with (pid and error log in DIR).
nginx_proxy_conf() {
    cat <<NGX
worker_processes 1;
pid $1/nginx.pid;
error_log $1/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream helpdesk { server 127.0.0.1:$3; keepalive 128; }
    server {
        listen 127.0.0.1:$2;
        location / {
            proxy_pass http://helpdesk;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
        }
    }
}
NGX
}

# gateway_conf LISTEN_PORT ADMIN_PORT UPSTREAM_PORT STORE_LINES — a deskgate
# config whose `bench` tenant never runs out of budget (GET ticket list and
# POST ticket create); append more [[tenant]] tables after it.
gateway_conf() {
    cat <<TOML
[server]
listen = "127.0.0.1:$1"
[admin]
listen = "127.0.0.1:$2"
[upstream]
url = "http://127.0.0.1:$3"
[limiter]
$4
[[tenant]]
name = "bench"
domain = "bench.freshdesk.com"
plan = "enterprise_2000"
per_minute = 2000000000
endpoints = { ticket_list = 2000000000, ticket_create = 2000000000 }
TOML
}
