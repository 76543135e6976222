//! Reused heap slots for the request stages of a connection's task.
//!
//! A connection's task is one future. Between requests it only waits for
//! the next bytes; while a request is on it, it runs the request's stages
//! (read the head, filter, authenticate, proxy, stream the response), a
//! future of about 3.8 KiB. Were the stages part of the task's own future,
//! every idle keep-alive connection would carry their size too, as an
//! `async fn`'s future is as large as its largest state. Instead each
//! request's stages run in a slot taken from this per-worker pool and given
//! back when the request ends: an idle connection holds only its small
//! waiting future, and a worker holds about as many slots as it has
//! requests in progress.
//!
//! Like the buffer pool, it lives on one worker and is touched only by its
//! tasks: no lock. Taking and returning a slot is a `Vec` pop and push;
//! slots are allocated only at a new high of concurrent requests and freed
//! only when the pool is full.

#![allow(unsafe_code)]

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Slots kept for reuse, per layout (3.8 KiB each: under 1 MiB per worker).
const MAX_POOLED: usize = 256;

/// Free slots by layout; a worker runs one or two stage future types
/// (plain and TLS connections), so a short list beats a map.
#[derive(Default)]
pub struct StageSlots {
    free: RefCell<Vec<(Layout, Vec<NonNull<u8>>)>>,
}

impl StageSlots {
    /// Makes a future in a slot; the returned future runs it there and
    /// gives the slot back as soon as it completes (or is dropped). Taking
    /// a maker rather than the future lets the compiler build the future in
    /// the slot instead of copying all of it (its size is that of its
    /// largest state) from the stack.
    pub fn run<F: Future>(&self, make: impl FnOnce() -> F) -> InSlot<'_, F> {
        let layout = Layout::new::<F>();
        let slot = if layout.size() == 0 {
            NonNull::<F>::dangling()
        } else {
            self.take(layout).cast::<F>()
        };
        // SAFETY: `slot` is valid for writes of an `F` and properly aligned:
        // it was allocated with `F`'s layout (or `F` is zero-sized).
        unsafe { slot.as_ptr().write(make()) };
        InSlot {
            pool: self,
            slot: Some(slot),
            _owns: PhantomData,
        }
    }

    fn take(&self, layout: Layout) -> NonNull<u8> {
        let mut free = self.free.borrow_mut();
        if let Some(slot) = free
            .iter_mut()
            .find(|(l, _)| *l == layout)
            .and_then(|(_, slots)| slots.pop())
        {
            return slot;
        }
        // SAFETY: `layout` has a non-zero size (checked by `run`).
        NonNull::new(unsafe { alloc(layout) }).unwrap_or_else(|| handle_alloc_error(layout))
    }

    fn put(&self, layout: Layout, slot: NonNull<u8>) {
        if layout.size() == 0 {
            return;
        }
        let mut free = self.free.borrow_mut();
        let index = match free.iter().position(|(l, _)| *l == layout) {
            Some(i) => i,
            None => {
                free.push((layout, Vec::new()));
                free.len() - 1
            }
        };
        let slots = &mut free[index].1;
        if slots.len() < MAX_POOLED {
            slots.push(slot);
        } else {
            // SAFETY: allocated by `take` with this same layout and no
            // longer in use.
            unsafe { dealloc(slot.as_ptr(), layout) };
        }
    }

    /// Free slots in the pool.
    #[cfg(test)]
    fn pooled(&self) -> usize {
        self.free.borrow().iter().map(|(_, s)| s.len()).sum()
    }
}

impl Drop for StageSlots {
    fn drop(&mut self) {
        for (layout, slots) in self.free.get_mut().drain(..) {
            for slot in slots {
                // SAFETY: allocated by `take` with this layout; free slots
                // hold no value.
                unsafe { dealloc(slot.as_ptr(), layout) };
            }
        }
    }
}

