//! Monoio Uring Driver.

use std::{
    cell::UnsafeCell,
    io,
    mem::ManuallyDrop,
    os::unix::prelude::{AsRawFd, RawFd},
    rc::Rc,
    task::{Context, Poll},
    time::Duration,
};

use io_uring::{cqueue, opcode, types::Timespec, IoUring};
use lifecycle::Lifecycle;

use super::{
    op::{CompletionMeta, Op, OpAble},
    // ready::Ready,
    // scheduled_io::ScheduledIo,
    util::timespec,
    Driver,
    Inner,
    CURRENT,
};
use crate::utils::slab::Slab;

mod lifecycle;
#[cfg(feature = "sync")]
mod waker;
#[cfg(feature = "sync")]
pub(crate) use waker::UnparkHandle;

#[allow(unused)]
pub(crate) const CANCEL_USERDATA: u64 = u64::MAX;
pub(crate) const TIMEOUT_USERDATA: u64 = u64::MAX - 1;
#[allow(unused)]
pub(crate) const EVENTFD_USERDATA: u64 = u64::MAX - 2;
#[cfg(feature = "poll-io")]
pub(crate) const POLLER_USERDATA: u64 = u64::MAX - 3;

pub(crate) const MIN_REVERSED_USERDATA: u64 = u64::MAX - 3;

/// Marks the index of an operation with a linked head
/// (`OpAble::uring_link_head`), and the user data of that head. The head
/// posts a completion only when it fails, and then the kernel posts none
/// for the rest of the link (`REQ_F_SKIP_LINK_CQES`): either way the
/// operation completes once.
pub(crate) const LINKED: usize = 1 << (usize::BITS - 2);

/// Set in a completion's flags when it is the linked head's: the head
/// failed and the operation's own submission never ran. No flag the
/// kernel sets uses this bit.
pub(crate) const LINK_HEAD_FAILED: u32 = 1 << 31;

/// Driver with uring.
pub struct IoUringDriver {
    inner: Rc<UnsafeCell<UringInner>>,

    // Used as timeout buffer
    timespec: *mut Timespec,

    // Used as read eventfd buffer
    #[cfg(feature = "sync")]
    eventfd_read_dst: *mut u8,

    // Used for drop
    #[cfg(feature = "sync")]
    thread_id: usize,
}

pub(crate) struct UringInner {
    /// In-flight operations
    ops: Ops,

    #[cfg(feature = "poll-io")]
    poll: super::poll::Poll,
    #[cfg(feature = "poll-io")]
    poller_installed: bool,

    /// IoUring bindings
    uring: ManuallyDrop<IoUring>,

    /// Shared waker
    #[cfg(feature = "sync")]
    shared_waker: std::sync::Arc<waker::EventWaker>,

    // Mark if eventfd is in the ring
    #[cfg(feature = "sync")]
    eventfd_installed: bool,

    // Waker receiver
    #[cfg(feature = "sync")]
    waker_receiver: flume::Receiver<std::task::Waker>,

    // Uring support ext_arg
    ext_arg: bool,

    // Batched waits, when set and the kernel has minimum wait times, with
    // the gate that lets them batch only while the thread is busy.
    batch: Option<(WaitBatch, LoadGate)>,

    // How many completions the next batched wait asks for.
    want: u32,

    // The ring can skip successful completions (Linux 5.17), which linked
    // operations need.
    skip_cqe: bool,

    // Completions reaped so far (`utils::uring_completions`).
    completed: u64,

    // The ring's registered file table (`TcpStream::use_registered_file`).
    files: FileTable,
}

/// The ring's table of registered files, made on first use: sparse, as
/// large as the thread may open files (up to `FileTable::MAX`). A socket in
/// it is named by its slot, so the kernel skips looking up (and counting a
/// reference to) its file on every operation.
enum FileTable {
    /// Not asked for yet.
    Untried,
    /// The kernel refused the table (before Linux 5.19, or no room).
    Unavailable,
    Ready {
        /// Slots given back, used first.
        free: Vec<u32>,
        /// Slots never used start here.
        next: u32,
        size: u32,
    },
}

