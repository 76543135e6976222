//! Test harness: the real `ringgate` binary on ephemeral loopback ports, a
//! recording HTTP/1.1 test upstream, and a raw-socket HTTP client.
//!
//! Nothing here sleeps to synchronise: the gateway is used once it logs
//! `ready`, upstream events are awaited on condition variables, and every
//! wait has a generous deadline that fails the test instead of hanging it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub mod redis;
pub mod tls;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Both event loops: tests of I/O behaviour run on each.
pub const DRIVERS: [&str; 2] = ["io_uring", "epoll"];

// ---------------------------------------------------------------- gateway

/// A running gateway process.
pub struct Gateway {
    child: Child,
    logs: Arc<(Mutex<Vec<String>>, Condvar)>,
    listeners: HashMap<String, SocketAddr>,
    admin: Option<SocketAddr>,
    _dir: tempfile::TempDir,
    pub config_path: std::path::PathBuf,
}

impl Gateway {
    /// Starts the gateway with this config text; waits for `ready`.
    pub fn start(config: &str) -> Gateway {
        Self::try_start(config).unwrap_or_else(|e| panic!("gateway did not start: {e}"))
    }

    /// Starts the gateway; `Err` carries its log if it never became ready.
    pub fn try_start(config: &str) -> Result<Gateway, String> {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("ringgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringgate"))
            .args(["run", "-c"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringgate");
        let logs: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (lock, cv) = &*sink;
                lock.lock().unwrap().push(line);
                cv.notify_all();
            }
            let (lock, cv) = &*sink;
            lock.lock().unwrap().push("<exited>".into());
            cv.notify_all();
        });
        let mut gw = Gateway {
            child,
            logs,
            listeners: HashMap::new(),
            admin: None,
            _dir: dir,
            config_path,
        };
        if gw
            .wait_log_any(&[" ready ", "<exited>"])
            .contains("<exited>")
        {
            return Err(gw.log_text());
        }
        for line in gw.lines() {
            if line.contains(" listening ") {
                let name = field(&line, "listener=").unwrap_or_default();
                let addr = field(&line, "address=").unwrap().parse().unwrap();
                if line.contains("admin listening") {
                    gw.admin = Some(addr);
                } else {
                    gw.listeners.insert(name, addr);
                }
            }
        }
        Ok(gw)
    }

    /// Address of the listener named `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listeners[name]
    }

    /// Address of the first (usually only) listener.
    pub fn main(&self) -> SocketAddr {
        *self.listeners.values().next().unwrap()
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("admin listener")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn lines(&self) -> Vec<String> {
        self.logs.0.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until a log line contains one of `needles`; returns it.
    pub fn wait_log_any(&self, needles: &[&str]) -> String {
        let (lock, cv) = &*self.logs;
        let deadline = Instant::now() + WAIT;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| needles.iter().any(|n| l.contains(n))) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no log line with {needles:?}; log:\n{}",
                lines.join("\n")
            );
            lines = cv.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn wait_log(&self, needle: &str) -> String {
        self.wait_log_any(&[needle])
    }

    /// Counts log lines containing `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Sends a signal (`"TERM"`, `"HUP"`, ...).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit; log:\n{}",
                self.log_text()
            );
            // Polling a child's exit status has no blocking-with-timeout API.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the gateway now (VmRSS) in bytes.
    pub fn rss(&self) -> u64 {
        self.status_bytes("VmRSS:")
    }

    fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    }

    /// Peak resident memory of the gateway (VmHWM) in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.status_bytes("VmHWM:")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(key)? + key.len();
    let rest = line[start..].trim_start_matches('"');
    let end = rest.find([' ', '"']).unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// A config with one listener `public` on an ephemeral port, admin on an
/// ephemeral port, and `body` appended (clusters, routes, overrides).
pub fn config(driver: &str, body: &str) -> String {
    format!(
        "[server]\nworkers = 2\ndriver = \"{driver}\"\ndrain_timeout = \"20s\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\n{body}"
    )
}

/// A cluster named `name` over these upstreams.
pub fn cluster(name: &str, upstreams: &[&Upstream], extra: &str) -> String {
    let eps: Vec<String> = upstreams
        .iter()
        .map(|u| format!("\"{}\"", u.addr))
        .collect();
    format!(
        "[[clusters]]\nname = \"{name}\"\nendpoints = [{}]\n{extra}\n",
        eps.join(", ")
    )
}

/// A catch-all route to `cluster`.
pub fn route_all(cluster: &str) -> String {
    format!("[[routes]]\nname = \"all\"\nproxy = {{ cluster = \"{cluster}\" }}\n")
}

// ---------------------------------------------------------------- upstream

