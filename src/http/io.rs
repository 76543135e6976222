//! Owned-buffer I/O helpers over monoio's rent traits.
//!
//! monoio (like io_uring itself) takes buffers by value for the duration of an
//! operation. These helpers keep a connection's buffers in place
//! (`&mut Vec<u8>`) by moving them in and out around each operation, so the
//! rest of the code reads like ordinary buffered I/O. If an operation is
//! cancelled (timeout, drain) its buffer is left with the driver and the
//! `Vec` is left empty; callers close the connection in that case anyway.

use std::io;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle};
pub use monoio::net::SendReadError;

/// Any byte stream a connection runs over: TCP, or TLS over TCP.
pub trait Stream: AsyncReadRent + AsyncWriteRent {
    /// Reads like `read`, when the socket most likely has nothing to read
    /// yet: an upstream's response just asked for, a client's next
    /// request. TCP then waits for readability before it tries to
    /// receive, which saves io_uring a failed receive per request; other
    /// streams read as usual.
    fn read_awaiting<T: IoBufMut>(
        &mut self,
        buf: T,
    ) -> impl std::future::Future<Output = monoio::BufResult<usize, T>> {
        self.read(buf)
    }

    /// Writes like `write`, with more bytes of the same message to follow
    /// at once: the rest of a request body of known length. TCP sends with
    /// `MSG_MORE`, so the kernel fills segments across writes rather than
    /// pushing each one (despite `TCP_NODELAY`) and the peer is woken once
    /// for them; the next write without the hint pushes what is held.
    /// Other streams write as usual.
    fn write_more<T: IoBuf>(
        &mut self,
        buf: T,
    ) -> impl std::future::Future<Output = monoio::BufResult<usize, T>> {
        self.write(buf)
    }

    /// The connection is kept for more exchanges (a client's second
    /// request). A TCP socket on io_uring, plain or under TLS, enters the
    /// worker ring's table of registered files
    /// (`monoio::net::TcpStream::use_registered_file`), so the kernel
    /// finds it by its slot rather than looking up and counting a
    /// reference to its file for every send and receive; a connection
    /// that carries one exchange never pays the two `io_uring_register`
    /// calls. Other streams do nothing.
    fn expect_reuse(&self) {}

    /// Sends all of `wbuf`, keeping it, then reads into `rbuf`'s spare
    /// capacity like [`Stream::read_awaiting`]: a request, then its
    /// response's first bytes. Plain TCP on io_uring links the two in one
    /// submission, which completes once (see
    /// `monoio::net::TcpStream::send_then_read_awaiting`); other streams
    /// write, then read.
    ///
    /// # Errors
    /// Which of the two failed: after a failed send nothing was read.
    fn send_then_read_awaiting(
        &mut self,
        wbuf: &mut Vec<u8>,
        rbuf: &mut Vec<u8>,
    ) -> impl std::future::Future<Output = Result<usize, SendReadError>>
    where
        Self: Sized,
    {
        async move {
            write_all(self, wbuf).await.map_err(SendReadError::Send)?;
            read_into_awaiting(self, rbuf)
                .await
                .map_err(SendReadError::Read)
        }
    }
}

impl Stream for monoio::net::TcpStream {
    fn read_awaiting<T: IoBufMut>(
        &mut self,
        buf: T,
    ) -> impl std::future::Future<Output = monoio::BufResult<usize, T>> {
        monoio::net::TcpStream::read_awaiting(self, buf)
    }

    fn write_more<T: IoBuf>(
        &mut self,
        buf: T,
    ) -> impl std::future::Future<Output = monoio::BufResult<usize, T>> {
        monoio::net::TcpStream::write_more(self, buf)
    }

    fn expect_reuse(&self) {
        self.use_registered_file();
    }

    async fn send_then_read_awaiting(
        &mut self,
        wbuf: &mut Vec<u8>,
        rbuf: &mut Vec<u8>,
    ) -> Result<usize, SendReadError>
    where
        Self: Sized,
    {
        let send = std::mem::take(wbuf);
        let (recv, len) = lend(rbuf);
        let (res, send, slice) =
            monoio::net::TcpStream::send_then_read_awaiting(self, send, recv.slice_mut(len..))
                .await;
        *wbuf = send;
        *rbuf = slice.into_inner();
        res
    }
}

