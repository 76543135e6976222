//! Concurrency caps per route: at most `max_in_flight` requests of a route
//! run at once, up to `queue` more wait in arrival order for at most
//! `queue_timeout`, the rest get 503 at once (the `limit_conn` / circuit
//! breaker behaviour).
//!
//! The cap is split evenly over the workers (each admits
//! `ceil(max_in_flight / workers)`) so that admitting and finishing a
//! request touch only the worker's own state; a slot freed on one core is
//! not handed to a request waiting on another. Waiting requests are woken in
//! FIFO order by the request that frees a slot, with no timer per request
//! beyond the queue timeout.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::Duration;

use slab::Slab;

/// A route's configured cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    /// Per worker.
    pub max_in_flight: u32,
    /// Per worker.
    pub queue: u32,
    pub queue_timeout: Duration,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    QueueFull,
    TimedOut,
}

/// One route's gate on one worker.
#[derive(Default)]
pub struct Gate {
    in_flight: Cell<u32>,
    waiters: RefCell<Slab<Option<Waker>>>,
    order: RefCell<VecDeque<usize>>,
}

/// Held while a request runs; frees its slot on drop.
pub struct Permit<'a>(&'a Gate);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
        self.0.wake_first();
    }
}

/// Removes a waiter that gave up (timeout, or its request went away).
struct Queued<'a> {
    gate: &'a Gate,
    key: Option<usize>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let was_first = self.gate.order.borrow().front() == Some(&key);
            self.gate.order.borrow_mut().retain(|&k| k != key);
            self.gate.waiters.borrow_mut().remove(key);
            if was_first {
                self.gate.wake_first();
            }
        }
    }
}

impl Gate {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.get()
    }

    pub fn queued(&self) -> usize {
        self.order.borrow().len()
    }

    fn wake_first(&self) {
        let first = self.order.borrow().front().copied();
        if let Some(key) = first {
            if let Some(w) = self
                .waiters
                .borrow_mut()
                .get_mut(key)
                .and_then(Option::take)
            {
                w.wake();
            }
        }
    }

    /// Admits the request now, after waiting its turn, or refuses it.
    ///
    /// # Errors
    /// [`Refused`] when the queue is full or the wait timed out.
    pub async fn enter(&self, c: Concurrency) -> Result<Permit<'_>, Refused> {
        if self.in_flight.get() < c.max_in_flight && self.order.borrow().is_empty() {
            self.in_flight.set(self.in_flight.get() + 1);
            return Ok(Permit(self));
        }
        if self.order.borrow().len() >= c.queue as usize {
            return Err(Refused::QueueFull);
        }
        let key = self.waiters.borrow_mut().insert(None);
        self.order.borrow_mut().push_back(key);
        let mut queued = Queued {
            gate: self,
            key: Some(key),
        };
        let turn = poll_fn(|cx| {
            let first = self.order.borrow().front() == Some(&key);
            if first && self.in_flight.get() < c.max_in_flight {
                return Poll::Ready(());
            }
            if let Some(slot) = self.waiters.borrow_mut().get_mut(key) {
                *slot = Some(cx.waker().clone());
            }
            Poll::Pending
        });
        match monoio::time::timeout(c.queue_timeout, turn).await {
            Ok(()) => {
                self.order.borrow_mut().pop_front();
                self.waiters.borrow_mut().remove(key);
                queued.key = None;
                self.in_flight.set(self.in_flight.get() + 1);
                // The next waiter may fit too.
                self.wake_first();
                Ok(Permit(self))
            }
            Err(_) => Err(Refused::TimedOut),
        }
    }
}
