//! Why the broker could not be reached, said so that ops know what to fix:
//! which address, which user, and never the password (lapin's own URL
//! parse error quotes the whole URL, password included).

use lapin::uri::{AMQPScheme, AMQPUri};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("amqp.url is not a valid AMQP URL (amqp[s]://user:password@host:port/vhost)")]
    Url,
    #[error("RabbitMQ at {addr} refused the login of user {user}: wrong user or password")]
    LoginRefused { addr: String, user: String },
    #[error(
        "RabbitMQ is not reachable at {addr} ({reason}); check amqp.url and that the broker runs"
    )]
    Unreachable { addr: String, reason: String },
    #[error("RabbitMQ at {addr} refused the connection of user {user}: {reason}")]
    Refused {
        addr: String,
        user: String,
        reason: String,
    },
    #[error("TLS to RabbitMQ at {addr} failed: {reason}; check amqp.url and amqp.tls_ca_file")]
    Tls { addr: String, reason: String },
    #[error("amqp.tls_ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
}

impl ConnectError {
    /// A certificate or a server without TLS does not heal by waiting.
    pub fn is_tls(&self) -> bool {
        matches!(self, ConnectError::Tls { .. } | ConnectError::CaFile { .. })
    }
}

/// Parses `amqp.url` without echoing it in the error.
pub fn parse_url(url: &str) -> Result<AMQPUri, ConnectError> {
    url.parse().map_err(|_| ConnectError::Url)
}

pub fn address(uri: &AMQPUri) -> String {
    format!("{}:{}", uri.authority.host, uri.authority.port)
}

/// Names what failed in a connection attempt to `uri`.
pub fn describe(uri: &AMQPUri, e: &lapin::Error) -> ConnectError {
    let addr = address(uri);
    let user = uri.authority.userinfo.username.clone();
    match e.kind() {
        lapin::ErrorKind::IOError(io) if uri.scheme == AMQPScheme::AMQPS => {
            match super::broker_tls::handshake_reason(io, &uri.authority.host) {
                Some(reason) => ConnectError::Tls { addr, reason },
                None => ConnectError::Unreachable {
                    addr,
                    reason: io.to_string(),
                },
            }
        }
        lapin::ErrorKind::IOError(io) => ConnectError::Unreachable {
            addr,
            reason: io.to_string(),
        },
        // 403 ACCESS_REFUSED: the broker closes a connection whose login
        // failed with it (lapin asks for `authentication_failure_close`).
        lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 403 => {
            ConnectError::LoginRefused { addr, user }
        }
        lapin::ErrorKind::ProtocolError(amqp) => ConnectError::Refused {
            addr,
            user,
            reason: amqp.get_message().to_string(),
        },
        _ => ConnectError::Refused {
            addr,
            user,
            reason: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_is_not_quoted() {
        let e = parse_url("amqp:guest:hunter2-secret@localhost").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn the_address_has_host_and_port() {
        let uri = parse_url("amqp://bob:pw@127.0.0.1:5673/%2f").unwrap();
        assert_eq!(address(&uri), "127.0.0.1:5673");
        assert_eq!(uri.authority.userinfo.username, "bob");
    }
}