impl FileTable {
    /// Slots a ring asks for at most; each costs the kernel 8 bytes.
    const MAX: u32 = 16 * 1024;
}

/// How a parked io_uring driver waits: for up to `max` completions, but no
/// longer than `wait` once at least one is there.
///
/// The number a wait asks for adapts: a wait that collects more than it
/// asked for doubles what it collected for the next (up to `max`); one
/// that collects fewer, because `wait` ran out, asks for what it got (at
/// least one). A busy thread so handles a batch per wake-up, and an idle
/// one, whose waits collect one, asks for one and is not held. Needs Linux
/// 6.12 (`min_wait_usec` in `io_uring_getevents_arg`); on older kernels
/// waits stay single.
///
/// With `busy_percent`, waits batch only while the thread is that busy:
/// every [`LoadGate::PARKS`] parks it compares its CPU time with the wall
/// time that passed, starts batching at `busy_percent` and stops below
/// `busy_percent - LoadGate::HYSTERESIS`. A thread with CPU to spare then
/// answers each completion at once, and one near its capacity trades the
/// hold for fewer sleeps and wake-ups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitBatch {
    /// The most completions one wait collects.
    pub max: u32,
    /// How long a wait that already has a completion may hold it for more.
    pub wait: Duration,
    /// The share of wall time, in percent, the thread must spend on the
    /// CPU for its waits to batch; 0 batches always.
    pub busy_percent: u32,
}

/// Whether a thread is busy enough for batched waits (see
/// [`WaitBatch::busy_percent`]).
struct LoadGate {
    batching: bool,
    // Parks since the window began, and when it began, in wall and CPU time.
    parks: u32,
    since: std::time::Instant,
    cpu: Duration,
}

impl LoadGate {
    /// Parks per measurement: two clock reads, one of them a system call,
    /// every this many waits (about every 5 to 20 ms under load).
    const PARKS: u32 = 256;
    /// How far below `busy_percent` the load must fall to stop batching,
    /// so a window's noise does not flip the mode back and forth.
    const HYSTERESIS: u32 = 10;

    fn new(batching: bool) -> Self {
        Self {
            batching,
            parks: 0,
            since: std::time::Instant::now(),
            cpu: thread_cpu_time(),
        }
    }

    /// Counts a park; returns whether the next wait batches.
    fn park(&mut self, busy_percent: u32) -> bool {
        if busy_percent == 0 {
            return true;
        }
        self.parks += 1;
        if self.parks >= Self::PARKS {
            let (now, cpu) = (std::time::Instant::now(), thread_cpu_time());
            let wall = now.saturating_duration_since(self.since).as_nanos().max(1);
            let used = (cpu.saturating_sub(self.cpu).as_nanos() * 100 / wall) as u32;
            self.batching = next_batching(self.batching, used, busy_percent);
            (self.parks, self.since, self.cpu) = (0, now, cpu);
        }
        self.batching
    }
}

/// Whether waits batch after a window in which the thread used `used`
/// percent of the wall time, given whether they did (see [`WaitBatch`]).
fn next_batching(batching: bool, used: u32, busy_percent: u32) -> bool {
    if batching {
        used + LoadGate::HYSTERESIS >= busy_percent
    } else {
        used >= busy_percent
    }
}

/// The calling thread's CPU time, user and system.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write to; the clock always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `struct io_uring_getevents_arg` as of Linux 6.12.
#[repr(C)]
struct GetEventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

// When dropping the driver, all in-flight operations must have completed. This
// type wraps the slab and ensures that, on drop, the slab is empty.
struct Ops {
    slab: Slab<Lifecycle>,
}

impl IoUringDriver {
    const DEFAULT_ENTRIES: u32 = 1024;

    pub(crate) fn new(b: &io_uring::Builder) -> io::Result<IoUringDriver> {
        Self::new_with_entries(b, Self::DEFAULT_ENTRIES)
    }

