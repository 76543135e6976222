//! The one place ringgate talks to the OS directly (everything else goes
//! through monoio, socket2 and std).
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