/// What the test upstream received.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub version: u8,
    pub headers: Vec<(String, String)>,
    /// The body (only the first MiB is kept).
    pub body: Vec<u8>,
    pub body_len: u64,
    /// FNV-1a of the whole body.
    pub body_hash: u64,
    pub chunked: bool,
    pub trailers: Vec<(String, String)>,
    /// Which upstream connection carried it (1-based, in accept order).
    pub conn: usize,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
}

/// How the test upstream answers.
#[derive(Clone)]
pub enum Reply {
    /// Content-Length response.
    Fixed {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Chunked response with trailers.
    Chunked {
        status: u16,
        chunks: Vec<Vec<u8>>,
        trailers: Vec<(String, String)>,
    },
    /// Body delimited by closing the connection.
    UntilClose { status: u16, body: Vec<u8> },
    /// `len` generated bytes (see [`pattern`]) with Content-Length.
    Generated { len: u64 },
    /// A raw response written as is, then the connection stays open.
    Raw(Vec<u8>),
    /// A raw response, then the connection is closed (whatever it said).
    RawThenClose(Vec<u8>),
    /// Close the connection without answering.
    Close,
    /// Never answer (until the test ends).
    Hang,
    /// Wait until the gate opens, then answer with the inner reply.
    Gated(Gate, Box<Reply>),
}

impl Reply {
    pub fn ok(body: &str) -> Reply {
        Reply::Fixed {
            status: 200,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn status(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
        Reply::Fixed {
            status,
            headers: headers
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }
}

/// A one-shot gate the test opens.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    fn wait(&self) {
        let mut open = self.0 .0.lock().unwrap();
        let deadline = Instant::now() + WAIT;
        while !*open && Instant::now() < deadline {
            open = self
                .0
                 .1
                .wait_timeout(open, deadline - Instant::now())
                .unwrap()
                .0;
        }
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

struct UpState {
    requests: Mutex<Vec<Recorded>>,
    arrived: Condvar,
    connections: AtomicUsize,
    /// Connections this upstream has closed (its socket dropped).
    closed: Mutex<usize>,
    closed_cv: Condvar,
    handler: Box<Handler>,
}

/// A recording HTTP/1.1 server on an ephemeral loopback port.
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<UpState>,
}

impl Upstream {
    /// Answers every request with `reply`.
    pub fn new(reply: Reply) -> Upstream {
        Self::with(move |_| reply.clone())
    }

    /// Answers `200 <name>` so tests can tell upstreams apart.
    pub fn named(name: &str) -> Upstream {
        let name = name.to_string();
        Self::with(move |_| Reply::ok(&name))
    }

    pub fn with(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Upstream {
        Self::serving(handler, |stream, id, st| {
            stream.set_nodelay(true).unwrap();
            serve_http(stream, id, st);
        })
    }

    /// An upstream whose accepted connections are served by `serve` (a
    /// TLS handshake first, say, then [`serve_http`]).
    fn serving(
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
        serve: impl Fn(TcpStream, usize, &UpState) + Send + Sync + 'static,
    ) -> Upstream {
        let serve = Arc::new(serve);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpState {
            requests: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            connections: AtomicUsize::new(0),
            closed: Mutex::new(0),
            closed_cv: Condvar::new(),
            handler: Box::new(handler),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let id = st.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let (st, serve) = (st.clone(), serve.clone());
                std::thread::spawn(move || {
                    serve(stream, id, &st);
                    *st.closed.lock().unwrap() += 1;
                    st.closed_cv.notify_all();
                });
            }
        });
        Upstream { addr, state }
    }

    /// An address nothing listens on (connection refused).
    ///
    /// The port stays bound (without listening) for the rest of the test
    /// process, so no other test can start listening on it meanwhile.
    pub fn refused_addr() -> SocketAddr {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        std::mem::forget(s);
        addr
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Waits until this upstream has closed at least `n` connections.
    pub fn wait_closed(&self, n: usize) {
        let guard = self.state.closed.lock().unwrap();
        let (_closed, timeout) = self
            .state
            .closed_cv
            .wait_timeout_while(guard, WAIT, |c| *c < n)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "upstream closed fewer than {n} connections"
        );
    }

    /// Waits until at least `n` requests have arrived.
    pub fn wait_requests(&self, n: usize) -> Vec<Recorded> {
        let deadline = Instant::now() + WAIT;
        let mut reqs = self.state.requests.lock().unwrap();
        while reqs.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "upstream saw {} of {n} requests",
                reqs.len()
            );
            reqs = self.state.arrived.wait_timeout(reqs, left).unwrap().0;
        }
        reqs.clone()
    }
}

