//! Open-loop, constant-rate HTTP/1.1 load generator for the perf harness.
//!
//! `ringgate-loadgen URL RATE SECONDS [CONNECTIONS] [HGRM_OUT]`
//!
//! Request i is *due* at `start + i / RATE`, whatever happened to earlier
//! requests; connection k sends the requests with `i % CONNECTIONS == k`.
//! When the connection was still busy with an earlier response at the due
//! time, latency is measured from the due time, so a stalled server is
//! charged for the whole time requests queued behind the stall (the
//! coordinated-omission correction wrk2 popularised). When the connection was
//! free, latency is measured from the actual send: the lateness of the
//! generator's own timer (1 ms granularity) is not the server's. Results go into an HdrHistogram (1 µs to
//! 60 s, 3 significant digits): a summary line on stdout and, with
//! HGRM_OUT, the percentile distribution in HdrHistogram's `.hgrm` text
//! format, which its plotter reads.
//!
//! One thread, one monoio runtime, keep-alive connections, no pipelining.

use std::cell::RefCell;
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

struct Args {
    addr: SocketAddr,
    request: Vec<u8>,
    rate: f64,
    seconds: f64,
    connections: usize,
    hgrm: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 4 {
        return Err("usage: ringgate-loadgen URL RATE SECONDS [CONNECTIONS] [HGRM_OUT]".into());
    }
    let url = a[1].strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = url.split_at(url.find('/').unwrap_or(url.len()));
    let path = if path.is_empty() { "/" } else { path };
    let addr: SocketAddr = host
        .parse()
        .map_err(|_| format!("{host:?} must be IP:port"))?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringgate-loadgen\r\n\r\n")
            .into_bytes();
    Ok(Args {
        addr,
        request,
        rate: a[2].parse().map_err(|_| "RATE must be a number")?,
        seconds: a[3].parse().map_err(|_| "SECONDS must be a number")?,
        connections: a
            .get(4)
            .map_or(Ok(64), |c| c.parse())
            .map_err(|_| "CONNECTIONS must be a number")?,
        hgrm: a.get(5).cloned(),
    })
}

#[derive(Default)]
struct Totals {
    ok: u64,
    errors: u64,
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime");
    let hist = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ));
    let totals = Rc::new(RefCell::new(Totals::default()));
    let total_requests = (args.rate * args.seconds) as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    rt.block_on(async {
        let start = Instant::now() + Duration::from_millis(100);
        let mut tasks = Vec::new();
        for k in 0..args.connections {
            let (hist, totals, request) = (hist.clone(), totals.clone(), args.request.clone());
            let addr = args.addr;
            let n = args.connections as u64;
            tasks.push(monoio::spawn(async move {
                let mut conn = Conn::new(addr, request);
                let mut i = k as u64;
                let mut free_at = Instant::now();
                while i < total_requests {
                    let due = start + interval.mul_f64(i as f64);
                    let now = Instant::now();
                    if due > now {
                        monoio::time::sleep(due - now).await;
                    }
                    let from = if free_at > due { due } else { Instant::now() };
                    let result = conn.exchange().await;
                    free_at = Instant::now();
                    match result {
                        Ok(()) => {
                            let us = free_at.duration_since(from).as_micros().max(1) as u64;
                            hist.borrow_mut().saturating_record(us);
                            totals.borrow_mut().ok += 1;
                        }
                        Err(_) => {
                            totals.borrow_mut().errors += 1;
                            conn.reset();
                        }
                    }
                    i += n;
                }
            }));
        }
        for t in tasks {
            t.await;
        }
    });
    let h = hist.borrow();
    let t = totals.borrow();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "requests={} errors={} rate={} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3}",
        t.ok,
        t.errors,
        args.rate,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
    if let Some(path) = &args.hgrm {
        write_hgrm(&h, path).expect("write hgrm");
    }
}

/// HdrHistogram's percentile distribution text format, values in ms.
fn write_hgrm(h: &Histogram<u64>, path: &str) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        f,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let p = v.quantile_iterated_to();
        let inv = if p < 1.0 {
            format!("{:14.2}", 1.0 / (1.0 - p))
        } else {
            String::new()
        };
        writeln!(
            f,
            "{:12.3} {:14.12} {:10} {}",
            v.value_iterated_to() as f64 / 1000.0,
            p,
            total,
            inv
        )?;
    }
    writeln!(
        f,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    )?;
    writeln!(
        f,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / 1000.0,
        h.len()
    )?;
    writeln!(
        f,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        h.distinct_values()
    )?;
    Ok(())
}

/// One keep-alive connection; reconnects after an error.
struct Conn {
    addr: SocketAddr,
    request: Vec<u8>,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    fn new(addr: SocketAddr, request: Vec<u8>) -> Self {
        Self {
            addr,
            request,
            stream: None,
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    fn reset(&mut self) {
        self.stream = None;
        self.buf.clear();
    }

    async fn exchange(&mut self) -> std::io::Result<()> {
        if self.stream.is_none() {
            let s = TcpStream::connect_addr(self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let stream = self.stream.as_mut().expect("connected");
        let req = std::mem::take(&mut self.request);
        let (res, req) = stream.write_all(req).await;
        self.request = req;
        res?;
        // Read one response: head, then Content-Length bytes.
        let mut need: Option<usize> = None;
        loop {
            if need.is_none() {
                if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                    if !head.starts_with("http/1.1 2") {
                        return Err(std::io::Error::other("non-2xx"));
                    }
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .ok_or_else(|| std::io::Error::other("no content-length"))?;
                    need = Some(end + 4 + len);
                }
            }
            if let Some(total) = need {
                if self.buf.len() >= total {
                    self.buf.drain(..total);
                    return Ok(());
                }
            }
            if self.buf.len() == self.buf.capacity() {
                self.buf.reserve(64 * 1024);
            }
            let owned = std::mem::take(&mut self.buf);
            let len = owned.len();
            let (res, slice) = stream
                .read(monoio::buf::IoBufMut::slice_mut(owned, len..))
                .await;
            self.buf = slice.into_inner();
            if res? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
