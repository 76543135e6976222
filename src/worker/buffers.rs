//! The worker's pool of downstream exchanges: what a connection needs only
//! while a request is on it.
//!
//! An exchange (`http::conn::Exchange`) holds a connection's read buffer
//! (16 KiB), write buffer, the vectors a request is parsed into, the header
//! lines of the gateway's own responses and the state of the request in
//! progress (its heads, chunked decoder and log record), about 700 bytes
//! besides the buffers. Between requests, on io_uring, a keep-alive
//! connection gives it back here, with its TLS ciphertext buffers
//! (incoming and outgoing) if it has them, and waits with a 1 KiB hold
//! buffer lent to a read for `keepalive_park_after`, then parks: it waits
//! for readability with a buffer-less poll and returns the hold buffer
//! too. When its next request arrives it takes an exchange again. So a
//! worker holds about as many exchanges as it has requests in progress,
//! not as many as it has open connections.
//!
//! The pool lives on one worker and is touched only by its tasks: no lock.
//! Taking and returning an exchange is a `Vec` pop and push of a pointer;
//! exchanges are allocated only when the pool is empty (a new high of
//! concurrent requests), and freed only when the pool is full.

use std::cell::{Cell, RefCell};

use monoio::io::Canceller;

use crate::http::conn::Exchange;
use crate::tls::stream::READ_CHUNK;

/// Read buffer of a downstream connection; grows up to
/// `limits.max_header_bytes` for a large head and is then reused for body
/// data.
pub const READ_BUF: usize = 16 * 1024;
/// Write buffer for response heads and gateway-made responses.
pub const WRITE_BUF: usize = 4 * 1024;
/// Header fields a head is parsed into before the vector grows.
pub const FIELDS: usize = 32;
/// Path bytes before the normalisation buffers grow.
pub const PATH: usize = 256;
/// Largest capacity a pooled exchange keeps in its other buffers (a
/// buffered body, re-encoded chunks, the log's copy of the target, the
/// trailers): a larger one is freed when the exchange comes back.
pub const KEEP: usize = 16 * 1024;
/// Hold buffer: what a keep-alive connection's read between requests
/// lends the kernel. A request head that fits (most do; nginx's
/// `client_header_buffer_size` is 1 KiB too) arrives whole with that read;
/// the rest of a longer one is read into the exchange's read buffer.
pub const HOLD_BUF: usize = 1024;
/// Response buffer of a held read: a keep-alive response up to this size
/// is copied into one and sent linked to the read (`http::conn::send_last`).
/// Small proxied responses, direct responses and errors fit; the buffer
/// stays with the read until it ends, so it is kept small.
pub const SEND_BUF: usize = 512;
/// Connections holding a read at once, per worker; more idle connections
/// park at once. Bounds what held connections take beyond the pools (about
/// 1.8 KiB each: hold buffer, the read's future, its canceller; 0.5 KiB
/// more while the response before it is linked to the read) to under
/// 2.5 MiB per worker, however many clients go quiet at the same time.
pub const MAX_HELD: u64 = 1024;
/// Exchanges kept for reuse (about 22 KiB each: 5.6 MiB per worker at
/// most), and as many TLS record buffers (16.5 KiB each).
const MAX_POOLED: usize = 256;

#[derive(Default)]
pub struct BufferPool {
    /// Boxed: a connection holds its exchange by pointer, and taking or
    /// returning one moves only that.
    #[allow(clippy::vec_box)]
    free: RefCell<Vec<Box<Exchange>>>,
    /// Ciphertext read buffers of parked TLS connections.
    records: Bytes<READ_CHUNK>,
    /// Buffers for held reads between requests.
    holds: Bytes<HOLD_BUF>,
    /// Responses linked to held reads.
    sends: Bytes<SEND_BUF>,
    /// Cancellers of held reads (each an `Rc` and a small set, reused).
    cancellers: RefCell<Vec<Canceller>>,
    /// Connections waiting for a request without buffers.
    parked: Cell<u64>,
    /// Connections waiting for a request with a held read.
    held: Cell<u64>,
}

impl BufferPool {
    /// An empty exchange with the standard capacities.
    pub fn take(&self) -> Box<Exchange> {
        self.free.borrow_mut().pop().unwrap_or_default()
    }

    /// Returns a connection's exchange. One whose read buffer grew for a
    /// large head, or lost it to a cancelled read, is freed rather than
    /// kept, so the pool holds at most `MAX_POOLED` standard ones.
    pub fn put(&self, mut x: Box<Exchange>) {
        let mut free = self.free.borrow_mut();
        if free.len() < MAX_POOLED && x.recycle() {
            free.push(x);
        }
    }

    /// An empty TLS ciphertext buffer.
    pub fn take_record(&self) -> Vec<u8> {
        self.records.take()
    }

    /// Returns a TLS ciphertext buffer; like [`BufferPool::put`], only
    /// standard ones are kept.
    pub fn put_record(&self, buf: Vec<u8>) {
        self.records.put(buf);
    }

    /// An empty hold buffer.
    pub fn take_hold(&self) -> Vec<u8> {
        self.holds.take()
    }

    /// Returns a hold buffer; like [`BufferPool::put`], only standard ones
    /// are kept.
    pub fn put_hold(&self, buf: Vec<u8>) {
        self.holds.put(buf);
    }

    /// An empty buffer for a response linked to a held read.
    pub fn take_send(&self) -> Vec<u8> {
        self.sends.take()
    }