/// Serves HTTP/1.1 requests on one connection until it closes.
fn serve_http<S: Read + Write>(stream: S, conn: usize, st: &UpState) {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    loop {
        let Some(mut rec) = read_request(&mut reader) else {
            return;
        };
        rec.conn = conn;
        let reply = (st.handler)(&rec);
        st.requests.lock().unwrap().push(rec);
        st.arrived.notify_all();
        if !write_reply(reader.get_mut(), reply) {
            return;
        }
    }
}

fn read_head(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            return Some(head);
        }
    }
}

fn read_request(reader: &mut impl BufRead) -> Option<Recorded> {
    let head = read_head(reader)?;
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&head).ok()?;
    let mut rec = Recorded {
        method: req.method?.to_string(),
        target: req.path?.to_string(),
        version: req.version?,
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body_hash: FNV_OFFSET,
        ..Recorded::default()
    };
    if rec.header("transfer-encoding").is_some() {
        rec.chunked = true;
        let (body_len, trailers) = read_chunked(reader, &mut rec)?;
        rec.body_len = body_len;
        rec.trailers = trailers;
    } else if let Some(len) = rec.header("content-length") {
        let mut left: u64 = len.trim().parse().ok()?;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = reader.read(&mut buf[..left.min(65536) as usize]).ok()?;
            if n == 0 {
                return None;
            }
            record_body(&mut rec, &buf[..n]);
            left -= n as u64;
        }
    }
    Some(rec)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

pub fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// FNV-1a of a whole buffer.
pub fn fnv_of(data: &[u8]) -> u64 {
    fnv(FNV_OFFSET, data)
}

fn record_body(rec: &mut Recorded, data: &[u8]) {
    rec.body_len += data.len() as u64;
    rec.body_hash = fnv(rec.body_hash, data);
    let keep = (1usize << 20)
        .saturating_sub(rec.body.len())
        .min(data.len());
    rec.body.extend_from_slice(&data[..keep]);
}

fn read_chunked(
    reader: &mut impl BufRead,
    rec: &mut Recorded,
) -> Option<(u64, Vec<(String, String)>)> {
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let size = u64::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
        if size == 0 {
            let mut trailers = Vec::new();
            loop {
                // Field values may hold obs-text: read bytes, not UTF-8.
                let mut t = Vec::new();
                reader.read_until(b'\n', &mut t).ok()?;
                if t == b"\r\n" {
                    return Some((rec.body_len, trailers));
                }
                let t = String::from_utf8_lossy(&t);
                let (n, v) = t.trim_end().split_once(':')?;
                trailers.push((n.to_string(), v.trim().to_string()));
            }
        }
        let mut data = vec![0u8; size as usize];
        reader.read_exact(&mut data).ok()?;
        record_body(rec, &data);
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf).ok()?;
    }
}

/// The generated body: byte i is `i % 251`.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) % 251) as u8)
        .collect()
}

fn write_reply<S: Read + Write>(out: &mut S, reply: Reply) -> bool {
    match reply {
        Reply::Fixed {
            status,
            headers,
            body,
        } => {
            let mut head = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
            for (n, v) in headers {
                head.push_str(&format!("{n}: {v}\r\n"));
            }
            head.push_str("\r\n");
            out.write_all(head.as_bytes()).is_ok() && out.write_all(&body).is_ok()
        }
        Reply::Chunked {
            status,
            chunks,
            trailers,
        } => {
            let mut msg =
                format!("HTTP/1.1 {status} X\r\ntransfer-encoding: chunked\r\n\r\n").into_bytes();
            for c in chunks {
                msg.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                msg.extend_from_slice(&c);
                msg.extend_from_slice(b"\r\n");
            }
            msg.extend_from_slice(b"0\r\n");
            for (n, v) in trailers {
                msg.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            msg.extend_from_slice(b"\r\n");
            out.write_all(&msg).is_ok()
        }
        Reply::UntilClose { status, body } => {
            let _ = out.write_all(format!("HTTP/1.1 {status} X\r\n\r\n").as_bytes());
            let _ = out.write_all(&body);
            false
        }
        Reply::Generated { len } => {
            if out
                .write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").as_bytes())
                .is_err()
            {
                return false;
            }
            let mut sent = 0u64;
            while sent < len {
                let n = (len - sent).min(256 * 1024) as usize;
                if out.write_all(&pattern(sent, n)).is_err() {
                    return false;
                }
                sent += n as u64;
            }
            true
        }
        Reply::Raw(bytes) => out.write_all(&bytes).is_ok(),
        Reply::RawThenClose(bytes) => {
            let _ = out.write_all(&bytes);
            false
        }
        Reply::Close => false,
        Reply::Hang => {
            let mut sink = [0u8; 1024];
            // Hold the connection until the peer goes away.
            while matches!(out.read(&mut sink), Ok(n) if n > 0) {}
            false
        }
        Reply::Gated(gate, inner) => {
            gate.wait();
            write_reply(out, *inner)
        }
    }
}

// ---------------------------------------------------------------- client

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw client connection.
pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one response; `head_request` for responses to HEAD.
    pub fn read_response_to(&mut self, head_request: bool) -> Option<Response> {
        loop {
            let head = read_head(&mut self.reader)?;
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut res = httparse::Response::new(&mut headers);
            res.parse(&head).unwrap_or_else(|e| {
                panic!(
                    "bad response head {e:?}: {}",
                    String::from_utf8_lossy(&head)
                )
            });
            let status = res.code.unwrap();
            let headers: Vec<(String, String)> = res
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            if (100..200).contains(&status) {
                continue;
            }
            let mut r = Response {
                status,
                headers,
                body: Vec::new(),
                trailers: Vec::new(),
            };
            if head_request || status == 204 || status == 304 {
                return Some(r);
            }
            if r.header("transfer-encoding").is_some() {
                let mut rec = Recorded::default();
                let (_, trailers) = read_chunked(&mut self.reader, &mut rec)?;
                r.body = rec.body;
                r.trailers = trailers;
            } else if let Some(len) = r.header("content-length") {
                let mut body = vec![0u8; len.parse().unwrap()];
                self.reader.read_exact(&mut body).ok()?;
                r.body = body;
            } else {
                self.reader.read_to_end(&mut r.body).ok()?;
            }
            return Some(r);
        }
    }

    pub fn read_response(&mut self) -> Response {
        self.read_response_to(false).expect("a response")
    }

    /// Sends a request and reads its response.
    pub fn request(&mut self, raw: &str) -> Response {
        self.send(raw.as_bytes());
        self.read_response_to(raw.starts_with("HEAD "))
            .expect("a response")
    }

    /// `GET path` with a Host header on this connection.
    pub fn get(&mut self, path: &str) -> Response {
        self.request(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"))
    }

    /// True when the server has closed the connection (EOF, no more bytes).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0) | Err(_))
    }
}

