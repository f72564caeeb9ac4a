//! Responses as they go to the socket: encoded bytes, and ranges of segment files that the kernel
//! sends from the page cache with `sendfile(2)`. The records of a fetch answer are never copied
//! through the broker's memory: only the few bytes around them are encoded.
//!
//! Over TLS the kernel cannot encrypt (no kTLS here), so [`Outgoing::write_to_stream`] reads the
//! file ranges in chunks of [`TLS_FILE_CHUNK`] bytes and writes them through the TLS stream.

use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use strata_log::FileSlice;
use tokio::io::{AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Bytes below which a record payload is copied into the surrounding bytes instead of sent as a
/// part of its own (one syscall fewer).
const INLINE_BYTES_MAX: usize = 4096;

/// Largest `sendfile(2)` call: keeps each call short so other connections get their turn.
#[cfg(target_os = "linux")]
const SENDFILE_CHUNK: usize = 8 << 20;

/// The most read from a segment file at once for a TLS connection: bounds the memory each
/// connection holds while the range is encrypted (rustls cuts it into 16 KiB records).
pub(crate) const TLS_FILE_CHUNK: usize = 256 << 10;

/// One piece of a response.
#[derive(Debug)]
enum Part {
    Bytes(Bytes),
    File(FileSlice),
}

/// A whole response frame (length prefix included), ready to write.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    parts: Vec<Part>,
}

impl From<BytesMut> for Outgoing {
    fn from(bytes: BytesMut) -> Self {
        Self {
            parts: vec![Part::Bytes(bytes.freeze())],
        }
    }
}

impl Outgoing {
    /// Writes the frame. Segment ranges go with `sendfile(2)` on Linux; a file that turns out
    /// shorter than its range is an error (the frame's length is already sent, so the connection
    /// must be closed).
    pub(crate) async fn write_to(&self, stream: &TcpStream) -> io::Result<()> {
        let last = self.parts.len().saturating_sub(1);
        for (i, part) in self.parts.iter().enumerate() {
            match part {
                Part::Bytes(bytes) => send_bytes(stream, bytes, i < last).await?,
                Part::File(slice) => send_file(stream, slice).await?,
            }
        }
        Ok(())
    }

    /// Writes the frame through any stream (TLS): file ranges are read in chunks of
    /// [`TLS_FILE_CHUNK`] bytes, from the page cache as a rule, and written. Flushes at the end.
    /// A file shorter than its range is an error, as for [`Outgoing::write_to`].
    pub(crate) async fn write_to_stream<W: AsyncWrite + Unpin>(
        &self,
        stream: &mut W,
    ) -> io::Result<()> {
        let mut chunk = Vec::new();
        for part in &self.parts {
            match part {
                Part::Bytes(bytes) => stream.write_all(bytes).await?,
                Part::File(slice) => {
                    let mut position = slice.position();
                    let end = position + slice.len() as u64;
                    while position < end {
                        let count = ((end - position) as usize).min(TLS_FILE_CHUNK);
                        chunk.resize(count, 0);
                        read_range(slice, position, &mut chunk)?;
                        stream.write_all(&chunk).await?;
                        position += count as u64;
                    }
                }
            }
        }
        stream.flush().await
    }

    /// The frame as one buffer (reads the file ranges): for tests and checks.
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        for part in &self.parts {
            match part {
                Part::Bytes(bytes) => out.extend_from_slice(bytes),
                Part::File(slice) => {
                    out.extend_from_slice(&slice.read().map_err(io::Error::other)?);
                }
            }
        }
        Ok(out)
    }
}

/// Builds an [`Outgoing`] frame: encode into [`Self::buf`], add record payloads with
/// [`Self::push_bytes`] or [`Self::push_file`], then [`Self::finish`] writes the length prefix.
#[derive(Debug)]
pub(crate) struct FrameBuilder {
    /// The first bytes, which hold the length prefix until `finish` fills it in.
    head: Option<BytesMut>,
    parts: Vec<Part>,
    buf: BytesMut,
    len: usize,
}

impl FrameBuilder {
    pub(crate) fn new() -> Self {
        let mut buf = BytesMut::with_capacity(1024);
        buf.put_i32(0);
        Self {
            head: None,
            parts: Vec::new(),
            buf,
            len: 0,
        }
    }

    /// Where encoded bytes go.
    pub(crate) fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Adds bytes held elsewhere (a lake chunk), without a copy unless they are small.
    pub(crate) fn push_bytes(&mut self, bytes: Bytes) {
        if bytes.len() <= INLINE_BYTES_MAX {
            self.buf.extend_from_slice(&bytes);
        } else {
            self.cut();
            self.len += bytes.len();
            self.parts.push(Part::Bytes(bytes));
        }
    }

