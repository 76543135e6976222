//! The client-facing side of a TLS connection, over rustls's unbuffered API.
//!
//! rustls's buffered `ServerConnection` copies every ciphertext byte into a
//! deframing buffer of its own, which it keeps (4 KiB) for the connection's
//! life, and encrypts each record into a buffer allocated for it. Here the
//! connection owns both ciphertext buffers: rustls decrypts records in place
//! in `rx` and encrypts straight into `tx`, and a parked connection gives
//! both to the pool, so an idle TLS client costs its session keys and its
//! task. Upstream connections, which the gateway holds few of, keep the
//! buffered adapter (`stream.rs`).
//!
//! Cancellation: an operation dropped mid-way (a timeout, a drain) leaves
//! the connection's TLS state unusable; callers close the connection then,
//! as they do for plain TCP.

use std::io;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::BufResult;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};

use super::stream::READ_CHUNK;
use crate::sys;

/// Room for one record's header, nonce, tag and content type: a record's
/// ciphertext is its plaintext plus at most this (TLS 1.2 GCM: 29 bytes).
const RECORD_OVERHEAD: usize = 64;
/// Plaintext per record (RFC 8446 5.1).
const MAX_FRAGMENT: usize = 16 * 1024;

pub struct ServerStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// Ciphertext from the socket; `rx[..rx_pos]` has been processed and
    /// the rest is a record not yet complete.
    rx: Vec<u8>,
    rx_pos: usize,
    /// Plaintext decrypted and not yet read (`plain[plain_pos..]`): the
    /// rest of a record larger than the reader's buffer, or records that
    /// came while writing.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Ciphertext to write: `tx[..tx_end]`. `tx` stays as long as the
    /// longest flight so far, its bytes initialised, so records are
    /// encrypted into it without clearing it first.
    tx: Vec<u8>,
    tx_end: usize,
    /// The socket reached its end.
    eof: bool,
    /// The peer's close_notify came: no more plaintext will.
    closed: bool,
}

/// What processing records left to do.
enum Step {
    /// More records may be processed now.
    Again,
    /// Handshake records in `tx` are due to be written.
    Transmit,
    /// This many bytes of plaintext went to the reader's buffer (the rest
    /// of a record that did not fit waits in `plain`).
    Plaintext(usize),
    /// The handshake needs more bytes from the peer.
    NeedBytes,
    /// Nothing to process: application data may be written, and reading
    /// needs more bytes from the peer.
    Writable,
    /// The peer sent its close_notify.
    PeerClosed,
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Makes `tx[end..end + room]` writable (initialised), growing `tx` only
/// past its longest use so far.
fn room(tx: &mut Vec<u8>, end: usize, room: usize) -> &mut [u8] {
    if tx.len() < end + room {
        tx.resize(end + room, 0);
    }
    &mut tx[end..end + room]
}

/// Lets `write` put records into `tx` at `end`, in `want` bytes of room
/// or in as much as it then says it needs (`required` reads that from its
/// error).
fn put<E: std::error::Error + Send + Sync + 'static>(
    tx: &mut Vec<u8>,
    end: &mut usize,
    mut want: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    required: impl Fn(&E) -> Option<usize>,
) -> io::Result<()> {
    loop {
        match write(room(tx, *end, want)) {
            Ok(n) => {
                *end += n;
                return Ok(());
            }
            Err(e) => match required(&e) {
                Some(size) if size > want => want = size,
                _ => return Err(invalid(e)),
            },
        }
    }
}