/// A client stream that can wait for its next bytes without its buffers:
/// with a small held read that can be cancelled without losing bytes, then
/// without lending any buffer to the driver (see `worker::buffers`). It also
/// knows how to end after its last response.
pub trait Park {
    /// Everything received so far has been read, so readiness of the
    /// socket is the only way more can come.
    fn can_park(&self) -> bool;
    /// Waits until the socket is readable (a buffer-less poll on io_uring).
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>>;
    /// Reads the socket's next bytes into `buf`'s spare capacity, until
    /// they come or `c` cancels the read. A read cancelled as its bytes
    /// arrive returns them or leaves them in the socket, so nothing is
    /// lost (unlike dropping a read in flight). Returns 0 at end of stream
    /// and an `ECANCELED` error when cancelled before any byte came.
    fn read_held(
        &mut self,
        buf: &mut Vec<u8>,
        c: CancelHandle,
    ) -> impl std::future::Future<Output = io::Result<usize>>;
    /// A keep-alive response small enough may wait to leave with the held
    /// read that follows it ([`Park::send_then_read_held`]), which TCP
    /// links to it on io_uring. TLS writes its records as it seals them.
    fn sends_with_held_read(&self) -> bool {
        false
    }
    /// Sends all of `send`, keeping it, then reads like
    /// [`Park::read_held`]: a response and the wait for the connection's
    /// next request. `c` cancels the send as well as the read where they
    /// are linked (plain TCP on io_uring: see
    /// `monoio::net::TcpStream::cancelable_send_then_read_awaiting`);
    /// other streams write, then hold the read.
    ///
    /// # Errors
    /// Which of the two failed: after a failed (or cancelled) send nothing
    /// was read.
    fn send_then_read_held(
        &mut self,
        send: &mut Vec<u8>,
        buf: &mut Vec<u8>,
        c: CancelHandle,
    ) -> impl std::future::Future<Output = Result<usize, SendReadError>>
    where
        Self: Stream + Sized,
    {
        async move {
            write_all(self, send).await.map_err(SendReadError::Send)?;
            self.read_held(buf, c).await.map_err(SendReadError::Read)
        }
    }
    /// Takes socket bytes from [`Park::read_held`] as the stream's next
    /// input (after [`Park::restore`]): for TCP they go into the read
    /// buffer `rbuf`, for TLS into the ciphertext buffer.
    fn received(&mut self, bytes: &[u8], rbuf: &mut Vec<u8>) {
        rbuf.extend_from_slice(bytes);
    }
    /// Gives buffers of the stream's own (TLS records) to the pool while
    /// parked.
    fn release(&mut self, _pool: &crate::worker::BufferPool) {}
    /// Takes them back before reading.
    fn restore(&mut self, _pool: &crate::worker::BufferPool) {}
    /// Ends the stream cleanly after its last response, before it is
    /// dropped. TCP needs nothing: dropping the stream closes the socket,
    /// which sends the FIN (a `shutdown(2)` first would add a system call
    /// per connection and send nothing more). TLS sends its close_notify.
    fn finish(&mut self) -> impl std::future::Future<Output = ()> {
        async {}
    }
}

impl Park for monoio::net::TcpStream {
    fn can_park(&self) -> bool {
        true
    }

    async fn readable(&self) -> io::Result<()> {
        // Not relaxed: on the epoll driver a stale readiness would let the
        // read that follows wait with its buffer (parking is used on
        // io_uring only, where the flag is ignored).
        monoio::net::TcpStream::readable(self, false).await
    }

    async fn read_held(&mut self, buf: &mut Vec<u8>, c: CancelHandle) -> io::Result<usize> {
        debug_assert!(buf.len() < buf.capacity());
        let owned = std::mem::take(buf);
        let len = owned.len();
        // Held between requests, so most likely nothing is there yet.
        let (res, slice) = self
            .cancelable_read_awaiting(owned.slice_mut(len..), c)
            .await;
        *buf = slice.into_inner();
        res
    }

    fn sends_with_held_read(&self) -> bool {
        true
    }

    async fn send_then_read_held(
        &mut self,
        send: &mut Vec<u8>,
        buf: &mut Vec<u8>,
        c: CancelHandle,
    ) -> Result<usize, SendReadError> {
        debug_assert!(buf.len() < buf.capacity());
        let owned = std::mem::take(send);
        let (recv, len) = lend(buf);
        let (res, owned, slice) = self
            .cancelable_send_then_read_awaiting(owned, recv.slice_mut(len..), c)
            .await;
        *send = owned;
        *buf = slice.into_inner();
        res
    }
}

/// A read failure, with the side that failed left to the caller.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    #[error("read timed out")]
    TimedOut,
}

