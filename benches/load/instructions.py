"""Runs one deskgate under callgrind, sends N calls over 4 keep-alive
connections and prints the instructions the whole process executed.
Prints the instructions and the heap allocations the whole process made.
Used by instructions.sh, which subtracts a run with N = 0 (start-up, shutdown).

    python3 instructions.py BIN CONFIG N [REQUEST]
    WAVE=16 python3 instructions.py BIN CONFIG N     # 16 calls at once
    EXPECT=429 python3 instructions.py BIN CONFIG N  # refusals after the warm-up

With WAVE=k the calls go out k at a time, one on each of k connections, and
all k answers are read before the next wave: the gateway finds them ready
together, as under load, so the Redis store decides them in batches.
"""
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

binary, config, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
request = (sys.argv[4] if len(sys.argv) > 4 else
           'GET /api/v2/tickets HTTP/1.1\r\nHost: bench.freshdesk.com\r\nAuthorization: Basic YXBpa2V5Olg=\r\n\r\n')
request = request.encode()
wave = int(os.environ.get('WAVE', '1'))
# The status every call after the warm-up must get (a refused call costs
# differently from a forwarded one, so a mix would measure neither).
expect = ('HTTP/1.1 ' + os.environ.get('EXPECT', '200')).encode()


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


work = tempfile.mkdtemp(prefix='deskgate-ir-')
port, admin = free_port(), free_port()
conf = open(config).read().replace('LISTEN_PORT', str(port)).replace('ADMIN_PORT', str(admin))
with open(os.path.join(work, 'deskgate.toml'), 'w') as f:
    f.write(conf)
out = os.path.join(work, 'callgrind.out')
env = dict(os.environ, DESKGATE_WORKERS='1', RUST_LOG=os.environ.get('BENCH_RUST_LOG', 'warn'))
proc = subprocess.Popen(['valgrind', '--tool=callgrind', '--callgrind-out-file=' + out, binary,
                         '--log-format', 'json', '--config', os.path.join(work, 'deskgate.toml')],
                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    conns = []
    deadline = time.time() + 60
    while not conns:
        try:
            conns = [socket.create_connection(('127.0.0.1', port)) for _ in range(max(4, wave))]
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                sys.exit('deskgate did not start under valgrind')
            time.sleep(0.1)

    def call(s, send=True):
        if send:
            s.sendall(request)
        buf = b''
        while b'\r\n\r\n' not in buf:
            buf += s.recv(65536)
        head, _, body = buf.partition(b'\r\n\r\n')
        m = re.search(rb'(?i)\r\ncontent-length: *(\d+)', head)
        while m and len(body) < int(m.group(1)):
            body += s.recv(65536)
        return head

    # One call per connection first: lazy start-up work, pool connections.
    warm = [call(s) for s in conns]
    heads = []
    if wave == 1:
        for i in range(n):
            heads.append(call(conns[i % 4]))
    else:
        for _ in range(n // wave):
            for s in conns[:wave]:
                s.sendall(request)
            heads.extend(call(s, send=False) for s in conns[:wave])
    # The warm-up is forwarded in every run (the flood tenant's budget is
    # exactly the warm-up); the calls after it get `expect`.
    bad = [h for h in warm if not h.startswith(b'HTTP/1.1 200')]
    bad += [h for h in heads if not h.startswith(expect)]
    if bad:
        sys.exit('not %s: %r' % (expect.decode(), bad[0][:200]))
    for s in conns:
        s.close()
    proc.send_signal(2)
    proc.wait(timeout=60)
finally:
    if proc.poll() is None:
        proc.kill()
# The instructions, and the heap allocations: calls made to the allocator's
# entry points (jemalloc's, and libc's for C code), read from the call
# records (`cfn=` then `calls=`) of the callgrind output.
ALLOC = re.compile(r'^(_rjem_)?(malloc|calloc|realloc|mallocx|rallocx)$')
names, callee, total, allocs = {}, None, 0, 0
for line in open(out, errors='replace'):
    if line.startswith('summary:'):
        total = int(line.split()[1])
    elif line.startswith('cfn='):
        m = re.match(r'cfn=\((\d+)\)(?: (.*))?', line.strip())
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2)
            callee = names.get(m.group(1), '')
    elif line.startswith('fn='):
        m = re.match(r'fn=\((\d+)\) (.*)', line.strip())
        if m:
            names[m.group(1)] = m.group(2)
    elif line.startswith('calls=') and callee is not None:
        if ALLOC.match(callee):
            allocs += int(line.split()[0][len('calls='):])
        callee = None
print(total, allocs)