fn encode_needs(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

fn encrypt_needs(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

/// Copies one handshake record into `tx`.
fn encode(
    d: &mut EncodeTlsData<'_, ServerConnectionData>,
    tx: &mut Vec<u8>,
    end: &mut usize,
) -> io::Result<()> {
    put(tx, end, 4096, |room| d.encode(room), encode_needs)
}

/// Encrypts `data` into `tx` as application data records.
fn encrypt(
    w: &mut WriteTraffic<'_, ServerConnectionData>,
    data: &[u8],
    tx: &mut Vec<u8>,
    end: &mut usize,
) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let want = data.len() + data.len().div_ceil(MAX_FRAGMENT) * RECORD_OVERHEAD;
    put(tx, end, want, |room| w.encrypt(data, room), encrypt_needs)
}

/// Handles every state but application data to write, which the callers
/// that write take first. Decrypted records go to `out` while it has room
/// (those after it stay with rustls) and the rest of the record that
/// filled it to `plain`; with no `out` (when writing), all go to `plain`.
fn settle(
    state: ConnectionState<'_, '_, ServerConnectionData>,
    out: &mut [u8],
    tx: &mut Vec<u8>,
    tx_end: &mut usize,
    plain: &mut Vec<u8>,
) -> io::Result<Step> {
    match state {
        ConnectionState::ReadTraffic(mut r) => {
            let mut n = 0;
            while n < out.len() || out.is_empty() {
                let Some(record) = r.next_record() else { break };
                let payload = record.map_err(invalid)?.payload;
                let k = payload.len().min(out.len() - n);
                out[n..n + k].copy_from_slice(&payload[..k]);
                n += k;
                plain.extend_from_slice(&payload[k..]);
            }
            Ok(Step::Plaintext(n))
        }
        ConnectionState::EncodeTlsData(mut d) => {
            encode(&mut d, tx, tx_end)?;
            Ok(Step::Again)
        }
        ConnectionState::TransmitTlsData(t) => {
            // Only a flag; the caller writes `tx` before anything else.
            t.done();
            Ok(Step::Transmit)
        }
        ConnectionState::BlockedHandshake => Ok(Step::NeedBytes),
        ConnectionState::WriteTraffic(_) => Ok(Step::Writable),
        ConnectionState::PeerClosed => Ok(Step::PeerClosed),
        ConnectionState::Closed => Err(io::ErrorKind::BrokenPipe.into()),
        // Early data is never accepted (`max_early_data_size` is 0).
        _ => Err(invalid("unexpected TLS state")),
    }
}

impl<IO> ServerStream<IO>
where
    IO: AsyncReadRent + AsyncWriteRent,
{
    /// A stream whose first ciphertext bytes were already read from `io`
    /// (behind a PROXY protocol header, say).
    pub fn with_received(io: IO, conn: UnbufferedServerConnection, received: Vec<u8>) -> Self {
        ServerStream {
            io,
            conn,
            rx: received,
            rx_pos: 0,
            plain: Vec::new(),
            plain_pos: 0,
            tx: Vec::new(),
            tx_end: 0,
            eof: false,
            closed: false,
        }
    }

    /// The rustls session (peer certificates, negotiated version).
    pub fn session(&self) -> &UnbufferedServerConnection {
        &self.conn
    }

    /// Every byte the peer sent has been read: no partial record, no
    /// plaintext waiting.
    pub fn is_drained(&self) -> bool {
        self.rx_pos == self.rx.len()
            && self.plain_pos == self.plain.len()
            && !self.eof
            && !self.closed
    }

    /// Completes the handshake.
    ///
    /// # Errors
    /// The peer's or rustls's error; an alert is sent when rustls has one.
    pub async fn handshake(&mut self) -> io::Result<()> {
        while self.conn.is_handshaking() {
            match self.advance(&mut []).await? {
                Step::NeedBytes | Step::Writable => self.fill().await?,
                Step::PeerClosed => return Err(io::ErrorKind::UnexpectedEof.into()),
                Step::Again | Step::Transmit | Step::Plaintext(_) => {}
            }
        }
        Ok(())
    }

    /// Processes records until one needs the socket or brings plaintext
    /// (into `out`, see [`settle`]), writing handshake flights as they are
    /// due.
    async fn advance(&mut self, out: &mut [u8]) -> io::Result<Step> {
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.rx[self.rx_pos..]);
            let step = match state {
                Ok(state) => settle(state, out, &mut self.tx, &mut self.tx_end, &mut self.plain)
                    .map_err(FailWith::Io),
                Err(e) => Err(FailWith::Tls(e)),
            };
            self.rx_pos += discard;
            match step {
                Ok(Step::Again) => {}
                Ok(Step::Transmit) => self.flush_tx().await?,
                Ok(step) => return Ok(step),
                Err(e) => return Err(self.fail(e).await),
            }
        }
    }

    /// Sends the alert rustls queued for its error, if any (best effort),
    /// and turns the error into the caller's.
    async fn fail(&mut self, e: FailWith) -> io::Error {
        let e = match e {
            FailWith::Tls(e) => e,
            FailWith::Io(e) => return e,
        };
        // The alert comes out as a record to encode, then a flight to send.
        for _ in 0..4 {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut d)) => {
                    if encode(&mut d, &mut self.tx, &mut self.tx_end).is_err() {
                        break;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    break;
                }
                _ => break,
            }
        }
        let _ = self.flush_tx().await;
        invalid(e)
    }

    /// Reads ciphertext into the spare room of `rx`, after the incomplete
    /// record it may hold.
    async fn fill(&mut self) -> io::Result<()> {
        if self.eof {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if self.rx_pos > 0 {
            self.rx.drain(..self.rx_pos);
            self.rx_pos = 0;
        }
        if self.rx.len() == self.rx.capacity() {
            self.rx.reserve(READ_CHUNK);
        }
        let buf = std::mem::take(&mut self.rx);
        let len = buf.len();
        let (r, slice) = self.io.read(buf.slice_mut(len..)).await;
        self.rx = slice.into_inner();
        if r? == 0 {
            self.eof = true;
        }
        Ok(())
    }

    /// Writes out the records in `tx`.
    async fn flush_tx(&mut self) -> io::Result<()> {
        if self.tx_end == 0 {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.tx);
        let (r, slice) = self.io.write_all(buf.slice(..self.tx_end)).await;
        self.tx = slice.into_inner();
        self.tx_end = 0;
        r.map(|_| ())
    }

    /// Reads plaintext into `out`; 0 after the peer's close_notify.
    async fn read_plain(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.plain_pos < self.plain.len() {
                let n = out.len().min(self.plain.len() - self.plain_pos);
                out[..n].copy_from_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
                self.plain_pos += n;
                if self.plain_pos == self.plain.len() {
                    self.plain.clear();
                    self.plain_pos = 0;
                }
                return Ok(n);
            }
            if self.closed || out.is_empty() {
                return Ok(0);
            }
            match self.advance(out).await? {
                Step::Plaintext(0) => {}
                Step::Plaintext(n) => return Ok(n),
                Step::PeerClosed => self.closed = true,
                Step::Writable | Step::NeedBytes => self.fill().await?,
                // `advance` goes on after these itself.
                Step::Again | Step::Transmit => {}
            }
        }
    }

    /// Encrypts what `write` gives into `tx` once rustls may send
    /// application data (answering key updates first), then writes it.
    async fn send(
        &mut self,
        mut write: impl FnMut(
            &mut WriteTraffic<'_, ServerConnectionData>,
            &mut Vec<u8>,
            &mut usize,
        ) -> io::Result<()>,
    ) -> io::Result<()> {
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.rx[self.rx_pos..]);
            let step = match state {
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    write(&mut w, &mut self.tx, &mut self.tx_end)
                        .map(|()| Step::Writable)
                        .map_err(FailWith::Io)
                }
                Ok(state) => settle(
                    state,
                    &mut [],
                    &mut self.tx,
                    &mut self.tx_end,
                    &mut self.plain,
                )
                .map_err(FailWith::Io),
                Err(e) => Err(FailWith::Tls(e)),
            };
            self.rx_pos += discard;
            match step {
                Ok(Step::Writable) => return self.flush_tx().await,
                Ok(Step::Transmit) => self.flush_tx().await?,
                Ok(Step::NeedBytes) => return Err(invalid("handshake not complete")),
                // The peer's close_notify ends its side only.
                Ok(Step::PeerClosed) => self.closed = true,
                Ok(Step::Again | Step::Plaintext(_)) => {}
                Err(e) => return Err(self.fail(e).await),
            }
        }
    }
}

