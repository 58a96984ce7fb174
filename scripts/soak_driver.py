#!/usr/bin/env python3
"""Soak driver for deskgate; run through scripts/soak.sh.

Starts an upstream (in this process), writes a config, runs the release
binary, drives a steady mixed load (tenants under and over budget, every
endpoint class, vanity-host and portal calls) for a bounded time, samples the
gateway's RSS, open file descriptors, OS threads and tokio tasks, while
webhooks flow through the egress queue, the config is reloaded (SIGHUP, a
tenant added) and, with the Redis store, Redis is restarted (SHUTDOWN SAVE,
then started again from its dump: the gateway runs `fail_closed`, so calls
during the outage get 503 and none is admitted uncounted). Checks at the end:

  * nothing lost: every call got an answer; the gateway's
    deskgate_requests_total equals what the clients saw, tenant by status;
    every 200 the clients saw reached the upstream exactly once;
  * tenants under budget: every call admitted;
  * tenants over budget: the most the upstream got in any 60 s interval is
    exactly the budget (account and endpoint), and over the run at least 99 % of what a
    rolling window can admit (budget x minutes). The least count in a sliding
    60 s interval is printed too: it dips below the budget by design, because
    credits come back on the schedule they were spent (the first minute's
    burst echoes) and random arrivals do not always take them at once;
  * webhooks: every webhook accepted was delivered exactly once, and a
    webhook tenant's deliveries plus its API calls stay within its budget;
  * the reload applied (the added tenant answers on the admin listener), and
    503s happened only around the Redis restart;
  * resources flat: RSS, fds and tasks at the end within a small margin of
    their level after warm-up.

Prints a report and exits 1 if any check fails.
"""

import argparse
import asyncio
import bisect
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

WINDOW = 60.0
WEBHOOK_RATE = 2.0  # webhooks per second, all for under_a


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------- upstream

