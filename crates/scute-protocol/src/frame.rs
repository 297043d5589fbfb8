//! Framing: a 12-byte header followed by a bounded payload.
//!
//! ```text
//!  0        4      5          8          12
//!  | len u32 | kind | reserved | stream u32 | payload (len bytes) |
//! ```
//! All integers are big-endian; the reserved bytes must be zero.

use thiserror::Error;

use crate::limits::MAX_PAYLOAD;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 12;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A [`crate::Request`]; the stream id is the request id.
    Request = 1,
    /// A [`crate::Response`] to the request with the same id.
    Response = 2,
    /// An unsolicited [`crate::Event`]; stream id 0.
    Event = 3,
    /// Raw stdio bytes on a stream.
    Data = 4,
    /// End of a stdio stream (EOF of stdout/stderr, or close of stdin).
    Close = 5,
    /// Flow control: the receiver of a stream consumed this many bytes (u32
    /// big-endian payload) and the sender may send that many more.
    Credit = 6,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Event,
            4 => Self::Data,
            5 => Self::Close,
            6 => Self::Credit,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: FrameKind, stream: u32, payload: Vec<u8>) -> Self {
        Self {
            kind,
            stream,
            payload,
        }
    }

    pub fn credit(stream: u32, bytes: u32) -> Self {
        Self::new(FrameKind::Credit, stream, bytes.to_be_bytes().to_vec())
    }

    /// The byte count of a Credit frame; `None` if the payload is malformed.
    pub fn credit_bytes(&self) -> Option<u32> {
        let b: [u8; 4] = self.payload.as_slice().try_into().ok()?;
        Some(u32::from_be_bytes(b))
    }
}

/// Why a byte stream is not a valid frame sequence. Any of these ends the
/// connection: after a bad header the stream cannot be resynchronised.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("reserved header bytes are not zero")]
    Reserved,
    #[error("frame payload of {0} bytes is larger than the protocol allows to encode")]
    Unencodable(usize),
}

/// Encodes a frame into a fresh buffer.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let len = frame.payload.len();
    if len > MAX_PAYLOAD {
        return Err(FrameError::Unencodable(len));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(frame.kind as u8);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&frame.stream.to_be_bytes());
    out.extend_from_slice(&frame.payload);
    Ok(out)
}

/// Incremental decoder: feed it whatever the transport returned, take frames out.
///
/// Memory is bounded: a header is validated (length, kind, reserved bytes) as
/// soon as its 12 bytes are in, before any payload is buffered, so the buffer
/// never holds more than one maximal frame plus one read chunk.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the bytes not yet returned: frames are consumed by moving
    /// it, and the consumed prefix is dropped once per push, so a read full
    /// of small frames costs O(n), not a memmove per frame.
    start: usize,
    /// Set once an error was returned; the decoder refuses further input.
    poisoned: bool,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends transport bytes. The caller must drain frames with
    /// [`FrameDecoder::next_frame`] after every push.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.poisoned {
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The bytes buffered and not yet returned, for a decoder that takes
    /// the stream over (a connection handed to another process).
    pub fn into_buffered(mut self) -> Vec<u8> {
        self.buf.split_off(self.start)
    }

    /// Returns the next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.poisoned {
            return Err(FrameError::Reserved);
        }
        let rest = &self.buf[self.start..];
        if rest.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = match parse_header(&rest[..HEADER_LEN]) {
            Ok(h) => h,
            Err(e) => {
                self.poisoned = true;
                self.buf = Vec::new();
                self.start = 0;
                return Err(e);
            }
        };
        let total = HEADER_LEN + header.0;
        if rest.len() < total {
            return Ok(None);
        }
        let payload = rest[HEADER_LEN..total].to_vec();
        self.start += total;
        Ok(Some(Frame::new(header.1, header.2, payload)))
    }
}

