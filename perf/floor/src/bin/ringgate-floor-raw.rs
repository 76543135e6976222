//! The io_uring floor: the least a keep-alive TCP forwarder can do per
//! request on io_uring at all, with the operations monoio 0.2 does not
//! offer, to tell what a different runtime could gain.
//!
//! `ringgate-floor-raw LISTEN ORIGIN [--fixed]` drives one ring
//! (`SINGLE_ISSUER | DEFER_TASKRUN`, as a ringgate worker) by hand, with no
//! runtime, no tasks and no futures:
//!
//! - a multishot accept on the listener;
//! - per client connection one upstream connection, opened once;
//! - on each socket one multishot receive, armed once for the life of the
//!   connection, taking its buffers from a ring of provided buffers, so a
//!   request costs no receive submission and no poll arming;
//! - each received buffer sent to the other side as it came (one send in
//!   flight per direction, so the bytes keep their order), then given back
//!   to the buffer ring.
//!
//! So a request is two sends and two receive completions. It parses
//! nothing: a forwarder, not a proxy. `--fixed` also registers every
//! socket in the ring's file table, sparing the kernel a file lookup per
//! operation. Like `ringgate-floor`, it is a lower bound for the harness
//! (`perf/compare.sh --floor`), not something to deploy.

use std::alloc::{alloc_zeroed, Layout};
use std::collections::VecDeque;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, Fd, Fixed};
use io_uring::{cqueue, opcode, squeue, IoUring};

const BUF_GROUP: u16 = 0;
const BUFS: u16 = 2048;
const BUF_SIZE: usize = 16 * 1024;
const FILES: u32 = 4096;

const ACCEPT: u64 = 0;
const RECV: u64 = 1;
const SEND: u64 = 2;

fn token(kind: u64, conn: usize) -> u64 {
    (kind << 32) | conn as u64
}

/// One socket: a client or an upstream connection.
struct Conn {
    fd: RawFd,
    peer: usize,
    /// Received buffers waiting to be sent on this socket: (buffer id,
    /// offset, end).
    queue: VecDeque<(u16, u32, u32)>,
    sending: bool,
    receiving: bool,
    closing: bool,
}

/// The provided-buffer ring the receives take their buffers from.
struct Buffers {
    ring: *mut BufRingEntry,
    tail: u16,
    memory: Vec<u8>,
}

impl Buffers {
    fn new() -> Buffers {
        let layout = Layout::from_size_align(
            usize::from(BUFS) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .expect("layout");
        // SAFETY: the layout has a non-zero size; the ring lives as long as
        // the process (it is registered with the ring and never freed).
        let ring = unsafe { alloc_zeroed(layout) }.cast::<BufRingEntry>();
        assert!(!ring.is_null(), "buffer ring allocation");
        let mut buffers = Buffers {
            ring,
            tail: 0,
            memory: vec![0; usize::from(BUFS) * BUF_SIZE],
        };
        for bid in 0..BUFS {
            buffers.give_back(bid);
        }
        buffers.publish();
        buffers
    }

    fn addr(&self, bid: u16) -> *const u8 {
        self.memory[usize::from(bid) * BUF_SIZE..].as_ptr()
    }

    /// Puts buffer `bid` at the ring's tail; the kernel sees it at the
    /// next `publish`.
    fn give_back(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (BUFS - 1));
        // SAFETY: `slot` is within the ring's BUFS entries.
        let entry = unsafe { &mut *self.ring.add(slot) };
        entry.set_addr(self.addr(bid) as u64);
        entry.set_len(BUF_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field of the first entry, shared with the
        // kernel, which reads it with acquire ordering.
        unsafe {
            let tail = BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

struct Forwarder {
    ring: IoUring,
    buffers: Buffers,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    origin: String,
    fixed: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, origin, fixed) = match &args[..] {
        [_, l, o] => (l, o, false),
        [_, l, o, f] if f == "--fixed" => (l, o, true),
        _ => {
            eprintln!("usage: ringgate-floor-raw LISTEN-ADDR ORIGIN-ADDR [--fixed]");
            std::process::exit(2);
        }
    };
    let listener = TcpListener::bind(listen.as_str()).expect("bind");
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4096)
        .expect("io_uring (Linux 6.1+)");
    let buffers = Buffers::new();
    // SAFETY: the ring of entries stays allocated for the process's life.
    unsafe {
        ring.submitter()
            .register_buf_ring(buffers.ring as u64, BUFS, BUF_GROUP)
            .expect("provided buffer ring (Linux 5.19+)");
    }
    if fixed {
        ring.submitter()
            .register_files_sparse(FILES)
            .expect("file table");
    }
    let mut fwd = Forwarder {
        ring,
        buffers,
        conns: Vec::new(),
        free: Vec::new(),
        origin: origin.clone(),
        fixed,
    };
    let accept = opcode::AcceptMulti::new(Fd(listener.as_raw_fd()))
        .build()
        .user_data(token(ACCEPT, 0));
    fwd.push(accept);
    fwd.run().expect("event loop");
}

impl Forwarder {
    fn run(&mut self) -> io::Result<()> {
        let mut done: Vec<(u64, i32, u32)> = Vec::with_capacity(4096);
        loop {
            self.buffers.publish();
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
            done.clear();
            done.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(data, res, flags) in &done {
                let conn = (data & 0xffff_ffff) as usize;
                match data >> 32 {
                    ACCEPT => self.accepted(res, flags),
                    RECV => self.received(conn, res, flags),
                    SEND => self.sent(conn, res),
                    _ => unreachable!("unknown completion {data:#x}"),
                }
            }
        }
    }

    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every buffer an entry points to (provided buffers)
            // outlives the operation.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            self.ring.submit().expect("submit");
        }
    }

