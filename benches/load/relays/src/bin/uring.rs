//! A byte relay on a hand-rolled io_uring loop: one thread, one ring, every
//! receive and send of a turn submitted in one `io_uring_enter`, so the
//! upstream that shares the core is woken once per turn, not once per send.
//! Measurement only (BENCHMARKS.md, "Why 1.25 × nginx is not reached"): it
//! is the one design measured here above 1.25 × nginx, and it needs `unsafe`
//! (the kernel writes into buffers the ring holds by raw pointer), which
//! deskgate itself does not use.
//!
//!     uring LISTEN_ADDR UPSTREAM_ADDR

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::{io, process};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

const BUF: usize = 16 * 1024;
const ACCEPT: u64 = u64::MAX;

/// One direction of a connection pair: bytes read from `src` go to `dst`.
/// Its buffer is boxed and never moved or freed while the ring may write to
/// it: directions are only ever appended to `dirs`, never removed.
struct Dir {
    src: RawFd,
    dst: RawFd,
    buf: Box<[u8; BUF]>,
    len: usize,
    sent: usize,
    closed: bool,
}

/// user_data: the direction's index, and whether the operation is a send.
fn tag(idx: usize, send: bool) -> u64 {
    ((idx as u64) << 1) | send as u64
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: uring LISTEN_ADDR UPSTREAM_ADDR");
        process::exit(2);
    };
    if let Err(e) = run(&listen, &upstream) {
        eprintln!("uring: {e}");
        process::exit(1);
    }
}

fn run(listen: &str, upstream: &str) -> io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    let lfd = listener.as_raw_fd();
    let mut ring = IoUring::new(4096)?;
    let mut dirs: Vec<Dir> = Vec::new();
    let mut done: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
    push(&mut ring, opcode::AcceptMulti::new(types::Fd(lfd)).build().user_data(ACCEPT))?;
    loop {
        ring.submit_and_wait(1)?;
        done.clear();
        done.extend(ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        for &(data, res, flags) in &done {
            if data == ACCEPT {
                if !cqueue::more(flags) {
                    push(&mut ring, opcode::AcceptMulti::new(types::Fd(lfd)).build().user_data(ACCEPT))?;
                }
                if res >= 0 {
                    pair_up(&mut ring, &mut dirs, res, upstream)?;
                }
                continue;
            }
            let idx = (data >> 1) as usize;
            let dir = &mut dirs[idx];
            if res <= 0 {
                // End of stream or an error: pass the end on, and stop this
                // direction. Once both directions have stopped, nothing of
                // the pair is in flight, so both descriptors can go.
                dir.closed = true;
                let (src, dst) = (dir.src, dir.dst);
                // SAFETY: plain system calls on descriptors this relay owns;
                // the pair's directions are never used again once closed.
                unsafe {
                    libc::shutdown(dst, libc::SHUT_WR);
                    if dirs[idx ^ 1].closed {
                        libc::close(src);
                        libc::close(dst);
                    }
                }
                continue;
            }
            if data & 1 == 0 {
                dir.len = res as usize;
                dir.sent = 0;
            } else {
                dir.sent += res as usize;
            }
            let next = step(dir, idx);
            push(&mut ring, next)?;
        }
    }
}

/// Connects the upstream for a new downstream connection and starts both
/// directions' receives.
fn pair_up(ring: &mut IoUring, dirs: &mut Vec<Dir>, down: RawFd, upstream: &str) -> io::Result<()> {
    let Ok(up) = TcpStream::connect(upstream) else {
        // SAFETY: closing the accepted descriptor, which nothing else holds.
        unsafe { libc::close(down) };
        return Ok(());
    };
    up.set_nodelay(true)?;
    let up = up.into_raw_fd();
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads 4 bytes from a live c_int.
    unsafe {
        libc::setsockopt(
            down,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    for (src, dst) in [(down, up), (up, down)] {
        let idx = dirs.len();
        dirs.push(Dir { src, dst, buf: Box::new([0; BUF]), len: 0, sent: 0, closed: false });
        let next = step(&mut dirs[idx], idx);
        push(ring, next)?;
    }
    Ok(())
}

/// The direction's next operation: send what is left of the last read, or
/// read again.
fn step(dir: &mut Dir, idx: usize) -> squeue::Entry {
    debug_assert!(!dir.closed);
    if dir.sent < dir.len {
        let rest = &dir.buf[dir.sent..dir.len];
        opcode::Send::new(types::Fd(dir.dst), rest.as_ptr(), rest.len() as u32).build().user_data(tag(idx, true))
    } else {
        opcode::Recv::new(types::Fd(dir.src), dir.buf.as_mut_ptr(), BUF as u32).build().user_data(tag(idx, false))
    }
}

fn push(ring: &mut IoUring, entry: squeue::Entry) -> io::Result<()> {
    // SAFETY: every entry points into a `Dir` buffer, which lives as long as
    // the ring (see `Dir`), and at most one operation per direction is in
    // flight, so the kernel and this loop never use a buffer at once.
    while unsafe { ring.submission().push(&entry) }.is_err() {
        ring.submit()?;
    }
    Ok(())
}