    #[cfg(not(feature = "sync"))]
    pub(crate) fn new_with_entries(
        urb: &io_uring::Builder,
        entries: u32,
    ) -> io::Result<IoUringDriver> {
        let uring = ManuallyDrop::new(urb.build(entries)?);

        let inner = Rc::new(UnsafeCell::new(UringInner {
            #[cfg(feature = "poll-io")]
            poll: super::poll::Poll::with_capacity(entries as usize)?,
            #[cfg(feature = "poll-io")]
            poller_installed: false,
            ops: Ops::new(),
            ext_arg: uring.params().is_feature_ext_arg(),
            batch: None,
            want: 1,
            skip_cqe: uring.params().is_feature_skip_cqe_on_success(),
            completed: 0,
            files: FileTable::Untried,
            uring,
        }));

        Ok(IoUringDriver {
            inner,
            timespec: Box::leak(Box::new(Timespec::new())) as *mut Timespec,
        })
    }

    #[cfg(feature = "sync")]
    pub(crate) fn new_with_entries(
        urb: &io_uring::Builder,
        entries: u32,
    ) -> io::Result<IoUringDriver> {
        let uring = ManuallyDrop::new(urb.build(entries)?);

        // Create eventfd and register it to the ring.
        let waker = {
            let fd = crate::syscall!(eventfd(0, libc::EFD_CLOEXEC))?;
            unsafe {
                use std::os::unix::io::FromRawFd;
                std::fs::File::from_raw_fd(fd)
            }
        };

        let (waker_sender, waker_receiver) = flume::unbounded::<std::task::Waker>();

        let inner = Rc::new(UnsafeCell::new(UringInner {
            #[cfg(feature = "poll-io")]
            poller_installed: false,
            #[cfg(feature = "poll-io")]
            poll: super::poll::Poll::with_capacity(entries as usize)?,
            ops: Ops::new(),
            ext_arg: uring.params().is_feature_ext_arg(),
            batch: None,
            want: 1,
            skip_cqe: uring.params().is_feature_skip_cqe_on_success(),
            completed: 0,
            files: FileTable::Untried,
            uring,
            shared_waker: std::sync::Arc::new(waker::EventWaker::new(waker)),
            eventfd_installed: false,
            waker_receiver,
        }));

        let thread_id = crate::builder::BUILD_THREAD_ID.with(|id| *id);
        let driver = IoUringDriver {
            inner,
            timespec: Box::leak(Box::new(Timespec::new())) as *mut Timespec,
            eventfd_read_dst: Box::leak(Box::new([0_u8; 8])) as *mut u8,
            thread_id,
        };

        // Register unpark handle
        super::thread::register_unpark_handle(thread_id, driver.unpark().into());
        super::thread::register_waker_sender(thread_id, waker_sender);
        Ok(driver)
    }

    #[allow(unused)]
    fn num_operations(&self) -> usize {
        let inner = self.inner.get();
        unsafe { (*inner).ops.slab.len() }
    }

    // Flush to make enough space
    fn flush_space(inner: &mut UringInner, need: usize) -> io::Result<()> {
        let sq = inner.uring.submission();
        debug_assert!(sq.capacity() >= need);
        if sq.len() + need > sq.capacity() {
            drop(sq);
            inner.submit()?;
        }
        Ok(())
    }

    #[cfg(feature = "sync")]
    fn install_eventfd(&self, inner: &mut UringInner, fd: RawFd) {
        let entry = opcode::Read::new(io_uring::types::Fd(fd), self.eventfd_read_dst, 8)
            .build()
            .user_data(EVENTFD_USERDATA);

        let mut sq = inner.uring.submission();
        let _ = unsafe { sq.push(&entry) };
        inner.eventfd_installed = true;
    }

    #[cfg(feature = "poll-io")]
    fn install_poller(&self, inner: &mut UringInner, fd: RawFd) {
        let entry = opcode::PollAdd::new(io_uring::types::Fd(fd), libc::POLLIN as _)
            .build()
            .user_data(POLLER_USERDATA);

        let mut sq = inner.uring.submission();
        let _ = unsafe { sq.push(&entry) };
        inner.poller_installed = true;
    }

