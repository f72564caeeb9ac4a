//! Framing: a 4-byte big-endian length, then the request. Pure functions over bytes, plus the one
//! async read of a frame from a socket, bounded by `socket.request.max.bytes`.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of `api_key`, `api_version` and `correlation_id`, the part of every request header that
/// can be read before knowing the header version.
pub const REQUEST_PREFIX_BYTES: usize = 8;

/// Why a connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is negative or over the limit.
    #[error("frame of {size} bytes is outside 0..={max} (socket.request.max.bytes)")]
    Size {
        /// The declared size.
        size: i64,
        /// The limit.
        max: usize,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed after {read} of {expected} bytes of a frame")]
    Truncated {
        /// Bytes received.
        read: usize,
        /// Bytes announced.
        expected: usize,
    },
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(String),
}

/// The fixed start of a request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestPrefix {
    /// API key, possibly unknown.
    pub api_key: i16,
    /// API version, possibly unsupported.
    pub api_version: i16,
    /// Correlation id to echo.
    pub correlation_id: i32,
}

/// Reads the fixed start of a request header, or `None` when the frame is too short for one.
pub fn parse_prefix(frame: &[u8]) -> Option<RequestPrefix> {
    if frame.len() < REQUEST_PREFIX_BYTES {
        return None;
    }
    Some(RequestPrefix {
        api_key: i16::from_be_bytes([frame[0], frame[1]]),
        api_version: i16::from_be_bytes([frame[2], frame[3]]),
        correlation_id: i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
    })
}

/// Buffer for a frame before any of it has arrived.
const FRAME_START_BYTES: usize = 64 * 1024;
/// How much larger than its received bytes a frame's buffer may grow.
const FRAME_GROWTH: usize = 16;

/// The broker-wide budget of request bytes read but not yet answered
/// (`queued.max.request.bytes`). A frame is admitted before its body is read and holds its share
/// until its response is written, so when answers do not drain, reading stops on every
/// connection instead of memory growing.
#[derive(Debug, Clone)]
pub struct RequestBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// A frame's share of the [`RequestBudget`], given back when dropped.
pub type Admission = OwnedSemaphorePermit;

impl RequestBudget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Waits until `size` bytes fit. A frame larger than the whole budget waits until nothing
    /// else is in flight and then goes alone, so no frame `socket.request.max.bytes` allows is
    /// refused for it.
    pub async fn admit(&self, size: usize) -> Admission {
        let share = size.clamp(1, self.total) as u32;
        Arc::clone(&self.bytes)
            .acquire_many_owned(share)
            .await
            .expect("the budget's semaphore is never closed")
    }

    /// Bytes not lent out now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// Reads one frame. `Ok(None)` when the peer closed the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_bytes: usize,
) -> Result<Option<Bytes>, FrameError> {
    let budget = RequestBudget::new(Semaphore::MAX_PERMITS);
    Ok(read_admitted_frame(reader, max_bytes, &budget)
        .await?
        .map(|(frame, _)| frame))
}

/// Reads one frame once the budget admits it: the frame and its admission.
pub async fn read_admitted_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_bytes: usize,
    budget: &RequestBudget,
) -> Result<Option<(Bytes, Admission)>, FrameError> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FrameError::Io(e.to_string())),
    }
    let size = i32::from_be_bytes(length);
    if size < 0 || size as usize > max_bytes {
        return Err(FrameError::Size {
            size: i64::from(size),
            max: max_bytes,
        });
    }
    let expected = size as usize;
    let admission = budget.admit(expected).await;
    // Grow with what arrives rather than trusting the peer's length up front: at most sixteen
    // times what was received, in few steps, so a large frame is copied once or twice at most.
    let mut frame = BytesMut::with_capacity(expected.min(FRAME_START_BYTES));
    while frame.len() < expected {
        if frame.len() == frame.capacity() {
            let target = expected.min(frame.len() * FRAME_GROWTH);
            frame.reserve(target - frame.len());
        }
        let want = (expected - frame.len()).min(frame.capacity() - frame.len());
        let read = (&mut *reader)
            .take(want as u64)
            .read_buf(&mut frame)
            .await
            .map_err(|e| FrameError::Io(e.to_string()))?;
        if read == 0 {
            return Err(FrameError::Truncated {
                read: frame.len(),
                expected,
            });
        }
    }
    Ok(Some((frame.freeze(), admission)))
}

/// Prefixes an encoded response with its length.
pub fn length_prefixed(body: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(4 + body.len());
    out.put_i32(body.len() as i32);
    out.put_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_bounded_and_truncation_is_noticed() {
        let mut ok: &[u8] = &[0, 0, 0, 3, 1, 2, 3];
        assert_eq!(
            read_frame(&mut ok, 10).await.unwrap().unwrap().as_ref(),
            &[1, 2, 3]
        );
        assert_eq!(read_frame(&mut ok, 10).await.unwrap(), None);
        let mut big: &[u8] = &[0, 0, 0, 11];
        assert!(matches!(
            read_frame(&mut big, 10).await,
            Err(FrameError::Size { size: 11, .. })
        ));
        let mut negative: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut negative, 10).await,
            Err(FrameError::Size { size: -1, .. })
        ));
        let mut short: &[u8] = &[0, 0, 0, 5, 1];
        assert_eq!(
            read_frame(&mut short, 10).await,
            Err(FrameError::Truncated {
                read: 1,
                expected: 5
            })
        );
    }

    #[tokio::test]
    async fn the_budget_holds_frames_back_until_answers_drain() {
        let budget = RequestBudget::new(10);
        let mut two: &[u8] = &[0, 0, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0, 6, 1, 2, 3, 4, 5, 6];
        let (_, first) = read_admitted_frame(&mut two, 100, &budget)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(budget.available(), 4);
        // The second frame does not fit while the first is unanswered.
        let blocked = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            read_admitted_frame(&mut two, 100, &budget),
        )
        .await;
        assert!(blocked.is_err(), "a frame past the budget was read");
        drop(first);
        let mut again: &[u8] = &[0, 0, 0, 6, 1, 2, 3, 4, 5, 6];
        let (frame, second) = read_admitted_frame(&mut again, 100, &budget)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(frame.len(), 6);
        assert_eq!(budget.available(), 4);
        drop(second);
        // A frame larger than the whole budget goes alone.
        let mut big: &[u8] = &[
            0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let (frame, _alone) = read_admitted_frame(&mut big, 100, &budget)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((frame.len(), budget.available()), (20, 0));
    }

    #[test]
    fn prefix_needs_eight_bytes() {
        assert_eq!(parse_prefix(&[0; 7]), None);
        let p = parse_prefix(&[0, 18, 0, 3, 0, 0, 0, 9]).unwrap();
        assert_eq!((p.api_key, p.api_version, p.correlation_id), (18, 3, 9));
    }
}
