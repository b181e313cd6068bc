//! AMQP 0-9-1 frames off the wire (type, channel, size, payload, end
//! octet); method payloads are decoded by amq-protocol.

use amq_protocol::protocol::{parse_class, AMQPClass};
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use super::LinkError;

const METHOD: u8 = 1;
const HEADER: u8 = 2;
const BODY: u8 = 3;
const HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Frame header (7 octets) and end octet around a payload.
pub const OVERHEAD: usize = 8;

/// What the publisher reads: methods decoded; content (only after a
/// `basic.return`, which it never asks for) and heartbeats just noted.
#[derive(Debug)]
pub enum Incoming {
    Method(u16, AMQPClass),
    Content,
    Heartbeat,
}

/// Bytes read and not yet framed.
pub struct Reader {
    buf: Vec<u8>,
    start: usize,
    last_read: Instant,
}

impl Default for Reader {
    fn default() -> Self {
        Reader {
            buf: Vec::with_capacity(16 * 1024),
            start: 0,
            last_read: Instant::now(),
        }
    }
}

impl Reader {
    pub fn last_read(&self) -> Instant {
        self.last_read
    }

    /// Reads what the socket has, waiting for at least one byte; 0 at EOF.
    pub async fn fill(&mut self, stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<usize> {
        self.compact();
        let n = stream.read_buf(&mut self.buf).await?;
        if n > 0 {
            self.last_read = Instant::now();
        }
        Ok(n)
    }

    /// Reads what the socket has without waiting: whether anything came.
    /// EOF is an error here, as the link is expected to stay open. One
    /// poll of the read, which for TLS may also be a record still in
    /// rustls's buffer; a read not ready loses nothing (read_buf is
    /// cancellation safe).
    pub fn fill_ready(&mut self, stream: &mut (impl AsyncRead + Unpin)) -> Result<bool, LinkError> {
        self.compact();
        match stream.read_buf(&mut self.buf).now_or_never() {
            Some(Ok(0)) => Err(LinkError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Some(Ok(_)) => {
                self.last_read = Instant::now();
                Ok(true)
            }
            None => Ok(false),
            Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Some(Err(e)) => Err(e.into()),
        }
    }

    /// The next whole frame among the bytes read, if there is one.
    pub fn frame(&mut self) -> Result<Option<Incoming>, LinkError> {
        let pending = &self.buf[self.start..];
        let Some(&[kind, c0, c1, s0, s1, s2, s3]) = pending.get(..7) else {
            return Ok(None);
        };
        let size = u32::from_be_bytes([s0, s1, s2, s3]) as usize;
        let Some(frame) = pending.get(..7 + size + 1) else {
            return Ok(None);
        };
        if frame[7 + size] != FRAME_END {
            return Err(LinkError::Protocol("frame without its end octet".into()));
        }
        let channel = u16::from_be_bytes([c0, c1]);
        let incoming = match kind {
            METHOD => match parse_class(&frame[7..7 + size]) {
                Ok((_, class)) => Incoming::Method(channel, class),
                Err(e) => return Err(LinkError::Protocol(format!("undecodable method: {e:?}"))),
            },
            HEADER | BODY => Incoming::Content,
            HEARTBEAT => Incoming::Heartbeat,
            other => return Err(LinkError::Protocol(format!("unknown frame type {other}"))),
        };
        self.start += 7 + size + 1;
        Ok(Some(incoming))
    }

    /// Drops the bytes already framed, so the buffer does not grow.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// Appends a body frame carrying `part`.
pub fn put_body(out: &mut Vec<u8>, channel: u16, part: &[u8]) {
    out.push(BODY);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    out.extend_from_slice(part);
    out.push(FRAME_END);
}

#[cfg(test)]
impl Reader {
    pub fn extend_for_test(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
}
