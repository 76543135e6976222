//! The one place with `unsafe` code: a non-blocking socket peek, the
//! allocation-counting global allocator, byte views of monoio's owned
//! buffers (for the TLS adapter), a gathered write of two owned buffers
//! and, for tests, a receive low-water mark. Everything else goes through
//! monoio, socket2 and std.
#![allow(unsafe_code)]

use std::os::fd::RawFd;

/// True when a pooled upstream socket has nothing to say: not closed by the
/// peer, no unexpected bytes, no pending error. One non-blocking
/// `recv(MSG_PEEK)`; used only before sending a request that could not be
/// retried if the connection turned out to be dead.
pub fn socket_is_quiet(fd: RawFd) -> bool {
    let mut byte = [0u8; 1];
    // SAFETY: `fd` is an open socket owned by the caller for the duration of
    // the call, and `byte` is a valid, writable 1-byte buffer. MSG_DONTWAIT
    // makes the call non-blocking whatever the socket's mode.
    let n = unsafe {
        libc::recv(
            fd,
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let err = std::io::Error::last_os_error().raw_os_error();
        return err == Some(libc::EAGAIN) || err == Some(libc::EWOULDBLOCK);
    }
    // 0: the peer closed; >0: bytes nobody asked for (a stale response).
    false
}

/// Sends what a socket takes of `buf` now (`MSG_DONTWAIT`); tests use it
/// to fill a connection.
#[cfg(test)]
pub fn send_now(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `fd` is an open socket owned by the caller for the duration
    // of the call, and `buf` is valid for reads of its length.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Sets a socket's receive low-water mark (`SO_RCVLOWAT`): it is readable
/// only once that many bytes wait. Tests use it to tell a receive that
/// waits for readability from one that tries the socket first.
#[cfg(test)]
pub fn set_recv_low_water(fd: RawFd, bytes: libc::c_int) -> std::io::Result<()> {
    // SAFETY: `fd` is an open socket owned by the caller, and the option
    // value is a `c_int` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            std::ptr::addr_of!(bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A global allocator that counts allocations made on worker threads, so the
/// claim "no heap allocation per request" is measured, not assumed (see
/// `GET /stats/allocations` on the admin listener and tests/allocations.rs).
///
/// Each worker registers its own counter; threads that did not register
/// (control, admin, anything else) are not counted. A counter is written only
/// by its worker and padded to a cache line, so counting never makes two
/// cores write the same line. The cost is one thread-local read per
/// allocation, plus one uncontended increment on worker threads.
pub struct CountingAlloc;

/// One worker's allocation count, alone on its cache line.
#[repr(align(64))]
#[derive(Default)]
pub struct AllocCounter(pub std::sync::atomic::AtomicU64);

std::thread_local! {
    static COUNTER: std::cell::Cell<Option<&'static AllocCounter>> = const { std::cell::Cell::new(None) };
}

/// Counts this thread's allocations into `counter` from now on.
pub fn count_allocations_into(counter: &'static AllocCounter) {
    COUNTER.with(|c| c.set(Some(counter)));
}

fn count() {
    // `try_with`: never panic inside the allocator, even during thread exit.
    let _ = COUNTER.try_with(|c| {
        if let Some(counter) = c.get() {
            counter.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
}

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged; counting touches only a thread-local and an atomic and
// never allocates.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

/// The writable memory of a monoio buffer, as a slice.
pub fn spare_of<T: monoio::buf::IoBufMut>(buf: &mut T) -> &mut [u8] {
    // SAFETY: `write_ptr` is valid for `bytes_total` bytes while `buf` is
    // borrowed; the bytes may be uninitialised, and callers only write.
    unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), buf.bytes_total()) }
}

/// Marks the first `n` bytes of a monoio buffer as initialised; `n` must
/// not exceed what [`spare_of`] handed out and was written.
pub fn mark_init<T: monoio::buf::IoBufMut>(buf: &mut T, n: usize) {
    assert!(n <= buf.bytes_total());
    // SAFETY: checked against the buffer's size; the caller wrote them.
    unsafe { buf.set_init(n) }
}

/// The initialised bytes of a monoio buffer.
pub fn bytes_of<T: monoio::buf::IoBuf>(buf: &T) -> &[u8] {
    // SAFETY: `read_ptr` is valid for `bytes_init` bytes while `buf` is
    // borrowed.
    unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) }
}

/// Calls `f` with each slice of a monoio vectored buffer, in order.
pub fn each_iovec<T: monoio::buf::IoVecBuf>(buf: &T, mut f: impl FnMut(&[u8])) {
    // SAFETY: the iovecs describe initialised memory owned by `buf`,
    // borrowed for the duration of the call.
    let iovecs = unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
    for v in iovecs {
        // SAFETY: as above, for each iovec.
        f(unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) });
    }
}

