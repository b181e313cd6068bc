//! WeChat Pay API v3 signatures on the gateway's side (docs/gateways.md A1, A2):
//! verifying a merchant's `Authorization` header, signing every answer with
//! the platform key.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::gateway::crypto::{random_nonce, RsaPublicKey};

use super::Ctx;

pub const SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";
/// WeChat refuses requests whose timestamp is five minutes or more off.
pub const WINDOW_SECS: i64 = 5 * 60;

/// The five items of an `Authorization` header, in whatever order they came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub mchid: String,
    pub nonce_str: String,
    pub timestamp: String,
    pub serial_no: String,
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Authorization header missing or malformed: {0}")]
    Malformed(&'static str),
    #[error("Http头Authorization中的timestamp与发起请求的时间不得超过5分钟")]
    Stale,
    #[error("商户号与签名不匹配")]
    WrongMerchant,
    #[error("签名错误，请检查后再试")]
    BadSignature,
}

/// Parses `WECHATPAY2-SHA256-RSA2048 k="v",k="v",…`. The doc says the items
/// have no required order, and the SDKs indeed differ, so order is ignored.
pub fn parse_authorization(value: &str) -> Result<Authorization, AuthError> {
    let rest = value
        .strip_prefix(SCHEME)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or(AuthError::Malformed(
            "scheme is not WECHATPAY2-SHA256-RSA2048",
        ))?;
    let mut items: [Option<String>; 5] = Default::default();
    const NAMES: [&str; 5] = ["mchid", "nonce_str", "timestamp", "serial_no", "signature"];
    let mut rest = rest.trim_start();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .ok_or(AuthError::Malformed("expected key=\"value\""))?;
        let (val, after) = after
            .split_once('"')
            .ok_or(AuthError::Malformed("unterminated value"))?;
        let slot = NAMES
            .iter()
            .position(|n| *n == key.trim())
            .ok_or(AuthError::Malformed("unknown item"))?;
        if items[slot].replace(val.to_string()).is_some() {
            return Err(AuthError::Malformed("repeated item"));
        }
        rest = after.trim_start();
        rest = match rest.strip_prefix(',') {
            Some(r) => r.trim_start(),
            None if rest.is_empty() => rest,
            None => return Err(AuthError::Malformed("items must be separated by commas")),
        };
    }
    let [Some(mchid), Some(nonce_str), Some(timestamp), Some(serial_no), Some(signature)] = items
    else {
        return Err(AuthError::Malformed("an item is missing"));
    };
    Ok(Authorization {
        mchid,
        nonce_str,
        timestamp,
        serial_no,
        signature,
    })
}

/// Who may call: the merchant id, its API certificate serial and public key.
#[derive(Debug, Clone, Copy)]
pub struct Merchant<'a> {
    pub mchid: &'a str,
    pub serial_no: &'a str,
    pub key: &'a RsaPublicKey,
}

/// Checks one request: the header parses, names our merchant and certificate,
/// is fresh, and its signature over the five-line message verifies with the
/// merchant's public key. `uri` is the path plus `?query` exactly as sent.
pub fn verify_request(
    header: Option<&str>,
    method: &str,
    uri: &str,
    body: &[u8],
    merchant: &Merchant<'_>,
    now: DateTime<Utc>,
) -> Result<Authorization, AuthError> {
    let auth = parse_authorization(header.ok_or(AuthError::Malformed("no Authorization"))?)?;
    if auth.mchid != merchant.mchid || !auth.serial_no.eq_ignore_ascii_case(merchant.serial_no) {
        return Err(AuthError::WrongMerchant);
    }
    let ts: i64 = auth
        .timestamp
        .parse()
        .map_err(|_| AuthError::Malformed("timestamp is not Unix seconds"))?;
    if (now.timestamp() - ts).abs() >= WINDOW_SECS {
        return Err(AuthError::Stale);
    }
    let mut message =
        format!("{method}\n{uri}\n{}\n{}\n", auth.timestamp, auth.nonce_str).into_bytes();
    message.extend_from_slice(body);
    message.push(b'\n');
    if !merchant.key.verify_sha256_base64(&message, &auth.signature) {
        return Err(AuthError::BadSignature);
    }
    Ok(auth)
}

/// A `Request-ID` shaped like the real ones; the number after the last `-`
/// is 0 on success.
fn request_id(ok: bool) -> String {
    format!(
        "08{}-{}",
        random_nonce(40),
        if ok { "0" } else { "268435456" }
    )
}