/// A stream's read side with its buffer and consumed-bytes cursor.
/// Unconsumed bytes are `buf[start..]`.
pub struct Inbound<'a, S> {
    pub stream: &'a mut S,
    pub buf: &'a mut Vec<u8>,
    pub start: &'a mut usize,
}

impl<S: Stream> Inbound<'_, S> {
    pub fn available(&self) -> &[u8] {
        &self.buf[*self.start..]
    }

    pub fn consume(&mut self, n: usize) {
        *self.start += n;
        debug_assert!(*self.start <= self.buf.len());
    }

    /// Reads more bytes after the unconsumed ones, within `timeout`.
    /// Returns 0 at end of stream.
    ///
    /// # Errors
    /// [`ReadError`] on an I/O error or when `timeout` passes.
    pub async fn fill(&mut self, timeout: Duration) -> Result<usize, ReadError> {
        make_room(self.buf, self.start);
        match monoio::time::timeout(timeout, read_into(self.stream, self.buf)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ReadError::TimedOut),
        }
    }
}

/// Moves unconsumed bytes to the front when the buffer is full or fully
/// consumed, so a connection's buffer never grows for body data.
pub fn make_room(buf: &mut Vec<u8>, start: &mut usize) {
    if *start == buf.len() {
        buf.clear();
        *start = 0;
    } else if buf.len() == buf.capacity() && *start > 0 {
        buf.copy_within(*start.., 0);
        buf.truncate(buf.len() - *start);
        *start = 0;
    }
}

/// Appends whatever one read returns into `buf`'s spare capacity.
///
/// # Errors
/// The I/O error of the read.
pub async fn read_into<S: Stream>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    let (owned, len) = lend(buf);
    let (res, slice) = stream.read(owned.slice_mut(len..)).await;
    *buf = slice.into_inner();
    res
}

/// [`read_into`] for bytes that most likely have not come yet (see
/// [`Stream::read_awaiting`]).
///
/// # Errors
/// The I/O error of the read.
pub async fn read_into_awaiting<S: Stream>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    let (owned, len) = lend(buf);
    let (res, slice) = stream.read_awaiting(owned.slice_mut(len..)).await;
    *buf = slice.into_inner();
    res
}

/// Takes `buf` (with room to read into) to lend to a read, and its length.
fn lend(buf: &mut Vec<u8>) -> (Vec<u8>, usize) {
    if buf.len() == buf.capacity() {
        buf.reserve(4096);
    }
    let owned = std::mem::take(buf);
    let len = owned.len();
    (owned, len)
}

/// Writes all of `buf[range]`, keeping the buffer.
///
/// # Errors
/// The I/O error of the write.
pub async fn write_range<S: Stream>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    range: std::ops::Range<usize>,
) -> io::Result<()> {
    if range.is_empty() {
        return Ok(());
    }
    let owned = std::mem::take(buf);
    let (res, slice) = stream.write_all(owned.slice(range)).await;
    *buf = slice.into_inner();
    res.map(|_| ())
}

/// Writes all of `buf[range]` like [`write_range`]; with `more`, saying
/// more of the same message follows at once ([`Stream::write_more`]). The
/// caller's next write must then be one without the hint, or the kernel
/// may hold these bytes.
///
/// # Errors
/// The I/O error of a write.
pub async fn write_range_more<S: Stream>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    range: std::ops::Range<usize>,
    more: bool,
) -> io::Result<()> {
    if !more {
        return write_range(stream, buf, range).await;
    }
    let mut owned = std::mem::take(buf);
    let mut at = range.start;
    let mut res = Ok(());
    while at < range.end {
        let (r, slice) = stream.write_more(owned.slice(at..range.end)).await;
        owned = slice.into_inner();
        match r {
            Ok(0) => res = Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => at += n,
            Err(e) => res = Err(e),
        }
        if res.is_err() {
            break;
        }
    }
    *buf = owned;
    res
}

/// Writes all of `buf`, keeping it.
///
/// # Errors
/// The I/O error of the write.
pub async fn write_all<S: Stream>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<()> {
    let len = buf.len();
    write_range(stream, buf, 0..len).await
}

