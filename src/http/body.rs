//! Streaming message bodies from one side to the other with bounded memory.
//!
//! Bytes flow through the source connection's own read buffer: a body of any
//! size passes with at most one buffer of it in memory. Content-Length bodies
//! are forwarded byte for byte; chunked bodies are decoded and re-encoded
//! (extensions dropped, trailers kept), so the receiver sees one canonical
//! framing whatever the sender's quirks; close-delimited upstream bodies are
//! chunked for HTTP/1.1 clients.

use std::io;
use std::time::Duration;

use super::chunked::{write_chunk_header, ChunkError, ChunkedDecoder, Event};
use super::head::Framing;
use super::io::{write_all, write_range, write_range_more, Inbound, ReadError, Stream};

/// How the body is written to the receiving side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encode {
    /// Same bytes as received (Content-Length bodies).
    Identity,
    /// Chunked transfer coding.
    Chunked,
    /// Raw data delimited by closing the connection (HTTP/1.0 receivers).
    Raw,
}

/// What went wrong while moving a body, by side.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The sending side failed or closed before the end of the body.
    #[error("source read failed: {0}")]
    Source(ReadError),
    #[error("source closed before the end of the body")]
    SourceClosed,
    #[error(transparent)]
    Invalid(#[from] ChunkError),
    /// More data than the limit (request bodies: 413).
    #[error("body over the size limit")]
    TooLarge,
    /// The receiving side failed.
    #[error("sink write failed: {0}")]
    Sink(io::Error),
}

/// Flush re-encoded output once this much is pending.
const FLUSH_AT: usize = 32 * 1024;

/// Moves one body from `src` to `dst`. Returns the body's data length.
///
/// `scratch` holds re-encoded output; `idle` bounds each read. With
/// `more`, a body of known length is sent saying more follows
/// ([`Stream::write_more`]) in all but its last write, so the kernel fills
/// segments across reads: for request bodies, which upstreams read
/// promptly. Toward clients it costs more than it saves (a 1 MiB
/// response took 1.5x the CPU, docs/PERFORMANCE.md), so responses are
/// sent as they come.
///
/// # Errors
/// [`BodyError`] naming the failing side; the caller decides the status and
/// closes both connections (the framing is then unknown).
#[allow(clippy::too_many_arguments)]
pub async fn copy<R: Stream, W: Stream>(
    src: &mut Inbound<'_, R>,
    dst: &mut W,
    framing: Framing,
    encode: Encode,
    scratch: &mut Vec<u8>,
    decoder: &mut ChunkedDecoder,
    idle: Duration,
    limit: u64,
    more: bool,
) -> Result<u64, BodyError> {
    match framing {
        Framing::Empty => Ok(0),
        Framing::Length(n) => {
            if n > limit {
                return Err(BodyError::TooLarge);
            }
            copy_length(src, dst, n, idle, more).await.map(|()| n)
        }
        Framing::Chunked => copy_chunked(src, dst, encode, scratch, decoder, idle, limit).await,
        Framing::UntilClose => copy_until_close(src, dst, encode, scratch, idle).await,
    }
}

/// Reads a whole body into `into` (decoded, trailers dropped), for routes
/// that must see the body before forwarding it. Returns its length.
///
/// # Errors
/// [`BodyError`] as for [`copy`]; `TooLarge` as soon as `limit` is passed,
/// without reading further.
pub async fn collect<R: Stream>(
    src: &mut Inbound<'_, R>,
    framing: Framing,
    into: &mut Vec<u8>,
    decoder: &mut ChunkedDecoder,
    idle: Duration,
    limit: u64,
) -> Result<u64, BodyError> {
    into.clear();
    let chunked = match framing {
        Framing::Empty => return Ok(0),
        Framing::Length(n) if n > limit => return Err(BodyError::TooLarge),
        Framing::Length(_) => false,
        Framing::Chunked => true,
        // Requests are never close-delimited.
        Framing::UntilClose => return Err(BodyError::SourceClosed),
    };
    decoder.reset();
    loop {
        if let Framing::Length(n) = framing {
            let want = (n - into.len() as u64) as usize;
            let take = src.available().len().min(want);
            into.extend_from_slice(&src.available()[..take]);
            src.consume(take);
            if into.len() as u64 == n {
                return Ok(n);
            }
        } else if chunked {
            let (used, event) = decoder.decode(src.available())?;
            match event {
                Some(Event::Data(range)) => {
                    if into.len() + range.len() > limit as usize {
                        return Err(BodyError::TooLarge);
                    }
                    into.extend_from_slice(&src.available()[range]);
                    src.consume(used);
                    continue;
                }
                Some(Event::Done) => {
                    src.consume(used);
                    return Ok(into.len() as u64);
                }
                None => src.consume(used),
            }
        }
        match src.fill(idle).await {
            Ok(0) => return Err(BodyError::SourceClosed),
            Ok(_) => {}
            Err(e) => return Err(BodyError::Source(e)),
        }
    }
}