class Upstream:
    """HTTP/1.1 keep-alive upstream: answers 200 JSON, records (time, host, method, path)."""

    def __init__(self):
        self.arrivals = []  # (monotonic, host, method, path)

    async def handle(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                if "content-length" in headers:
                    await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding", "").lower().endswith("chunked"):
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        await reader.readexactly(size + 2)
                        if size == 0:
                            break
                self.arrivals.append((time.monotonic(), headers.get("host", ""), method, target.split("?")[0]))
                body = b'{"ok":true}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.CancelledError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


class WebhookReceiver:
    """Records each delivery's X-Deskgate-Webhook-Id and time; answers 200."""

    def __init__(self):
        self.deliveries = []  # (monotonic, id)

    async def handle(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)\r\nx-deskgate-webhook-id:\s*([^\r]+)", head)
                n = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if n:
                    await reader.readexactly(int(n.group(1)))
                self.deliveries.append((time.monotonic(), m.group(1).decode() if m else "?"))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.CancelledError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


def post_webhook(listen, body):
    """POSTs one webhook to the egress listener; the status, or None when unreachable."""
    req = urllib.request.Request(f"http://{listen}/webhooks", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception:  # noqa: BLE001 - the listener did not answer
        return None


# --------------------------------------------------------------------------- load

def plan(rate):
    """Tenants, their budgets and their share of the load, scaled by `rate` (calls/s)."""
    per_min = lambda share: rate * share * 60  # demand per minute for a share
    tenants = {
        # name: (toml, [(weight, method, path, body)], kind)
        # under_a also receives the webhooks (WEBHOOK_RATE/s), which spend its budget.
        "under_a": dict(share=0.30, over=False, calls=[(1, "GET", "/api/v2/tickets/{n}", None)],
                        budget=dict(per_minute=int(per_min(0.30) * 2) + 10 + int(WEBHOOK_RATE * 60 * 2))),
        "under_b": dict(share=0.20, over=False, calls=[
            (1, "GET", "/api/v2/tickets", None),
            (1, "POST", "/api/v2/tickets", b'{"subject":"soak","description":"x","email":"a@b.c"}'),
            (1, "PUT", "/api/v2/tickets/{n}", b'{"status":2}'),
            (1, "GET", "/api/v2/contacts", None),
            (1, "DELETE", "/api/v2/contacts/{n}", None),
        ], budget=dict(per_minute=int(per_min(0.20) * 2) + 10,
                       endpoints={k: int(per_min(0.20) / 5 * 2) + 5 for k in
                                  ("ticket_list", "ticket_create", "ticket_update", "contact_list")})),
        # Over its account budget: 3x demand.
        "over_a": dict(share=0.20, over=True, calls=[(1, "GET", "/api/v2/tickets/{n}", None)],
                       budget=dict(per_minute=max(5, int(per_min(0.20) / 3)))),
        # Over one endpoint budget (ticket_list at 4x), account generous.
        "over_b": dict(share=0.20, over=True, calls=[
            (1, "GET", "/api/v2/tickets", None),
            (1, "GET", "/api/v2/tickets/{n}", None),
        ], budget=dict(per_minute=int(per_min(0.20) * 2) + 10,
                       endpoints={"ticket_list": max(5, int(per_min(0.20) / 2 / 4))})),
    }
    return tenants


def config_toml(tenants, listen, admin, upstream, store, webhooks, extra=""):
    # fail_closed: while Redis restarts, calls get 503 and nothing is admitted uncounted.
    out = [f'[server]\nlisten = "{listen}"\nheader_read_timeout_ms = 10000\n',
           f'[admin]\nlisten = "{admin}"\n',
           f'[upstream]\nurl = "http://{upstream}"\ntimeout_ms = 5000\n',
           f'[limiter]\n{store}\nstore_timeout_ms = 200\non_store_error = "fail_closed"\n',
           f'[webhooks]\nlisten = "{webhooks}"\nretry_schedule_s = [1, 2, 5]\n']
    for name, t in tenants.items():
        b = t["budget"]
        line = f'[[tenant]]\nname = "{name}"\ndomain = "{name}.freshdesk.com"\nplan = "enterprise_2000"\nper_minute = {b["per_minute"]}\n'
        if name == "under_a":
            line += 'vanity_hosts = ["support.under-a.example"]\n'
        eps = dict(ticket_create=b["per_minute"], ticket_update=b["per_minute"], ticket_list=b["per_minute"],
                   contact_list=b["per_minute"])
        eps.update(b.get("endpoints", {}))
        eps = {k: min(v, b["per_minute"]) for k, v in eps.items()}
        line += "endpoints = { " + ", ".join(f"{k} = {v}" for k, v in eps.items()) + " }\n"
        out.append(line)
    out.append(extra)
    return "\n".join(out)


ENDPOINT = [
    ("GET", re.compile(r"^/api/v2/tickets$"), "ticket_list"),
    ("POST", re.compile(r"^/api/v2/tickets$"), "ticket_create"),
    ("PUT", re.compile(r"^/api/v2/tickets/\d+$"), "ticket_update"),
    ("GET", re.compile(r"^/api/v2/contacts$"), "contact_list"),
]


def endpoint_of(method, path):
    for m, rx, name in ENDPOINT:
        if m == method and rx.match(path):
            return name
    return "other"


class Conn:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer


class Load:
    def __init__(self, addr, tenants, rate, seed):
        self.addr, self.tenants, self.rate = addr, tenants, rate
        self.rng = random.Random(seed)
        self.free = []
        self.opened = 0
        self.seen = {}  # (tenant, status) -> count
        self.errors = 0
        self.latencies = []
        self.unavailable = []  # monotonic times of 503 answers (the store restarting)
        self.inflight = set()
        names = list(tenants)
        self.picks = [(t, c) for t in names for c in tenants[t]["calls"]]
        self.weights = [tenants[t]["share"] * c[0] / sum(x[0] for x in tenants[t]["calls"]) for t, c in self.picks]
        # 5 % vanity-host API calls (403, never charged), 5 % portal pages.
        self.picks += [("vanity", (1, "GET", "/api/v2/tickets/{n}", None)), ("portal", (1, "GET", "/support/home", None))]
        self.weights += [0.05, 0.05]

    async def conn(self):
        if self.free:
            return self.free.pop(0)  # FIFO: spread calls over every open connection
        r, w = await asyncio.open_connection(*self.addr)
        self.opened += 1
        return Conn(r, w)

    async def one(self, tenant, call):
        _, method, path, body = call
        path = path.replace("{n}", str(self.rng.randint(1, 10_000)))
        host = {"vanity": "support.under-a.example", "portal": "under_a.freshdesk.com"}.get(tenant, f"{tenant}.freshdesk.com")
        head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic c29hazpY\r\n"
                f"Accept: application/json\r\n")
        if self.rng.random() < 0.02:
            head += "Connection: close\r\n"  # connection churn: 2 % of calls end theirs
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        data = (head + "\r\n").encode() + (body or b"")
        start = time.monotonic()
        c = None
        try:
            c = await self.conn()
            c.writer.write(data)
            await c.writer.drain()
            status_line = await asyncio.wait_for(c.reader.readuntil(b"\r\n"), 10)
            status = int(status_line.split(b" ")[1])
            rest = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 10)
            m = re.search(rb"(?i)\r?\ncontent-length:\s*(\d+)", b"\r\n" + rest)
            if m:
                await asyncio.wait_for(c.reader.readexactly(int(m.group(1))), 10)
            self.seen[(tenant, status)] = self.seen.get((tenant, status), 0) + 1
            if status == 503:
                self.unavailable.append(time.monotonic())
            self.latencies.append(time.monotonic() - start)
            if re.search(rb"(?i)\r?\nconnection:\s*close", b"\r\n" + rest):
                c.writer.close()
            else:
                self.free.append(c)
        except Exception as e:  # noqa: BLE001 - every failure is counted as lost
            self.errors += 1
            print(f"  call error: {tenant} {method} {path}: {e!r}", file=sys.stderr)
            if c is not None:
                c.writer.close()

    async def run(self, seconds, on_tick):
        for _ in range(8):
            r, w = await asyncio.open_connection(*self.addr)
            self.opened += 1
            self.free.append(Conn(r, w))
        interval = 1.0 / self.rate
        start = time.monotonic()
        n = 0
        while True:
            now = time.monotonic()
            if now - start >= seconds:
                break
            due = start + n * interval
            if due > now:
                await asyncio.sleep(due - now)
            tenant, call = self.rng.choices(self.picks, self.weights)[0]
            task = asyncio.create_task(self.one(tenant, call))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)
            n += 1
            await on_tick(time.monotonic() - start)
        await asyncio.gather(*list(self.inflight))
        for c in self.free:
            c.writer.close()
        return n