    fn install_timeout(&self, inner: &mut UringInner, duration: Duration) {
        let timespec = timespec(duration);
        unsafe {
            std::ptr::replace(self.timespec, timespec);
        }
        let entry = opcode::Timeout::new(self.timespec as *const Timespec)
            .build()
            .user_data(TIMEOUT_USERDATA);

        let mut sq = inner.uring.submission();
        let _ = unsafe { sq.push(&entry) };
    }

    fn inner_park(&self, timeout: Option<Duration>) -> io::Result<()> {
        let inner = unsafe { &mut *self.inner.get() };

        #[allow(unused_mut)]
        let mut need_wait = true;

        #[cfg(feature = "sync")]
        {
            // Process foreign wakers
            while let Ok(w) = inner.waker_receiver.try_recv() {
                w.wake();
                need_wait = false;
            }

            // Set status as not awake if we are going to sleep
            if need_wait {
                inner
                    .shared_waker
                    .awake
                    .store(false, std::sync::atomic::Ordering::Release);
            }

            // Process foreign wakers left
            while let Ok(w) = inner.waker_receiver.try_recv() {
                w.wake();
                need_wait = false;
            }
        }

        if need_wait {
            // Install timeout and eventfd for unpark if sync is enabled

            // 1. alloc spaces
            let mut space = 0;
            #[cfg(feature = "sync")]
            if !inner.eventfd_installed {
                space += 1;
            }
            #[cfg(feature = "poll-io")]
            if !inner.poller_installed {
                space += 1;
            }
            if timeout.is_some() {
                space += 1;
            }
            if space != 0 {
                Self::flush_space(inner, space)?;
            }

            // 2.1 install poller
            #[cfg(feature = "poll-io")]
            if !inner.poller_installed {
                self.install_poller(inner, inner.poll.as_raw_fd());
            }

            // 2.2 install eventfd and timeout
            #[cfg(feature = "sync")]
            if !inner.eventfd_installed {
                self.install_eventfd(inner, inner.shared_waker.as_raw_fd());
            }

            // 2.3 install timeout and submit_and_wait with timeout
            let batch_wait = inner.batch.as_ref().filter(|_| inner.want > 1);
            if let Some(wait) = batch_wait.map(|(batch, _)| batch.wait) {
                inner.wait_batched(inner.want, wait, timeout)?;
            } else if let Some(duration) = timeout {
                match inner.ext_arg {
                    // Submit and Wait with timeout in an TimeoutOp way.
                    // Better compatibility(5.4+).
                    false => {
                        self.install_timeout(inner, duration);
                        inner.uring.submit_and_wait(1)?;
                    }
                    // Submit and Wait with enter args.
                    // Better performance(5.11+).
                    true => {
                        let timespec = timespec(duration);
                        let args = io_uring::types::SubmitArgs::new().timespec(&timespec);
                        if let Err(e) = inner.uring.submitter().submit_with_args(1, &args) {
                            if e.raw_os_error() != Some(libc::ETIME) {
                                return Err(e);
                            }
                        }
                    }
                }
            } else {
                // Submit and Wait without timeout
                inner.uring.submit_and_wait(1)?;
            }
        } else {
            // Submit only
            inner.uring.submit()?;
        }

        // Set status as awake
        #[cfg(feature = "sync")]
        inner
            .shared_waker
            .awake
            .store(true, std::sync::atomic::Ordering::Release);

        // Process CQ
        let reaped = inner.tick()?;
        if let Some((batch, gate)) = inner.batch.as_mut() {
            inner.want = if gate.park(batch.busy_percent) {
                next_want(inner.want, reaped, batch.max)
            } else {
                1
            };
        }

        Ok(())
    }

