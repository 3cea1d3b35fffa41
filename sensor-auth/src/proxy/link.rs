//! Byte-stream plumbing shared by both roles: cutting the authenticated link into frames
//! (self-delimiting, [`crate::frame_len`]) and Modbus/TCP into ADUs ([`Splitter`]), and a
//! writer task per connection.

use crate::mbap::{Adu, MbapError, Splitter};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Why a connection's byte stream was given up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Malformed Modbus/TCP.
    #[error("malformed MBAP: {0}")]
    Mbap(#[from] MbapError),
    /// A link frame header that is not one of ours.
    #[error("malformed link frame: {0}")]
    Frame(String),
}

/// Splits the link's byte stream into whole frames (sans-IO).
#[derive(Debug, Default)]
pub(crate) struct FrameSplitter {
    buf: Vec<u8>,
}

impl FrameSplitter {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or why the stream cannot
    /// be framed (the caller closes the connection: frames cannot be resynchronised).
    pub(crate) fn next_frame(&mut self) -> Result<Option<Vec<u8>>, StreamError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let n = match crate::frame_len(&self.buf) {
            Ok(None) => {
                if self.buf.len() >= crate::MAX_FRAME_LEN {
                    return Err(StreamError::Frame(format!("no frame length in {} bytes", self.buf.len())));
                }
                return Ok(None);
            }
            Ok(Some(n)) => n,
            Err(e) => return Err(StreamError::Frame(e.to_string())),
        };
        if n == 0 || n > crate::MAX_FRAME_LEN {
            return Err(StreamError::Frame(format!("frame length {n} out of range")));
        }
        if self.buf.len() < n {
            return Ok(None);
        }
        let rest = self.buf.split_off(n);
        Ok(Some(core::mem::replace(&mut self.buf, rest)))
    }
}

/// Reads whole link frames from a byte stream.
pub(crate) struct FrameReader<R> {
    r: R,
    split: FrameSplitter,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(r: R) -> Self {
        Self { r, split: FrameSplitter::default(), buf: vec![0; 4096] }
    }

    /// The next frame; `Ok(None)` at EOF; an error for a framing or socket failure.
    pub(crate) async fn next(&mut self) -> Result<Option<Vec<u8>>, StreamError> {
        loop {
            if let Some(f) = self.split.next_frame()? {
                return Ok(Some(f));
            }
            let n = self.r.read(&mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.split.push(&self.buf[..n]);
        }
    }
}

/// Reads whole Modbus/TCP ADUs from a byte stream.
pub(crate) struct AduReader<R> {
    r: R,
    split: Splitter,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> AduReader<R> {
    pub(crate) fn new(r: R) -> Self {
        Self { r, split: Splitter::new(), buf: vec![0; 1024] }
    }

    /// The next ADU; `Ok(None)` at EOF; an error for a malformed header or socket failure.
    pub(crate) async fn next(&mut self) -> Result<Option<Adu>, StreamError> {
        loop {
            if let Some(a) = self.split.next_adu()? {
                return Ok(Some(a));
            }
            let n = self.r.read(&mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.split.push(&self.buf[..n]);
        }
    }
}

/// Writes everything sent on the returned channel to `w`, until the channel closes or a
/// write fails. The channel holds `depth` messages; senders use `try_send`, so a peer that
/// stops reading loses messages instead of stalling the proxy.
pub(crate) fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(
    mut w: W,
    depth: usize,
) -> (mpsc::Sender<Vec<u8>>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(depth.max(1));
    let task = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if let Err(e) = w.write_all(&bytes).await {
                tracing::debug!("write failed: {e}");
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    (tx, task)
}

/// Milliseconds since the Unix epoch (the `now_ms` both ends give the library; command
/// deadlines assume the two hosts' clocks agree to well within the deadline).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The accept loop both roles run once their hub task (`core`) is up: each connection
/// accepted on `listener` runs `serve(sock, addr)` in `tasks`, at most `max_connections`
/// at once (one more is closed at once, logged). Returns `Ok` at `shutdown` and an error
/// as soon as the hub task stops, so the proxy never runs on without it; either way the
/// connection tasks are stopped first.
pub(super) async fn accept_until<F>(
    listener: &tokio::net::TcpListener,
    max_connections: usize,
    role: &str,
    core: &mut tokio::task::JoinSet<()>,
    tasks: &mut tokio::task::JoinSet<()>,
    shutdown: impl std::future::Future<Output = ()>,
    mut serve: impl FnMut(tokio::net::TcpStream, std::net::SocketAddr) -> F,
) -> Result<(), super::ProxyError>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            r = core.join_next() => {
                tasks.shutdown().await;
                return Err(super::ProxyError::Core(match r {
                    Some(Err(e)) => e.to_string(),
                    _ => "stopped".into(),
                }));
            }
            r = listener.accept() => match r {
                Ok((sock, addr)) => {
                    let Ok(permit) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
                        tracing::warn!(peer = %addr, "connection limit reached; closing the new {role} connection");
                        continue;
                    };
                    let conn = serve(sock, addr);
                    tasks.spawn(async move {
                        conn.await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
        while tasks.try_join_next().is_some() {}
    }
    tracing::info!("{role} proxy shutting down");
    tasks.shutdown().await;
    Ok(())
}

/// Sleeps until `t`, or forever without one (a `select!` arm guarded by `t.is_some()`).
pub(super) async fn sleep_until(t: Option<tokio::time::Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Class, ControlEnd, EndConfig, PoolPads};
    use proptest::prelude::*;
    use qpon_kms::{KeyPool, MemoryPool};

    /// Real request frames from a control end over an in-memory pool.
    fn frames(n: usize) -> Vec<Vec<u8>> {
        let mut pool = MemoryPool::new();
        let key: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8 | 1).collect();
        pool.append(uuid::Uuid::from_u128(1), &qpon_qkd::BitBlock::from_bytes(&key, key.len() * 8)).unwrap();
        let config = EndConfig { low_water_bytes: 0, ..EndConfig::default() };
        let mut end = ControlEnd::new(config, Box::new(PoolPads::new(pool)));
        (0..n)
            .map(|i| {
                let class = if i % 2 == 0 { Class::Command } else { Class::Reading };
                end.seal_request(class, &vec![i as u8; 1 + i * 7 % 200], 1000).unwrap().bytes
            })
            .collect()
    }

    #[test]
    fn garbage_is_refused_before_it_is_buffered() {
        let mut s = FrameSplitter::default();
        s.push(b"GET / HTTP/1.1\r\n");
        assert!(matches!(s.next_frame(), Err(StreamError::Frame(_))));
    }

    proptest! {
        #[test]
        fn any_split_of_a_frame_stream_gives_the_frames(cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12)) {
            let frames = frames(6);
            let stream = frames.concat();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.extend([0, stream.len()]);
            points.sort_unstable();
            let mut s = FrameSplitter::default();
            let mut got = Vec::new();
            for w in points.windows(2) {
                s.push(&stream[w[0]..w[1]]);
                while let Some(f) = s.next_frame().unwrap() {
                    got.push(f);
                }
            }
            prop_assert_eq!(got, frames);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut s = FrameSplitter::default();
            s.push(&bytes);
            for _ in 0..4 {
                match s.next_frame() {
                    Ok(Some(f)) => prop_assert!(!f.is_empty() && f.len() <= crate::MAX_FRAME_LEN),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