/// An error on the way: rustls's (an alert may be due) or the socket's.
enum FailWith {
    Tls(rustls::Error),
    Io(io::Error),
}

impl<IO> crate::http::io::Stream for ServerStream<IO>
where
    IO: crate::http::io::Stream,
{
    /// The socket under the session takes its registered slot: the
    /// session's reads and writes are the socket's.
    fn expect_reuse(&self) {
        self.io.expect_reuse();
    }
}

impl<IO> AsyncReadRent for ServerStream<IO>
where
    IO: AsyncReadRent + AsyncWriteRent,
{
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let r = self.read_plain(sys::spare_of(&mut buf)).await;
        super::stream::filled(r, buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        super::stream::no_readv(buf)
    }
}

impl<IO> AsyncWriteRent for ServerStream<IO>
where
    IO: AsyncReadRent + AsyncWriteRent,
{
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let data = sys::bytes_of(&buf);
        let r = self
            .send(|w, tx, end| encrypt(w, data, tx, end))
            .await
            .map(|()| data.len());
        (r, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // Encrypt every slice, then write the records with one call.
        let mut total = 0;
        let r = self
            .send(|w, tx, end| {
                let mut result = Ok(());
                total = 0;
                sys::each_iovec(&buf, |data| {
                    if result.is_ok() {
                        result = encrypt(w, data, tx, end);
                        total += data.len();
                    }
                });
                result
            })
            .await;
        (r.map(|()| total), buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.flush_tx().await?;
        self.io.flush().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        let _ = self
            .send(|w, tx, end| {
                put(
                    tx,
                    end,
                    64,
                    |room| w.queue_close_notify(room),
                    encrypt_needs,
                )
            })
            .await;
        self.io.shutdown().await
    }
}

impl crate::http::io::Park for ServerStream<monoio::net::TcpStream> {
    fn can_park(&self) -> bool {
        self.is_drained()
    }

    async fn readable(&self) -> io::Result<()> {
        crate::http::io::Park::readable(&self.io).await
    }

    async fn read_held(
        &mut self,
        buf: &mut Vec<u8>,
        c: monoio::io::CancelHandle,
    ) -> io::Result<usize> {
        crate::http::io::Park::read_held(&mut self.io, buf, c).await
    }

    fn received(&mut self, bytes: &[u8], _rbuf: &mut Vec<u8>) {
        // Drained (`can_park`): every earlier byte was processed, so these
        // are the buffer's only ones; the next plaintext read takes them.
        self.rx.clear();
        self.rx_pos = 0;
        self.rx.extend_from_slice(bytes);
    }

    fn release(&mut self, pool: &crate::worker::BufferPool) {
        // Drained: no partial record waits.
        if self.rx_pos == self.rx.len() {
            self.rx_pos = 0;
            pool.put_record(std::mem::take(&mut self.rx));
        }
        // Flushed: the pool keeps a standard buffer and frees a grown one.
        if self.tx_end == 0 {
            pool.put_record(std::mem::take(&mut self.tx));
        }
        if self.plain_pos == self.plain.len() {
            self.plain = Vec::new();
            self.plain_pos = 0;
        }
    }

    async fn finish(&mut self) {
        let _ = monoio::io::AsyncWriteRent::shutdown(self).await;
    }

    fn restore(&mut self, pool: &crate::worker::BufferPool) {
        if self.rx.capacity() == 0 {
            self.rx = pool.take_record();
        }
        if self.tx.capacity() == 0 {
            self.tx = pool.take_record();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::sync::Arc;
    use std::time::Duration;

    use monoio::net::TcpListener;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    use super::*;

    fn configs(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let issued = rcgen::generate_simple_self_signed(vec!["gw.test".to_string()]).unwrap();
        let der = issued.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], PrivateKeyDer::Pkcs8(key))
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// The server side of `records_larger_...`: reads 40,000 bytes through
    /// a 1,000-byte buffer, replies and shuts down. With `reuse`, the
    /// socket first takes its slot in the io_uring ring's registered files
    /// (`Stream::expect_reuse`), which it holds until the stream is gone.
    async fn serve_records(
        listener: std::net::TcpListener,
        server_config: Arc<rustls::ServerConfig>,
        reuse: bool,
    ) -> Vec<u8> {
        use crate::http::io::Stream as _;

        let listener = TcpListener::from_std(listener).unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let session = UnbufferedServerConnection::new(server_config).unwrap();
        let mut tls = ServerStream::with_received(tcp, session, Vec::new());
        tls.handshake().await.unwrap();
        let registered = monoio::utils::uring_registered_files;
        if reuse {
            tls.expect_reuse();
            assert_eq!(registered(), Some(1), "the socket has no slot");
        }
        let mut received = Vec::new();
        while received.len() < 40_000 {
            let read = tls.read(Vec::with_capacity(1000));
            let (n, buf) = monoio::time::timeout(Duration::from_secs(20), read)
                .await
                .expect("bytes stopped coming");
            assert!(n.unwrap() > 0, "ended early");
            received.extend_from_slice(&buf);
        }
        assert!(tls.is_drained());
        let (r, _) = tls.write_all(b"all read".to_vec()).await;
        r.unwrap();
        tls.shutdown().await.unwrap();
        drop(tls);
        if reuse {
            assert_eq!(registered(), Some(0), "the slot outlived the socket");
        }
        received
    }

    /// Records of 16 KiB read through a 1,000-byte buffer come out whole
    /// and in order (the rest of each waits in the stream), a reply is
    /// encrypted and read, and shutdown ends with a close_notify, which a
    /// client reads as a clean end: on the legacy driver, and on io_uring
    /// with the socket in the ring's registered files.
    #[test]
    fn records_larger_than_a_read_come_out_whole_and_shutdown_closes_cleanly() {
        for (version, uring) in [
            (&rustls::version::TLS13, false),
            (&rustls::version::TLS12, false),
            (&rustls::version::TLS13, true),
        ] {
            let (server_config, client_config) = configs(version);
            let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
            let expected = sent.clone();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let client = std::thread::spawn(move || {
                let tcp = std::net::TcpStream::connect(addr).unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let name = ServerName::try_from("gw.test").unwrap();
                let conn = rustls::ClientConnection::new(client_config, name).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                tls.write_all(&sent).unwrap();
                let mut reply = Vec::new();
                // Ends without error only at a close_notify.
                tls.read_to_end(&mut reply).unwrap();
                reply
            });
            let received = if uring {
                let (mut rt, _) = crate::worker::uring_runtime(0, 256, true).expect("io_uring");
                rt.block_on(serve_records(listener, server_config, true))
            } else {
                monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .enable_timer()
                    .build()
                    .unwrap()
                    .block_on(serve_records(listener, server_config, false))
            };
            assert!(received == expected, "{version:?}: bytes differ");
            assert_eq!(client.join().unwrap(), b"all read", "{version:?}");
        }
    }
}
