//! Alipay's open-API envelope (docs/gateways.md B1, B3): merged GET/POST
//! parameters, RSA2 request verification, the signed
//! `{"<method>_response":{…},"sign":"…"}` answer, and V1 notification signing.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode};
use serde_json::{Map, Value};

use crate::domain::Money;
use crate::gateway::crypto::{sha1_hex, CryptoError, RsaPublicKey};

use super::Ctx;

pub type Node = Map<String, Value>;

/// A gateway-level or business failure, before it becomes a response node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: &'static str,
    pub msg: &'static str,
    pub sub_code: String,
    pub sub_msg: String,
}

impl Failure {
    pub fn business(sub_code: &str, sub_msg: &str) -> Self {
        Failure {
            code: "40004",
            msg: "Business Failed",
            sub_code: sub_code.into(),
            sub_msg: sub_msg.into(),
        }
    }

    pub fn missing(name: &str) -> Self {
        Failure {
            code: "40001",
            msg: "Missing Required Arguments",
            sub_code: format!("isv.missing-{}", name.replace('_', "-")),
            sub_msg: format!("缺少必选参数{name}"),
        }
    }

    pub fn invalid(sub_code: &str, sub_msg: &str) -> Self {
        Failure {
            code: "40002",
            msg: "Invalid Arguments",
            sub_code: sub_code.into(),
            sub_msg: sub_msg.into(),
        }
    }

    pub fn unavailable() -> Self {
        Failure {
            code: "20000",
            msg: "Service Currently Unavailable",
            sub_code: "isp.unknow-error".into(),
            sub_msg: "系统繁忙".into(),
        }
    }

    pub fn node(&self) -> Node {
        let mut node = Node::new();
        node.insert("code".into(), self.code.into());
        node.insert("msg".into(), self.msg.into());
        node.insert("sub_code".into(), self.sub_code.clone().into());
        node.insert("sub_msg".into(), brace_free(&self.sub_msg).into());
        node
    }
}

/// Query and form parameters merged; the query wins on a clash (Java's
/// client puts the protocol parameters there).
pub fn merge_params(query: &str, form: &[u8]) -> BTreeMap<String, String> {
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(form).unwrap_or_default();
    let query: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    for (k, v) in form.into_iter().chain(query) {
        params.insert(k, v);
    }
    params
}