/// One request on a fresh connection.
pub fn request(addr: SocketAddr, raw: &str) -> Response {
    Client::connect(addr).request(raw)
}

/// `GET path` with a Host header on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, &format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"))
}

/// The JSON error body of a gateway response, checked for shape.
pub fn assert_json_error(r: &Response, status: u16) {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let id = r.header("x-request-id").expect("x-request-id on error");
    let text = r.text();
    assert!(text.starts_with(r#"{"error":""#), "{text}");
    assert!(text.contains(&format!(r#""status":{status},"#)), "{text}");
    assert!(
        text.ends_with(&format!(r#""request_id":"{id}"}}"#)),
        "{text}"
    );
}

// ---------------------------------------------------------------- metrics

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Scrapes `/metrics` from the admin listener and parses every sample.
pub fn scrape(gw: &Gateway) -> Metrics {
    let r = get(gw.admin(), "/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    Metrics::parse(&r.text())
}

/// A parsed exposition.
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').unwrap();
                    let mut labels = Vec::new();
                    for pair in body.split("\",").filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once("=\"").unwrap();
                        labels.push((k.to_string(), v.trim_end_matches('"').to_string()));
                    }
                    (name.to_string(), labels)
                }
                None => (series.to_string(), Vec::new()),
            };
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        Metrics {
            text: text.to_string(),
            samples,
        }
    }

    /// Samples of `name` whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
    }

    /// Sum of the matching samples (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Whether any sample of `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

/// Opens `count` client connections with `open` (each makes a request and
/// stays open), waits until the gateway counts `parked` connections parked
/// (`ringgate_downstream_connections_idle`), and returns how much the
/// gateway's RSS grew per connection, with the connections (still open,
/// for the caller to use again).
pub fn rss_per_idle_connection<C>(
    gw: &Gateway,
    count: usize,
    parked: usize,
    open: impl FnMut() -> C,
) -> (u64, Vec<C>) {
    let before = gw.rss();
    let idle: Vec<C> = std::iter::repeat_with(open).take(count).collect();
    wait_metric(gw, |m| {
        m.sum("ringgate_downstream_connections_idle", &[]) == parked as f64
    });
    (gw.rss().saturating_sub(before) / count as u64, idle)
}

/// Scrapes until `ok` holds, for figures that move off the request path
/// (log writers, reconciliation, queues).
pub fn wait_metric(gw: &Gateway, ok: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = scrape(gw);
        if ok(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{}", m.text);
        // Metrics have no blocking wait-for-change API; poll them.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `path` holds at least `n` lines; returns them.
pub fn wait_file_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} of {n} lines",
            path.display(),
            lines.len()
        );
        // A file has no blocking wait-for-content API; poll it.
        std::thread::sleep(Duration::from_millis(10));
    }
}
