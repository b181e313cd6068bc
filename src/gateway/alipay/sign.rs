//! Alipay RSA2 (docs/gateways.md B1, B3): the string a request signature covers,
//! the exact response node a response signature covers, and the V1 rule for
//! notifications. Pure functions, tested against vectors made by openssl.

use crate::gateway::crypto::{CryptoError, RsaPrivateKey, RsaPublicKey};

/// Sorted `k=v` pairs joined with `&`, raw (not URL-encoded) values, empty
/// values and the `skip`ped keys left out. Requests skip only `sign`;
/// notifications (V1) skip `sign` and `sign_type`.
pub fn sign_content<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    skip: &[&str],
) -> String {
    let mut pairs: Vec<(&str, &str)> = params
        .into_iter()
        .filter(|(k, v)| !k.is_empty() && !v.is_empty() && !skip.contains(k))
        .collect();
    pairs.sort_unstable();
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// The request signature: SHA256withRSA by the app key over [`sign_content`].
pub fn sign_request<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    key: &RsaPrivateKey,
) -> Result<String, CryptoError> {
    key.sign_sha256_base64(sign_content(params, &["sign"]).as_bytes())
}

/// `alipay.trade.query` answers in `alipay_trade_query_response`.
pub fn response_node_name(method: &str) -> String {
    format!("{}_response", method.replace('.', "_"))
}

/// The raw text of the top-level member `node` (an object), exactly as it
/// appears in `body`: the signature covers these bytes, not a
/// re-serialisation. Quote- and escape-aware, unlike naive brace counting.
pub fn extract_node<'a>(body: &'a str, node: &str) -> Option<&'a str> {
    let bytes = body.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let end = string_end(bytes, i)?;
                if depth == 1 && &body[i + 1..end] == node {
                    let mut j = skip_ws(bytes, end + 1);
                    if bytes.get(j) == Some(&b':') {
                        j = skip_ws(bytes, j + 1);
                        if bytes.get(j) == Some(&b'{') {
                            let close = object_end(bytes, j)?;
                            return Some(&body[j..=close]);
                        }
                        return None;
                    }
                }
                i = end + 1;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            _ => {}
        }
        i += 1;
    }
    None
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Index of the quote closing the string that opens at `start`.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Index of the brace closing the object that opens at `start`.
fn object_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i = string_end(bytes, i)?;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Verifies a response node; Java's client also accepts the signature over
/// the text with `\/` unescaped, since some encoders escape slashes.
pub fn verify_response_node(node_text: &str, sign: &str, key: &RsaPublicKey) -> bool {
    key.verify_sha256_base64(node_text.as_bytes(), sign)
        || (node_text.contains("\\/")
            && key.verify_sha256_base64(node_text.replace("\\/", "/").as_bytes(), sign))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_sorts_and_drops_empty_and_skipped() {
        let params = [
            ("method", "alipay.trade.query"),
            ("sign", "xxx"),
            ("app_id", "2021000000000000"),
            ("notify_url", ""),
            ("biz_content", r#"{"out_trade_no":"ORDER1"}"#),
            ("sign_type", "RSA2"),
        ];
        assert_eq!(
            sign_content(params, &["sign"]),
            r#"app_id=2021000000000000&biz_content={"out_trade_no":"ORDER1"}&method=alipay.trade.query&sign_type=RSA2"#
        );
        assert_eq!(
            sign_content(params, &["sign", "sign_type"]),
            r#"app_id=2021000000000000&biz_content={"out_trade_no":"ORDER1"}&method=alipay.trade.query"#
        );
    }

    #[test]
    fn node_extraction_respects_strings() {
        let body = r#"{"alipay_trade_query_response":{"code":"10000","msg":"a \"}\" b","x":{"y":[1,{"z":"}"}]}},"sign":"abc"}"#;
        assert_eq!(
            extract_node(body, "alipay_trade_query_response"),
            Some(r#"{"code":"10000","msg":"a \"}\" b","x":{"y":[1,{"z":"}"}]}}"#)
        );
        // A nested member of the same name is not the node.
        let nested = r#"{"other":{"alipay_trade_query_response":{"a":1}},"sign":"s"}"#;
        assert_eq!(extract_node(nested, "alipay_trade_query_response"), None);
        // The name inside a string value is not a key either.
        let in_value =
            r#"{"sign":"alipay_trade_query_response","alipay_trade_query_response" : {"b":"2"}}"#;
        assert_eq!(
            extract_node(in_value, "alipay_trade_query_response"),
            Some(r#"{"b":"2"}"#)
        );
        assert_eq!(extract_node(r#"{"x_response":{"a":"#, "x_response"), None);
        assert_eq!(
            response_node_name("alipay.trade.query"),
            "alipay_trade_query_response"
        );
    }
}
