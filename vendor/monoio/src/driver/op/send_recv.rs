//! A send linked to the receive that follows it, as one operation.
//!
//! The send goes first with `IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS` and
//! `MSG_WAITALL` (the kernel retries a short send until all of it is sent):
//! it posts no completion when it succeeds, and the receive starts only
//! then. The operation completes once, so the thread is not woken for the
//! send: with the receive's completion, or, when the send fails, with the
//! send's (the kernel then skips the receive's), which the driver marks
//! (`LINK_HEAD_FAILED`).

use std::io;

use io_uring::{opcode, types};

use super::{super::shared_fd::SharedFd, recv::recv_entry, Op, OpAble};
use crate::driver::uring::LINK_HEAD_FAILED;
#[cfg(any(feature = "legacy", feature = "poll-io"))]
use crate::driver::ready::Direction;
use crate::buf::{IoBuf, IoBufMut};

pub(crate) struct SendRecv<T, U> {
    /// Holds a strong ref to the FD, preventing the file from being closed
    /// while the operation is in-flight.
    #[allow(unused)]
    fd: SharedFd,
    pub(crate) send: T,
    pub(crate) recv: U,
}

/// What a linked send and receive did.
pub(crate) struct SendRecvResult<T, U> {
    /// The receive's result, or the send's when `send_failed`.
    pub(crate) result: io::Result<usize>,
    /// The send failed (or was cancelled) and nothing was received.
    pub(crate) send_failed: bool,
    pub(crate) send: T,
    pub(crate) recv: U,
}

impl<T: IoBuf, U: IoBufMut> Op<SendRecv<T, U>> {
    /// Sends all of `send`, then receives into `recv` once the socket is
    /// readable (`IORING_RECVSEND_POLL_FIRST`). The ring must skip
    /// successful completions (`Inner::links`).
    pub(crate) fn send_recv(fd: SharedFd, send: T, recv: U) -> io::Result<Self> {
        Op::submit_with(SendRecv { fd, send, recv })
    }

    pub(crate) async fn result(self) -> SendRecvResult<T, U> {
        let complete = self.await;
        let result = complete.meta.result.map(|v| v as usize);
        let SendRecv { send, mut recv, .. } = complete.data;
        let send_failed = complete.meta.flags & LINK_HEAD_FAILED != 0;
        if send_failed {
            // A send cut short reports the bytes it sent.
            let result = result.and_then(|n| {
                Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("sent {n} of {} bytes", send.bytes_init()),
                ))
            });
            return SendRecvResult { result, send_failed, send, recv };
        }
        if let Ok(n) = result {
            // Safety: the kernel wrote `n` bytes to the buffer.
            unsafe { recv.set_init(n) };
        }
        SendRecvResult { result, send_failed, send, recv }
    }
}

impl<T: IoBuf, U: IoBufMut> OpAble for SendRecv<T, U> {
    fn uring_op(&mut self) -> io_uring::squeue::Entry {
        recv_entry(&self.fd, &mut self.recv, true)
    }

    fn uring_link_head(&mut self) -> Option<io_uring::squeue::Entry> {
        let (fd, fixed) = self.fd.uring_fd();
        Some(
            opcode::Send::new(types::Fd(fd), self.send.read_ptr(), self.send.bytes_init() as _)
                .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
                .build()
                .flags(fixed),
        )
    }

    // Never submitted to the legacy driver: `TcpStream` sends and then
    // receives there.
    #[cfg(any(feature = "legacy", feature = "poll-io"))]
    fn legacy_interest(&self) -> Option<(Direction, usize)> {
        None
    }

    #[cfg(any(feature = "legacy", feature = "poll-io"))]
    fn legacy_call(&mut self) -> io::Result<u32> {
        Err(io::ErrorKind::Unsupported.into())
    }
}