/// `k=v&…` over the non-empty parameters, sorted, except `exclude`, raw values.
pub fn sign_content<'a>(
    params: impl IntoIterator<Item = (&'a String, &'a String)>,
    exclude: &[&str],
) -> String {
    let mut items: Vec<(&String, &String)> = params
        .into_iter()
        .filter(|(k, v)| !v.is_empty() && !exclude.contains(&k.as_str()))
        .collect();
    items.sort();
    items
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Checks the common parameters and the RSA2 signature (everything but `sign`,
/// `sign_type` included) with the app's public key.
pub fn verify_request(
    params: &BTreeMap<String, String>,
    app_id: &str,
    key: &RsaPublicKey,
) -> Result<(), Failure> {
    for name in [
        "app_id",
        "method",
        "sign_type",
        "sign",
        "timestamp",
        "version",
        "charset",
    ] {
        if params.get(name).is_none_or(|v| v.is_empty()) {
            return Err(Failure::missing(name));
        }
    }
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    if get("app_id") != app_id {
        return Err(Failure::invalid("isv.invalid-app-id", "无效的AppID参数"));
    }
    if get("sign_type") != "RSA2" {
        return Err(Failure::invalid(
            "isv.invalid-signature-type",
            "无效的签名类型",
        ));
    }
    if !get("charset").eq_ignore_ascii_case("utf-8") {
        return Err(Failure::invalid(
            "isv.invalid-charset",
            "字符集不合法（模拟器仅支持utf-8）",
        ));
    }
    // The SDKs stamp local wall-clock time, so only the format is checked.
    if chrono::NaiveDateTime::parse_from_str(get("timestamp"), "%Y-%m-%d %H:%M:%S").is_err() {
        return Err(Failure::invalid(
            "isv.invalid-timestamp",
            "非法的时间戳参数",
        ));
    }
    let content = sign_content(params, &["sign"]);
    if !key.verify_sha256_base64(content.as_bytes(), get("sign")) {
        return Err(Failure::invalid("isv.invalid-signature", "验签出错"));
    }
    Ok(())
}

/// V1 notification signature: without `sign` and `sign_type`, empty dropped.
pub fn sign_v1(ctx: &Ctx, fields: &[(String, String)]) -> Result<String, CryptoError> {
    let content = sign_content(fields.iter().map(|(k, v)| (k, v)), &["sign", "sign_type"]);
    ctx.keys
        .alipay_private
        .sign_sha256_base64(content.as_bytes())
}

/// `{"<node_name>":<node>,"sign":"…"}`, signed over the node's exact text.
pub fn respond(ctx: &Ctx, node_name: &str, node: &Node) -> Response<Body> {
    let node_text = Value::Object(node.clone()).to_string();
    let body = match ctx
        .keys
        .alipay_private
        .sign_sha256_base64(node_text.as_bytes())
    {
        Ok(sign) => format!(r#"{{"{node_name}":{node_text},"sign":"{sign}"}}"#),
        Err(_) => {
            let mut r = Response::new(Body::from("signing failed"));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return r;
        }
    };
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/json;charset=utf-8"),
    );
    r
}

pub fn node_name(method: &str) -> String {
    format!("{}_response", method.replace('.', "_"))
}

pub fn success() -> Node {
    let mut node = Node::new();
    node.insert("code".into(), "10000".into());
    node.insert("msg".into(), "Success".into());
    node
}

/// python-alipay-sdk finds the signed node by counting braces without regard
/// to quotes, so no string we echo may contain one.
pub fn brace_free(text: &str) -> String {
    text.replace('{', "（").replace('}', "）")
}

/// An amount as Alipay accepts it: a JSON string or number with at most two
/// decimals ("88.88", "88.8", "1", 88.88). Read from its decimal text, never
/// through a float.
pub fn parse_amount(value: &Value) -> Option<Money> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > 12 || frac.len() > 2 || !digits(whole) || !digits(frac) {
        return None;
    }
    let padded = format!("{whole}.{frac:0<2}");
    Money::parse_yuan(&padded).ok()
}

/// The merchant's Alipay user id (PID), derived from the app id so it is
/// stable: it names the bill files and is `seller_id` in notifications.
pub fn seller_id(ctx: &Ctx) -> String {
    let digits: String = ctx
        .settings
        .alipay_app_id
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    format!("2088{:0>12}", &digits[digits.len().saturating_sub(12)..])
}

/// A stable made-up buyer id per trade.
pub fn buyer_id(out_trade_no: &str) -> String {
    let digest = sha1_hex(out_trade_no.as_bytes());
    let digits: String = digest
        .bytes()
        .map(|b| char::from(b'0' + b % 10))
        .take(12)
        .collect();
    format!("2088{digits}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn amounts_are_read_exactly() {
        assert_eq!(parse_amount(&json!("88.88")).unwrap().fen(), 8888);
        assert_eq!(parse_amount(&json!("88.8")).unwrap().fen(), 8880);
        assert_eq!(parse_amount(&json!("1")).unwrap().fen(), 100);
        assert_eq!(parse_amount(&json!(0.07)).unwrap().fen(), 7);
        for bad in [
            json!("1.005"),
            json!("-1.00"),
            json!("1e2"),
            json!(""),
            json!(null),
        ] {
            assert!(parse_amount(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn sign_content_sorts_and_drops_empty_values() {
        let mut p = BTreeMap::new();
        for (k, v) in [
            ("method", "m"),
            ("app_id", "1"),
            ("sign", "x"),
            ("notify_url", ""),
        ] {
            p.insert(k.to_string(), v.to_string());
        }
        assert_eq!(sign_content(&p, &["sign"]), "app_id=1&method=m");
    }

    #[test]
    fn merged_params_decode_plus_and_percent() {
        let p = merge_params("timestamp=2026-11-25+19%3A33%3A20&a=q", b"a=f&b=%7B%7D");
        assert_eq!(p["timestamp"], "2026-11-25 19:33:20");
        assert_eq!(p["a"], "q");
        assert_eq!(p["b"], "{}");
    }
}