/// Writes all of a gathered pair of buffers (one `writev` unless the socket
/// takes less), handing it back for its buffers.
///
/// # Errors
/// The I/O error of a write.
pub async fn write_gather<S: Stream>(
    stream: &mut S,
    mut gather: crate::sys::Gather,
) -> (io::Result<()>, crate::sys::Gather) {
    while gather.remaining() > 0 {
        let (res, back) = stream.writev(gather).await;
        gather = back;
        match res {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), gather),
            Ok(n) => gather.advance(n),
            Err(e) => return (Err(e), gather),
        }
    }
    (Ok(()), gather)
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::Poll;

    use monoio::io::Canceller;
    use monoio::net::{TcpListener, TcpStream};

    use super::*;

    /// A connected pair on loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// Starts a held read, cancels it once it is queued for the ring's next
    /// submission, and returns what the read then returns.
    async fn cancel_queued(server: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
        let canceller = Canceller::new();
        let mut read = pin!(server.read_held(buf, canceller.handle()));
        let pending =
            std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx).is_pending())).await;
        assert!(pending, "the read waits for the ring");
        let _ = canceller.cancel();
        read.await
    }

    /// Runs `test` on a plain ring and on a worker's ring (deferred
    /// completion work, where the kernel has it).
    fn io_uring<F: Future<Output = ()>>(test: impl Fn() -> F) {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .expect("io_uring runtime")
            .block_on(test());
        let (mut worker_ring, _) =
            crate::worker::uring_runtime(0, 256, true).expect("worker io_uring runtime");
        worker_ring.block_on(test());
    }

    /// The race `wait_next` relies on: bytes that are there when a held
    /// read is cancelled are not lost. The read and the cancellation enter
    /// the ring in one submission, the read first. Either the read
    /// completes with the waiting bytes and the cancellation finds nothing
    /// to cancel, or the cancellation reaches the read's poll first and the
    /// bytes stay in the socket for the next read. (A read future dropped
    /// instead loses them.)
    #[test]
    fn a_held_read_cancelled_as_bytes_arrive_loses_nothing() {
        io_uring(|| async {
            let (mut client, mut server) = pair().await;
            let (r, _) = client.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
            r.unwrap();
            server.readable(false).await.unwrap();

            let mut buf = Vec::with_capacity(64);
            let n = match cancel_queued(&mut server, &mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e}");
                    read_into(&mut server, &mut buf).await.unwrap()
                }
            };
            assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
        });
    }

    /// A connected pair on loopback, the client a blocking std socket, the
    /// server's receive low-water mark (`SO_RCVLOWAT`) at 8 bytes: with
    /// fewer there, the server socket is not readable.
    async fn low_water_pair() -> (std::net::TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        crate::sys::set_recv_low_water(std::os::fd::AsRawFd::as_raw_fd(&server), 8)
            .expect("SO_RCVLOWAT");
        (client, server)
    }

    /// Writes 4 bytes now, which loopback delivers before the write
    /// returns, and 4 more from another thread 200 ms later, after
    /// setting the flag it returns.
    fn four_now_four_later(
        mut client: std::net::TcpStream,
    ) -> (
        std::thread::JoinHandle<()>,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) {
        use std::io::Write;
        use std::sync::atomic::{AtomicBool, Ordering};
        client.write_all(b"1234").unwrap();
        let later = std::sync::Arc::new(AtomicBool::new(false));
        let flag = later.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            flag.store(true, Ordering::SeqCst);
            client.write_all(b"5678").unwrap();
        });
        (writer, later)
    }

    /// A read awaiting its bytes waits for the socket to be readable before
    /// it receives (io_uring's poll-first receive): with 4 bytes there and
    /// the low-water mark at 8, it waits for the next 4, where a read that
    /// tries the socket first returns the 4 at once.
    #[test]
    fn an_awaiting_read_waits_for_readability_before_it_receives() {
        io_uring(|| async {
            let (client, mut server) = low_water_pair().await;
            let (writer, later) = four_now_four_later(client);
            let (n, buf) = Stream::read_awaiting(&mut server, vec![0u8; 16]).await;
            assert!(
                later.load(std::sync::atomic::Ordering::SeqCst),
                "the read received before the socket was readable"
            );
            assert_eq!(&buf[..n.unwrap()], b"12345678");
            writer.join().unwrap();
        });
    }

    /// The same for the read held between a keep-alive connection's
    /// requests, which asks for its bytes the same way.
    #[test]
    fn a_held_read_waits_for_readability_before_it_receives() {
        io_uring(|| async {
            let (client, mut server) = low_water_pair().await;
            let (writer, later) = four_now_four_later(client);
            let mut buf = Vec::with_capacity(16);
            let n = server
                .read_held(&mut buf, Canceller::new().handle())
                .await
                .unwrap();
            assert!(
                later.load(std::sync::atomic::Ordering::SeqCst),
                "the held read received before the socket was readable"
            );
            assert_eq!(&buf[..n], b"12345678");
            writer.join().unwrap();
        });
    }

    /// Runs `test` on every ring `io_uring` runs it on, and on the epoll
    /// driver.
    fn every_driver<F: Future<Output = ()>>(test: impl Fn() -> F) {
        io_uring(&test);
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("epoll runtime")
            .block_on(test());
    }

    /// A connected pair on loopback, the client a blocking std socket.
    async fn std_pair() -> (std::net::TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// Polls until `thread` has finished (it does blocking socket work the
    /// loop must not wait on), for at most 10 s, and returns its result.
    async fn join<T>(thread: std::thread::JoinHandle<T>) -> T {
        for _ in 0..2_000 {
            if thread.is_finished() {
                break;
            }
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(thread.is_finished(), "the peer thread did not finish");
        thread.join().unwrap()
    }

    /// A request and the wait for its reply: all of a 1 MiB request goes
    /// out (over many partial sends on loopback), the reply comes into
    /// the read buffer after the bytes already there, and the request
    /// buffer comes back unchanged.
    #[test]
    fn send_then_read_sends_everything_then_reads_the_reply() {
        every_driver(|| async {
            let (mut client, mut server) = std_pair().await;
            let request: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
            let expected = request.clone();
            let peer = std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut got = vec![0; expected.len()];
                client.read_exact(&mut got).unwrap();
                assert!(got == expected, "the request arrived changed");
                client.write_all(b"reply").unwrap();
                client
            });
            let mut wbuf = request.clone();
            let mut rbuf = b"kept:".to_vec();
            let n = Stream::send_then_read_awaiting(&mut server, &mut wbuf, &mut rbuf)
                .await
                .expect("sent and read");
            let _client = join(peer).await;
            assert_eq!(n, 5);
            assert_eq!(rbuf, b"kept:reply");
            assert!(wbuf == request, "the request buffer came back");
        });
    }

    /// A send to a reset connection fails as a send, with nothing read.
    #[test]
    fn send_then_read_reports_a_failed_send_as_the_send() {
        every_driver(|| async {
            let (client, mut server) = std_pair().await;
            socket2::SockRef::from(&client)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(client); // RST
            server.readable(false).await.unwrap();
            let mut wbuf = b"GET / HTTP/1.1\r\n\r\n".to_vec();
            let mut rbuf = Vec::with_capacity(64);
            match Stream::send_then_read_awaiting(&mut server, &mut wbuf, &mut rbuf).await {
                Err(SendReadError::Send(_)) => {}
                other => panic!("expected a failed send, got {other:?}"),
            }
            assert!(rbuf.is_empty());
        });
    }

    /// Dropped while its send waits for room (the peer reads nothing), the
    /// operation is cancelled whole: its bytes never go out, and closing
    /// the socket reaches the peer, which a send still pending in the ring
    /// would prevent (the ring holds the socket open).
    #[test]
    fn a_dropped_send_then_read_cancels_its_waiting_send() {
        io_uring(|| async {
            // Small buffers on both sides, so little fills the connection.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            client.set_recv_buffer_size(4096).unwrap();
            client
                .connect(&listener.local_addr().unwrap().into())
                .unwrap();
            let client = std::net::TcpStream::from(client);
            let (server, _) = listener.accept().unwrap();
            socket2::SockRef::from(&server)
                .set_send_buffer_size(4096)
                .unwrap();
            let mut server = TcpStream::from_std(server).unwrap();
            // Fill the connection: the peer reads nothing yet.
            let chunk = [b'f'; 4096];
            let mut filled = 0;
            loop {
                match crate::sys::send_now(std::os::fd::AsRawFd::as_raw_fd(&server), &chunk) {
                    Ok(n) => filled += n,
                    Err(e) => {
                        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
                        break;
                    }
                }
            }
            let mut wbuf = b"never sent".to_vec();
            let mut rbuf = Vec::with_capacity(64);
            let waited = monoio::time::timeout(
                Duration::from_millis(100),
                Stream::send_then_read_awaiting(&mut server, &mut wbuf, &mut rbuf),
            )
            .await;
            assert!(waited.is_err(), "the send had no room, yet completed");
            drop(server);
            let peer = std::thread::spawn(move || {
                use std::io::Read;
                let mut client = client;
                client
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut all = Vec::new();
                client.read_to_end(&mut all).map(|_| all)
            });
            let all = join(peer).await.expect("the close reached the peer");
            assert_eq!(all.len(), filled, "only the fill arrived");
            assert!(all.iter().all(|&b| b == b'f'));
        });
    }

    /// A response, then the held read for the next request: the response
    /// reaches the peer whole, its buffer comes back, and the peer's next
    /// bytes land in the hold buffer.
    #[test]
    fn send_then_read_held_sends_the_response_then_holds_the_read() {
        every_driver(|| async {
            let (mut client, mut server) = std_pair().await;
            let peer = std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut got = [0; 8];
                client.read_exact(&mut got).unwrap();
                client.write_all(b"next").unwrap();
                (client, got)
            });
            let mut send = b"response".to_vec();
            let mut buf = Vec::with_capacity(64);
            let n = server
                .send_then_read_held(&mut send, &mut buf, Canceller::new().handle())
                .await
                .expect("sent and read");
            let (_client, got) = join(peer).await;
            assert_eq!(&got, b"response");
            assert_eq!(&buf[..n], b"next");
            assert_eq!(send, b"response", "the response buffer came back");
        });
    }

    /// Polls `op` once, which queues its submission, and says whether it
    /// is still pending.
    async fn queue<F: Future>(op: std::pin::Pin<&mut F>) -> bool {
        let mut op = op;
        std::future::poll_fn(|cx| Poll::Ready(op.as_mut().poll(cx).is_pending())).await
    }

    /// Cancelled after its response went out, the held read ends as an
    /// idle one does: `ECANCELED` from the read, not the send.
    #[test]
    fn a_held_read_cancelled_after_its_response_is_a_quiet_read() {
        io_uring(|| async {
            let (mut client, mut server) = std_pair().await;
            let canceller = Canceller::new();
            let mut send = b"response".to_vec();
            let mut buf = Vec::with_capacity(64);
            let mut op = pin!(server.send_then_read_held(&mut send, &mut buf, canceller.handle()));
            assert!(queue(op.as_mut()).await, "the operation waits for the ring");
            let peer = std::thread::spawn(move || {
                use std::io::Read;
                let mut got = [0; 8];
                client.read_exact(&mut got).unwrap();
                (client, got)
            });
            let (_client, got) = join(peer).await;
            assert_eq!(&got, b"response");
            let _ = canceller.cancel();
            match op.await {
                Err(SendReadError::Read(e)) => assert_eq!(e.raw_os_error(), Some(libc::ECANCELED)),
                other => panic!("expected a cancelled read, got {other:?}"),
            }
        });
    }

    /// Cancelled while its response waits for room (the peer reads
    /// nothing), the operation fails as a send: the connection is to close,
    /// not to wait on.
    #[test]
    fn a_held_read_cancelled_while_its_response_waits_fails_the_send() {
        io_uring(|| async {
            let (_client, mut server) = std_pair().await;
            let chunk = [b'f'; 4096];
            let fd = std::os::fd::AsRawFd::as_raw_fd(&server);
            while crate::sys::send_now(fd, &chunk).is_ok() {}
            let canceller = Canceller::new();
            let mut send = b"response".to_vec();
            let mut buf = Vec::with_capacity(64);
            {
                let mut op =
                    pin!(server.send_then_read_held(&mut send, &mut buf, canceller.handle()));
                assert!(queue(op.as_mut()).await, "the operation waits for the ring");
                // Submitted with the cancellation or before it, the send
                // finds no room and waits until it is cancelled.
                let _ = canceller.cancel();
                match op.await {
                    Err(SendReadError::Send(_)) => {}
                    other => panic!("expected a cancelled send, got {other:?}"),
                }
            }
            assert!(buf.is_empty(), "nothing was read");
        });
    }

    /// Cancelled with nothing to read: `ECANCELED`, the buffer comes back,
    /// and the bytes sent later wait for the next read.
    #[test]
    fn a_held_read_cancelled_before_any_byte_gives_the_buffer_back() {
        io_uring(|| async {
            let (mut client, mut server) = pair().await;
            let mut buf = Vec::with_capacity(64);
            let err = cancel_queued(&mut server, &mut buf)
                .await
                .expect_err("cancelled");
            assert_eq!(err.raw_os_error(), Some(libc::ECANCELED));
            assert_eq!(buf.capacity(), 64, "the buffer is back");

            let (r, _) = client.write_all(b"later").await;
            r.unwrap();
            let n = read_into(&mut server, &mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"later");
        });
    }
}