async fn copy_length<R: Stream, W: Stream>(
    src: &mut Inbound<'_, R>,
    dst: &mut W,
    mut remaining: u64,
    idle: Duration,
    more: bool,
) -> Result<(), BodyError> {
    while remaining > 0 {
        if src.available().is_empty() {
            match src.fill(idle).await {
                Ok(0) => return Err(BodyError::SourceClosed),
                Ok(_) => {}
                Err(e) => return Err(BodyError::Source(e)),
            }
        }
        let n = (src.available().len() as u64).min(remaining) as usize;
        let start = *src.start;
        // All but the last write may say more follows: the kernel fills
        // segments across them and the peer wakes once per segment.
        write_range_more(dst, src.buf, start..start + n, more && remaining > n as u64)
            .await
            .map_err(BodyError::Sink)?;
        src.consume(n);
        remaining -= n as u64;
    }
    Ok(())
}

async fn copy_chunked<R: Stream, W: Stream>(
    src: &mut Inbound<'_, R>,
    dst: &mut W,
    encode: Encode,
    out: &mut Vec<u8>,
    decoder: &mut ChunkedDecoder,
    idle: Duration,
    limit: u64,
) -> Result<u64, BodyError> {
    decoder.reset();
    out.clear();
    let mut total: u64 = 0;
    loop {
        let (used, event) = decoder.decode(src.available())?;
        match event {
            Some(Event::Data(range)) => {
                total += range.len() as u64;
                if total > limit {
                    return Err(BodyError::TooLarge);
                }
                let data = &src.available()[range];
                if encode == Encode::Chunked {
                    write_chunk_header(out, data.len());
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                } else {
                    out.extend_from_slice(data);
                }
                src.consume(used);
                if out.len() >= FLUSH_AT {
                    flush(dst, out).await?;
                }
            }
            Some(Event::Done) => {
                src.consume(used);
                if encode == Encode::Chunked {
                    out.extend_from_slice(b"0\r\n");
                    out.extend_from_slice(decoder.trailers());
                    out.extend_from_slice(b"\r\n");
                }
                flush(dst, out).await?;
                return Ok(total);
            }
            None => {
                src.consume(used);
                // Send what is decoded before waiting: a slow sender's chunks
                // must reach the receiver as they come.
                flush(dst, out).await?;
                match src.fill(idle).await {
                    Ok(0) => return Err(BodyError::SourceClosed),
                    Ok(_) => {}
                    Err(e) => return Err(BodyError::Source(e)),
                }
            }
        }
    }
}

async fn copy_until_close<R: Stream, W: Stream>(
    src: &mut Inbound<'_, R>,
    dst: &mut W,
    encode: Encode,
    out: &mut Vec<u8>,
    idle: Duration,
) -> Result<u64, BodyError> {
    let mut total = 0u64;
    loop {
        let data = src.available();
        if !data.is_empty() {
            total += data.len() as u64;
            if encode == Encode::Chunked {
                out.clear();
                write_chunk_header(out, data.len());
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
                let n = data.len();
                src.consume(n);
                flush(dst, out).await?;
            } else {
                let (start, end) = (*src.start, src.buf.len());
                write_range(dst, src.buf, start..end)
                    .await
                    .map_err(BodyError::Sink)?;
                src.consume(end - start);
            }
        }
        match src.fill(idle).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(BodyError::Source(e)),
        }
    }
    if encode == Encode::Chunked {
        out.clear();
        out.extend_from_slice(b"0\r\n\r\n");
        flush(dst, out).await?;
    }
    Ok(total)
}

async fn flush<W: Stream>(dst: &mut W, out: &mut Vec<u8>) -> Result<(), BodyError> {
    if out.is_empty() {
        return Ok(());
    }
    write_all(dst, out).await.map_err(BodyError::Sink)?;
    out.clear();
    Ok(())
}