/// Validates a header: returns (payload length, kind, stream).
fn parse_header(h: &[u8]) -> Result<(usize, FrameKind, u32), FrameError> {
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_PAYLOAD,
        });
    }
    let kind = FrameKind::from_u8(h[4]).ok_or(FrameError::UnknownKind(h[4]))?;
    if h[5..8] != [0, 0, 0] {
        return Err(FrameError::Reserved);
    }
    let stream = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
    Ok((len, kind, stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read full of minimal frames is decoded in linear time: one million
    /// 12-byte frames from one push (a memmove per frame would move ~6 TB).
    #[test]
    fn a_million_minimal_frames_decode_in_linear_time() {
        let one = encode(&Frame::new(FrameKind::Data, 7, Vec::new())).unwrap();
        let n = 1_000_000;
        let stream: Vec<u8> = one.iter().copied().cycle().take(one.len() * n).collect();
        let mut d = FrameDecoder::new();
        let t = std::time::Instant::now();
        d.push(&stream);
        let mut got = 0;
        while let Some(f) = d.next_frame().unwrap() {
            assert_eq!(f.stream, 7);
            got += 1;
        }
        assert_eq!(got, n);
        assert_eq!(d.buffered(), 0);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            t.elapsed()
        );
        // The consumed prefix is dropped at the next push.
        d.push(&one[..5]);
        assert_eq!(d.buffered(), 5);
    }

    fn roundtrip_chunked(frames: &[Frame], chunk: usize) -> Vec<Frame> {
        let mut bytes = Vec::new();
        for f in frames {
            bytes.extend(encode(f).unwrap());
        }
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for c in bytes.chunks(chunk) {
            d.push(c);
            while let Some(f) = d.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(d.buffered(), 0);
        out
    }

    #[test]
    fn roundtrip_any_chunking() {
        let frames = vec![
            Frame::new(FrameKind::Request, 7, b"{\"op\":\"x\"}".to_vec()),
            Frame::new(FrameKind::Data, 3, vec![0xff; 70_000]),
            Frame::new(FrameKind::Close, 3, vec![]),
        ];
        for chunk in [1, 5, 12, 13, 4096, 1 << 20] {
            assert_eq!(roundtrip_chunked(&frames, chunk), frames);
        }
    }

    #[test]
    fn hostile_length_rejected_before_buffering_payload() {
        let mut d = FrameDecoder::new();
        d.push(&[0xff, 0xff, 0xff, 0xff, 4, 0, 0, 0, 0, 0, 0, 1]);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge { .. })));
        // Poisoned: nothing more is buffered or decoded.
        d.push(&[0; 64]);
        assert_eq!(d.buffered(), 0);
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn max_payload_is_accepted_one_more_is_not() {
        let ok = (MAX_PAYLOAD as u32).to_be_bytes();
        let mut d = FrameDecoder::new();
        d.push(&[ok[0], ok[1], ok[2], ok[3], 4, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(d.next_frame(), Ok(None));
        let bad = (MAX_PAYLOAD as u32 + 1).to_be_bytes();
        let mut d = FrameDecoder::new();
        d.push(&[bad[0], bad[1], bad[2], bad[3], 4, 0, 0, 0, 0, 0, 0, 1]);
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn unknown_kind_and_reserved_bytes_rejected() {
        let mut d = FrameDecoder::new();
        d.push(&[0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::UnknownKind(9)));
        assert_eq!(
            Frame::new(FrameKind::Credit, 1, vec![1, 2]).credit_bytes(),
            None
        );
        assert_eq!(Frame::credit(1, 70_000).credit_bytes(), Some(70_000));
        let mut d = FrameDecoder::new();
        d.push(&[0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::Reserved));
    }

    #[test]
    fn oversized_encode_refused() {
        let f = Frame::new(FrameKind::Data, 1, vec![0; MAX_PAYLOAD + 1]);
        assert!(matches!(encode(&f), Err(FrameError::Unencodable(_))));
    }
}

#[cfg(test)]
mod hostile_stream {
    //! A cheap, deterministic stand-in for the fuzzer that runs with the unit
    //! tests: random byte streams (and random mutations of valid ones) never
    //! panic the decoder, never yield an oversized frame, and never make it
    //! buffer more than one maximal frame plus one chunk.
    use super::*;

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_and_mutated_streams() {
        let mut rng = XorShift(0x5eed_cafe);
        let valid: Vec<u8> = [
            Frame::new(
                FrameKind::Response,
                1,
                b"{\"ok\":{\"reply\":\"done\"}}".to_vec(),
            ),
            Frame::new(FrameKind::Data, 2, vec![7; 3000]),
            Frame::new(FrameKind::Close, 2, vec![]),
        ]
        .iter()
        .flat_map(|f| encode(f).unwrap())
        .collect();
        for round in 0..2000 {
            let mut bytes = if round % 2 == 0 {
                (0..(rng.next() % 4096))
                    .map(|_| rng.next() as u8)
                    .collect::<Vec<u8>>()
            } else {
                let mut v = valid.clone();
                for _ in 0..(1 + rng.next() % 8) {
                    let i = (rng.next() as usize) % v.len();
                    v[i] = rng.next() as u8;
                }
                v
            };
            bytes.truncate(8192);
            let chunk = 1 + (rng.next() % 700) as usize;
            let mut d = FrameDecoder::new();
            'feed: for piece in bytes.chunks(chunk) {
                d.push(piece);
                assert!(d.buffered() <= HEADER_LEN + MAX_PAYLOAD + chunk);
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => assert!(f.payload.len() <= MAX_PAYLOAD),
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
        }
    }
}
