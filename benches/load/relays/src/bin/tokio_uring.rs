//! A byte relay on tokio-uring: io_uring behind tokio's current-thread
//! runtime, with a safe owned-buffer API. Same shape as benches/load/relay.rs
//! (one upstream connection per downstream one, a read and a write per
//! chunk). Measurement only (BENCHMARKS.md, "Why 1.25 × nginx is not reached").
//!
//!     tokio_uring LISTEN_ADDR UPSTREAM_ADDR

use std::net::SocketAddr;
use std::process;
use std::rc::Rc;

use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(Ok(listen)), Some(Ok(upstream))) =
        (args.next().map(|a| a.parse::<SocketAddr>()), args.next().map(|a| a.parse::<SocketAddr>()))
    else {
        eprintln!("usage: tokio_uring LISTEN_ADDR UPSTREAM_ADDR (IP:PORT each)");
        process::exit(2);
    };
    let served: std::io::Result<()> = tokio_uring::start(async move {
        let listener = TcpListener::bind(listen)?;
        loop {
            let (down, _) = listener.accept().await?;
            tokio_uring::spawn(async move {
                let Ok(up) = TcpStream::connect(upstream).await else { return };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let (down, up) = (Rc::new(down), Rc::new(up));
                let there = tokio_uring::spawn(pump(down.clone(), up.clone()));
                pump(up, down).await;
                let _ = there.await;
            });
        }
    });
    if let Err(e) = served {
        eprintln!("tokio_uring: {e}");
        process::exit(1);
    }
}

async fn pump(from: Rc<TcpStream>, to: Rc<TcpStream>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let (read, b) = from.read(buf).await;
        buf = b;
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (written, b) = to.write_all(buf.slice(..n)).await;
        buf = b.into_inner();
        if written.is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
