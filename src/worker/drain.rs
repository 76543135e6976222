//! Per-worker coordination primitives, single-threaded (no atomics, no locks):
//! - [`Drain`]: the graceful-shutdown signal idle connections and the accept
//!   loop wait on; one waker slot per connection, registered once at accept.
//! - [`ConnSlots`]: the per-worker connection count and limit; the accept loop
//!   waits for a free slot, so excess connections stay in the kernel backlog.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use slab::Slab;

#[derive(Default)]
pub struct Drain {
    draining: Cell<bool>,
    waiters: RefCell<Slab<Option<Waker>>>,
}

impl Drain {
    /// Registers a connection (or the accept loop) as a drain listener.
    pub fn register(&self) -> DrainGuard<'_> {
        let key = self.waiters.borrow_mut().insert(None);
        DrainGuard { drain: self, key }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Starts draining: every registered waiter is woken.
    pub fn start(&self) {
        self.draining.set(true);
        let wakers: Vec<Waker> = self
            .waiters
            .borrow_mut()
            .iter_mut()
            .filter_map(|(_, w)| w.take())
            .collect();
        for w in wakers {
            w.wake();
        }
    }
}

/// A registration; deregisters on drop.
pub struct DrainGuard<'a> {
    drain: &'a Drain,
    key: usize,
}

impl DrainGuard<'_> {
    /// Resolves once draining has started.
    pub fn wait(&self) -> DrainWait<'_> {
        DrainWait { guard: self }
    }
}

impl Drop for DrainGuard<'_> {
    fn drop(&mut self) {
        self.drain.waiters.borrow_mut().remove(self.key);
    }
}

pub struct DrainWait<'a> {
    guard: &'a DrainGuard<'a>,
}

impl Future for DrainWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let drain = self.guard.drain;
        if drain.draining.get() {
            return Poll::Ready(());
        }
        let mut waiters = drain.waiters.borrow_mut();
        if let Some(slot) = waiters.get_mut(self.guard.key) {
            match slot {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *slot = Some(cx.waker().clone()),
            }
        }
        Poll::Pending
    }
}

/// Active connections of one worker and the single task waiting for a change.
#[derive(Default)]
pub struct ConnSlots {
    active: Cell<usize>,
    waiter: Cell<Option<Waker>>,
}

impl ConnSlots {
    pub fn active(&self) -> usize {
        self.active.get()
    }

    pub fn acquire(&self) {
        self.active.set(self.active.get() + 1);
    }

    pub fn release(&self) {
        self.active.set(self.active.get() - 1);
        if let Some(w) = self.waiter.take() {
            w.wake();
        }
    }

    /// Resolves when fewer than `limit` connections are active.
    pub fn below(&self, limit: usize) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.active.get() < limit {
                Poll::Ready(())
            } else {
                self.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn drain_wakes_registered_waiters_once() {
        let drain = Drain::default();
        let guard = drain.register();
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut wait = Box::pin(guard.wait());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        drain.start();
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        drop(wait);
        drop(guard);
        assert!(drain.waiters.borrow().is_empty());
    }

    #[test]
    fn slots_wake_the_waiter_on_release() {
        let slots = ConnSlots::default();
        slots.acquire();
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut below = Box::pin(slots.below(1));
        assert!(below.as_mut().poll(&mut cx).is_pending());
        slots.release();
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert!(below.as_mut().poll(&mut cx).is_ready());
    }
}
