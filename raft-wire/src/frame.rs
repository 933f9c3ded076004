//! Frames: a little-endian `u32` length, then that many bytes of postcard.
//!
//! The length is checked against the reader's limit before anything is
//! allocated, and buffers grow with the bytes that actually arrive, so a
//! peer announcing a large frame and sending little costs the reader
//! little. The codec is sans-IO: [`encode_frame`] and [`FrameDecoder`] work
//! on buffers (an event loop such as mio feeds the decoder what it read);
//! [`frame_len`] and [`decode`] are the two halves an async reader calls
//! around its own reads; [`read_frame`] and [`write_frame`] do it on blocking
//! `std::io` streams.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The length of a frame's prefix.
pub const FRAME_HEADER_LEN: usize = 4;

/// The largest frame body sent or accepted by default (an AppendEntries
/// batch, a client request; snapshots are streamed in chunks by the
/// drivers, never one frame).
pub const MAX_FRAME: usize = 64 << 20;

/// How much buffer a blocking reader reserves ahead of the bytes that arrive.
const READ_CHUNK: usize = 64 << 10;

/// Why a frame could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The connection failed or closed (an end of stream inside a frame is
    /// `UnexpectedEof`).
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// A frame longer than the limit was announced (reading) or produced
    /// (writing).
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// The frame body's length.
        len: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// The bytes of a frame are not a valid value.
    #[error("undecodable frame: {0}")]
    Decode(#[source] postcard::Error),
    /// The value could not be encoded.
    #[error("unencodable value: {0}")]
    Encode(#[source] postcard::Error),
}

/// Reads a frame's length from its prefix and refuses it if it exceeds
/// `limit`, before anything is allocated for it.
pub fn frame_len(prefix: [u8; FRAME_HEADER_LEN], limit: usize) -> Result<usize, FrameError> {
    let len = usize::try_from(u32::from_le_bytes(prefix)).unwrap_or(usize::MAX);
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    Ok(len)
}

/// Decodes a frame's body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    postcard::from_bytes(body).map_err(FrameError::Decode)
}

/// Appends `value` as one frame (prefix included) to `buf`, refusing a body
/// longer than `limit`; on error `buf` is as it was.
pub fn encode_frame_into<T: Serialize>(
    buf: &mut Vec<u8>,
    value: &T,
    limit: usize,
) -> Result<(), FrameError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    let encoded = postcard::to_extend(value, Appender(&mut *buf))
        .map(drop)
        .map_err(FrameError::Encode);
    let len = buf.len() - start - FRAME_HEADER_LEN;
    let result = encoded.and_then(|()| match u32::try_from(len) {
        Ok(prefix) if len <= limit => Ok(prefix),
        _ => Err(FrameError::TooLarge { len, limit }),
    });
    match result {
        Ok(prefix) => {
            buf[start..start + FRAME_HEADER_LEN].copy_from_slice(&prefix.to_le_bytes());
            Ok(())
        }
        Err(e) => {
            buf.truncate(start);
            Err(e)
        }
    }
}

/// Lets postcard append to a borrowed buffer.
struct Appender<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Appender<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

/// Encodes `value` as one frame of at most [`MAX_FRAME`] bytes.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    encode_frame_within(value, MAX_FRAME)
}

/// Encodes `value` as one frame whose body is at most `limit` bytes.
pub fn encode_frame_within<T: Serialize>(value: &T, limit: usize) -> Result<Vec<u8>, FrameError> {
    let mut buf = Vec::new();
    encode_frame_into(&mut buf, value, limit)?;
    Ok(buf)
}

