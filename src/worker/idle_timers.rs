//! Keep-alive idle deadlines of held and parked connections.
//!
//! A held connection (see `buffers.rs`) waits at most
//! `keepalive_park_after` for its next request, a parked one the rest of
//! `keepalive_idle`. Its deadline is an entry in this per-worker table
//! rather than in the runtime's timer wheel, whose entries are cache-line
//! padded for cross-thread use (about 0.5 KiB inside every waiting future,
//! each registration a wheel insertion): an entry here is a slab slot of 40
//! bytes, set and cleared once per wait. One sweeper task per worker
//! ([`IdleTimers::sweep`]) walks the table every [`TICK`] while any
//! connection waits and wakes those past their deadline, so a wait ends
//! between its deadline and one tick after it. With no connection waiting
//! the sweeper sleeps until the next one does.
//!
//! Single-threaded like the rest of the worker's state: no lock.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use monoio::time::{loop_now, Instant};
use slab::Slab;

/// How often the sweeper checks deadlines while connections wait.
pub const TICK: Duration = Duration::from_millis(100);

struct Entry {
    deadline: Instant,
    waker: Option<Waker>,
    expired: bool,
}

#[derive(Default)]
pub struct IdleTimers {
    entries: RefCell<Slab<Entry>>,
    /// The sweeper, waiting for the first entry of an empty table.
    sweeper: Cell<Option<Waker>>,
}

impl IdleTimers {
    /// Starts a deadline `wait` from now; it is cleared when the returned
    /// timer drops.
    pub fn start(&self, wait: Duration) -> IdleTimer<'_> {
        let deadline = loop_now() + wait;
        let key = {
            let mut entries = self.entries.borrow_mut();
            entries.insert(Entry {
                deadline,
                waker: None,
                expired: false,
            })
        };
        if let Some(w) = self.sweeper.take() {
            w.wake();
        }
        IdleTimer { timers: self, key }
    }

    /// Marks the entries whose deadline is at or before `now` as expired
    /// and wakes their connections. Returns how many expired.
    pub fn expire(&self, now: Instant) -> usize {
        let mut expired = 0;
        for (_, e) in self.entries.borrow_mut().iter_mut() {
            if !e.expired && e.deadline <= now {
                e.expired = true;
                expired += 1;
                // A monoio wake only queues the task: nothing runs here.
                if let Some(w) = e.waker.take() {
                    w.wake();
                }
            }
        }
        expired
    }

    /// Deadlines currently set.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    /// The worker's sweeper: expires deadlines every [`TICK`] while there
    /// are any, and sleeps while there are none. Runs until `stop`
    /// resolves.
    pub async fn sweep(&self, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            let tick = async {
                std::future::poll_fn(|cx| {
                    if !self.entries.borrow().is_empty() {
                        Poll::Ready(())
                    } else {
                        self.sweeper.set(Some(cx.waker().clone()));
                        Poll::Pending
                    }
                })
                .await;
                monoio::time::sleep(TICK).await;
            };
            monoio::select! {
                _ = tick => {}
                _ = &mut stop => return,
            }
            self.expire(loop_now());
        }
    }
}

/// A set deadline; see [`IdleTimers::start`].
pub struct IdleTimer<'a> {
    timers: &'a IdleTimers,
    key: usize,
}

impl IdleTimer<'_> {
    /// Resolves once the deadline has passed (as seen by the sweeper).
    pub fn expired(&self) -> Expired<'_> {
        Expired { timer: self }
    }
}

impl Drop for IdleTimer<'_> {
    fn drop(&mut self) {
        self.timers.entries.borrow_mut().remove(self.key);
    }
}

pub struct Expired<'a> {
    timer: &'a IdleTimer<'a>,
}

impl Future for Expired<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut entries = self.timer.timers.entries.borrow_mut();
        let entry = &mut entries[self.timer.key];
        if entry.expired {
            return Poll::Ready(());
        }
        match &entry.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => entry.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::block_on;

    #[test]
    fn only_deadlines_that_passed_expire() {
        block_on(async {
            let timers = IdleTimers::default();
            let short = timers.start(Duration::from_secs(10));
            let long = timers.start(Duration::from_secs(60));
            let start = Instant::now();
            assert_eq!(timers.expire(start), 0);
            assert_eq!(timers.expire(start + Duration::from_secs(30)), 1);
            // Expired, so the wait resolves at once; the other is pending.
            short.expired().await;
            let pending = std::future::poll_fn(|cx| {
                Poll::Ready(Pin::new(&mut long.expired()).poll(cx).is_pending())
            })
            .await;
            assert!(pending);
            assert_eq!(timers.expire(start + Duration::from_secs(30)), 0, "once");
            assert_eq!(timers.expire(start + Duration::from_secs(61)), 1);
            long.expired().await;
            drop((short, long));
            assert_eq!(timers.len(), 0, "dropping a timer clears its entry");
        });
    }

    #[test]
    fn the_sweeper_wakes_a_waiting_connection_after_its_deadline() {
        block_on(async {
            let timers = IdleTimers::default();
            let waited = async {
                let timer = timers.start(Duration::from_millis(50));
                let started = Instant::now();
                timer.expired().await;
                started.elapsed()
            };
            // The sweeper may start on an empty table: the first deadline
            // wakes it.
            let waited = monoio::select! {
                w = waited => w,
                _ = timers.sweep(std::future::pending()) => unreachable!("never stops"),
            };
            assert!(waited >= Duration::from_millis(50), "{waited:?}");
            assert_eq!(timers.len(), 0);
        });
    }
}
