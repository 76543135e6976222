//! An upstream connection's byte stream: plain TCP, or TLS over it.
//!
//! One enum rather than a type parameter: the proxy code is compiled once
//! for both, and the plain case costs one predictable branch per I/O call.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::BufResult;

use crate::tls::TlsStream;

pub enum UpstreamStream {
    Plain(TcpStream),
    /// Boxed: the TLS session is large, and the pool moves connections.
    Tls(Box<TlsStream<TcpStream, rustls::ClientConnection>>),
}

impl UpstreamStream {
    pub fn fd(&self) -> RawFd {
        match self {
            UpstreamStream::Plain(s) => s.as_raw_fd(),
            UpstreamStream::Tls(t) => t.io().as_raw_fd(),
        }
    }

    /// The connection goes back to the pool for more requests: its socket
    /// enters the worker ring's registered files (see
    /// `http::io::Stream::expect_reuse`).
    pub fn expect_reuse(&self) {
        match self {
            UpstreamStream::Plain(s) => s.use_registered_file(),
            UpstreamStream::Tls(t) => t.io().use_registered_file(),
        };
    }

    /// Nothing received and not yet read: no buffered ciphertext or
    /// plaintext that a pooled connection would hand to the next request.
    pub fn is_drained(&self) -> bool {
        match self {
            UpstreamStream::Plain(_) => true,
            UpstreamStream::Tls(t) => t.is_drained(),
        }
    }
}

impl AsyncReadRent for UpstreamStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.read(buf).await,
            UpstreamStream::Tls(t) => t.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.readv(buf).await,
            UpstreamStream::Tls(t) => t.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for UpstreamStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.write(buf).await,
            UpstreamStream::Tls(t) => t.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.writev(buf).await,
            UpstreamStream::Tls(t) => t.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            UpstreamStream::Plain(s) => s.flush().await,
            UpstreamStream::Tls(t) => t.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            UpstreamStream::Plain(s) => s.shutdown().await,
            UpstreamStream::Tls(t) => t.shutdown().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pooled connection's socket takes a slot in the worker ring's
    /// registered files whether it is plain or under a TLS session, and
    /// gives it back when the connection is dropped.
    #[test]
    fn reuse_registers_the_socket_plain_or_under_tls() {
        let (mut rt, _) = crate::worker::uring_runtime(0, 64, true).expect("io_uring runtime");
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let plain = UpstreamStream::Plain(TcpStream::connect_addr(addr).await.unwrap());
            let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from("upstream.test").unwrap();
            let session = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
            let tcp = TcpStream::connect_addr(addr).await.unwrap();
            let tls = UpstreamStream::Tls(Box::new(TlsStream::new(tcp, session)));
            let registered = || monoio::utils::uring_registered_files().expect("io_uring");
            let before = registered();
            plain.expect_reuse();
            assert_eq!(registered() - before, 1, "the plain socket has no slot");
            tls.expect_reuse();
            assert_eq!(registered() - before, 2, "the socket under TLS has no slot");
            drop((plain, tls));
            assert_eq!(registered(), before, "slots outlived their sockets");
        });
    }
}
