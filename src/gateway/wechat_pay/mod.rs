//! The WeChat Pay API v3 adapter (docs/gateways.md Part A). One HTTP attempt per
//! call: the worker owns retries (persisted), so a retry here would only hide
//! attempts from it.
//!
//! Every request carries the merchant's `Authorization`; every 2xx answer is
//! verified against the platform key before its body is believed. An answer
//! that does not verify is `Unknown`: we cannot tell what happened.

mod model;
mod notify;
pub mod sign;
mod transport;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, StatusCode};

use super::crypto::{RsaPrivateKey, RsaPublicKey};
use super::http_client::{self, beijing, observe, snippet};
use super::{
    CloseOutcome, DownloadedBill, Gateway, GatewayError, Headers, Notification, NotificationError,
    PaymentStatus, Prepared, PrepayRequest, RefundRequest, RefundState, RefundStatus, TradeState,
};
use crate::domain::Channel;
use model::ModelError;

pub struct WechatPayConfig {
    /// `https://api.mch.weixin.qq.com`, or the simulator's root.
    pub base_url: String,
    pub mchid: String,
    pub appid: String,
    pub merchant_serial_no: String,
    pub merchant_key: RsaPrivateKey,
    pub platform_public_key: RsaPublicKey,
    /// The platform key's serial / `PUB_KEY_ID_…`: sent as `Wechatpay-Serial`
    /// and required on every signed answer.
    pub platform_serial: String,
    /// 32 ASCII bytes: the AES-256-GCM key of notification resources.
    pub apiv3_key: String,
    pub timeout: Duration,
}

pub struct WechatPay {
    config: WechatPayConfig,
    base: String,
    client: reqwest::Client,
}

/// `description` is at most 127 characters at WeChat.
const MAX_DESCRIPTION: usize = 127;
/// `reason` is at most 80 characters at WeChat.
const MAX_REASON: usize = 80;