    /// Makes parked waits collect several completions at once (see
    /// [`WaitBatch`]). Returns false, leaving waits single, when the kernel
    /// has no minimum wait time.
    pub(crate) fn set_wait_batch(&self, batch: WaitBatch) -> bool {
        let inner = unsafe { &mut *self.inner.get() };
        if batch.max <= 1 || batch.wait.is_zero() || !inner.ext_arg {
            return false;
        }
        // Kernels before 6.12 refuse a nonzero min_wait_usec (it was
        // padding) with EINVAL; asking for no completions returns at once.
        let probe = GetEventsArg {
            sigmask: 0,
            sigmask_sz: 0,
            min_wait_usec: 1,
            ts: 0,
        };
        if inner.enter(0, &probe).is_err() {
            return false;
        }
        inner.batch = Some((batch, LoadGate::new(batch.busy_percent == 0)));
        true
    }

    #[cfg(feature = "poll-io")]
    #[inline]
    pub(crate) fn register_poll_io(
        this: &Rc<UnsafeCell<UringInner>>,
        source: &mut impl mio::event::Source,
        interest: mio::Interest,
    ) -> io::Result<usize> {
        let inner = unsafe { &mut *this.get() };
        inner.poll.register(source, interest)
    }

    #[cfg(feature = "poll-io")]
    #[inline]
    pub(crate) fn deregister_poll_io(
        this: &Rc<UnsafeCell<UringInner>>,
        source: &mut impl mio::event::Source,
        token: usize,
    ) -> io::Result<()> {
        let inner = unsafe { &mut *this.get() };
        inner.poll.deregister(source, token)
    }
}

impl Driver for IoUringDriver {
    /// Enter the driver context. This enables using uring types.
    fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        // TODO(ihciah): remove clone
        let inner = Inner::Uring(self.inner.clone());
        CURRENT.set(&inner, f)
    }

    fn submit(&self) -> io::Result<()> {
        let inner = unsafe { &mut *self.inner.get() };
        inner.submit()?;
        inner.tick()?;
        Ok(())
    }

    fn park(&self) -> io::Result<()> {
        self.inner_park(None)
    }

    fn park_timeout(&self, duration: Duration) -> io::Result<()> {
        self.inner_park(Some(duration))
    }

    #[cfg(feature = "sync")]
    type Unpark = waker::UnparkHandle;

    #[cfg(feature = "sync")]
    fn unpark(&self) -> Self::Unpark {
        UringInner::unpark(&self.inner)
    }
}

/// What the next batched wait asks for, after one that asked for `asked`
/// completions collected `reaped` (see [`WaitBatch`]).
fn next_want(asked: u32, reaped: u32, max: u32) -> u32 {
    match reaped.cmp(&asked) {
        std::cmp::Ordering::Greater => reaped.saturating_mul(2).min(max),
        std::cmp::Ordering::Equal => asked,
        std::cmp::Ordering::Less => reaped.max(1),
    }
}

impl UringInner {
    /// `io_uring_enter` with `IORING_ENTER_EXT_ARG`, which io-uring 0.6's
    /// `SubmitArgs` cannot fill in beyond the timeout.
    fn enter(&mut self, want: u32, arg: &GetEventsArg) -> io::Result<()> {
        let to_submit = self.uring.submission().len() as u32;
        const IORING_ENTER_GETEVENTS: u32 = 1 << 0;
        const IORING_ENTER_EXT_ARG: u32 = 1 << 3;
        let flags = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG;
        // SAFETY: arg outlives the call and has the layout the kernel reads.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.uring.as_raw_fd(),
                to_submit,
                want,
                flags,
                arg as *const GetEventsArg,
                std::mem::size_of::<GetEventsArg>(),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Submits and waits for `want` completions, or `min_wait` past the
    /// start once at least one is there, or `timeout`.
    fn wait_batched(
        &mut self,
        want: u32,
        min_wait: Duration,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        // Timespec is repr(transparent) over the kernel's __kernel_timespec.
        let ts = timeout.map(timespec);
        // A timer due sooner than min_wait caps it: timers keep their time.
        let min_wait = timeout.map_or(min_wait, |d| min_wait.min(d));
        let arg = GetEventsArg {
            sigmask: 0,
            sigmask_sz: 0,
            min_wait_usec: (min_wait.as_micros() as u32).max(1),
            ts: ts.as_ref().map_or(0, |ts| ts as *const Timespec as u64),
        };
        match self.enter(want, &arg) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => Ok(()),
            r => r,
        }
    }

