//! WeChat Pay API v3 signatures (docs/gateways.md A1, A2): the merchant's
//! `Authorization` on requests, and the platform's `Wechatpay-*` signature on
//! responses and notifications. Pure functions, so the vectors made by the
//! other implementation (`tests/fixtures/gateway/make_vectors.sh`) test them.

use chrono::{DateTime, Utc};

use crate::gateway::crypto::{CryptoError, RsaPrivateKey, RsaPublicKey};

pub const AUTH_SCHEMA: &str = "WECHATPAY2-SHA256-RSA2048";
/// WeChat's deliberately invalid signatures, sent to check that we verify.
pub const SIGNTEST_PREFIX: &str = "WECHATPAY/SIGNTEST/";
/// Both official SDKs refuse `|now - timestamp| >= 5 min`.
const WINDOW_SECS: i64 = 5 * 60;

/// The five-line string a request signature covers; every line ends in `\n`,
/// the last one too, and a GET's body line is empty.
pub fn request_message(
    method: &str,
    canonical_url: &str,
    timestamp: i64,
    nonce: &str,
    body: &str,
) -> String {
    format!("{method}\n{canonical_url}\n{timestamp}\n{nonce}\n{body}\n")
}

/// The canonical URL of A1: the path plus `?query` as sent, no scheme or host.
pub fn canonical_url(url: &url::Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

/// The full `Authorization` header value.
#[allow(clippy::too_many_arguments)]
pub fn build_authorization(
    mchid: &str,
    serial_no: &str,
    key: &RsaPrivateKey,
    method: &str,
    canonical_url: &str,
    timestamp: i64,
    nonce: &str,
    body: &str,
) -> Result<String, CryptoError> {
    let message = request_message(method, canonical_url, timestamp, nonce, body);
    let signature = key.sign_sha256_base64(message.as_bytes())?;
    Ok(format!(
        "{AUTH_SCHEMA} mchid=\"{mchid}\",nonce_str=\"{nonce}\",timestamp=\"{timestamp}\",serial_no=\"{serial_no}\",signature=\"{signature}\""
    ))
}

/// Why a platform signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("signature probe (WECHATPAY/SIGNTEST/)")]
    Probe,
    #[error("Wechatpay-Serial {0:?} is not the configured platform key")]
    WrongSerial(String),
    #[error("unsupported Wechatpay-Signature-Type {0:?}")]
    WrongType(String),
    #[error("signature does not verify")]
    Mismatch,
    #[error("Wechatpay-Timestamp {0:?} is not Unix seconds")]
    BadTimestamp(String),
    #[error("Wechatpay-Timestamp outside the 5-minute window")]
    Stale,
}

/// Verifies a platform-signed message (`ts\nnonce\nbody\n`, the raw body).
/// `header` looks a header up case-insensitively. The signature is checked
/// before the timestamp, so "stale" is only ever said of a genuine message.
pub fn verify_platform_signature(
    header: impl Fn(&str) -> Option<String>,
    body: &[u8],
    platform_key: &RsaPublicKey,
    platform_serial: &str,
    now: DateTime<Utc>,
) -> Result<(), VerifyError> {
    let get = |name: &'static str| header(name).ok_or(VerifyError::MissingHeader(name));
    let signature = get("wechatpay-signature")?;
    if signature.starts_with(SIGNTEST_PREFIX) {
        return Err(VerifyError::Probe);
    }
    let timestamp = get("wechatpay-timestamp")?;
    let nonce = get("wechatpay-nonce")?;
    let serial = get("wechatpay-serial")?;
    if serial != platform_serial {
        return Err(VerifyError::WrongSerial(serial));
    }
    // Absent means the default (wechatpay-go, wechatpay-java); anything else
    // is an algorithm we do not speak.
    if let Some(kind) = header("wechatpay-signature-type") {
        if kind != AUTH_SCHEMA {
            return Err(VerifyError::WrongType(kind));
        }
    }
    let mut message = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 3);
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(nonce.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(body);
    message.push(b'\n');
    if !platform_key.verify_sha256_base64(&message, &signature) {
        return Err(VerifyError::Mismatch);
    }
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp(timestamp.clone()))?;
    if (now.timestamp() - ts).abs() >= WINDOW_SECS {
        return Err(VerifyError::Stale);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_of_the_documented_example() {
        // docs/gateways.md A1: the sha256 of this string was computed independently.
        let m = request_message(
            "GET",
            "/v3/pay/transactions/out-trade-no/T1?mchid=1900000001",
            1554208460,
            "593BEC0C930BF1AFEB40B4A08C8FB242",
            "",
        );
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, m.as_bytes());
        assert_eq!(
            hex::encode(digest),
            "cf34aa918d37fbcd7210ae9784cec56bda6ba77f4af877957f03b3c177eb5a85"
        );
    }

    #[test]
    fn canonical_url_keeps_the_query_as_sent() {
        let url = url::Url::parse(
            "http://127.0.0.1:9/v3/bill/tradebill?bill_date=2024-01-01&bill_type=ALL",
        )
        .unwrap();
        assert_eq!(
            canonical_url(&url),
            "/v3/bill/tradebill?bill_date=2024-01-01&bill_type=ALL"
        );
        let url = url::Url::parse("http://h/v3/refund/domestic/refunds").unwrap();
        assert_eq!(canonical_url(&url), "/v3/refund/domestic/refunds");
    }
}