fn truncate_chars(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// Everything but RFC 3986 unreserved characters and `*` (which WeChat's
/// `out_trade_no` alphabet allows) is escaped in a path segment. What we sign
/// is the URL as sent, so any escaping is consistent; escaping less keeps the
/// URL identical to the one WeChat's own SDKs build.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'~')
    .remove(b'*');

fn path_segment(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}

fn bad_answer(e: ModelError) -> GatewayError {
    // Verified, yet not what the protocol promises: the call may have taken effect.
    GatewayError::Unknown(format!("unexpected answer from WeChat Pay: {e}"))
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, GatewayError> {
    serde_json::from_slice(body).map_err(|e| {
        GatewayError::Unknown(format!(
            "malformed answer from WeChat Pay ({e}): {}",
            snippet(&String::from_utf8_lossy(body))
        ))
    })
}

impl WechatPay {
    pub fn new(config: WechatPayConfig) -> Result<WechatPay, GatewayError> {
        if config.apiv3_key.len() != 32 {
            return Err(GatewayError::Protocol(
                "the APIv3 key must be 32 bytes".into(),
            ));
        }
        let base = config.base_url.trim_end_matches('/').to_string();
        url::Url::parse(&base)
            .map_err(|e| GatewayError::Protocol(format!("base_url {base:?}: {e}")))?;
        let client = http_client::build_client(config.timeout)?;
        Ok(WechatPay {
            config,
            base,
            client,
        })
    }

    async fn do_prepay(&self, req: &PrepayRequest) -> Result<Prepared, GatewayError> {
        let body = model::NativePrepay {
            appid: &self.config.appid,
            mchid: &self.config.mchid,
            description: truncate_chars(&req.description, MAX_DESCRIPTION),
            out_trade_no: &req.out_trade_no,
            time_expire: req
                .expires_at
                .with_timezone(&beijing())
                .to_rfc3339_opts(SecondsFormat::Secs, true),
            notify_url: &req.notify_url,
            amount: model::Amount {
                total: req.amount.fen(),
                currency: "CNY",
            },
        };
        let json = serde_json::to_string(&body)
            .map_err(|e| GatewayError::Protocol(format!("prepay body: {e}")))?;
        let answer = self
            .call(Method::POST, "/v3/pay/transactions/native", Some(json))
            .await?;
        let prepay: model::PrepayAnswer = parse_json(&answer.body)?;
        Ok(Prepared {
            prepay: serde_json::json!({ "code_url": prepay.code_url }),
        })
    }

    async fn do_query(&self, out_trade_no: &str) -> Result<PaymentStatus, GatewayError> {
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{}?mchid={}",
            path_segment(out_trade_no),
            path_segment(&self.config.mchid)
        );
        match self.call(Method::GET, &path, None).await {
            Ok(answer) => {
                let tx: model::Transaction = parse_json(&answer.body)?;
                tx.to_status().map_err(bad_answer)
            }
            Err(GatewayError::Business { code, .. })
                if code == "ORDER_NOT_EXIST" || code == "ORDERNOTEXIST" =>
            {
                Ok(PaymentStatus {
                    state: TradeState::NotFound,
                    transaction_id: None,
                    amount: None,
                    paid_at: None,
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn do_close(&self, out_trade_no: &str) -> Result<CloseOutcome, GatewayError> {
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{}/close",
            path_segment(out_trade_no)
        );
        let body = serde_json::json!({ "mchid": self.config.mchid }).to_string();
        let close_error = match self.call(Method::POST, &path, Some(body)).await {
            Ok(answer) if answer.status == StatusCode::NO_CONTENT => {
                return Ok(CloseOutcome::Closed)
            }
            Ok(answer) => {
                GatewayError::Unknown(format!("close answered {} instead of 204", answer.status))
            }
            Err(e) => e,
        };
        let query = self.query(out_trade_no).await;
        http_client::settle_close(close_error, query)
    }

    async fn do_refund(&self, req: &RefundRequest) -> Result<RefundStatus, GatewayError> {
        let body = model::CreateRefund {
            out_trade_no: &req.out_trade_no,
            out_refund_no: &req.out_refund_no,
            reason: truncate_chars(&req.reason, MAX_REASON),
            notify_url: &req.notify_url,
            amount: model::RefundAmountRequest {
                refund: req.amount.fen(),
                total: req.total.fen(),
                currency: "CNY",
            },
        };
        let json = serde_json::to_string(&body)
            .map_err(|e| GatewayError::Protocol(format!("refund body: {e}")))?;
        let answer = self
            .call(Method::POST, "/v3/refund/domestic/refunds", Some(json))
            .await?;
        let refund: model::Refund = parse_json(&answer.body)?;
        refund.to_status().map_err(bad_answer)
    }

    async fn do_query_refund(&self, out_refund_no: &str) -> Result<RefundStatus, GatewayError> {
        let path = format!(
            "/v3/refund/domestic/refunds/{}",
            path_segment(out_refund_no)
        );
        match self.call(Method::GET, &path, None).await {
            Ok(answer) => {
                let refund: model::Refund = parse_json(&answer.body)?;
                refund.to_status().map_err(bad_answer)
            }
            Err(GatewayError::Business { code, .. }) if code == "RESOURCE_NOT_EXISTS" => {
                Ok(RefundStatus {
                    state: RefundState::NotFound,
                    gateway_refund_id: None,
                    amount: None,
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn do_download_bill(
        &self,
        date: NaiveDate,
        dest: &Path,
    ) -> Result<DownloadedBill, GatewayError> {
        let path = format!(
            "/v3/bill/tradebill?bill_date={}&bill_type=ALL&tar_type=GZIP",
            date.format("%Y-%m-%d")
        );
        let bill: model::TradeBill = match self.call(Method::GET, &path, None).await {
            Ok(answer) => parse_json(&answer.body)?,
            Err(GatewayError::Business { code, .. }) if code == "NO_STATEMENT_EXIST" => {
                return Err(GatewayError::NoBill)
            }
            // The bill is still being generated: not final, come back later.
            Err(GatewayError::Business { code, message }) if code == "STATEMENT_CREATING" => {
                return Err(GatewayError::Transient(format!("{code}: {message}")))
            }
            Err(e) => return Err(e),
        };
        let url = url::Url::parse(&bill.download_url).map_err(|e| {
            GatewayError::Protocol(format!("download_url {:?}: {e}", bill.download_url))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(GatewayError::Protocol(format!(
                "download_url {:?} is not HTTP",
                bill.download_url
            )));
        }
        // Signed like any request; the file itself comes back unsigned (A2).
        let response = self.send_signed(Method::GET, url, None).await?;
        http_client::download_to_file(response, dest).await?;
        let expected_sha1 = match bill.hash_type.as_deref() {
            Some(t) if t.eq_ignore_ascii_case("SHA1") => {
                bill.hash_value.map(|h| h.to_ascii_lowercase())
            }
            _ => None,
        };
        Ok(DownloadedBill { expected_sha1 })
    }
}

#[async_trait]
impl Gateway for WechatPay {
    fn channel(&self) -> Channel {
        Channel::WechatPay
    }

    async fn prepay(&self, req: &PrepayRequest) -> Result<Prepared, GatewayError> {
        observe(
            Channel::WechatPay,
            "prepay",
            &req.out_trade_no,
            self.do_prepay(req),
        )
        .await
    }

    async fn query(&self, out_trade_no: &str) -> Result<PaymentStatus, GatewayError> {
        observe(
            Channel::WechatPay,
            "query",
            out_trade_no,
            self.do_query(out_trade_no),
        )
        .await
    }

    async fn close(&self, out_trade_no: &str) -> Result<CloseOutcome, GatewayError> {
        observe(
            Channel::WechatPay,
            "close",
            out_trade_no,
            self.do_close(out_trade_no),
        )
        .await
    }

    async fn refund(&self, req: &RefundRequest) -> Result<RefundStatus, GatewayError> {
        observe(
            Channel::WechatPay,
            "refund",
            &req.out_trade_no,
            self.do_refund(req),
        )
        .await
    }

    async fn query_refund(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<RefundStatus, GatewayError> {
        observe(
            Channel::WechatPay,
            "query_refund",
            out_trade_no,
            self.do_query_refund(out_refund_no),
        )
        .await
    }

    async fn download_bill(
        &self,
        date: NaiveDate,
        dest: &Path,
    ) -> Result<DownloadedBill, GatewayError> {
        observe(
            Channel::WechatPay,
            "download_bill",
            "",
            self.do_download_bill(date, dest),
        )
        .await
    }

    fn verify_notification(
        &self,
        headers: &Headers,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Notification, NotificationError> {
        notify::verify(&self.config, headers, body, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_is_by_character() {
        assert_eq!(truncate_chars("订单订单", 2), "订单");
        assert_eq!(truncate_chars("ab", 5), "ab");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(path_segment("T-1_x*"), "T-1_x*");
        assert_eq!(path_segment(".."), "%2E%2E");
    }
}
