//! TLS to PostgreSQL: sqlx reads `sslmode` and `sslrootcert` from the URL
//! and does the handshake; this module turns what goes wrong there into
//! one line an operator can act on.

use std::path::Path;

use sqlx::postgres::PgSslMode;

/// Makes aws-lc-rs the process's rustls crypto provider. sqlx picks its
/// provider explicitly, except for `verify-ca`, whose verifier asks rustls
/// for the process default; with both ring (reqwest's) and aws-lc-rs
/// compiled into rustls there is none, and rustls panics. Idempotent; a
/// provider someone installed first stays.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// Why the TLS part of a connection failed, if it did. sqlx reports a
/// refused upgrade as `Error::Tls` but a failed handshake as an I/O error
/// carrying the rustls error, which would otherwise read as "unreachable".
pub(super) fn failure(e: &sqlx::Error, host: &str, mode: PgSslMode) -> Option<String> {
    match e {
        sqlx::Error::Tls(inner) => Some(match inner.to_string().as_str() {
            "server does not support TLS" => {
                "the server does not support TLS, which sslmode requires".to_string()
            }
            other => other.to_string(),
        }),
        sqlx::Error::Io(io) => {
            let rustls = io.get_ref()?.downcast_ref::<rustls::Error>()?;
            Some(rustls_reason(rustls, host, mode))
        }
        _ => None,
    }
}

fn rustls_reason(e: &rustls::Error, host: &str, mode: PgSslMode) -> String {
    use rustls::CertificateError as C;
    match e {
        // sqlx 0.8.6 skips the name check for verify-ca only for rustls's
        // old error variant, not the one rustls 0.23.24+ returns
        // (transact-rs/sqlx#3793, fixed after 0.8.6): verify-ca then is
        // verify-full. Stricter, not weaker, but it must be said.
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. })
            if matches!(mode, PgSslMode::VerifyCa) =>
        {
            format!("the server's certificate is not valid for the host name {host}, and sqlx 0.8.6 checks the name under sslmode=verify-ca too (transact-rs/sqlx#3793); connect by the name the certificate was issued for")
        }
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            format!("the server's certificate is not valid for the host name {host} (sslmode=verify-full checks it; use the name the certificate was issued for)")
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "the server's certificate is signed by an unknown CA (give the CA's file as sslrootcert)".to_string()
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the server's certificate has expired".to_string()
        }
        other => other.to_string(),
    }
}

/// sqlx reads `sslrootcert` only during the handshake, and a missing file
/// then surfaces as an I/O error like a refused connection. Checked up
/// front, it is said as what it is.
pub(super) fn check_root_cert(url: &str) -> Result<(), String> {
    let Ok(parsed) = url::Url::parse(url) else {
        // sqlx's own parser reports a malformed URL.
        return Ok(());
    };
    let Some((_, path)) = parsed
        .query_pairs()
        .find(|(k, _)| matches!(k.as_ref(), "sslrootcert" | "ssl-root-cert" | "ssl-ca"))
    else {
        return Ok(());
    };
    match std::fs::metadata(Path::new(path.as_ref())) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("sslrootcert {path} is not a file")),
        Err(e) => Err(format!("sslrootcert {path}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_root_cert_is_named() {
        let e = check_root_cert(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        )
        .unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        assert!(check_root_cert("postgres://u@h/db?sslmode=require").is_ok());
        assert!(check_root_cert("postgres://u@h/db?sslrootcert=/").is_err());
    }

    #[test]
    fn a_refused_upgrade_says_so() {
        let e = sqlx::Error::Tls("server does not support TLS".into());
        let reason = failure(&e, "db.example", PgSslMode::Require).unwrap();
        assert!(reason.contains("does not support TLS"), "{reason}");
        let io = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert!(failure(&io, "h", PgSslMode::VerifyFull)
            .unwrap()
            .contains("unknown CA"));
        let refused = sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert!(failure(&refused, "h", PgSslMode::VerifyFull).is_none());
    }
}