    fn accepted(&mut self, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            eprintln!("multishot accept ended ({res}); stopping");
            std::process::exit(1);
        }
        if res < 0 {
            return;
        }
        let client = res;
        let Ok(up) = TcpStream::connect(self.origin.as_str()) else {
            close(client);
            return;
        };
        let _ = up.set_nodelay(true);
        set_nodelay(client);
        let up = up.into_raw_fd();
        let a = self.add(client);
        let b = self.add(up);
        self.conns[a].as_mut().expect("conn").peer = b;
        self.conns[b].as_mut().expect("conn").peer = a;
        self.arm(a);
        self.arm(b);
    }

    fn add(&mut self, fd: RawFd) -> usize {
        let conn = Conn {
            fd,
            peer: usize::MAX,
            queue: VecDeque::with_capacity(4),
            sending: false,
            receiving: false,
            closing: false,
        };
        let idx = match self.free.pop() {
            Some(idx) => {
                self.conns[idx] = Some(conn);
                idx
            }
            None => {
                self.conns.push(Some(conn));
                self.conns.len() - 1
            }
        };
        if self.fixed {
            assert!((idx as u32) < FILES, "file table full");
            self.ring
                .submitter()
                .register_files_update(idx as u32, &[fd])
                .expect("register file");
        }
        idx
    }

    fn arm(&mut self, idx: usize) {
        let c = self.conns[idx].as_mut().expect("conn");
        c.receiving = true;
        let entry = if self.fixed {
            opcode::RecvMulti::new(Fixed(idx as u32), BUF_GROUP).build()
        } else {
            opcode::RecvMulti::new(Fd(c.fd), BUF_GROUP).build()
        };
        self.push(entry.user_data(token(RECV, idx)));
    }

    fn received(&mut self, idx: usize, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        let Some(c) = self.conns[idx].as_mut() else {
            unreachable!("completion for a freed connection");
        };
        if !more {
            c.receiving = false;
        }
        if res > 0 {
            let bid = bid.expect("a receive with data names its buffer");
            let peer = c.peer;
            if c.closing {
                self.buffers.give_back(bid);
            } else {
                let p = self.conns[peer].as_mut().expect("peer");
                p.queue.push_back((bid, 0, res as u32));
                if !p.sending {
                    self.send_next(peer);
                }
            }
        } else if res == -libc::ENOBUFS {
            // Every buffer is in flight: wait for them by re-arming below.
        } else {
            self.close_pair(idx);
        }
        let c = self.conns[idx].as_ref().expect("conn");
        if !c.receiving && !c.closing {
            self.arm(idx);
        }
        self.maybe_free(idx);
    }

    fn send_next(&mut self, idx: usize) {
        let base = self.buffers.memory.as_ptr();
        let fixed = self.fixed;
        let c = self.conns[idx].as_mut().expect("conn");
        let Some(&(bid, off, end)) = c.queue.front() else {
            c.sending = false;
            return;
        };
        c.sending = true;
        // SAFETY: the buffer lies within `memory`, which never moves.
        let ptr = unsafe { base.add(usize::from(bid) * BUF_SIZE + off as usize) };
        let entry = if fixed {
            opcode::Send::new(Fixed(idx as u32), ptr, end - off)
        } else {
            opcode::Send::new(Fd(c.fd), ptr, end - off)
        };
        let entry = entry
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(token(SEND, idx));
        self.push(entry);
    }

    fn sent(&mut self, idx: usize, res: i32) {
        let c = self.conns[idx].as_mut().expect("conn");
        c.sending = false;
        if res <= 0 || c.closing {
            self.close_pair(idx);
            self.maybe_free(idx);
            return;
        }
        let front = c.queue.front_mut().expect("a send in flight");
        front.1 += res as u32;
        if front.1 == front.2 {
            let bid = front.0;
            c.queue.pop_front();
            self.buffers.give_back(bid);
        }
        self.send_next(idx);
    }

    /// Shuts both sockets of a pair down, which ends their multishot
    /// receives; each is freed once its last operation has completed.
    fn close_pair(&mut self, idx: usize) {
        let peer = self.conns[idx].as_ref().expect("conn").peer;
        for i in [idx, peer] {
            let Some(c) = self.conns[i].as_mut() else {
                continue;
            };
            if c.closing {
                continue;
            }
            c.closing = true;
            // SAFETY: shutting down a socket this forwarder owns.
            unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
            if !c.sending {
                for (bid, _, _) in c.queue.drain(..) {
                    self.buffers.give_back(bid);
                }
            }
        }
        if peer != idx {
            self.maybe_free(peer);
        }
    }

    fn maybe_free(&mut self, idx: usize) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        if !c.closing || c.receiving || c.sending {
            return;
        }
        for (bid, _, _) in c.queue.drain(..) {
            self.buffers.give_back(bid);
        }
        if self.fixed {
            let _ = self
                .ring
                .submitter()
                .register_files_update(idx as u32, &[-1]);
        }
        close(c.fd);
        self.conns[idx] = None;
        self.free.push(idx);
    }
}

fn set_nodelay(fd: RawFd) {
    let on: libc::c_int = 1;
    // SAFETY: setting an int option on a socket this forwarder owns.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn close(fd: RawFd) {
    // SAFETY: closing a descriptor this forwarder owns, once.
    unsafe { libc::close(fd) };
}
