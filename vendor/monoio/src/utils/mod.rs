//! Common utils

pub(crate) mod box_into_inner;
pub(crate) mod linked_list;
#[allow(dead_code)]
pub(crate) mod slab;
#[allow(dead_code)]
pub(crate) mod thread_id;
pub(crate) mod uring_detect;

mod rand;
pub use rand::thread_rng_n;
pub use uring_detect::detect_uring;

pub use crate::driver::op::is_legacy;

#[cfg(feature = "signal")]
mod ctrlc;
#[cfg(feature = "signal")]
pub use self::ctrlc::{CtrlC, Error as CtrlCError};

#[cfg(feature = "utils")]
mod bind_to_cpu_set;
#[cfg(feature = "utils")]
pub use bind_to_cpu_set::{bind_to_cpu_set, BindError};

/// io_uring completions the current thread's runtime has reaped so far:
/// a count of the thread's wake-ups for I/O, for tests and diagnostics.
/// `None` outside a runtime and on the legacy driver.
pub fn uring_completions() -> Option<u64> {
    if !crate::driver::CURRENT.is_set() {
        return None;
    }
    crate::driver::CURRENT.with(|inner| inner.completions())
}

/// Whether the current thread's io_uring driver batches its waits now
/// (`Runtime::set_wait_batch`, and busy enough for it), for metrics.
/// `None` outside a runtime and on the legacy driver.
pub fn uring_wait_batching() -> Option<bool> {
    if !crate::driver::CURRENT.is_set() {
        return None;
    }
    crate::driver::CURRENT.with(|inner| inner.wait_batching())
}

/// Sockets the current thread's io_uring driver has in its table of
/// registered files (`TcpStream::use_registered_file`), for tests and
/// diagnostics. `None` outside a runtime and on the legacy driver.
pub fn uring_registered_files() -> Option<usize> {
    if !crate::driver::CURRENT.is_set() {
        return None;
    }
    crate::driver::CURRENT.with(|inner| inner.registered_files())
}
