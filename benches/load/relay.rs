//! The ceiling for any proxy in the load benchmark: a TCP relay that does no
//! HTTP work at all. Each downstream connection gets its own upstream
//! connection and bytes are copied both ways, one read and one write per
//! chunk, on a current-thread tokio runtime like `deskgate --workers 1`.
//! It makes the same four socket calls per request a real proxy must make,
//! so its throughput is what a proxy reaches when its own work costs nothing.
//!
//!     cargo run --release --example relay -- 127.0.0.1:18190 127.0.0.1:18181

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: relay LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&listen).await?;
        loop {
            let (down, _) = listener.accept().await?;
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(&upstream).await else { return };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::join!(pump(dr, uw), pump(ur, dw));
            });
        }
    })
}

async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