    /// Adds a range of a segment file, sent by the kernel.
    pub(crate) fn push_file(&mut self, slice: FileSlice) {
        if slice.is_empty() {
            return;
        }
        self.cut();
        self.len += slice.len();
        self.parts.push(Part::File(slice));
    }

    /// Ends the bytes being encoded as a part of their own.
    fn cut(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let chunk = self.buf.split();
        self.len += chunk.len();
        match self.head {
            None => self.head = Some(chunk),
            Some(_) => self.parts.push(Part::Bytes(chunk.freeze())),
        }
    }

    /// The frame, its length prefix filled in. Fails when it would exceed a frame's i32 length.
    pub(crate) fn finish(mut self) -> Result<Outgoing, String> {
        self.cut();
        let mut head = self
            .head
            .take()
            .expect("the length prefix is always encoded");
        let length = i32::try_from(self.len - 4)
            .map_err(|_| format!("a response of {} bytes is too large to frame", self.len))?;
        head[..4].copy_from_slice(&length.to_be_bytes());
        let mut parts = Vec::with_capacity(self.parts.len() + 1);
        parts.push(Part::Bytes(head.freeze()));
        parts.append(&mut self.parts);
        Ok(Outgoing { parts })
    }
}

/// Reads `buf.len()` bytes of `slice`'s file at `position`.
fn read_range(slice: &FileSlice, position: u64, buf: &mut [u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    slice.file().read_exact_at(buf, position).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "{} at byte {position} of a fetch answer: {e}",
                slice.path().display()
            ),
        )
    })
}

/// Writes all of `bytes`; with `more`, tells the kernel more follows (`MSG_MORE`), so the small
/// pieces between record ranges share packets with them instead of going out alone.
async fn send_bytes(stream: &TcpStream, mut bytes: &[u8], more: bool) -> io::Result<()> {
    let flags = send_flags(more);
    while !bytes.is_empty() {
        let sent = stream
            .async_io(Interest::WRITABLE, || {
                rustix::net::send(stream, bytes, flags).map_err(io::Error::from)
            })
            .await?;
        if sent == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[sent..];
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn send_flags(more: bool) -> rustix::net::SendFlags {
    use rustix::net::SendFlags;
    if more {
        SendFlags::NOSIGNAL | SendFlags::MORE
    } else {
        SendFlags::NOSIGNAL
    }
}

#[cfg(not(target_os = "linux"))]
fn send_flags(_more: bool) -> rustix::net::SendFlags {
    rustix::net::SendFlags::empty()
}

/// Sends a segment range from the page cache with `sendfile(2)`.
#[cfg(target_os = "linux")]
async fn send_file(stream: &TcpStream, slice: &FileSlice) -> io::Result<()> {
    let mut position = slice.position();
    let end = position + slice.len() as u64;
    while position < end {
        let count = ((end - position) as usize).min(SENDFILE_CHUNK);
        let sent = stream
            .async_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(stream, slice.file(), Some(&mut position), count)
                    .map_err(io::Error::from)
            })
            .await?;
        if sent == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} ends before byte {end} of a fetch answer",
                    slice.path().display()
                ),
            ));
        }
    }
    Ok(())
}

/// Elsewhere: reads the range and writes it.
#[cfg(not(target_os = "linux"))]
async fn send_file(stream: &TcpStream, slice: &FileSlice) -> io::Result<()> {
    let bytes = slice.read().map_err(io::Error::other)?;
    send_bytes(stream, &bytes, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_payloads_are_inlined_and_the_prefix_counts_every_part() {
        let mut frame = FrameBuilder::new();
        frame.buf().put_i32(7);
        frame.push_bytes(Bytes::from_static(b"abc"));
        frame.push_bytes(Bytes::from(vec![9u8; INLINE_BYTES_MAX + 1]));
        frame.buf().put_u8(1);
        let out = frame.finish().unwrap();
        assert_eq!(out.parts.len(), 3, "head, large payload, tail");
        let bytes = out.to_vec().unwrap();
        assert_eq!(bytes.len(), 4 + 4 + 3 + INLINE_BYTES_MAX + 1 + 1);
        assert_eq!(
            i32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize,
            bytes.len() - 4
        );
        assert_eq!(&bytes[4..11], &[0, 0, 0, 7, b'a', b'b', b'c']);
        assert_eq!(bytes[bytes.len() - 1], 1);
    }
}
