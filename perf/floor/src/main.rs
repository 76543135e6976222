//! The floor: the least a keep-alive HTTP/1.1 reverse proxy on ringgate's
//! runtime can do per request, to tell the cost of the kernel and the
//! runtime from the cost of the gateway's own work.
//!
//! `ringgate-floor LISTEN ORIGIN` runs one thread with the same io_uring
//! ring as a ringgate worker (`SINGLE_ISSUER | DEFER_TASKRUN`). Each client
//! connection gets its own upstream connection, opened once, and every
//! request is two reads and two writes, as in ringgate: the request's bytes
//! are sent upstream as they arrived, the response's bytes back as they
//! arrived. No header is parsed beyond finding where a message ends (a GET
//! without a body; a response framed by `Content-Length`), no routing, no
//! timeouts, no logs, no metrics, no pool, no limits: it is not a proxy
//! anyone should deploy, only a lower bound for one (`perf/compare.sh
//! --floor`).

use std::io;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use monoio::{IoUringDriver, RuntimeBuilder};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, origin] = &args[..] else {
        eprintln!("usage: ringgate-floor LISTEN-ADDR ORIGIN-ADDR");
        std::process::exit(2);
    };
    let mut urb = io_uring::IoUring::builder();
    urb.setup_single_issuer().setup_defer_taskrun();
    let mut rt = RuntimeBuilder::<IoUringDriver>::new()
        .uring_builder(urb)
        .with_entries(4096)
        .build()
        .expect("io_uring runtime (Linux 6.1+)");
    let origin = origin.clone();
    rt.block_on(async move {
        let listener = TcpListener::bind(listen.as_str()).expect("bind");
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let origin = origin.clone();
            monoio::spawn(async move {
                let _ = serve(client, &origin).await;
            });
        }
    });
}

async fn serve(mut client: TcpStream, origin: &str) -> io::Result<()> {
    client.set_nodelay(true)?;
    let mut up = TcpStream::connect(origin).await?;
    up.set_nodelay(true)?;
    let mut req = Vec::with_capacity(16 * 1024);
    let mut resp = Vec::with_capacity(64 * 1024);
    loop {
        // The request: bytes until the end of its head.
        req.clear();
        loop {
            let len = req.len();
            let (r, b) = client.read(req.slice_mut(len..)).await;
            req = b.into_inner();
            if r? == 0 {
                return Ok(());
            }
            if req.ends_with(b"\r\n\r\n") {
                break;
            }
            if req.len() == req.capacity() {
                return Ok(());
            }
        }
        let (r, b) = up.write_all(req).await;
        req = b;
        r?;
        // The response: its head, then Content-Length bytes, forwarded as
        // they arrive.
        let mut left: Option<usize> = None;
        loop {
            resp.clear();
            let (r, b) = up.read(resp).await;
            resp = b;
            let n = r?;
            if n == 0 {
                return Ok(());
            }
            let rest = match left {
                Some(rest) => rest,
                None => match framing(&resp) {
                    Some(total) => total,
                    None => return Ok(()),
                },
            };
            let rest = rest.saturating_sub(n);
            let (r, b) = client.write_all(resp).await;
            resp = b;
            r?;
            if rest == 0 {
                break;
            }
            left = Some(rest);
        }
    }
}

/// The length of a response whose head starts `buf`: head plus
/// `Content-Length`. `None` if the head is not all in `buf` or has no
/// length (the floor does not handle those).
fn framing(buf: &[u8]) -> Option<usize> {
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let name = b"\r\ncontent-length:";
    let at = buf[..head]
        .windows(name.len())
        .position(|w| w.eq_ignore_ascii_case(name))?
        + name.len();
    let digits = buf[at..head]
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| b.is_ascii_digit());
    let mut len = 0usize;
    for d in digits {
        len = len.checked_mul(10)?.checked_add(usize::from(d - b'0'))?;
    }
    Some(head + len)
}
