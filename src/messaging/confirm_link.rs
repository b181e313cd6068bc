//! A broker connection that only publishes with confirms: the relay's.
//!
//! lapin hands every publish to an I/O thread of its own and resolves a
//! promise per confirm; measured in the throughput bench, that cost the
//! daemon about 19 µs of CPU per event, as much as consuming and acking a
//! request. Here a window of events is framed into one buffer, written with
//! one call, and its confirms are read on the same task: no thread hand-off
//! and no promise per message. Consuming, acks and
//! the other publishes stay on lapin; this side speaks the little of AMQP
//! 0-9-1 a confirming publisher needs (handshake, one channel,
//! `confirm.select`, `basic.publish`, `basic.ack`/`nack`, heartbeats, the
//! broker's closes and flow blocks), with amq-protocol's codec.

use std::time::Duration;

use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use lapin::types::ShortString;
use lapin::uri::{AMQPScheme, AMQPUri};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::broker_error::{self, ConnectError};
use super::broker_tls::BrokerTls;
use super::publisher::Outgoing;

mod frames;
mod handshake;
mod stream;
mod window;
use frames::{Incoming, Reader};
use stream::LinkStream;
use window::Window;

/// How long the broker may stay silent while confirms are awaited (unless it
/// said it blocks publishers) before the link is given up as dead.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CHANNEL: u16 = 1;
/// Our side of the frame size negotiation (RabbitMQ's default too).
const FRAME_MAX: u32 = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("broker I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("broker URL: {0}")]
    Url(String),
    #[error("broker protocol: {0}")]
    Protocol(String),
    #[error("broker closed the {what}: {code} {text}")]
    Closed {
        what: &'static str,
        code: u16,
        text: String,
    },
    #[error("broker silent for {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

pub struct ConfirmLink {
    stream: LinkStream,
    reader: Reader,
    out: Vec<u8>,
    frame_max: u32,
    /// Negotiated heartbeat interval; None if either side disabled it.
    heartbeat: Option<Duration>,
    last_write: Instant,
    /// The delivery tag the next publish gets (confirm mode counts from 1).
    next_tag: u64,
    /// The broker said `connection.blocked` (a resource alarm): it stops
    /// reading our publishes until `unblocked`, which is no reason to give up.
    blocked: bool,
}

impl ConfirmLink {
    /// Opens the connection (named `name` in the broker's listings), one
    /// channel, and puts it in confirm mode; `amqps://` trusting the
    /// public roots (webpki-roots) only.
    pub async fn connect(url: &str, name: &str) -> Result<ConfirmLink, LinkError> {
        ConfirmLink::connect_with(url, name, &BrokerTls::default()).await
    }

    /// As `connect`, trusting what `tls` trusts for `amqps://`.
    pub async fn connect_with(
        url: &str,
        name: &str,
        tls: &BrokerTls,
    ) -> Result<ConfirmLink, LinkError> {
        // Not the parser's message: it quotes the URL, password included.
        let uri: AMQPUri = url
            .parse()
            .map_err(|_| LinkError::Url("amqp.url is not a valid AMQP URL".into()))?;
        let addr = (uri.authority.host.as_str(), uri.authority.port);
        let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| LinkError::Timeout(HANDSHAKE_TIMEOUT))??;
        tcp.set_nodelay(true)?;
        let stream = match uri.scheme {
            AMQPScheme::AMQP => LinkStream::Plain(tcp),
            AMQPScheme::AMQPS => {
                let at = broker_error::address(&uri);
                let wrap = tls.wrap(tcp, &at, addr.0);
                let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, wrap)
                    .await
                    .map_err(|_| LinkError::Timeout(HANDSHAKE_TIMEOUT))??;
                LinkStream::Tls(Box::new(tls))
            }
        };
        let mut link = ConfirmLink {
            stream,
            reader: Reader::default(),
            out: Vec::with_capacity(64 * 1024),
            frame_max: FRAME_MAX,
            heartbeat: None,
            last_write: Instant::now(),
            next_tag: 1,
            blocked: false,
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, link.handshake(&uri, name))
            .await
            .map_err(|_| LinkError::Timeout(HANDSHAKE_TIMEOUT))??;
        Ok(link)
    }

    /// Publishes every message with one write and waits until the broker
    /// confirmed each: true where it acked, false where it nacked, in the
    /// messages' order. Taken by value: each message's properties move into
    /// its header frame instead of being copied.
    pub async fn publish_all(
        &mut self,
        messages: Vec<Outgoing<'_>>,
    ) -> Result<Vec<bool>, LinkError> {
        let first = self.next_tag;
        let count = messages.len();
        let framed = self.out.len();
        for m in messages {
            if let Err(e) = self.push_publish(m) {
                // Nothing of the window goes out: the tags stay in step.
                self.out.truncate(framed);
                return Err(e);
            }
        }
        self.next_tag += count as u64;
        self.flush().await?;
        let mut window = Window::new(first, count);
        while !window.settled() {
            match self.next_frame(CONFIRM_TIMEOUT).await? {
                Incoming::Method(CHANNEL, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => {
                    window.settle(a.delivery_tag, a.multiple, true)
                }
                Incoming::Method(CHANNEL, AMQPClass::Basic(basic::AMQPMethod::Nack(n))) => {
                    window.settle(n.delivery_tag, n.multiple, false)
                }
                _ => {}
            }
        }
        Ok(window.into_outcomes())
    }

    /// Keeps an idle link alive, to be called at least every few seconds:
    /// sends a heartbeat when nothing was written for half the interval, and
    /// reads what the broker sent meanwhile (its heartbeats, or its close of
    /// the connection, which then ends the link here rather than at the next
    /// publish).
    pub async fn keep_alive(&mut self) -> Result<(), LinkError> {
        if let Some(interval) = self.heartbeat {
            if self.last_write.elapsed() >= interval / 2 {
                self.push(&AMQPFrame::Heartbeat)?;
                self.flush().await?;
            }
            if self.reader.last_read().elapsed() > interval * 2 && !self.blocked {
                return Err(LinkError::Timeout(interval * 2));
            }
        }
        while self.reader.fill_ready(&mut self.stream)? {
            while let Some(frame) = self.reader.frame()? {
                self.handle_control(frame).await?;
            }
        }
        Ok(())
    }

    /// Closes the connection politely; errors are moot at that point.
    pub async fn close(mut self) {
        let close = connection::Close {
            reply_code: 200,
            reply_text: "shutting down".into(),
            class_id: 0,
            method_id: 0,
        };
        if self
            .method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Close(close)),
            )
            .is_ok()
            && self.flush().await.is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    match self.next_frame(Duration::from_secs(2)).await {
                        Ok(Incoming::Method(
                            0,
                            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)),
                        ))
                        | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        let _ = self.stream.shutdown().await;
    }

    /// The next frame the publisher has to look at. Heartbeats, flow blocks
    /// and closes are dealt with here; a close ends the link with an error.
    async fn next_frame(&mut self, silence: Duration) -> Result<Incoming, LinkError> {
        loop {
            while let Some(frame) = self.reader.frame()? {
                if let Some(frame) = self.handle_control(frame).await? {
                    return Ok(frame);
                }
            }
            let read = self.reader.fill(&mut self.stream);
            let n = if self.blocked {
                read.await?
            } else {
                tokio::time::timeout(silence, read)
                    .await
                    .map_err(|_| LinkError::Timeout(silence))??
            };
            if n == 0 {
                return Err(LinkError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Answers what needs no caller: None once handled, the frame otherwise.
    async fn handle_control(&mut self, frame: Incoming) -> Result<Option<Incoming>, LinkError> {
        use connection::AMQPMethod as C;
        match frame {
            Incoming::Heartbeat | Incoming::Content => Ok(None),
            Incoming::Method(0, AMQPClass::Connection(C::Blocked(b))) => {
                tracing::warn!(reason = %b.reason, "broker blocks publishers (resource alarm)");
                self.blocked = true;
                Ok(None)
            }
            Incoming::Method(0, AMQPClass::Connection(C::Unblocked(_))) => {
                tracing::info!("broker unblocked publishers");
                self.blocked = false;
                Ok(None)
            }
            Incoming::Method(0, AMQPClass::Connection(C::Close(c))) => {
                let ok = AMQPClass::Connection(C::CloseOk(connection::CloseOk {}));
                if self.method(0, ok).is_ok() {
                    let _ = self.flush().await;
                }
                Err(LinkError::Closed {
                    what: "connection",
                    code: c.reply_code,
                    text: c.reply_text.to_string(),
                })
            }
            Incoming::Method(ch, AMQPClass::Channel(channel::AMQPMethod::Close(c))) => {
                let ok = AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}));
                if self.method(ch, ok).is_ok() {
                    let _ = self.flush().await;
                }
                Err(LinkError::Closed {
                    what: "channel",
                    code: c.reply_code,
                    text: c.reply_text.to_string(),
                })
            }
            other => Ok(Some(other)),
        }
    }

    /// Reads until the awaited method arrives on `channel`.
    async fn expect(
        &mut self,
        channel: u16,
        wanted: impl Fn(&AMQPClass) -> bool,
    ) -> Result<AMQPClass, LinkError> {
        loop {
            match self.next_frame(HANDSHAKE_TIMEOUT).await? {
                Incoming::Method(ch, class) if ch == channel && wanted(&class) => return Ok(class),
                Incoming::Method(ch, class) => {
                    return Err(LinkError::Protocol(format!(
                        "unexpected {class:?} on channel {ch} during the handshake"
                    )))
                }
                _ => {}
            }
        }
    }

    fn push_publish(&mut self, m: Outgoing<'_>) -> Result<(), LinkError> {
        let publish = basic::Publish {
            exchange: short(m.exchange)?,
            routing_key: short(m.routing_key)?,
            mandatory: false,
            immediate: false,
        };
        self.method(
            CHANNEL,
            AMQPClass::Basic(basic::AMQPMethod::Publish(publish)),
        )?;
        let header = AMQPContentHeader {
            class_id: 60,
            body_size: m.body.len() as u64,
            properties: m.properties,
        };
        self.push(&AMQPFrame::Header(CHANNEL, header))?;
        // Body frames are written by hand: framing them through AMQPFrame
        // would copy each body into a Vec first.
        let max = self.frame_max as usize - frames::OVERHEAD;
        for part in m.body.chunks(max) {
            frames::put_body(&mut self.out, CHANNEL, part);
        }
        Ok(())
    }

    fn method(&mut self, channel: u16, class: AMQPClass) -> Result<(), LinkError> {
        self.push(&AMQPFrame::Method(channel, class))
    }

    fn push(&mut self, frame: &AMQPFrame) -> Result<(), LinkError> {
        let out = std::mem::take(&mut self.out);
        self.out = cookie_factory::gen_simple(gen_frame(frame), out)
            .map_err(|e| LinkError::Protocol(format!("cannot frame {frame:?}: {e:?}")))?;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), LinkError> {
        self.stream.write_all(&self.out).await?;
        // rustls may keep records it could not write yet (no-op for TCP).
        self.stream.flush().await?;
        self.out.clear();
        self.last_write = Instant::now();
        Ok(())
    }
}

fn short(s: &str) -> Result<ShortString, LinkError> {
    if s.len() > 255 {
        return Err(LinkError::Protocol(format!("name over 255 bytes: {s}")));
    }
    Ok(s.into())
}

#[cfg(test)]
mod tests;