/// Heap room for two iovecs, kept by its connection so that a gathered
/// write allocates only the first time. Its address stays fixed while the
/// driver owns a [`Gather`] built on it; the default (and what
/// `mem::take` leaves behind) allocates nothing.
#[derive(Default)]
pub struct IovecPair(Vec<libc::iovec>);

/// Two owned buffers written by one `writev`: a range of `first`, then a
/// range of `second` (a response head and the body bytes that arrived with
/// it). The buffers cannot be touched while gathered, so the iovecs stay
/// valid; [`Gather::into_parts`] hands them back.
pub struct Gather {
    first: Vec<u8>,
    second: Vec<u8>,
    iov: IovecPair,
    /// Index of the first iovec not yet fully written.
    at: usize,
}

impl Gather {
    /// # Panics
    /// If a range is out of its buffer's bounds.
    pub fn new(
        first: Vec<u8>,
        a: std::ops::Range<usize>,
        second: Vec<u8>,
        b: std::ops::Range<usize>,
        mut iov: IovecPair,
    ) -> Self {
        let (a, b) = (&first[a], &second[b]);
        iov.0.clear();
        iov.0.extend([a, b].map(|part| libc::iovec {
            iov_base: part.as_ptr().cast_mut().cast(),
            iov_len: part.len(),
        }));
        Self {
            first,
            second,
            iov,
            at: 0,
        }
    }

    /// Bytes not yet written.
    pub fn remaining(&self) -> usize {
        self.iov.0[self.at..].iter().map(|v| v.iov_len).sum()
    }

    /// Drops `n` written bytes from the front.
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 && self.at < self.iov.0.len() {
            let v = &mut self.iov.0[self.at];
            if n >= v.iov_len {
                n -= v.iov_len;
                v.iov_len = 0;
                self.at += 1;
            } else {
                v.iov_base = v.iov_base.cast::<u8>().wrapping_add(n).cast();
                v.iov_len -= n;
                n = 0;
            }
        }
    }

    pub fn into_parts(self) -> (Vec<u8>, Vec<u8>, IovecPair) {
        (self.first, self.second, self.iov)
    }
}

// SAFETY: the iovecs point into `first` and `second`, which `Gather` owns and
// never reallocates or hands out until `into_parts`; the iovec array is a
// `Vec` that is not touched while gathered, so moving the `Gather` moves
// none of them. `at <= len` keeps the pointer and count within the array.
unsafe impl monoio::buf::IoVecBuf for Gather {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov.0[self.at..].as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iov.0.len() - self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gathered(g: &Gather) -> Vec<u8> {
        let mut out = Vec::new();
        each_iovec(g, |part| out.extend_from_slice(part));
        out
    }

    #[test]
    fn a_gather_writes_both_ranges_and_advances_across_them() {
        let head = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        let upstream = b"xxxxbodyyy".to_vec();
        let mut g = Gather::new(head, 0..19, upstream, 4..8, IovecPair::default());
        assert_eq!(g.remaining(), 23);
        assert_eq!(gathered(&g), b"HTTP/1.1 200 OK\r\n\r\nbody");
        g.advance(17);
        assert_eq!(gathered(&g), b"\r\nbody");
        g.advance(3);
        assert_eq!(gathered(&g), b"ody");
        assert_eq!(g.remaining(), 3);
        g.advance(3);
        assert_eq!(g.remaining(), 0);
        let (head, upstream, iov) = g.into_parts();
        assert_eq!(
            (head.len(), upstream.len()),
            (19, 10),
            "buffers come back whole"
        );
        // The iovec room is reused without allocating again.
        let room = iov.0.capacity();
        let g = Gather::new(head, 0..0, upstream, 0..10, iov);
        assert_eq!(gathered(&g), b"xxxxbodyyy");
        assert_eq!(g.into_parts().2 .0.capacity(), room);
    }
}