    fn tick(&mut self) -> io::Result<u32> {
        let cq = self.uring.completion();
        let mut reaped = 0;

        for cqe in cq {
            reaped += 1;
            let index = cqe.user_data();
            match index {
                #[cfg(feature = "sync")]
                EVENTFD_USERDATA => self.eventfd_installed = false,
                #[cfg(feature = "poll-io")]
                POLLER_USERDATA => {
                    self.poller_installed = false;
                    self.poll.tick(Some(Duration::ZERO))?;
                }
                _ if index >= MIN_REVERSED_USERDATA => (),
                // A linked head that failed: the one completion of its
                // operation (the kernel then posts none for the rest of
                // the link).
                _ if index as usize & LINKED != 0 => self.ops.complete(
                    index as usize & !LINKED,
                    resultify(&cqe),
                    cqe.flags() | LINK_HEAD_FAILED,
                ),
                _ => self.ops.complete(index as _, resultify(&cqe), cqe.flags()),
            }
        }
        self.completed += u64::from(reaped);
        Ok(reaped)
    }

    fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.uring.submit() {
                #[cfg(feature = "unstable")]
                Err(ref e)
                    if matches!(e.kind(), io::ErrorKind::Other | io::ErrorKind::ResourceBusy) =>
                {
                    self.tick()?;
                }
                #[cfg(not(feature = "unstable"))]
                Err(ref e)
                    if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EBUSY)) =>
                {
                    // This error is constructed with io::Error::last_os_error():
                    // https://github.com/tokio-rs/io-uring/blob/01c83bbce965d4aaf93ebfaa08c3aa8b7b0f5335/src/sys/mod.rs#L32
                    // So we can use https://doc.rust-lang.org/nightly/std/io/struct.Error.html#method.raw_os_error
                    // to get the raw error code.
                    self.tick()?;
                }
                e => return e.map(|_| ()),
            }
        }
    }

    fn new_op<T>(data: T, inner: &mut UringInner, driver: Inner) -> Op<T> {
        Op {
            driver,
            index: inner.ops.insert(),
            data: Some(data),
        }
    }

    pub(crate) fn submit_with_data<T>(
        this: &Rc<UnsafeCell<UringInner>>,
        data: T,
    ) -> io::Result<Op<T>>
    where
        T: OpAble,
    {
        let inner = unsafe { &mut *this.get() };
        // If the submission queue has no room for two entries (an operation
        // and its linked head), flush it to the kernel
        {
            let sq = inner.uring.submission();
            let full = sq.capacity() - sq.len() < 2;
            drop(sq);
            if full {
                inner.submit()?;
            }
        }

        // Create the operation
        let mut op = Self::new_op(data, inner, Inner::Uring(this.clone()));

        // Configure the SQE
        let data_mut = unsafe { op.data.as_mut().unwrap_unchecked() };
        let head = OpAble::uring_link_head(data_mut);
        let sqe = OpAble::uring_op(data_mut).user_data(op.index as _);

        {
            let mut sq = inner.uring.submission();

            if let Some(head) = head {
                debug_assert!(inner.skip_cqe, "linked operations need skipped completions");
                let head = head
                    .user_data((op.index | LINKED) as _)
                    .flags(io_uring::squeue::Flags::IO_LINK | io_uring::squeue::Flags::SKIP_SUCCESS);
                if unsafe { sq.push(&head).is_err() } {
                    unimplemented!("when is this hit?");
                }
                op.index |= LINKED;
            }

            // Push the new operation
            if unsafe { sq.push(&sqe).is_err() } {
                unimplemented!("when is this hit?");
            }
        }

        // Submit the new operation. At this point, the operation has been
        // pushed onto the queue and the tail pointer has been updated, so
        // the submission entry is visible to the kernel. If there is an
        // error here (probably EAGAIN), we still return the operation. A
        // future `io_uring_enter` will fully submit the event.

        // CHIHAI: We are not going to do syscall now. If we are waiting
        // for IO, we will submit on `park`.
        // let _ = inner.submit();
        Ok(op)
    }

    pub(crate) fn poll_op(
        this: &Rc<UnsafeCell<UringInner>>,
        index: usize,
        cx: &mut Context<'_>,
    ) -> Poll<CompletionMeta> {
        let inner = unsafe { &mut *this.get() };
        let lifecycle = unsafe { inner.ops.slab.get(index & !LINKED).unwrap_unchecked() };
        lifecycle.poll_op(cx)
    }

    #[cfg(feature = "poll-io")]
    pub(crate) fn poll_legacy_op<T: OpAble>(
        this: &Rc<UnsafeCell<Self>>,
        data: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<CompletionMeta> {
        let inner = unsafe { &mut *this.get() };
        let (direction, index) = match data.legacy_interest() {
            Some(x) => x,
            None => {
                // if there is no index provided, it means the action does not rely on fd
                // readiness. do syscall right now.
                return Poll::Ready(CompletionMeta {
                    result: OpAble::legacy_call(data),
                    flags: 0,
                });
            }
        };

        // wait io ready and do syscall
        inner
            .poll
            .poll_syscall(cx, index, direction, || OpAble::legacy_call(data))
    }

    pub(crate) fn drop_op<T: 'static>(
        this: &Rc<UnsafeCell<UringInner>>,
        index: usize,
        data: &mut Option<T>,
    ) {
        let inner = unsafe { &mut *this.get() };
        if index == usize::MAX {
            // already finished
            return;
        }
        let linked = index & LINKED != 0;
        let index = index & !LINKED;
        if let Some(lifecycle) = inner.ops.slab.get(index) {
            let _must_finished = lifecycle.drop_op(data);
            #[cfg(feature = "async-cancel")]
            if !_must_finished {
                // A linked operation's head may still be running (a send
                // waiting for room), with the operation's own submission
                // not yet started: cancelling the head completes the
                // operation with the head's ECANCELED.
                if linked {
                    inner.push_cancel((index | LINKED) as u64);
                }
                inner.push_cancel(index as u64);
            }
        }
    }

    pub(crate) unsafe fn cancel_op(this: &Rc<UnsafeCell<UringInner>>, index: usize) {
        let inner = &mut *this.get();
        if index & LINKED != 0 {
            inner.push_cancel(index as u64);
        }
        inner.push_cancel((index & !LINKED) as u64);
    }

    /// Queues the cancellation of the submission with user data `target`.
    #[allow(unused)]
    fn push_cancel(&mut self, target: u64) {
        let cancel = opcode::AsyncCancel::new(target).build().user_data(u64::MAX);
        // Try push cancel, if failed, will submit and re-push.
        unsafe {
            if self.uring.submission().push(&cancel).is_err() {
                let _ = self.submit();
                let _ = self.uring.submission().push(&cancel);
            }
        }
    }

    /// Completions reaped so far.
    pub(crate) fn completions(this: &Rc<UnsafeCell<UringInner>>) -> u64 {
        unsafe { (*this.get()).completed }
    }

    /// Whether the ring's waits batch now (see [`WaitBatch`]).
    pub(crate) fn wait_batching(this: &Rc<UnsafeCell<UringInner>>) -> bool {
        let inner = unsafe { &*this.get() };
        inner.batch.as_ref().is_some_and(|(_, gate)| gate.batching)
    }

    /// Puts `fd` in the ring's registered file table; returns its slot, or
    /// `None` when the table is full or the kernel has none. One
    /// `io_uring_register` call (two for the first, which makes the table).
    pub(crate) fn register_file(this: &Rc<UnsafeCell<UringInner>>, fd: RawFd) -> Option<u32> {
        let inner = unsafe { &mut *this.get() };
        if let FileTable::Untried = inner.files {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            let size = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
                0 => limit.rlim_cur.min(FileTable::MAX as libc::rlim_t) as u32,
                _ => 0,
            };
            let made = size > 0 && inner.uring.submitter().register_files_sparse(size).is_ok();
            inner.files = match made {
                true => FileTable::Ready {
                    free: Vec::new(),
                    next: 0,
                    size,
                },
                false => FileTable::Unavailable,
            };
        }
        let FileTable::Ready { free, next, size } = &mut inner.files else {
            return None;
        };
        let slot = match free.pop() {
            Some(slot) => slot,
            None if *next < *size => {
                *next += 1;
                *next - 1
            }
            None => return None,
        };
        match inner.uring.submitter().register_files_update(slot, &[fd]) {
            Ok(1) => Some(slot),
            _ => {
                free.push(slot);
                None
            }
        }
    }

    /// Empties a slot `register_file` gave. The kernel drops its reference
    /// to the file at once, or when operations still using it complete.
    pub(crate) fn unregister_file(this: &Rc<UnsafeCell<UringInner>>, slot: u32) {
        let inner = unsafe { &mut *this.get() };
        if let FileTable::Ready { free, .. } = &mut inner.files {
            if let Ok(1) = inner.uring.submitter().register_files_update(slot, &[-1]) {
                free.push(slot);
            }
        }
    }

    /// Slots of the registered file table in use.
    pub(crate) fn registered_files(this: &Rc<UnsafeCell<UringInner>>) -> usize {
        match unsafe { &(*this.get()).files } {
            FileTable::Ready { free, next, .. } => *next as usize - free.len(),
            _ => 0,
        }
    }

    /// The ring can run linked operations (`OpAble::uring_link_head`).
    pub(crate) fn links(this: &Rc<UnsafeCell<UringInner>>) -> bool {
        unsafe { (*this.get()).skip_cqe }
    }

    #[cfg(feature = "sync")]
    pub(crate) fn unpark(this: &Rc<UnsafeCell<UringInner>>) -> waker::UnparkHandle {
        let inner = unsafe { &*this.get() };
        let weak = std::sync::Arc::downgrade(&inner.shared_waker);
        waker::UnparkHandle(weak)
    }
}

