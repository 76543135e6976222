//! Open-loop, constant-rate HTTP/1.1 load generator for the perf harness.
//!
//! `ringgate-loadgen URL RATE SECONDS [CONNECTIONS] [HGRM_OUT]`
//!
//! Request i is *due* at `start + i / RATE`, whatever happened to earlier
//! requests; connection k sends the requests with `i % CONNECTIONS == k`.
//! When the connection is still busy with an earlier response at the due
//! time, the request waits for it and its latency counts from the due time,
//! so a stalled server is charged for the whole time requests queued behind
//! the stall (the coordinated-omission correction wrk2 popularised). When
//! the connection is free, the request leaves at once and its latency
//! counts from the send.
//!
//! Requests leave at their due times, evenly spaced, not in bursts: the
//! generator's wait ends at the next due time (`epoll_pwait2` with a
//! nanosecond timeout, timer slack 1 ns). A millisecond timer wheel, as async
//! runtimes have, would send each millisecond's requests together, and the
//! server would queue them behind each other; the histogram would then
//! measure that self-made queue more than the server.
//!
//! Results go into an HdrHistogram (1 µs to 60 s, 3 significant digits): a
//! summary line on stdout and, with HGRM_OUT, the percentile distribution
//! in HdrHistogram's `.hgrm` text format, which its plotter reads.
//!
//! One thread, epoll, non-blocking keep-alive connections, no pipelining.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use hdrhistogram::Histogram;

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
    let args = Args {
        addr,
        request,
        rate: a[2].parse().map_err(|_| "RATE must be a number")?,
        seconds: a[3].parse().map_err(|_| "SECONDS must be a number")?,
        connections: a
            .get(4)
            .map_or(Ok(64), |c| c.parse())
            .map_err(|_| "CONNECTIONS must be a number")?,
        hgrm: a.get(5).cloned(),
    };
    if !(args.rate > 0.0 && args.seconds > 0.0 && args.connections > 0) {
        return Err("RATE, SECONDS and CONNECTIONS must be positive".into());
    }
    Ok(args)
}

/// CLOCK_MONOTONIC in nanoseconds.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The generator's event loop: an epoll set with every connection's
/// socket, waited on with a nanosecond timeout (`epoll_pwait2`, Linux
/// 5.11) so the wait ends at the next due time.
struct Poller {
    epoll: RawFd,
}

