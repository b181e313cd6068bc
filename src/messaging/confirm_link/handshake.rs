//! Opening the link: protocol header, PLAIN credentials, tuning, one
//! channel in confirm mode.

use amq_protocol::frame::{AMQPFrame, ProtocolVersion};
use amq_protocol::protocol::{channel, confirm, connection, AMQPClass};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::uri::AMQPUri;
use std::time::Duration;

use super::frames::Incoming;
use super::{ConfirmLink, LinkError, CHANNEL, FRAME_MAX, HANDSHAKE_TIMEOUT};

impl ConfirmLink {
    pub(super) async fn handshake(&mut self, uri: &AMQPUri, name: &str) -> Result<(), LinkError> {
        self.push(&AMQPFrame::ProtocolHeader(ProtocolVersion::amqp_0_9_1()))?;
        self.flush().await?;
        self.expect(0, |c| {
            matches!(c, AMQPClass::Connection(connection::AMQPMethod::Start(_)))
        })
        .await?;
        let user = &uri.authority.userinfo;
        let start_ok = connection::StartOk {
            client_properties: client_properties(name),
            mechanism: "PLAIN".into(),
            response: format!("\0{}\0{}", user.username, user.password).into(),
            locale: "en_US".into(),
        };
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)),
        )?;
        self.flush().await?;
        let tune = match self.next_frame(HANDSHAKE_TIMEOUT).await? {
            Incoming::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => t,
            other => {
                return Err(LinkError::Protocol(format!(
                    "expected connection.tune, got {other:?}"
                )))
            }
        };
        self.frame_max = negotiate(tune.frame_max, FRAME_MAX).max(4096);
        let heartbeat = uri.query.heartbeat.unwrap_or(tune.heartbeat);
        self.heartbeat = (heartbeat > 0).then(|| Duration::from_secs(heartbeat.into()));
        let tune_ok = connection::TuneOk {
            channel_max: negotiate(tune.channel_max.into(), 1) as u16,
            frame_max: self.frame_max,
            heartbeat,
        };
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
        )?;
        let open = connection::Open {
            virtual_host: uri.vhost.as_str().into(),
        };
        self.method(0, AMQPClass::Connection(connection::AMQPMethod::Open(open)))?;
        self.flush().await?;
        self.expect(0, |c| {
            matches!(c, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))
        })
        .await?;
        self.method(
            CHANNEL,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )?;
        self.flush().await?;
        self.expect(CHANNEL, |c| {
            matches!(c, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)))
        })
        .await?;
        let select = confirm::Select { nowait: false };
        self.method(
            CHANNEL,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(select)),
        )?;
        self.flush().await?;
        self.expect(CHANNEL, |c| {
            matches!(c, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)))
        })
        .await?;
        Ok(())
    }
}

/// The lower of two limits where 0 means "none".
pub(super) fn negotiate(theirs: u32, ours: u32) -> u32 {
    match (theirs, ours) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

fn client_properties(name: &str) -> FieldTable {
    let mut capabilities = FieldTable::default();
    // authentication_failure_close: a wrong password is a close with its
    // reason, not a bare EOF.
    for c in [
        "publisher_confirms",
        "connection.blocked",
        "basic.nack",
        "authentication_failure_close",
    ] {
        capabilities.insert(c.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert(
        "product".into(),
        AMQPValue::LongString(LongString::from("payrecon")),
    );
    props.insert(
        "connection_name".into(),
        AMQPValue::LongString(LongString::from(name)),
    );
    props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    props
}