/// Builds an answer signed with the platform key over `ts\nnonce\nbody\n`,
/// carrying all five `Wechatpay-*` headers (wechatpayv3 refuses a response
/// without `Wechatpay-Signature-Type`). Error answers are signed too, as the
/// real gateway does; clients verify only 2xx.
pub fn signed(ctx: &Ctx, status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let timestamp = Utc::now().timestamp().to_string();
    let nonce = random_nonce(32);
    let mut message = format!("{timestamp}\n{nonce}\n").into_bytes();
    message.extend_from_slice(&body);
    message.push(b'\n');
    let Ok(signature) = ctx
        .keys
        .wechat_platform_private
        .sign_sha256_base64(&message)
    else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "signing failed");
    };
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    if !body.is_empty() {
        put("content-type", "application/json; charset=utf-8");
    }
    put("wechatpay-timestamp", &timestamp);
    put("wechatpay-nonce", &nonce);
    put("wechatpay-signature", &signature);
    put("wechatpay-serial", &ctx.settings.wechat_platform_serial);
    put("wechatpay-signature-type", SCHEME);
    put("request-id", &request_id(status.is_success()));
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

pub fn signed_json(ctx: &Ctx, status: StatusCode, value: &Value) -> Response<Body> {
    signed(ctx, status, value.to_string().into_bytes())
}

/// `{"code","message"[,"detail"]}`, WeChat's error shape.
pub fn error(ctx: &Ctx, status: StatusCode, code: &str, message: &str) -> Response<Body> {
    signed_json(ctx, status, &json!({"code": code, "message": message}))
}

pub fn param_error(ctx: &Ctx, field: &str, issue: &str) -> Response<Body> {
    signed_json(
        ctx,
        StatusCode::BAD_REQUEST,
        &json!({"code": "PARAM_ERROR", "message": format!("参数错误：{field} {issue}"),
                "detail": {"field": field, "location": "body", "issue": issue}}),
    )
}

pub fn sign_error(ctx: &Ctx, err: &AuthError) -> Response<Body> {
    signed_json(
        ctx,
        StatusCode::UNAUTHORIZED,
        &json!({"code": "SIGN_ERROR", "message": err.to_string(),
                "detail": {"field": "signature", "location": "authorization",
                           "detail": {"issue": "sign not match"}}}),
    )
}

pub fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(text.to_string()));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = r#"WECHATPAY2-SHA256-RSA2048 mchid="1900000001",nonce_str="593BEC0C930BF1AFEB40B4A08C8FB242",signature="c2ln",timestamp="1554208460",serial_no="5157F09EFDC096DE15EBE81A47057A7232F1B8E1""#;

    #[test]
    fn parses_in_any_order() {
        let a = parse_authorization(HEADER).unwrap();
        assert_eq!(a.mchid, "1900000001");
        assert_eq!(a.timestamp, "1554208460");
        assert_eq!(a.signature, "c2ln");
        let go_order = r#"WECHATPAY2-SHA256-RSA2048 mchid="1900000001",nonce_str="593BEC0C930BF1AFEB40B4A08C8FB242",timestamp="1554208460",serial_no="5157F09EFDC096DE15EBE81A47057A7232F1B8E1",signature="c2ln""#;
        assert_eq!(parse_authorization(go_order).unwrap(), a);
    }

    #[test]
    fn refuses_malformed_headers() {
        for bad in [
            "",
            "Bearer x",
            r#"WECHATPAY2-SHA256-RSA2048 mchid="1""#,
            r#"WECHATPAY2-SHA256-RSA2048 mchid="1",mchid="1",nonce_str="n",timestamp="1",serial_no="s",signature="x""#,
            r#"WECHATPAY2-SHA256-RSA2048 mchid="1" nonce_str="n",timestamp="1",serial_no="s",signature="x""#,
            r#"WECHATPAY2-SHA256-RSA2048 mchid="1",nonce_str="n",timestamp="1",serial_no="s",signature="x",extra="y""#,
        ] {
            assert!(parse_authorization(bad).is_err(), "{bad}");
        }
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        /// Any order of the five items, with or without spaces after commas.
        #[test]
        fn any_item_order_parses_the_same(order in proptest::strategy::Just(vec![0usize, 1, 2, 3, 4]).prop_shuffle(), spaced in proptest::bool::ANY) {
            let items = [r#"mchid="1900000001""#, r#"nonce_str="N1""#, r#"timestamp="1554208460""#,
                         r#"serial_no="S1""#, r#"signature="c2ln""#];
            let sep = if spaced { ", " } else { "," };
            let header = format!("{SCHEME} {}", order.iter().map(|i| items[*i]).collect::<Vec<_>>().join(sep));
            let a = parse_authorization(&header).unwrap();
            proptest::prop_assert_eq!((a.mchid.as_str(), a.nonce_str.as_str(), a.timestamp.as_str(),
                a.serial_no.as_str(), a.signature.as_str()), ("1900000001", "N1", "1554208460", "S1", "c2ln"));
        }
    }
}
