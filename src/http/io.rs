//! Owned-buffer I/O helpers over monoio's rent traits.
//!
//! monoio (like io_uring itself) takes buffers by value for the duration of an
//! operation. These helpers keep a connection's buffers in place
//! (`&mut Vec<u8>`) by moving them in and out around each operation, so the
//! rest of the code reads like ordinary buffered I/O. If an operation is
//! cancelled (timeout, drain) its buffer is left with the driver and the
//! `Vec` is left empty; callers close the connection in that case anyway.

use std::io;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

/// Any byte stream a connection runs over (TCP now, TLS later).
pub trait Stream: AsyncReadRent + AsyncWriteRent {}
impl<T: AsyncReadRent + AsyncWriteRent> Stream for T {}

/// A client stream that can wait for its next bytes without lending a
/// buffer to the driver (see `worker::buffers`).
pub trait Park {
    /// Everything received so far has been read, so readiness of the
    /// socket is the only way more can come.
    fn can_park(&self) -> bool;
    /// Waits until the socket is readable (a buffer-less poll on io_uring).
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>>;
    /// Gives buffers of the stream's own (TLS records) to the pool while
    /// parked.
    fn release(&mut self, _pool: &crate::worker::BufferPool) {}
    /// Takes them back before reading.
    fn restore(&mut self, _pool: &crate::worker::BufferPool) {}
}

impl Park for monoio::net::TcpStream {
    fn can_park(&self) -> bool {
        true
    }

    async fn readable(&self) -> io::Result<()> {
        // Not relaxed: on the epoll driver a stale readiness would let the
        // read that follows wait with its buffer (parking is used on
        // io_uring only, where the flag is ignored).
        monoio::net::TcpStream::readable(self, false).await
    }
}

/// A read failure, with the side that failed left to the caller.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    #[error("read timed out")]
    TimedOut,
}

/// A stream's read side with its buffer and consumed-bytes cursor.
/// Unconsumed bytes are `buf[start..]`.
pub struct Inbound<'a, S> {
    pub stream: &'a mut S,
    pub buf: &'a mut Vec<u8>,
    pub start: &'a mut usize,
}

impl<S: Stream> Inbound<'_, S> {
    pub fn available(&self) -> &[u8] {
        &self.buf[*self.start..]
    }

    pub fn consume(&mut self, n: usize) {
        *self.start += n;
        debug_assert!(*self.start <= self.buf.len());
    }

    /// Reads more bytes after the unconsumed ones, within `timeout`.
    /// Returns 0 at end of stream.
    ///
    /// # Errors
    /// [`ReadError`] on an I/O error or when `timeout` passes.
    pub async fn fill(&mut self, timeout: Duration) -> Result<usize, ReadError> {
        make_room(self.buf, self.start);
        match monoio::time::timeout(timeout, read_into(self.stream, self.buf)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ReadError::TimedOut),
        }
    }
}

/// Moves unconsumed bytes to the front when the buffer is full or fully
/// consumed, so a connection's buffer never grows for body data.
pub fn make_room(buf: &mut Vec<u8>, start: &mut usize) {
    if *start == buf.len() {
        buf.clear();
        *start = 0;
    } else if buf.len() == buf.capacity() && *start > 0 {
        buf.copy_within(*start.., 0);
        buf.truncate(buf.len() - *start);
        *start = 0;
    }
}

/// Appends whatever one read returns into `buf`'s spare capacity.
///
/// # Errors
/// The I/O error of the read.
pub async fn read_into<S: Stream>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.len() == buf.capacity() {
        buf.reserve(4096);
    }
    let owned = std::mem::take(buf);
    let len = owned.len();
    let (res, slice) = stream.read(owned.slice_mut(len..)).await;
    *buf = slice.into_inner();
    res
}

/// Writes all of `buf[range]`, keeping the buffer.
///
/// # Errors
/// The I/O error of the write.
pub async fn write_range<S: Stream>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    range: std::ops::Range<usize>,
) -> io::Result<()> {
    if range.is_empty() {
        return Ok(());
    }
    let owned = std::mem::take(buf);
    let (res, slice) = stream.write_all(owned.slice(range)).await;
    *buf = slice.into_inner();
    res.map(|_| ())
}

/// Writes all of `buf`, keeping it.
///
/// # Errors
/// The I/O error of the write.
pub async fn write_all<S: Stream>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<()> {
    let len = buf.len();
    write_range(stream, buf, 0..len).await
}

/// Writes all of a gathered pair of buffers (one `writev` unless the socket
/// takes less), handing it back for its buffers.
///
/// # Errors
/// The I/O error of a write.
pub async fn write_gather<S: Stream>(
    stream: &mut S,
    mut gather: crate::sys::Gather,
) -> (io::Result<()>, crate::sys::Gather) {
    while gather.remaining() > 0 {
        let (res, back) = stream.writev(gather).await;
        gather = back;
        match res {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), gather),
            Ok(n) => gather.advance(n),
            Err(e) => return (Err(e), gather),
        }
    }
    (Ok(()), gather)
}