    /// Returns a linked response's buffer; only standard ones are kept.
    pub fn put_send(&self, buf: Vec<u8>) {
        self.sends.put(buf);
    }

    /// A canceller for a held read.
    pub fn take_canceller(&self) -> Canceller {
        self.cancellers.borrow_mut().pop().unwrap_or_default()
    }

    /// Returns a canceller that cancelled nothing (or the fresh one
    /// `Canceller::cancel` returned).
    pub fn put_canceller(&self, c: Canceller) {
        let mut cancellers = self.cancellers.borrow_mut();
        if cancellers.len() < MAX_POOLED {
            cancellers.push(c);
        }
    }

    /// Exchanges waiting in the pool.
    #[cfg(test)]
    pub fn pooled(&self) -> usize {
        self.free.borrow().len()
    }

    /// Connections currently parked.
    pub fn parked(&self) -> u64 {
        self.parked.get()
    }

    /// Connections currently holding a read.
    pub fn held(&self) -> u64 {
        self.held.get()
    }

    /// Counts a connection as parked until the guard drops.
    pub fn park(&self) -> Counted<'_> {
        Counted::new(&self.parked)
    }

    /// Counts a connection as holding a read until the guard drops; `None`
    /// when [`MAX_HELD`] connections already do (it parks at once then).
    pub fn hold(&self) -> Option<Counted<'_>> {
        (self.held.get() < MAX_HELD).then(|| Counted::new(&self.held))
    }
}

/// Byte buffers of capacity `CAP`, at most `MAX_POOLED` of them.
#[derive(Default)]
struct Bytes<const CAP: usize>(RefCell<Vec<Vec<u8>>>);

impl<const CAP: usize> Bytes<CAP> {
    fn take(&self) -> Vec<u8> {
        self.0
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(CAP))
    }

    /// Keeps `buf` if it has the standard capacity and there is room.
    fn put(&self, mut buf: Vec<u8>) {
        let mut bufs = self.0.borrow_mut();
        if bufs.len() < MAX_POOLED && buf.capacity() == CAP {
            buf.clear();
            bufs.push(buf);
        }
    }
}

/// A parked or holding connection, counted while the guard lives; see
/// [`BufferPool::park`] and [`BufferPool::hold`].
pub struct Counted<'a>(&'a Cell<u64>);

impl<'a> Counted<'a> {
    fn new(count: &'a Cell<u64>) -> Self {
        count.set(count.get() + 1);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchanges_are_reused_and_grown_ones_freed() {
        let pool = BufferPool::default();
        let mut a = pool.take();
        a.rbuf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        a.start = 5;
        a.body.reserve(KEEP * 4);
        a.body.extend_from_slice(b"{}");
        let ptr = a.rbuf.as_ptr();
        pool.put(a);
        assert_eq!(pool.pooled(), 1);
        let b = pool.take();
        assert_eq!(b.rbuf.as_ptr(), ptr, "the same buffer comes back");
        assert!(b.rbuf.is_empty() && b.wbuf.is_empty() && b.start == 0);
        assert!(b.head.headers.capacity() >= FIELDS && b.path.capacity() >= PATH);
        assert_eq!(b.body.capacity(), 0, "a large body buffer is freed");
        let mut grown = b;
        grown.rbuf.reserve(READ_BUF * 2);
        pool.put(grown);
        assert_eq!(pool.pooled(), 0, "a grown read buffer is freed");
    }

    #[test]
    fn tls_record_buffers_are_reused() {
        let pool = BufferPool::default();
        let rx = pool.take_record();
        assert_eq!(rx.capacity(), READ_CHUNK);
        let ptr = rx.as_ptr();
        pool.put_record(rx);
        let again = pool.take_record();
        assert_eq!(again.as_ptr(), ptr);
        pool.put_record(Vec::new());
        assert_eq!(
            pool.records.0.borrow().len(),
            0,
            "a released-empty buffer is not kept"
        );
    }

    #[test]
    fn hold_buffers_are_reused() {
        let pool = BufferPool::default();
        let mut hold = pool.take_hold();
        assert_eq!(hold.capacity(), HOLD_BUF);
        hold.extend_from_slice(b"GET /");
        let ptr = hold.as_ptr();
        pool.put_hold(hold);
        let again = pool.take_hold();
        assert_eq!((again.as_ptr(), again.len()), (ptr, 0));
        pool.put_hold(Vec::new());
        assert_eq!(pool.holds.0.borrow().len(), 0, "a lost buffer is not kept");
    }

    #[test]
    fn the_pool_is_bounded() {
        let pool = BufferPool::default();
        let lent: Vec<_> = (0..MAX_POOLED + 10).map(|_| pool.take()).collect();
        for x in lent {
            pool.put(x);
        }
        assert_eq!(pool.pooled(), MAX_POOLED);
    }

    #[test]
    fn at_most_max_held_connections_hold_a_read() {
        let pool = BufferPool::default();
        let held: Vec<_> = (0..MAX_HELD).map_while(|_| pool.hold()).collect();
        assert_eq!(held.len() as u64, MAX_HELD);
        assert!(pool.hold().is_none(), "one more parks at once");
        drop(held);
        assert!(pool.hold().is_some(), "the guards gave their places back");
    }

    #[test]
    fn parked_counts_until_the_guard_drops() {
        let pool = BufferPool::default();
        let a = pool.park();
        let b = pool.park();
        assert_eq!(pool.parked(), 2);
        drop(a);
        assert_eq!(pool.parked(), 1);
        drop(b);
        assert_eq!(pool.parked(), 0);
    }
}
