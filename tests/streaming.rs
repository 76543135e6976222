//! Bodies far larger than any buffer stream through in both directions with
//! bounded memory: the gateway's peak RSS stays flat while 128 MiB pass.

mod common;

use std::io::{BufRead, Read, Write};

use common::*;

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
