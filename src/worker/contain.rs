//! A panic boundary around each connection's task.
//!
//! monoio does not catch panics: one that unwinds out of a task's poll
//! unwinds out of the runtime and ends the worker thread, leaving every
//! connection on the worker hanging. [`Contained`] catches it at the
//! connection: the task ends, the connection's state is dropped (its
//! socket closes, its slots and counters are released by their `Drop`s),
//! and the worker goes on serving its other connections. The panic hook
//! has already written the message and location to stderr.
//!
//! `catch_unwind` costs nothing until something panics (no landing pad
//! runs on the normal path), and the wrapper adds a counter's pointer to
//! the task.

use std::cell::Cell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

pin_project_lite::pin_project! {
    /// A connection future that ends, counted in `panics`, if it panics.
    pub struct Contained<F> {
        #[pin]
        inner: F,
        panics: Rc<Cell<u64>>,
    }
}

impl<F> Contained<F> {
    pub fn new(inner: F, panics: Rc<Cell<u64>>) -> Self {
        Contained { inner, panics }
    }
}

impl<F: Future<Output = ()>> Future for Contained<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let inner = this.inner;
        // Unwind safety: what the connection shares with the rest of the
        // worker (pools, counters) is left consistent by the `Drop`s that
        // run during the unwind; the connection's own state is not used
        // again.
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(p) => p,
            Err(_) => {
                this.panics.set(this.panics.get() + 1);
                tracing::error!("a connection's task panicked; its connection was closed");
                Poll::Ready(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Closes(Rc<Cell<bool>>);
    impl Drop for Closes {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }

    #[test]
    fn a_panicking_task_ends_alone() {
        let panics = Rc::new(Cell::new(0));
        let closed = Rc::new(Cell::new(false));
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let served = rt.block_on({
            let (panics, closed) = (panics.clone(), closed.clone());
            async move {
                let held = Closes(closed);
                let failing = monoio::spawn(Contained::new(
                    async move {
                        let _held = held;
                        monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                        let v: Vec<u8> = Vec::new();
                        // Out of bounds after an await, as a bug would be.
                        std::hint::black_box(v[std::hint::black_box(3)]);
                    },
                    panics,
                ));
                let other = monoio::spawn(async {
                    monoio::time::sleep(std::time::Duration::from_millis(5)).await;
                    "served"
                });
                failing.await;
                other.await
            }
        });
        assert_eq!(served, "served", "the runtime outlived the panic");
        assert_eq!(panics.get(), 1);
        assert!(closed.get(), "the task's state was dropped");
    }
}
