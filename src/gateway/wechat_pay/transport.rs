//! One signed WeChat Pay request and the classification of its answer: a
//! 2xx is believed only once its platform signature verifies.

use chrono::Utc;
use reqwest::{Method, StatusCode};

use super::{model, sign, WechatPay};
use crate::gateway::crypto::random_nonce;
use crate::gateway::http_client::{classify_status, classify_transport, snippet};
use crate::gateway::GatewayError;

/// A 2xx answer whose signature verified.
pub(super) struct Verified {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

impl WechatPay {
    /// One signed request. `Ok` only for a verified 2xx; a 4xx comes back as
    /// `Business` with WeChat's own code, so callers can match on it.
    pub(super) async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<String>,
    ) -> Result<Verified, GatewayError> {
        let url = url::Url::parse(&format!("{}{path_and_query}", self.base))
            .map_err(|e| GatewayError::Protocol(format!("URL {path_and_query:?}: {e}")))?;
        let response = self.send_signed(method, url, body).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| classify_transport(&e))?
            .to_vec();
        if status.is_success() {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            sign::verify_platform_signature(
                header,
                &bytes,
                &self.config.platform_public_key,
                &self.config.platform_serial,
                Utc::now(),
            )
            .map_err(|e| GatewayError::Unknown(format!("unverifiable {status} answer: {e}")))?;
            return Ok(Verified {
                status,
                body: bytes,
            });
        }
        Err(error_answer(status, &bytes))
    }

    pub(super) async fn send_signed(
        &self,
        method: Method,
        url: url::Url,
        body: Option<String>,
    ) -> Result<reqwest::Response, GatewayError> {
        let body_text = body.unwrap_or_default();
        let authorization = sign::build_authorization(
            &self.config.mchid,
            &self.config.merchant_serial_no,
            &self.config.merchant_key,
            method.as_str(),
            &sign::canonical_url(&url),
            Utc::now().timestamp(),
            &random_nonce(32),
            &body_text,
        )
        .map_err(|e| GatewayError::Protocol(format!("signing the request: {e}")))?;
        let mut request = self
            .client
            .request(method, url)
            .header("Accept", "application/json")
            .header("Authorization", authorization)
            .header("Wechatpay-Serial", &self.config.platform_serial);
        if !body_text.is_empty() {
            request = request
                .header("Content-Type", "application/json")
                .body(body_text);
        }
        request.send().await.map_err(|e| classify_transport(&e))
    }
}

/// A non-2xx answer: 429 and 5xx by status, 4xx by WeChat's own code.
fn error_answer(status: StatusCode, body: &[u8]) -> GatewayError {
    let text = String::from_utf8_lossy(body);
    if let Some(err) = classify_status(status, &text) {
        return err;
    }
    if status.is_client_error() {
        return match serde_json::from_slice::<model::ApiError>(body) {
            Ok(e) => GatewayError::Business {
                code: e.code,
                message: e.message,
            },
            Err(_) => GatewayError::Business {
                code: format!("HTTP_{}", status.as_u16()),
                message: snippet(&text),
            },
        };
    }
    // 1xx/3xx: nothing WeChat answers to an API call.
    GatewayError::Unknown(format!("unexpected HTTP {status}: {}", snippet(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_are_classified() {
        let business = error_answer(
            StatusCode::NOT_FOUND,
            br#"{"code":"ORDER_NOT_EXIST","message":"no"}"#,
        );
        assert_eq!(
            business,
            GatewayError::Business {
                code: "ORDER_NOT_EXIST".into(),
                message: "no".into()
            }
        );
        assert!(matches!(
            error_answer(StatusCode::INTERNAL_SERVER_ERROR, b"{}"),
            GatewayError::Unknown(_)
        ));
        assert!(matches!(
            error_answer(StatusCode::TOO_MANY_REQUESTS, b""),
            GatewayError::Transient(_)
        ));
        assert!(matches!(
            error_answer(StatusCode::FORBIDDEN, b"<html>"),
            GatewayError::Business { code, .. } if code == "HTTP_403"
        ));
    }
}
