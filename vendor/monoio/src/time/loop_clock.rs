//! The time of the event loop's latest wake-up.
//!
//! Reading the clock is a vDSO call, cheap but not free, and a request may
//! want the time at several points. A thread's runtime stores the time it
//! reads when it wakes up (after each park, when due timers are processed)
//! and before it polls tasks woken outside a park, so everything that runs
//! in one turn of the loop can share one reading, as nginx's cached time and
//! Envoy's approximate monotonic time do. The reading is behind the true
//! time by at most the work of that turn.

use std::cell::Cell;

use crate::time::Instant;

thread_local! {
    static LOOP_NOW: Cell<Option<std::time::Instant>> = const { Cell::new(None) };
}

/// The time this thread's event loop last woke up at, or the clock's
/// current time outside a running loop (or before its first wake-up).
///
/// Deadlines taken from it are early by at most one turn of the loop, and
/// durations between two readings are measured from wake-up to wake-up.
#[inline]
pub fn loop_now() -> Instant {
    Instant::from_std(LOOP_NOW.with(|t| t.get()).unwrap_or_else(std::time::Instant::now))
}

/// Stores `now` as the loop's time.
#[inline]
pub(crate) fn set_loop_now(now: std::time::Instant) {
    LOOP_NOW.with(|t| t.set(Some(now)));
}

/// Forgets the loop's time, when the loop stops.
pub(crate) fn clear_loop_now() {
    LOOP_NOW.with(|t| t.set(None));
}
