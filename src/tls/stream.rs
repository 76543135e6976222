//! A buffered rustls connection over a monoio stream: the upstream side of
//! TLS to endpoints (client connections use `server_stream.rs`).
//!
//! The gateway drives rustls itself rather than through `monoio-rustls`,
//! which stages every byte through a second buffer. Here ciphertext is read
//! straight into one buffer per connection and handed to rustls from there;
//! rustls writes records into another, written with one call per flush.
//!
//! Cancellation: an operation dropped mid-way (a timeout, a drain) leaves
//! the connection's TLS state unusable; callers close the connection then,
//! as they do for plain TCP.

use std::io::{self, Read as _, Write as _};
use std::ops::{Deref, DerefMut};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::BufResult;
use rustls::{ConnectionCommon, SideData};

use crate::sys;

/// Ciphertext read per socket read.
pub const READ_CHUNK: usize = 16 * 1024 + 512;

pub struct TlsStream<IO, C> {
    io: IO,
    conn: C,
    /// Ciphertext from the socket; rustls has taken `rx[..rx_pos]`.
    rx: Vec<u8>,
    rx_pos: usize,
    /// Ciphertext rustls produced, written on the next flush.
    tx: Vec<u8>,
    eof: bool,
}

/// Completes a plaintext read into `buf`'s spare room: marks what the read
/// wrote.
pub(super) fn filled<T: IoBufMut>(read: io::Result<usize>, mut buf: T) -> BufResult<usize, T> {
    match read {
        Ok(n) => {
            sys::mark_init(&mut buf, n);
            (Ok(n), buf)
        }
        Err(e) => (Err(e), buf),
    }
}

/// Vectored reads are not used by the gateway: refused rather than
/// half-supported.
pub(super) fn no_readv<T>(buf: T) -> BufResult<usize, T> {
    (
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "vectored reads are not supported on TLS streams",
        )),
        buf,
    )
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<IO, C, SD> TlsStream<IO, C>
where
    IO: AsyncReadRent + AsyncWriteRent,
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    pub fn new(io: IO, conn: C) -> Self {
        TlsStream {
            io,
            conn,
            rx: Vec::with_capacity(READ_CHUNK),
            rx_pos: 0,
            tx: Vec::new(),
            eof: false,
        }
    }

    /// The rustls session (SNI, peer certificates, negotiated version).
    pub fn session(&self) -> &C {
        &self.conn
    }

    /// The underlying stream.
    pub fn io(&self) -> &IO {
        &self.io
    }

    /// No ciphertext waits in the buffer and rustls holds no plaintext:
    /// everything the peer sent has been read.
    pub fn is_drained(&self) -> bool {
        self.rx_pos == self.rx.len() && !self.eof && self.conn.wants_read()
    }

    /// Completes the handshake.
    ///
    /// # Errors
    /// The peer's or rustls's error; an alert is sent when rustls has one.
    pub async fn handshake(&mut self) -> io::Result<()> {
        loop {
            self.flush_tx().await?;
            if !self.conn.is_handshaking() {
                return Ok(());
            }
            if self.eof {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.fill().await?;
        }
    }

    /// Writes out whatever records rustls has ready.
    async fn flush_tx(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.tx)?;
        }
        if self.tx.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.tx);
        let (r, mut buf) = self.io.write_all(buf).await;
        buf.clear();
        self.tx = buf;
        r.map(|_| ())
    }

    /// Reads ciphertext (unless some is still buffered) and lets rustls
    /// process it. At end of stream rustls is told so.
    async fn fill(&mut self) -> io::Result<()> {
        if self.rx_pos == self.rx.len() {
            let mut buf = std::mem::take(&mut self.rx);
            self.rx_pos = 0;
            buf.clear();
            buf.reserve(READ_CHUNK);
            let (r, buf) = self.io.read(buf).await;
            self.rx = buf;
            if r? == 0 {
                self.eof = true;
                self.conn.read_tls(&mut &[][..])?;
                return self.process().await;
            }
        }
        // rustls stops wanting bytes while it holds plaintext not yet read;
        // the rest stays here until then.
        while self.rx_pos < self.rx.len() && self.conn.wants_read() {
            let n = self.conn.read_tls(&mut &self.rx[self.rx_pos..])?;
            self.rx_pos += n;
            self.process().await?;
        }
        Ok(())
    }

    async fn process(&mut self) -> io::Result<()> {
        match self.conn.process_new_packets() {
            Ok(_) => Ok(()),
            Err(e) => {
                // Send the alert rustls queued, then fail.
                let _ = self.flush_tx().await;
                Err(invalid(e))
            }
        }
    }

    /// Reads plaintext into `out`; 0 at a clean close.
    async fn read_plain(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(out) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.eof {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.fill().await?;
            // Key updates and the like want an answer.
            self.flush_tx().await?;
        }
    }

    /// Encrypts and writes all of `data`.
    async fn write_plain(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            let n = self.conn.writer().write(data)?;
            data = &data[n..];
            self.flush_tx().await?;
        }
        Ok(total)
    }
}

impl<IO, C, SD> crate::http::io::Stream for TlsStream<IO, C>
where
    IO: AsyncReadRent + AsyncWriteRent,
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
}

impl<IO, C, SD> AsyncReadRent for TlsStream<IO, C>
where
    IO: AsyncReadRent + AsyncWriteRent,
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let r = self.read_plain(sys::spare_of(&mut buf)).await;
        filled(r, buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        no_readv(buf)
    }
}

impl<IO, C, SD> AsyncWriteRent for TlsStream<IO, C>
where
    IO: AsyncReadRent + AsyncWriteRent,
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let r = self.write_plain(sys::bytes_of(&buf)).await;
        (r, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // Encrypt every slice, then write the records with one flush.
        let mut total = 0;
        let mut result = Ok(());
        sys::each_iovec(&buf, |data| {
            if result.is_ok() {
                result = self.conn.writer().write_all(data);
                total += data.len();
            }
        });
        if let Err(e) = result {
            return (Err(e), buf);
        }
        match self.flush_tx().await {
            Ok(()) => (Ok(total), buf),
            Err(e) => (Err(e), buf),
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.flush_tx().await?;
        self.io.flush().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        let _ = self.flush_tx().await;
        self.io.shutdown().await
    }
}
