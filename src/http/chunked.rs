//! A streaming decoder for the chunked transfer coding (RFC 9112 7.1).
//!
//! It is fed whatever bytes have arrived and returns how many it consumed plus
//! at most one event: a range of body data inside the input (no copy), or the
//! end of the body. Strict where lenient parsers disagree with each other:
//! chunk lines end in CRLF (a bare LF is an error), sizes are 1-16 hex digits,
//! extensions may hold no control bytes and are dropped, data must be followed
//! by exactly CRLF, and trailer fields must parse as header fields.
//!
//! Trailer fields are kept (bounded) so the forwarder can pass them on.

use std::ops::Range;

/// Longest chunk-size line including extensions.
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// 400 (request) or 502 (response): the body is not valid chunked coding.
    #[error("invalid chunked encoding: {0}")]
    Invalid(&'static str),
    /// 431-like: trailer section over the limit.
    #[error("trailer section too large")]
    TrailersTooLarge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Body bytes at this range of the input slice.
    Data(Range<usize>),
    /// The last chunk and the trailer section were read.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    /// Whitespace after the size, before `;` (RFC 9112 7.1.1 BWS).
    SizeWs,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerLineStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    line_len: usize,
    /// Raw trailer section (`name: value\r\n`...), validated when complete.
    trailers: Vec<u8>,
    max_trailers: usize,
}

impl ChunkedDecoder {
    pub fn new(max_trailers: usize) -> Self {
        Self {
            state: State::Size,
            size: 0,
            digits: 0,
            line_len: 0,
            trailers: Vec::new(),
            max_trailers,
        }
    }

    /// Sets the largest trailer section accepted (the config's head limit,
    /// taken per request so that it follows reloads).
    pub fn limit(&mut self, max_trailers: usize) {
        self.max_trailers = max_trailers;
    }

    /// Frees the trailer buffer if it grew past `keep` bytes.
    pub fn trim(&mut self, keep: usize) {
        if self.trailers.capacity() > keep {
            self.trailers = Vec::new();
        }
    }