impl AsRawFd for IoUringDriver {
    fn as_raw_fd(&self) -> RawFd {
        unsafe { (*self.inner.get()).uring.as_raw_fd() }
    }
}

impl Drop for IoUringDriver {
    fn drop(&mut self) {
        trace!("MONOIO DEBUG[IoUringDriver]: drop");

        // Dealloc leaked memory
        unsafe { std::ptr::drop_in_place(self.timespec) };

        #[cfg(feature = "sync")]
        unsafe {
            std::ptr::drop_in_place(self.eventfd_read_dst)
        };

        // Deregister thread id
        #[cfg(feature = "sync")]
        {
            use crate::driver::thread::{unregister_unpark_handle, unregister_waker_sender};
            unregister_unpark_handle(self.thread_id);
            unregister_waker_sender(self.thread_id);
        }
    }
}

impl Drop for UringInner {
    fn drop(&mut self) {
        // no need to wait for completion, as the kernel will clean up the ring asynchronically.
        let _ = self.uring.submitter().submit();
        unsafe {
            ManuallyDrop::drop(&mut self.uring);
        }
    }
}

impl Ops {
    const fn new() -> Self {
        Ops { slab: Slab::new() }
    }

    // Insert a new operation
    pub(crate) fn insert(&mut self) -> usize {
        self.slab.insert(Lifecycle::Submitted)
    }

    fn complete(&mut self, index: usize, result: io::Result<u32>, flags: u32) {
        let lifecycle = unsafe { self.slab.get(index).unwrap_unchecked() };
        lifecycle.complete(result, flags);
    }
}

#[inline]
fn resultify(cqe: &cqueue::Entry) -> io::Result<u32> {
    let res = cqe.result();

    if res >= 0 {
        Ok(res as u32)
    } else {
        Err(io::Error::from_raw_os_error(-res))
    }
}