/// A future running in a slot of a [`StageSlots`] pool.
pub struct InSlot<'p, F: Future> {
    pool: &'p StageSlots,
    /// The slot, holding a live `F` until it completes; `None` after.
    slot: Option<NonNull<F>>,
    /// Owns an `F` (for drop checking).
    _owns: PhantomData<F>,
}

impl<F: Future> InSlot<'_, F> {
    /// Drops the future in place and returns its slot to the pool.
    fn release(&mut self) {
        if let Some(slot) = self.slot.take() {
            // SAFETY: the slot holds a live `F` (it is `Some`), which is
            // dropped exactly once here: `slot` was taken out first.
            unsafe { std::ptr::drop_in_place(slot.as_ptr()) };
            self.pool.put(Layout::new::<F>(), slot.cast());
        }
    }
}

// Like `Box<F>`: moving the handle never moves the future in its slot.
impl<F: Future> Unpin for InSlot<'_, F> {}

impl<F: Future> Future for InSlot<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let mut slot = this.slot.expect("InSlot polled after completion");
        // SAFETY: the slot holds a live `F` that stays at this address
        // until `release` drops it in place, so it is pinned.
        let fut = unsafe { Pin::new_unchecked(slot.as_mut()) };
        let out = std::task::ready!(fut.poll(cx));
        // The request is over: its slot goes back before the connection
        // waits for the next one.
        this.release();
        Poll::Ready(out)
    }
}

impl<F: Future> Drop for InSlot<'_, F> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::block_on;
    use std::cell::Cell;
    use std::rc::Rc;

    /// Counts its drops.
    struct Tally(Rc<Cell<u32>>);

    impl Drop for Tally {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    #[test]
    fn a_slot_is_reused_for_the_next_future() {
        let pool = StageSlots::default();
        let addr = |x: &[u8; 512]| x.as_ptr() as usize;
        let first = block_on(async {
            let big = [7u8; 512];
            pool.run(|| async move {
                monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                addr(&big)
            })
            .await
        });
        assert_eq!(pool.pooled(), 1, "the slot came back on completion");
        let second = block_on(async {
            let big = [9u8; 512];
            pool.run(|| async move {
                monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                addr(&big)
            })
            .await
        });
        assert_eq!(first, second, "the same slot ran the next future");
        assert_eq!(pool.pooled(), 1);
    }

    /// Holds `tally` until it completes; with `stall`, never completes.
    async fn hold(tally: Tally, stall: bool) -> u32 {
        let _held = tally;
        if stall {
            std::future::pending::<()>().await;
        }
        5
    }

    #[test]
    fn the_future_is_dropped_once_whether_finished_or_not() {
        let pool = StageSlots::default();
        let drops = Rc::new(Cell::new(0));
        let done = block_on(pool.run(|| hold(Tally(drops.clone()), false)));
        assert_eq!((done, drops.get()), (5, 1));
        assert_eq!(pool.pooled(), 1);
        // Dropped before completion: the future's state is dropped in place.
        let pending = pool.run(|| hold(Tally(drops.clone()), true));
        assert_eq!(pool.pooled(), 0, "a running future holds its slot");
        drop(pending);
        assert_eq!(drops.get(), 2);
        assert_eq!(pool.pooled(), 1);
    }

    #[test]
    fn different_layouts_get_different_slots_and_the_pool_is_bounded() {
        let pool = StageSlots::default();
        let small = block_on(pool.run(|| async { [1u8; 16].len() }));
        let large = block_on(pool.run(|| async {
            let x = [2u64; 100];
            std::future::ready(()).await;
            x.len()
        }));
        assert_eq!((small, large), (16, 100));
        assert_eq!(pool.free.borrow().len(), 2, "one free list per layout");
        let running: Vec<_> = (0..MAX_POOLED + 5)
            .map(|i| pool.run(move || async move { i }))
            .collect();
        drop(running);
        assert_eq!(pool.free.borrow().len(), 3);
        assert_eq!(pool.pooled(), 2 + MAX_POOLED, "the rest were freed");
    }
}
