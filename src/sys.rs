//! The one place with `unsafe` code: a non-blocking socket peek, the
//! allocation-counting global allocator, and byte views of monoio's owned
//! buffers (for the TLS adapter). Everything else goes through monoio,
//! socket2 and std.
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
