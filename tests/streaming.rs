//! Memory stays bounded: bodies far larger than any buffer stream through in
//! both directions while the gateway's peak RSS stays flat, and idle
//! keep-alive connections hold no buffers.

use std::io::{BufRead, Read, Write};

use crate::common::*;

const SIZE: u64 = 128 << 20;
/// Peak resident memory the gateway may reach while moving SIZE bytes each way.
const RSS_CAP: u64 = 16 << 20;

#[test]
fn large_uploads_and_downloads_stream_with_bounded_memory() {
    for driver in DRIVERS {
        let up = Upstream::with(|r| {
            if r.target == "/download" {
                Reply::Generated { len: SIZE }
            } else {
                Reply::ok(&format!("{} {:x}", r.body_len, r.body_hash))
            }
        });
        let body = format!(
            "[limits]\nmax_body_bytes = \"1GiB\"\n{}{}",
            cluster("c", &[&up], ""),
            route_all("c")
        );
        let gw = Gateway::start(&config(driver, &body));
        let expected_hash = {
            let mut h = fnv_of(&[]);
            let mut off = 0;
            while off < SIZE {
                let n = (SIZE - off).min(1 << 20) as usize;
                h = fnv(h, &pattern(off, n));
                off += n as u64;
            }
            h
        };

        // Content-Length upload.
        let mut c = Client::connect(gw.main());
        c.send(
            format!("PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes(),
        );
        send_pattern(&mut c, false);
        assert_eq!(
            c.read_response().text(),
            format!("{SIZE} {expected_hash:x}"),
            "{driver}: CL upload"
        );

        // Chunked upload on the same connection.
        c.send(b"PUT /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        send_pattern(&mut c, true);
        assert_eq!(
            c.read_response().text(),
            format!("{SIZE} {expected_hash:x}"),
            "{driver}: chunked upload"
        );

        // Download, hashed as it arrives.
        c.send(b"GET /download HTTP/1.1\r\nHost: x\r\n\r\n");
        let (len, hash) = read_streamed(&mut c);
        assert_eq!((len, hash), (SIZE, expected_hash), "{driver}: download");

        let peak = gw.peak_rss();
        eprintln!(
            "{driver}: gateway peak RSS {} KiB after {} MiB each way",
            peak >> 10,
            SIZE >> 20
        );
        assert!(
            peak < RSS_CAP,
            "{driver}: gateway peak RSS {} MiB",
            peak >> 20
        );
    }
}

/// Idle connections for the two tests below.
const CONNS: usize = 600;

/// A gateway in front of an upstream answering `idle`, with
/// `keepalive_park_after = hold`, its pools and upstream connections warm.
fn idle_gateway(up: &Upstream, hold: &str) -> Gateway {
    let gw = Gateway::start(&idle_config(up, hold));
    for _ in 0..20 {
        assert_eq!(get(gw.main(), "/").status, 200);
    }
    gw
}

fn idle_config(up: &Upstream, hold: &str) -> String {
    let body = format!(
        "[timeouts]\nkeepalive_park_after = \"{hold}\"\n{}{}",
        cluster("c", &[up], ""),
        route_all("c")
    );
    config("io_uring", &body)
}

/// A plain socket (one descriptor) after one request.
fn idle_client(gw: &Gateway) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(gw.main()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    one_request(&mut s);
    s
}

/// A parked keep-alive connection (io_uring) waits without its read and
/// write buffers and header vectors (20 KiB and more), so each idle client
/// costs the gateway a few KiB: its task and socket state (the request
/// stages run in pooled slots, `worker::stage_slots`).
#[test]
fn idle_keep_alive_connections_give_their_buffers_back() {
    /// Measured: about 1.9 KiB (2.2 KiB while the request's state was part
    /// of the connection's task, 6.3 KiB while its stages were). Holding
    /// the buffers costs 14 KiB and more.
    const PER_CONN_CAP: u64 = 3 << 10;
    let up = Upstream::new(Reply::ok("idle"));
    // Parked at once: what a parked connection costs, without the hold's
    // (next test).
    let gw = idle_gateway(&up, "0s");
    let (per_conn, mut idle) = rss_per_idle_connection(&gw, CONNS, CONNS, || idle_client(&gw));
    eprintln!("io_uring: {per_conn} bytes of RSS per parked keep-alive connection");
    assert!(
        per_conn < PER_CONN_CAP,
        "{per_conn} bytes per parked connection"
    );
    // Every parked connection wakes for its next request.
    for s in &mut idle {
        one_request(s);
    }
}

/// For `keepalive_park_after` an idle connection keeps a read armed with a
/// 1 KiB hold buffer (and its stage slot) instead of parking; then it
/// parks. The setting follows reloads; each wait reads it as it starts.
#[test]
fn idle_connections_hold_a_small_read_then_park() {
    /// Measured: about 3.6 KiB: a parked connection's cost, the hold buffer,
    /// the read's future and its canceller. Holding the read buffer itself
    /// costs 16 KiB more.
    const PER_CONN_CAP: u64 = 8 << 10;
    let up = Upstream::new(Reply::ok("idle"));
    let gw = idle_gateway(&up, "1h");
    // None parks (were they parked, nearly all would be by now).
    let (per_conn, mut idle) = rss_per_idle_connection(&gw, CONNS, 0, || idle_client(&gw));
    wait_metric(&gw, |m| {
        m.sum("ringgate_downstream_connections_held", &[]) == CONNS as f64
    });
    eprintln!("io_uring: {per_conn} bytes of RSS per held keep-alive connection");
    assert!(
        per_conn < PER_CONN_CAP,
        "{per_conn} bytes per held connection"
    );
    // A head longer than the hold buffer: its first KiB comes with the held
    // read, the rest with the next.
    let long = format!("X-Long: {}\r\n", "v".repeat(6000));
    request_with(&mut idle[0], &long);
    let seen = up.wait_requests(20 + CONNS + 1);
    assert_eq!(seen[20 + CONNS].header("x-long").map(str::len), Some(6000));

    std::fs::write(&gw.config_path, idle_config(&up, "100ms")).unwrap();
    gw.signal("HUP");
    gw.wait_log("config reloaded");
    // A request on each; then each holds for 100 ms and parks...
    for s in &mut idle {
        one_request(s);
    }
    wait_metric(&gw, |m| {
        m.sum("ringgate_downstream_connections_idle", &[]) == CONNS as f64
            && m.sum("ringgate_downstream_connections_held", &[]) == 0.0
    });
    // ...and wakes for its next request.
    for s in &mut idle {
        one_request(s);
    }
}

/// `GET /` on `s`, reading until the whole reply (body `idle`) is in.
fn one_request(s: &mut std::net::TcpStream) {
    request_with(s, "");
}

/// `GET /` with `fields` (whole header lines) on `s`, as [`one_request`].
fn request_with(s: &mut std::net::TcpStream, fields: &str) {
    s.write_all(format!("GET / HTTP/1.1\r\nHost: t\r\n{fields}\r\n").as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"\r\n\r\nidle") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

fn send_pattern(c: &mut Client, chunked: bool) {
    let mut off = 0;
    while off < SIZE {
        let n = (SIZE - off).min(1 << 20) as usize;
        let data = pattern(off, n);
        if chunked {
            c.stream.write_all(format!("{n:x}\r\n").as_bytes()).unwrap();
            c.stream.write_all(&data).unwrap();
            c.stream.write_all(b"\r\n").unwrap();
        } else {
            c.stream.write_all(&data).unwrap();
        }
        off += n as u64;
    }
    if chunked {
        c.stream.write_all(b"0\r\n\r\n").unwrap();
    }
}

/// Reads a Content-Length response without keeping the body.
fn read_streamed(c: &mut Client) -> (u64, u64) {
    let mut len = None;
    loop {
        let mut line = String::new();
        c.reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = Some(v.trim().parse::<u64>().unwrap());
        }
    }
    let total = len.expect("content-length");
    let mut left = total;
    let mut hash = fnv_of(&[]);
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = c
            .reader
            .read(&mut buf[..left.min(1 << 20) as usize])
            .unwrap();
        assert!(n > 0, "body cut short with {left} bytes left");
        hash = fnv(hash, &buf[..n]);
        left -= n as u64;
    }
    (total, hash)
}