# --------------------------------------------------------------------------- sampling

def proc_sample(pid):
    status = open(f"/proc/{pid}/status").read()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds, threads


def scrape(admin):
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:
        return r.read().decode()


def metric_values(text, name):
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            out.append((labels, float(line.rsplit(" ", 1)[1])))
    return out


# --------------------------------------------------------------------------- checks

def window_counts(times):
    """The most arrivals in any WINDOW-long interval (exact: every interval
    starting at an arrival is counted), and the sorted times."""
    times = sorted(times)
    mx = 0
    for i, t in enumerate(times):
        j = bisect.bisect_left(times, t + WINDOW)
        mx = max(mx, j - i)
    return mx, times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--sample", type=float, default=10)
    ap.add_argument("--store", choices=["memory", "redis"], default="memory")
    ap.add_argument("--seed", type=int, default=6)
    args = ap.parse_args()

    tenants = plan(args.rate)
    upstream = Upstream()
    receiver = WebhookReceiver()
    listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    wh_listen = f"127.0.0.1:{free_port()}"
    tmp = tempfile.mkdtemp(prefix="deskgate-soak-")
    redis = [None]
    store = 'store = "memory"'
    rport = free_port()
    redis_cmd = ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", tmp]

    def redis_up():
        redis[0] = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
        for _ in range(100):
            if subprocess.run(["redis-cli", "-p", str(rport), "ping"], capture_output=True).stdout.strip() == b"PONG":
                return
            time.sleep(0.05)

    if args.store == "redis":
        redis_up()
        store = f'store = "redis"\nredis_url = "redis://127.0.0.1:{rport}/0"'
    outage = []  # (down, up) in seconds since the load started

    async def run():
        server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
        up_addr = "127.0.0.1:%d" % server.sockets[0].getsockname()[1]
        hook_server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
        hook_url = "http://127.0.0.1:%d/hook" % hook_server.sockets[0].getsockname()[1]
        cfg = os.path.join(tmp, "deskgate.toml")
        with open(cfg, "w") as f:
            f.write(config_toml(tenants, listen, admin, up_addr, store, wh_listen))
        log = open(os.path.join(tmp, "deskgate.log"), "w")
        gw = subprocess.Popen([args.bin, "--config", cfg, "--log-format", "json"], stdout=log, stderr=log,
                              env={**os.environ, "RUST_LOG": "warn"})
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://{admin}/healthz", timeout=1)
                break
            except Exception:  # noqa: BLE001
                await asyncio.sleep(0.1)
        print(f"deskgate pid {gw.pid}, api {listen}, admin {admin}, upstream {up_addr}, store {args.store}, "
              f"rate {args.rate}/s for {args.seconds:.0f} s; config and log in {tmp}")
        for name, t in tenants.items():
            print(f"  {name:8} {t['share']*100:4.0f}% of calls  {'OVER ' if t['over'] else 'under'}  budget {t['budget']}")
        print(f"  webhooks {WEBHOOK_RATE}/s for under_a; reload at {0.4 * args.seconds:.0f} s"
              + (f"; Redis restart at {0.6 * args.seconds:.0f} s" if args.store == "redis" else ""))

        samples = []
        next_sample = [0.0]
        events = {"reload": 0.4 * args.seconds, "redis": 0.6 * args.seconds if args.store == "redis" else None}
        loop = asyncio.get_running_loop()
        background = []

        def reload_now():
            with open(cfg, "w") as f:
                f.write(config_toml(tenants, listen, admin, up_addr, store, wh_listen,
                                    '[[tenant]]\nname = "late"\ndomain = "late.freshdesk.com"\nplan = "enterprise_2000"\n'))
            gw.send_signal(signal.SIGHUP)

        def restart_redis(t0):
            subprocess.run(["redis-cli", "-p", str(rport), "shutdown", "save"], capture_output=True)
            redis[0].wait(timeout=10)
            down = time.monotonic() - t0
            redis_up()
            outage.append((down, time.monotonic() - t0))
            print(f"  Redis restarted: down at {down:.1f} s, answering at {outage[-1][1]:.1f} s", flush=True)

        async def tick(elapsed):
            if elapsed >= next_sample[0]:
                next_sample[0] += args.sample
                rss, fds, threads = proc_sample(gw.pid)
                text = await loop.run_in_executor(None, scrape, admin)
                tasks = int(metric_values(text, "deskgate_runtime_alive_tasks")[0][1])
                samples.append((elapsed, rss, fds, threads, tasks))
                print(f"  t={elapsed:6.0f}s  rss={rss:7d} KiB  fds={fds:4d}  threads={threads:3d}  tasks={tasks:4d}", flush=True)
            if events["reload"] is not None and elapsed >= events["reload"]:
                events["reload"] = None
                print(f"  t={elapsed:6.0f}s  reload (SIGHUP, tenant `late` added)", flush=True)
                reload_now()
            if events["redis"] is not None and elapsed >= events["redis"]:
                events["redis"] = None
                background.append(loop.run_in_executor(None, restart_redis, time.monotonic() - elapsed))

        accepted, refused = [], {}

        async def webhooks(t0, seconds):
            n, pending = 0, None
            while time.monotonic() - t0 < seconds:
                if pending is None:
                    n += 1
                    pending = f"soak-{n}"
                body = {"tenant": "under_a", "url": hook_url, "id": pending, "body": {"n": n}}
                status = await loop.run_in_executor(None, post_webhook, wh_listen, body)
                if status in (200, 202):
                    accepted.append(pending)
                    pending = None
                else:  # the queue could not take it (Redis restarting): the same id again
                    refused[status] = refused.get(status, 0) + 1
                await asyncio.sleep(1.0 / WEBHOOK_RATE)

        host_port = listen.split(":")
        load = Load((host_port[0], int(host_port[1])), tenants, args.rate, args.seed)
        t0 = time.monotonic()
        hooks = asyncio.create_task(webhooks(t0, args.seconds))
        sent = await load.run(args.seconds, tick)
        await hooks
        for b in background:
            await b
        # Deliveries still due (retries, postponed) get time to go out.
        for _ in range(300):
            if len({i for _, i in receiver.deliveries}) >= len(accepted):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        rss, fds, threads = proc_sample(gw.pid)
        text = scrape(admin)
        tasks = int(metric_values(text, "deskgate_runtime_alive_tasks")[0][1])
        samples.append((time.monotonic() - t0, rss, fds, threads, tasks))
        print(f"  t={samples[-1][0]:6.0f}s  rss={rss:7d} KiB  fds={fds:4d}  threads={threads:3d}  tasks={tasks:4d}  (after the load)")
        try:
            with urllib.request.urlopen(f"http://{admin}/tenants/late", timeout=5) as r:
                late = r.status
        except urllib.error.HTTPError as e:
            late = e.code
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=40)
        server.close()
        hook_server.close()
        return t0, sent, load, samples, text, accepted, refused, late

    t0, sent, load, samples, metrics, accepted, refused, late = asyncio.run(run())
    receiver_deliveries = receiver.deliveries
    with open(os.path.join(tmp, "arrivals.json"), "w") as f:
        json.dump([(t - t0, host, method, path) for t, host, method, path in upstream.arrivals], f)
    if redis[0]:
        redis[0].kill()

    failures = []
    answered = sum(load.seen.values())
    lat = sorted(load.latencies)
    pct = lambda p: lat[min(len(lat) - 1, int(p * (len(lat) - 1)))] * 1000 if lat else 0
    print(f"\ncalls sent {sent}, answered {answered}, errors {load.errors}, connections opened {load.opened}; "
          f"latency p50 {pct(0.5):.1f} ms p99 {pct(0.99):.1f} ms max {pct(1.0):.1f} ms")
    if load.errors or answered != sent:
        failures.append(f"lost calls: sent {sent}, answered {answered}, errors {load.errors}")

    # Gateway metrics against what the clients saw (API calls only: portal is not counted).
    gw_counts = {}
    for labels, v in metric_values(metrics, "deskgate_requests_total"):
        key = (labels["tenant"], int(labels["status"]))
        gw_counts[key] = gw_counts.get(key, 0) + int(v)
    by_tenant_status = {}
    for (tenant, status), n in load.seen.items():
        if tenant == "portal":
            continue
        mt = "under_a" if tenant == "vanity" else tenant
        by_tenant_status[(mt, status)] = by_tenant_status.get((mt, status), 0) + n
    if by_tenant_status != gw_counts:
        failures.append(f"metrics disagree with clients: clients {sorted(by_tenant_status.items())} vs gateway {sorted(gw_counts.items())}")

    # Upstream arrivals per tenant against client 200s.
    arrivals = {}
    for t, host, method, path in upstream.arrivals:
        arrivals.setdefault(host.split(".")[0], []).append((t - t0, method, path))
    print("\ntenant    sent   200    429    403   upstream  budget check")
    for name in list(tenants) + ["vanity", "portal"]:
        ok = load.seen.get((name, 200), 0)
        lim = load.seen.get((name, 429), 0)
        forb = load.seen.get((name, 403), 0)
        total = sum(v for (t, _), v in load.seen.items() if t == name)
        up = len(arrivals.get(name, [])) if name in tenants else "-"
        line = f"{name:8} {total:6} {ok:6} {lim:6} {forb:6} {str(up):>8}  "
        if name in tenants:
            t = tenants[name]
            api_ok = ok
            if name == "under_a":
                api_ok = ok + load.seen.get(("portal", 200), 0)  # portal calls use under_a's host
            if len(arrivals.get(name, [])) != api_ok:
                failures.append(f"{name}: {api_ok} answered 200 but the upstream got {len(arrivals.get(name, []))}")
            down = load.seen.get((name, 503), 0)
            if not t["over"]:
                if lim or ok + down != total:
                    failures.append(f"{name}: under budget but {total - ok - down} refused")
                line += "all admitted" if ok + down == total else "NOT all admitted"
                if down:
                    line += f" ({down} answered 503 while Redis restarted)"
                if name == "under_a":
                    # Webhook deliveries spend the same account budget as its calls.
                    both = [a for a, _, p in arrivals.get(name, []) if p.startswith("/api/")]
                    both += [d - t0 for d, _ in receiver_deliveries]
                    mx, _ = window_counts(both)
                    quota = t["budget"]["per_minute"]
                    line += f"; calls + webhooks: max {mx}/{quota} in any 60 s"
                    if mx > quota:
                        failures.append(f"under_a: calls + webhooks {mx} in one 60 s interval, budget {quota}")
            else:
                policies = [("account", t["budget"]["per_minute"], lambda m, p: True)]
                for ep, q in t["budget"].get("endpoints", {}).items():
                    policies.append((ep, q, lambda m, p, ep=ep: endpoint_of(m, p) == ep))
                parts = []
                for pname, quota, match in policies:
                    times = [a for a, m, p in arrivals.get(name, []) if match(m, p) and p.startswith("/api/")]
                    mx, ts = window_counts(times)
                    # Utilisation: intervals [s, s+60) with s from 60 s to the end - 60 s.
                    mins = []
                    s = WINDOW
                    while s + WINDOW <= args.seconds:
                        mins.append(bisect.bisect_left(ts, s + WINDOW) - bisect.bisect_left(ts, s))
                        s += 1.0
                    mn = min(mins) if mins else None
                    demand_over = pname == "account" and t["budget"].get("endpoints") is None or pname != "account"
                    # Utilisation over the run: what was admitted against the
                    # most a rolling window can admit in that time.
                    used = len(times) / (quota * args.seconds / WINDOW)
                    part = f"{pname}: max {mx}/{quota} in any 60 s"
                    if demand_over:
                        part += f", used {used * 100:.1f} % over the run"
                        if mn is not None:
                            part += f" (least in a sliding 60 s: {mn})"
                    parts.append(part)
                    if mx > quota or (demand_over and mx != quota):
                        failures.append(f"{name}/{pname}: at most {mx} admitted in a 60 s interval, budget {quota}"
                                        + (" (exactly the budget expected)" if demand_over else ""))
                    if demand_over and used < 0.99:
                        failures.append(f"{name}/{pname}: only {used * 100:.1f} % of the budget used over the run")
                line += "; ".join(parts)
        print(line)

    # 503s only around the Redis restart (the gateway runs fail_closed).
    n503 = len(load.unavailable)
    if n503:
        stray = [u - t0 for u in load.unavailable
                 if not any(d - 1 <= u - t0 <= up + 3 for d, up in outage)]
        print(f"\n503 answers: {n503}, all within the Redis restart" if not stray else f"\n503 answers: {n503}, {len(stray)} outside it")
        if stray:
            failures.append(f"{len(stray)} calls answered 503 outside the Redis restart (first at {stray[0]:.1f} s)")
    for down, up in outage:
        print(f"Redis down from {down:.1f} s to {up:.1f} s")

    # Webhooks: every accepted one delivered exactly once.
    ids = [i for _, i in receiver_deliveries]
    dup = len(ids) - len(set(ids))
    missing = set(accepted) - set(ids)
    print(f"\nwebhooks accepted {len(accepted)}, deliveries {len(ids)}, duplicates {dup}, missing {len(missing)}"
          f"; ingest refused (retried): {refused or 'none'}")
    if dup or missing:
        failures.append(f"webhooks: {dup} delivered twice, {len(missing)} accepted but never delivered")

    # The reload applied: the tenant it added is known to the running gateway.
    reloads = {l.get("result"): v for l, v in metric_values(metrics, "deskgate_config_reloads_total")}
    print(f"reloads {reloads}; added tenant `late` on the admin listener: {late}")
    if late != 200 or reloads.get("success", 0) < 1:
        failures.append(f"reload did not apply: /tenants/late answered {late}, reloads {reloads}")

    # Resources: after warm-up (the second sample on), compare the last sample with the first.
    warm = samples[1:] if len(samples) > 2 else samples
    first, last = warm[0], warm[-1]
    rss_max = max(s[1] for s in warm)
    print(f"\nresources after warm-up: rss {first[1]} -> {last[1]} KiB (max {rss_max}), fds {first[2]} -> {last[2]} "
          f"(max {max(s[2] for s in warm)}), threads {first[3]} -> {last[3]}, tasks {first[4]} -> {last[4]} "
          f"(max {max(s[4] for s in warm)})")
    if last[1] > first[1] * 1.25 + 4096:
        failures.append(f"RSS grew from {first[1]} to {last[1]} KiB")
    if last[2] > first[2] + 16:
        failures.append(f"fds grew from {first[2]} to {last[2]}")
    if last[4] > first[4] + 16:
        failures.append(f"tasks grew from {first[4]} to {last[4]}")

    print("\nverdict:", "PASS" if not failures else "FAIL")
    for f in failures:
        print("  -", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
