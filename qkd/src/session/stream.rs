//! Session frames over a byte stream (TCP): a length prefix per frame and a one-time
//! hello that names the ONU.
//!
//! A stream carries `[u32 big-endian length][frame]…`. The decoder is a pure state
//! machine over received bytes (no I/O): [`StreamDecoder::push`] appends what the socket
//! read, [`StreamDecoder::next_frame`] yields complete frames. A length of zero or above
//! the configured maximum is a protocol error: the connection must be closed (the bytes
//! that follow cannot be trusted to be aligned on a frame).
//!
//! **Hello.** The ONU opens every connection with [`Hello`]: magic `QPON`, the stream
//! version and its ONU id. The hello is not authenticated and does not need to be: it
//! only routes the connection to a session, and every session frame that follows is
//! authenticated by that session (its header names the ONU too, and a frame for another
//! ONU is refused). A peer lying in its hello can only get its own frames refused — a
//! denial of service it could cause anyway by cutting the fibre.

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// The hello every ONU sends first on a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The ONU's id on this OLT.
    pub onu: u16,
}

impl Hello {
    /// Magic bytes that start a hello.
    pub const MAGIC: [u8; 4] = *b"QPON";
    /// Stream version spoken by this code.
    pub const VERSION: u8 = 1;
    /// Encoded length.
    pub const LEN: usize = 7;

    /// The hello's bytes.
    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let [a, b] = self.onu.to_be_bytes();
        let [m0, m1, m2, m3] = Self::MAGIC;
        [m0, m1, m2, m3, Self::VERSION, a, b]
    }

    /// Parses a hello; the error says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Hello, StreamError> {
        if bytes.len() != Self::LEN || bytes[..4] != Self::MAGIC {
            return Err(StreamError::BadHello);
        }
        if bytes[4] != Self::VERSION {
            return Err(StreamError::UnsupportedVersion(bytes[4]));
        }
        Ok(Hello { onu: u16::from_be_bytes([bytes[5], bytes[6]]) })
    }
}

/// Why a stream must be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A length prefix of zero or above the limit.
    #[error("frame length {len} outside 1..={max}")]
    BadLength {
        /// The announced length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The first bytes are not a hello.
    #[error("the connection did not start with a qpon hello")]
    BadHello,
    /// A hello of a version this code does not speak.
    #[error("unsupported stream version {0}")]
    UnsupportedVersion(u8),
}

/// Appends `frame` with its length prefix to `out`.
///
/// # Panics
/// If the frame is longer than `u32::MAX` bytes (sessions never build such frames).
pub fn encode_frame(frame: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(frame.len()).expect("frames are shorter than 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(frame);
}

/// Reassembles length-prefixed frames from stream bytes.
#[derive(Debug)]
pub struct StreamDecoder {
    buf: Vec<u8>,
    start: usize,
    max: u32,
}

impl StreamDecoder {
    /// A decoder accepting frames of up to `max` bytes (e.g. the session's `max_body`
    /// plus the header and tag).
    pub fn new(max: u32) -> Self {
        Self { buf: Vec::new(), start: 0, max }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            // Reclaim consumed space without reallocating per frame.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The largest frame accepted.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Bytes buffered but not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, StreamError> {
        let avail = &self.buf[self.start..];
        let Some(prefix) = avail.first_chunk::<LEN_PREFIX>() else { return Ok(None) };
        let len = u32::from_be_bytes(*prefix);
        if len == 0 || len > self.max {
            return Err(StreamError::BadLength { len, max: self.max });
        }
        let total = LEN_PREFIX + len as usize;
        if avail.len() < total {
            return Ok(None);
        }
        let frame = avail[LEN_PREFIX..total].to_vec();
        self.start += total;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hello_round_trips_and_refuses_garbage() {
        let h = Hello { onu: 517 };
        assert_eq!(Hello::parse(&h.to_bytes()), Ok(h));
        assert_eq!(Hello::parse(b"QPOX\x01\x00\x01"), Err(StreamError::BadHello));
        assert_eq!(Hello::parse(b"QPON\x09\x00\x01"), Err(StreamError::UnsupportedVersion(9)));
        assert_eq!(Hello::parse(b"QPON\x01\x00"), Err(StreamError::BadHello));
    }

    #[test]
    fn oversized_and_empty_lengths_are_refused() {
        let mut d = StreamDecoder::new(100);
        d.push(&101u32.to_be_bytes());
        assert_eq!(d.next_frame(), Err(StreamError::BadLength { len: 101, max: 100 }));
        let mut d = StreamDecoder::new(100);
        d.push(&0u32.to_be_bytes());
        assert!(d.next_frame().is_err());
    }

    proptest! {
        /// Any frames, cut into any pieces, come out whole and in order.
        #[test]
        fn frames_survive_any_split(
            frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..20),
            cuts in prop::collection::vec(1usize..50, 1..40),
        ) {
            let mut wire = Vec::new();
            for f in &frames {
                encode_frame(f, &mut wire);
            }
            let mut d = StreamDecoder::new(1000);
            let mut out = Vec::new();
            let mut pos = 0;
            let mut ci = 0;
            while pos < wire.len() {
                let n = cuts[ci % cuts.len()].min(wire.len() - pos);
                ci += 1;
                d.push(&wire[pos..pos + n]);
                pos += n;
                while let Some(f) = d.next_frame().unwrap() {
                    out.push(f);
                }
            }
            prop_assert_eq!(out, frames);
            prop_assert_eq!(d.buffered(), 0);
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
            let mut d = StreamDecoder::new(512);
            d.push(&bytes);
            while let Ok(Some(_)) = d.next_frame() {}
            let _ = Hello::parse(&bytes);
        }
    }
}