/// Reads one frame of at most `limit` bytes from a blocking stream and
/// decodes it. The buffer grows with the bytes that arrive.
pub fn read_frame<T: DeserializeOwned, R: Read>(
    reader: &mut R,
    limit: usize,
) -> Result<T, FrameError> {
    let mut prefix = [0; FRAME_HEADER_LEN];
    reader.read_exact(&mut prefix)?;
    let len = frame_len(prefix, limit)?;
    let mut body = Vec::with_capacity(len.min(READ_CHUNK));
    reader.take(len as u64).read_to_end(&mut body)?;
    if body.len() < len {
        return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    decode(&body)
}

/// Encodes `value` as one frame of at most [`MAX_FRAME`] bytes and writes
/// it (not flushed).
pub fn write_frame<T: Serialize, W: Write>(writer: &mut W, value: &T) -> Result<(), FrameError> {
    writer.write_all(&encode_frame(value)?)?;
    Ok(())
}

/// Splits a byte stream into frames, for an event loop that reads whatever
/// the socket has: [`FrameDecoder::push`] what arrived, then take frames
/// with [`FrameDecoder::next_frame`] until it returns `None`. Each call
/// checks the next frame's length against the limit passed (it may change
/// between frames: a connection's first frame is a small hello). Holds at
/// most one partial frame plus what was pushed.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes before this were taken.
    start: usize,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The body of the next whole frame, or `None` if it has not all
    /// arrived. A length over `limit` is an error (and the stream is
    /// unusable afterwards: close it).
    pub fn next_frame(&mut self, limit: usize) -> Result<Option<&[u8]>, FrameError> {
        let rest = &self.buf[self.start..];
        let Some(prefix) = rest.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        let len = frame_len(prefix.try_into().expect("four bytes"), limit)?;
        if rest.len() - FRAME_HEADER_LEN < len {
            return Ok(None);
        }
        let body = self.start + FRAME_HEADER_LEN;
        self.start = body + len;
        Ok(Some(&self.buf[body..body + len]))
    }

    /// The next whole frame, decoded; see [`FrameDecoder::next_frame`].
    pub fn next<T: DeserializeOwned>(&mut self, limit: usize) -> Result<Option<T>, FrameError> {
        match self.next_frame(limit)? {
            Some(body) => decode(body).map(Some),
            None => Ok(None),
        }
    }

    /// Bytes pushed and not yet taken.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_every_reader() {
        let values: Vec<(u64, String)> = (0..50).map(|i| (i, "x".repeat(i as usize))).collect();
        let mut stream = Vec::new();
        for v in &values {
            encode_frame_into(&mut stream, v, MAX_FRAME).unwrap();
        }
        let mut reader: &[u8] = &stream;
        for v in &values {
            assert_eq!(
                &read_frame::<(u64, String), _>(&mut reader, 100).unwrap(),
                v
            );
        }
        assert!(reader.is_empty());
        // Fed one byte at a time, the decoder yields the same frames.
        let mut decoder = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &stream {
            decoder.push(std::slice::from_ref(b));
            while let Some(v) = decoder.next::<(u64, String)>(100).unwrap() {
                got.push(v);
            }
        }
        assert_eq!(got, values);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn an_oversized_length_is_refused_on_its_prefix() {
        let huge = u32::MAX.to_le_bytes();
        let mut reader: &[u8] = &huge;
        assert!(matches!(
            read_frame::<u64, _>(&mut reader, MAX_FRAME),
            Err(FrameError::TooLarge { len, limit: MAX_FRAME }) if len == u32::MAX as usize
        ));
        let mut decoder = FrameDecoder::new();
        decoder.push(&huge[..3]);
        assert!(decoder.next_frame(10).unwrap().is_none());
        decoder.push(&huge[3..]);
        assert!(matches!(
            decoder.next_frame(10),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_short_stream_is_an_unexpected_eof() {
        let frame = encode_frame(&"hello".to_string()).unwrap();
        let mut reader: &[u8] = &frame[..frame.len() - 1];
        match read_frame::<String, _>(&mut reader, MAX_FRAME) {
            Err(FrameError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn encoding_refuses_a_body_over_the_limit_and_leaves_the_buffer() {
        let mut buf = vec![1, 2, 3];
        let err = encode_frame_into(&mut buf, &vec![0u8; 100], 50).unwrap_err();
        assert!(matches!(
            err,
            FrameError::TooLarge {
                len: 101,
                limit: 50
            }
        ));
        assert_eq!(buf, [1, 2, 3]);
        encode_frame_into(&mut buf, &7u8, 50).unwrap();
        assert_eq!(buf, [1, 2, 3, 1, 0, 0, 0, 7]);
    }
}
