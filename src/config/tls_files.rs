//! `amqp.tls_ca_file`: checked at load, so a wrong path or a file that is
//! not a CA certificate stops the daemon before it connects anywhere, with
//! the key and the path in the message.

use rustls::pki_types::{pem::PemObject, CertificateDer};

use super::{AmqpSettings, ConfigError};

const KEY: &str = "amqp.tls_ca_file";

pub(super) fn check(amqp: &AmqpSettings) -> Result<(), ConfigError> {
    let path = &amqp.tls_ca_file;
    if path.is_empty() {
        return Ok(());
    }
    let invalid = |problem: String| ConfigError::Invalid {
        key: KEY,
        message: format!("{path}: {problem}"),
    };
    // A CA for brokers it would never be used with is a config that does
    // not do what its author thinks.
    if !amqp
        .urls()
        .iter()
        .any(|u| u.expose().trim_start().starts_with("amqps://"))
    {
        return Err(invalid("set, but no broker in amqp.url is amqps://".into()));
    }
    let pem = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    ca_certificates(&pem).map(|_| ()).map_err(invalid)
}

/// The CA certificates of a PEM file's text, or why there are none.
pub fn ca_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM file ({e})"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(certs.iter().cloned());
    if added == 0 {
        return Err("holds no certificate usable as a CA".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::config::{Secret, Settings};

    fn amqps(ca_file: &str) -> AmqpSettings {
        let mut amqp = Settings::default().amqp;
        amqp.url = Secret("amqp://g:g@h1:5672/%2f,amqps://g:g@h2/%2f".into());
        amqp.tls_ca_file = ca_file.into();
        amqp
    }

    #[test]
    fn a_bad_ca_file_names_key_and_path() {
        let e = check(&amqps("/nonexistent/ca.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(KEY) && e.contains("/nonexistent/ca.pem"), "{e}");
        let mut empty = tempfile::NamedTempFile::new().unwrap();
        empty.write_all(b"no certificate here\n").unwrap();
        let path = empty.path().to_string_lossy().into_owned();
        let e = check(&amqps(&path)).unwrap_err().to_string();
        assert!(e.contains(&path) && e.contains("no PEM certificate"), "{e}");
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(ca_certificates(garbage).is_err());
        check(&amqps("")).unwrap();
    }

    #[test]
    fn a_ca_file_without_an_amqps_broker_is_refused() {
        let mut amqp = amqps("/some/ca.pem");
        amqp.url = Secret("amqp://g:g@h1:5672/%2f".into());
        let e = check(&amqp).unwrap_err().to_string();
        assert!(e.contains("no broker in amqp.url is amqps://"), "{e}");
    }
}