    /// Starts a new body, keeping allocations.
    pub fn reset(&mut self) {
        self.state = State::Size;
        self.size = 0;
        self.digits = 0;
        self.line_len = 0;
        self.trailers.clear();
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Trailer fields, each line ending in CRLF; empty when none were sent.
    pub fn trailers(&self) -> &[u8] {
        &self.trailers
    }

    /// Consumes bytes of `input`; returns `(consumed, event)`. `None` means
    /// all of `input` was consumed and more is needed.
    ///
    /// # Errors
    /// [`ChunkError`] when the coding is invalid; the message cannot be framed.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size => {
                    if let Some(d) = hex(b) {
                        if self.digits == 16 {
                            return Err(ChunkError::Invalid("chunk size too large"));
                        }
                        self.size = (self.size << 4) | u64::from(d);
                        self.digits += 1;
                    } else if self.digits == 0 {
                        return Err(ChunkError::Invalid("missing chunk size"));
                    } else {
                        match b {
                            b'\r' => self.state = State::SizeLf,
                            b';' => self.state = State::Ext,
                            b' ' | b'\t' => self.state = State::SizeWs,
                            _ => return Err(ChunkError::Invalid("bad chunk size")),
                        }
                    }
                    self.line_len += 1;
                }
                State::SizeWs => {
                    match b {
                        b' ' | b'\t' => {}
                        b';' => self.state = State::Ext,
                        _ => return Err(ChunkError::Invalid("bad chunk size line")),
                    }
                    self.line_len += 1;
                }
                State::Ext => {
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        b'\t' => {}
                        0..=0x1f | 0x7f => {
                            return Err(ChunkError::Invalid("control byte in chunk extension"))
                        }
                        _ => {}
                    }
                    self.line_len += 1;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Invalid("chunk size line not ended by CRLF"));
                    }
                    self.line_len = 0;
                    self.digits = 0;
                    self.state = if self.size == 0 {
                        State::TrailerLineStart
                    } else {
                        State::Data
                    };
                }
                State::Data => {
                    let n = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok((i + n, Some(Event::Data(i..i + n))));
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::Invalid("chunk data not followed by CRLF"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Invalid("chunk data not followed by CRLF"));
                    }
                    self.state = State::Size;
                }
                State::TrailerLineStart => {
                    if b == b'\r' {
                        self.state = State::EndLf;
                    } else {
                        self.push_trailer(b)?;
                        self.state = State::TrailerLine;
                    }
                }
                State::TrailerLine => {
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    } else {
                        self.push_trailer(b)?;
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Invalid("trailer line not ended by CRLF"));
                    }
                    self.push_trailer(b'\r')?;
                    self.push_trailer(b'\n')?;
                    self.state = State::TrailerLineStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Invalid("chunked body not ended by CRLF"));
                    }
                    self.validate_trailers()?;
                    self.state = State::Done;
                    return Ok((i + 1, Some(Event::Done)));
                }
                State::Done => return Ok((i, Some(Event::Done))),
            }
            if self.line_len > MAX_CHUNK_LINE {
                return Err(ChunkError::Invalid("chunk size line too long"));
            }
            i += 1;
        }
        if self.state == State::Done {
            return Ok((i, Some(Event::Done)));
        }
        Ok((i, None))
    }

    fn push_trailer(&mut self, b: u8) -> Result<(), ChunkError> {
        if self.trailers.len() >= self.max_trailers {
            return Err(ChunkError::TrailersTooLarge);
        }
        self.trailers.push(b);
        Ok(())
    }

    fn validate_trailers(&self) -> Result<(), ChunkError> {
        if self.trailers.is_empty() {
            return Ok(());
        }
        // Same field grammar as the head: reuse httparse (no obs-fold, no bare CR).
        let mut section = Vec::with_capacity(self.trailers.len() + 2);
        section.extend_from_slice(&self.trailers);
        section.extend_from_slice(b"\r\n");
        let mut fields = [httparse::EMPTY_HEADER; 64];
        match httparse::parse_headers(&section, &mut fields) {
            Ok(httparse::Status::Complete(_)) => Ok(()),
            Err(httparse::Error::TooManyHeaders) => Err(ChunkError::TrailersTooLarge),
            _ => Err(ChunkError::Invalid("malformed trailer field")),
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Writes one chunk header (`<hex size>\r\n`) into `out`.
pub fn write_chunk_header(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` split at every position, collecting data and trailers.
    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>, usize), ChunkError> {
        let mut d = ChunkedDecoder::new(1024);
        let mut data = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + step).min(input.len());
            let mut part = &input[pos..end];
            let mut base = pos;
            loop {
                let (used, ev) = d.decode(part)?;
                match ev {
                    Some(Event::Data(r)) => data.extend_from_slice(&part[r]),
                    Some(Event::Done) => return Ok((data, d.trailers().to_vec(), base + used)),
                    None => {}
                }
                part = &part[used..];
                base += used;
                if part.is_empty() {
                    break;
                }
            }
            pos = end;
        }
        Err(ChunkError::Invalid("incomplete"))
    }

    #[test]
    fn decodes_at_every_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (data, trailers, used) = decode_all(body, step).unwrap();
            assert_eq!(data, b"hello world");
            assert_eq!(trailers, b"X-Sum: 1\r\n");
            assert_eq!(&body[used..], b"NEXT", "step {step}");
        }
    }

    #[test]
    fn rejects_invalid() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"x\r\n",
            b"\r\n",
            b"5\r\nhelloX\r\n",
            b"11111111111111111\r\n",
            b"-1\r\n",
            b"5;a\0b\r\nhello\r\n0\r\n\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            b"0\r\nX: a\r\n folded\r\n\r\n",
            b"5 x\r\n",
        ] {
            assert!(
                decode_all(bad, bad.len()).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Mutations of a valid body from a fixed seed: decoding never panics,
    /// data ranges lie within the input, and how the input is split across
    /// reads never changes the outcome.
    #[test]
    fn mutated_bodies_decode_the_same_at_every_split() {
        let seed = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        let alphabet = b"\r\n \t;:=0159afAFx\x00\x80";
        let mut m = crate::mutate::Mutator::new(0x2545_f491_4f6c_dd1d);
        for _ in 0..5_000 {
            let mut raw = seed.to_vec();
            let edits = 1 + m.below(3);
            m.mutate(&mut raw, alphabet, edits, false);
            let whole = decode_all(&raw, raw.len());
            for step in [1, 2, 3, 7] {
                assert_eq!(
                    decode_all(&raw, step),
                    whole,
                    "{:?} in steps of {step}",
                    String::from_utf8_lossy(&raw)
                );
            }
        }
    }

    #[test]
    fn trailer_limit() {
        let mut d = ChunkedDecoder::new(8);
        assert_eq!(
            d.decode(b"0\r\nX-Long-Trailer: 1\r\n\r\n"),
            Err(ChunkError::TrailersTooLarge)
        );
    }

    #[test]
    fn chunk_header() {
        let mut out = Vec::new();
        write_chunk_header(&mut out, 0x1a2b);
        write_chunk_header(&mut out, 0);
        assert_eq!(out, b"1a2b\r\n0\r\n");
    }
}
