"""Instructions Redis executes per decision of the window script, counted by
valgrind (callgrind) around redis-server: a count, not a time, so two
versions of the script compare exactly on a noisy machine.

    git show HEAD~1:src/limiter/window.lua > /tmp/old.lua
    python3 benches/load/script_instructions.py /tmp/old.lua src/limiter/window.lua

For each script and batch shape (calls per EVALSHA, distinct tenant keys
among them, keys taken in turn so equal keys are not side by side unless
there is one key), every call admitted against an account and a ticket_list
window: (instructions with 250 EVALSHA - with 50) / (200 * calls per batch),
so start-up and shutdown cancel out. Needs valgrind and redis-server; talks
to 127.0.0.1 only.
"""
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

SHAPES = [(1, 1), (15, 1), (15, 3), (15, 15)]  # (calls per EVALSHA, distinct keys)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def instructions(script, batch, keys, n):
    """Total instructions of a redis-server that ran `n` EVALSHA of `batch` calls."""
    port = free_port()
    out = os.path.join(tempfile.mkdtemp(prefix='deskgate-lua-ir-'), 'callgrind.out')
    proc = subprocess.Popen(['valgrind', '--tool=callgrind', '--callgrind-out-file=' + out, 'redis-server',
                             '--port', str(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                sock = socket.create_connection(('127.0.0.1', port))
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    sys.exit('redis-server did not start under valgrind')
                time.sleep(0.1)
        replies = sock.makefile('rb')

        def read():
            line = replies.readline()
            kind, rest = line[:1], line[1:-2]
            if kind == b'-':
                sys.exit('redis: ' + rest.decode())
            if kind == b'$':
                size = int(rest)
                return None if size < 0 else replies.read(size + 2)[:-2]
            if kind == b'*':
                return [read() for _ in range(int(rest))]
            return rest

        def command(*args):
            out = b'*%d\r\n' % len(args)
            for a in args:
                a = a.encode() if isinstance(a, str) else a
                out += b'$%d\r\n%s\r\n' % (len(a), a)
            sock.sendall(out)
            return read()

        # The packing of src/limiter/redis.rs: cost, 2 policies (account,
        # ticket_list), each id, quota, window_s, slot_us; budgets never reached.
        slot = (60 * 1_000_000 + 119) // 120
        args = struct.pack('>IBBIIIBIII', 1, 2, 0, 2_000_000_000, 60, slot, 3, 2_000_000_000, 60, slot)
        with open(script) as f:
            sha = command('SCRIPT', 'LOAD', f.read())
        names = ['deskgate:{t%d}:rl' % (i % keys) for i in range(batch)]
        for _ in range(n):
            command('EVALSHA', sha, str(batch), *names, *([args] * batch))
        sock.sendall(b'*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n')
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    with open(out) as f:
        for line in f:
            if line.startswith(('summary:', 'totals:')):
                return int(line.split()[1])
    sys.exit('no instruction total in ' + out)


def main():
    scripts = sys.argv[1:] or ['src/limiter/window.lua']
    print('%-24s' % 'calls/EVALSHA, keys' + ''.join('%26s' % os.path.basename(s) for s in scripts))
    for batch, keys in SHAPES:
        row = []
        for s in scripts:
            per = (instructions(s, batch, keys, 250) - instructions(s, batch, keys, 50)) // (200 * batch)
            row.append('%26d' % per)
        print('%-24s' % ('%d, %d' % (batch, keys)) + ''.join(row), flush=True)


if __name__ == '__main__':
    main()
