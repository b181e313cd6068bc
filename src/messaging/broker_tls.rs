//! TLS to RabbitMQ (`amqps://`): one trust setting for every broker
//! connection, lapin's (consumers, dlq, demo) and the relay's own link,
//! and the one line an operator reads when the handshake fails.
//!
//! Trusted: webpki-roots (Mozilla's list, compiled in), plus the CA of
//! `amqp.tls_ca_file`. webpki-roots rather than the system store because
//! sqlx (database TLS) and reqwest (gateways) already trust exactly those,
//! so the process has one root set, and a slim container without
//! /etc/ssl/certs verifies the same way as a full host. The host name of
//! the URL is always checked against the certificate.

use std::sync::Arc;
use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::broker_error::{self, ConnectError};
use crate::config::{AmqpSettings, Secret};

/// What a broker connection trusts besides webpki-roots.
#[derive(Clone, Default)]
pub struct BrokerTls {
    /// The PEM text of `amqp.tls_ca_file`, as lapin takes it.
    ca_pem: Option<String>,
    ca: Vec<CertificateDer<'static>>,
}

impl BrokerTls {
    /// Reads `amqp.tls_ca_file` (checked at load already; read again here
    /// so a file replaced since is what counts).
    pub fn from_settings(amqp: &AmqpSettings) -> Result<BrokerTls, ConnectError> {
        if amqp.tls_ca_file.is_empty() {
            return Ok(BrokerTls::default());
        }
        let ca_file = |reason: String| ConnectError::CaFile {
            path: amqp.tls_ca_file.clone(),
            reason,
        };
        let pem = std::fs::read_to_string(&amqp.tls_ca_file).map_err(|e| ca_file(e.to_string()))?;
        let ca = crate::config::ca_certificates(&pem).map_err(ca_file)?;
        Ok(BrokerTls {
            ca_pem: Some(pem),
            ca,
        })
    }

    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        roots.add_parsable_certificates(self.ca.iter().cloned());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// A lapin connection to `url`, over TLS for `amqps://`.
    pub async fn open(
        &self,
        url: &Secret,
        props: ConnectionProperties,
    ) -> Result<Connection, ConnectError> {
        let uri = broker_error::parse_url(url.expose())?;
        self.open_uri(uri, props).await
    }

    pub async fn open_uri(
        &self,
        uri: AMQPUri,
        props: ConnectionProperties,
    ) -> Result<Connection, ConnectError> {
        crate::store::install_crypto_provider();
        let config = OwnedTLSConfig {
            identity: None,
            cert_chain: self.ca_pem.clone(),
        };
        let described = |e: &lapin::Error| broker_error::describe(&uri, e);
        let runtime = lapin::runtime::default_runtime().map_err(|e| described(&e))?;
        Connection::connect_uri_with_config(uri.clone(), props, config, runtime)
            .await
            .map_err(|e| described(&e))
    }

    /// The TLS session on `tcp` for the relay's link to `host`.
    pub async fn wrap(
        &self,
        tcp: TcpStream,
        addr: &str,
        host: &str,
    ) -> Result<TlsStream<TcpStream>, ConnectError> {
        let failed = |reason: String| ConnectError::Tls {
            addr: addr.to_string(),
            reason,
        };
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| failed(format!("{host} is not a host name ({e})")))?;
        let config = self.client_config().map_err(|e| failed(e.to_string()))?;
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| failed(handshake_reason(&e, host).unwrap_or_else(|| e.to_string())))
    }
}

/// Why a TLS handshake failed, if `e` is a TLS failure rather than a
/// connection that could not be made at all.
pub fn handshake_reason(e: &std::io::Error, host: &str) -> Option<String> {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return Some(rustls_reason(tls, host));
    }
    // The server hung up on our ClientHello: what a plain AMQP listener
    // does after answering it with its protocol header.
    (e.kind() == std::io::ErrorKind::UnexpectedEof).then(|| PLAIN_PORT.to_string())
}

const PLAIN_PORT: &str =
    "the server does not speak TLS there (a plain amqp:// port? amqps:// is 5671 by default)";

fn rustls_reason(e: &rustls::Error, host: &str) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            format!("the broker's certificate is not valid for the host name {host} (use the name the certificate was issued for)")
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "the broker's certificate is signed by an unknown CA (give the CA's file as amqp.tls_ca_file)".into()
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the broker's certificate has expired".into()
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            PLAIN_PORT.into()
        }
        other => other.to_string(),
    }
}

/// How long the start-up check waits for one broker's handshake.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The start-up check: the first `amqps://` broker that answers must pass
/// the handshake. A certificate does not heal by waiting, so the daemon
/// stops with the reason, as it does for TLS to PostgreSQL; a broker that
/// does not answer is the supervisor's to wait for.
pub async fn check_brokers(amqp: &AmqpSettings) -> Result<(), ConnectError> {
    let tls = BrokerTls::from_settings(amqp)?;
    for url in amqp.urls() {
        let uri = broker_error::parse_url(url.expose())?;
        if uri.scheme != AMQPScheme::AMQPS {
            continue;
        }
        let (host, port) = (uri.authority.host.as_str(), uri.authority.port);
        let addr = broker_error::address(&uri);
        let Ok(Ok(tcp)) =
            tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect((host, port))).await
        else {
            continue;
        };
        match tokio::time::timeout(PROBE_TIMEOUT, tls.wrap(tcp, &addr, host)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(ConnectError::Tls {
                    addr,
                    reason: format!("no TLS handshake within {PROBE_TIMEOUT:?}"),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_what_to_fix() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let unknown = io(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert!(handshake_reason(&unknown, "h")
            .unwrap()
            .contains("amqp.tls_ca_file"));
        let name = io(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName,
        ));
        assert!(handshake_reason(&name, "mq.example")
            .unwrap()
            .contains("host name mq.example"));
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert!(handshake_reason(&eof, "h")
            .unwrap()
            .contains("plain amqp://"));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(handshake_reason(&refused, "h").is_none());
    }
}