impl Poller {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscalls; the descriptor is owned by the Poller.
        unsafe {
            // Timeouts end at their time, not up to 50 µs later.
            libc::prctl(libc::PR_SET_TIMERSLACK, 1);
            let epoll = check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?;
            Ok(Self { epoll })
        }
    }

    fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: ev is valid for the call.
        check(unsafe { libc::epoll_ctl(self.epoll, libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Waits for events until `until` (CLOCK_MONOTONIC ns; `None`: until
    /// one comes).
    fn wait(&self, events: &mut [libc::epoll_event], until: Option<u64>) -> io::Result<usize> {
        let timeout = until.map(|at| {
            let left = at.saturating_sub(now_ns());
            libc::timespec {
                tv_sec: (left / 1_000_000_000) as libc::time_t,
                tv_nsec: (left % 1_000_000_000) as libc::c_long,
            }
        });
        // SAFETY: events is a valid buffer of its length; the timeout, if
        // any, outlives the call; no signal mask.
        let n = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                self.epoll,
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                timeout
                    .as_ref()
                    .map_or(std::ptr::null(), |t| t as *const libc::timespec),
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as usize)
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned and closed once.
        unsafe { libc::close(self.epoll) };
    }
}

/// One keep-alive connection; reconnects after an error.
struct Conn {
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// When the request in flight counts from (ns), if one is.
    in_flight: Option<u64>,
    /// Due times of requests that found the connection busy, in order.
    backlog: VecDeque<u64>,
}

struct Generator {
    addr: SocketAddr,
    request: Vec<u8>,
    poller: Poller,
    conns: Vec<Conn>,
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    scratch: Box<[u8]>,
}

impl Generator {
    /// Sends connection `k`'s next request, counting from `from`. A
    /// request that cannot be sent counts as an error, and the connection's
    /// next queued request goes out on a new connection.
    fn send(&mut self, k: usize, mut from: u64) {
        loop {
            if self.try_send(k).is_ok() {
                self.conns[k].in_flight = Some(from);
                return;
            }
            self.errors += 1;
            self.drop_conn(k);
            match self.conns[k].backlog.pop_front() {
                Some(due) => from = due,
                None => return,
            }
        }
    }

    fn try_connect(&mut self, k: usize) -> Result<(), ()> {
        if self.conns[k].stream.is_none() {
            let s = TcpStream::connect(self.addr).map_err(drop)?;
            s.set_nodelay(true).map_err(drop)?;
            s.set_nonblocking(true).map_err(drop)?;
            self.poller.add(s.as_raw_fd(), k as u64).map_err(drop)?;
            self.conns[k].stream = Some(s);
        }
        Ok(())
    }

    fn try_send(&mut self, k: usize) -> Result<(), ()> {
        self.try_connect(k)?;
        let stream = self.conns[k].stream.as_mut().expect("connected");
        // One small request on an idle connection: the socket buffer takes
        // it whole, or something is wrong.
        match stream.write(&self.request) {
            Ok(n) if n == self.request.len() => Ok(()),
            _ => Err(()),
        }
    }

    /// Closes connection `k` (which removes it from the epoll set).
    fn drop_conn(&mut self, k: usize) {
        let c = &mut self.conns[k];
        c.stream = None;
        c.buf.clear();
        c.in_flight = None;
    }

    /// The connection failed: its request in flight, if any, counts as an
    /// error, and its next queued request goes out on a new connection.
    fn fail(&mut self, k: usize) {
        if self.conns[k].in_flight.is_some() {
            self.errors += 1;
        }
        self.drop_conn(k);
        if let Some(due) = self.conns[k].backlog.pop_front() {
            self.send(k, due);
        }
    }

    /// Reads what connection `k` has and completes its response.
    fn on_readable(&mut self, k: usize) {
        // One read per readiness: a small response comes whole, and the
        // level-triggered epoll set reports what is left of a larger one.
        let Some(stream) = self.conns[k].stream.as_mut() else {
            return;
        };
        match stream.read(&mut self.scratch) {
            Ok(0) => return self.fail(k),
            Ok(n) => self.conns[k].buf.extend_from_slice(&self.scratch[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return
            }
            Err(_) => return self.fail(k),
        }
        let Some(from) = self.conns[k].in_flight else {
            return;
        };
        match response_len(&self.conns[k].buf) {
            Ok(Some(total)) if self.conns[k].buf.len() >= total => {
                let done = now_ns();
                self.hist
                    .saturating_record((done.saturating_sub(from) / 1000).max(1));
                self.ok += 1;
                let c = &mut self.conns[k];
                c.buf.drain(..total);
                c.in_flight = None;
                if let Some(due) = c.backlog.pop_front() {
                    self.send(k, due);
                }
            }
            Ok(_) => {}
            Err(()) => self.fail(k),
        }
    }
}

/// The length of the response at the start of `buf` once its head is
/// there; an error for a non-2xx response or one without Content-Length.
fn response_len(buf: &[u8]) -> Result<Option<usize>, ()> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = &buf[..end];
    if !head.starts_with(b"HTTP/1.1 2") {
        return Err(());
    }
    const NAME: &[u8] = b"content-length:";
    for line in head.split(|&b| b == b'\n') {
        if line.len() > NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME) {
            let value = std::str::from_utf8(&line[NAME.len()..]).map_err(drop)?;
            let len: usize = value.trim().parse().map_err(drop)?;
            return Ok(Some(end + 4 + len));
        }
    }
    Err(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut g = Generator {
        addr: args.addr,
        request: args.request.clone(),
        poller: Poller::new().expect("epoll"),
        conns: (0..args.connections)
            .map(|_| Conn {
                stream: None,
                buf: Vec::with_capacity(64 * 1024),
                in_flight: None,
                backlog: VecDeque::new(),
            })
            .collect(),
        hist: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
        ok: 0,
        errors: 0,
        scratch: vec![0; 64 * 1024].into_boxed_slice(),
    };
    // Connections open before the clock starts.
    for k in 0..args.connections {
        if let Err(()) = g.try_connect(k) {
            eprintln!("cannot connect to {}", args.addr);
            std::process::exit(1);
        }
    }
    let total = (args.rate * args.seconds) as u64;
    let start = now_ns() + 100_000_000;
    let due = |i: u64| start + (i as f64 * 1e9 / args.rate) as u64;
    let n = args.connections as u64;
    let mut next = 0u64;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    // After the last due time, responses get this long to come back.
    let grace_ns = 10_000_000_000u64;
    loop {
        let now = now_ns();
        while next < total && due(next) <= now {
            let k = (next % n) as usize;
            if g.conns[k].in_flight.is_none() {
                g.send(k, now);
            } else {
                g.conns[k].backlog.push_back(due(next));
            }
            next += 1;
        }
        let until = if next < total {
            Some(due(next))
        } else if g.ok + g.errors >= total {
            break;
        } else {
            let end = due(total - 1) + grace_ns;
            if now >= end {
                // Whatever has not come back by now counts as failed.
                g.errors = total - g.ok;
                break;
            }
            Some(end)
        };
        let ready = g.poller.wait(&mut events, until).expect("epoll_pwait2");
        for ev in &events[..ready] {
            g.on_readable(ev.u64 as usize);
        }
    }
    println!(
        "requests={} errors={} rate={} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3}",
        g.ok,
        g.errors,
        args.rate,
        g.hist.value_at_quantile(0.5) as f64 / 1000.0,
        g.hist.value_at_quantile(0.9) as f64 / 1000.0,
        g.hist.value_at_quantile(0.99) as f64 / 1000.0,
        g.hist.value_at_quantile(0.999) as f64 / 1000.0,
        g.hist.max() as f64 / 1000.0
    );
    if let Some(path) = &args.hgrm {
        write_hgrm(&g.hist, path).expect("write hgrm");
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
