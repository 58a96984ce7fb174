//! A byte relay on monoio: io_uring with its own thread-per-core executor
//! and a safe owned-buffer API. Same shape as benches/load/relay.rs (one
//! upstream connection per downstream one, a read and a write per chunk).
//! Measurement only (BENCHMARKS.md, "Why 1.25 × nginx is not reached").
//!
//!     monoio LISTEN_ADDR UPSTREAM_ADDR

use std::process;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::{TcpListener, TcpStream};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: monoio LISTEN_ADDR UPSTREAM_ADDR");
        process::exit(2);
    };
    let served: std::io::Result<()> =
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().enable_timer().build().and_then(|mut rt| {
            rt.block_on(async move {
                let listener = TcpListener::bind(listen)?;
                loop {
                    let (down, _) = listener.accept().await?;
                    let upstream = upstream.clone();
                    monoio::spawn(async move {
                        let Ok(up) = TcpStream::connect(upstream).await else { return };
                        let _ = down.set_nodelay(true);
                        let _ = up.set_nodelay(true);
                        let (dr, dw) = down.into_split();
                        let (ur, uw) = up.into_split();
                        let there = monoio::spawn(pump(dr, uw));
                        pump(ur, dw).await;
                        there.await;
                    });
                }
            })
        });
    if let Err(e) = served {
        eprintln!("monoio: {e}");
        process::exit(1);
    }
}

async fn pump(mut from: impl AsyncReadRent, mut to: impl AsyncWriteRent) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let (read, b) = from.read(buf).await;
        buf = b;
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (written, b) = to.write_all(buf.slice_mut(..n)).await;
        buf = b.into_inner();
        if written.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
