//! The Alipay open API adapter, RSA2 (docs/gateways.md Part B). One HTTP attempt
//! per call; the worker owns retries.
//!
//! Every answer's `<method>_response` node is verified against the Alipay
//! public key, over its exact raw text, before anything in it is believed.
//! Unsigned answers (including `error_response`) are `Unknown`: we cannot
//! tell whether they came from Alipay.

mod model;
mod notify;
pub mod sign;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{json, Map, Value};

use super::crypto::{RsaPrivateKey, RsaPublicKey};
use super::http_client::{self, beijing, classify_status, classify_transport, observe, snippet};
use super::{
    CloseOutcome, DownloadedBill, Gateway, GatewayError, Headers, Notification, NotificationError,
    PaymentStatus, Prepared, PrepayRequest, RefundRequest, RefundState, RefundStatus, TradeState,
};
use crate::domain::Channel;

pub struct AlipayConfig {
    /// `https://openapi.alipay.com/gateway.do`, or the simulator's `/gateway.do`.
    pub gateway_url: String,
    pub app_id: String,
    pub app_private_key: RsaPrivateKey,
    pub alipay_public_key: RsaPublicKey,
    pub timeout: Duration,
}

pub struct Alipay {
    config: AlipayConfig,
    client: reqwest::Client,
}

/// `subject` is at most 256 characters at Alipay.
const MAX_SUBJECT: usize = 256;

fn truncate_chars(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

fn not_found() -> PaymentStatus {
    PaymentStatus {
        state: TradeState::NotFound,
        transaction_id: None,
        amount: None,
        paid_at: None,
    }
}

impl Alipay {
    pub fn new(config: AlipayConfig) -> Result<Alipay, GatewayError> {
        url::Url::parse(&config.gateway_url).map_err(|e| {
            GatewayError::Protocol(format!("gateway_url {:?}: {e}", config.gateway_url))
        })?;
        let client = http_client::build_client(config.timeout)?;
        Ok(Alipay { config, client })
    }

    /// One signed call of `method`. `Ok` is a verified node with code 10000;
    /// a verified business failure is `Business { code: sub_code, .. }`.
    async fn call(
        &self,
        method: &str,
        biz: &Value,
        notify_url: Option<&str>,
    ) -> Result<Map<String, Value>, GatewayError> {
        let timestamp = Utc::now()
            .with_timezone(&beijing())
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        let biz_content = biz.to_string();
        let mut params: Vec<(&str, &str)> = vec![
            ("app_id", &self.config.app_id),
            ("method", method),
            ("format", "JSON"),
            ("charset", "utf-8"),
            ("sign_type", "RSA2"),
            ("timestamp", &timestamp),
            ("version", "1.0"),
            ("biz_content", &biz_content),
        ];
        if let Some(url) = notify_url.filter(|u| !u.is_empty()) {
            params.push(("notify_url", url));
        }
        let signature = sign::sign_request(params.iter().copied(), &self.config.app_private_key)
            .map_err(|e| GatewayError::Protocol(format!("signing the request: {e}")))?;
        params.push(("sign", &signature));
        let form = serde_urlencoded::to_string(&params)
            .map_err(|e| GatewayError::Protocol(format!("request form: {e}")))?;

        let response = self
            .client
            .post(&self.config.gateway_url)
            .header(
                "Content-Type",
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .body(form)
            .send()
            .await
            .map_err(|e| classify_transport(&e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| classify_transport(&e))?;
        let body = String::from_utf8_lossy(&bytes);
        if !status.is_success() {
            if let Some(err) = classify_status(status, &body) {
                return Err(err);
            }
            return Err(GatewayError::Business {
                code: format!("HTTP_{}", status.as_u16()),
                message: snippet(&body),
            });
        }
        let node = self.verified_node(method, &body)?;
        model::check_code(node)
    }

    /// Finds, verifies and parses the answer's node.
    fn verified_node(&self, method: &str, body: &str) -> Result<Map<String, Value>, GatewayError> {
        let unknown =
            |why: &str| GatewayError::Unknown(format!("{why} from Alipay: {}", snippet(body)));
        let top: Value =
            serde_json::from_str(body).map_err(|_| unknown("an answer that is not JSON"))?;
        let node_text = sign::extract_node(body, &sign::response_node_name(method))
            .or_else(|| sign::extract_node(body, "error_response"))
            .ok_or_else(|| unknown("an answer without a response node"))?;
        let signature = top
            .get("sign")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| unknown("an unsigned answer"))?;
        if !sign::verify_response_node(node_text, signature, &self.config.alipay_public_key) {
            return Err(unknown("an answer whose signature does not verify"));
        }
        serde_json::from_str(node_text).map_err(|_| unknown("a malformed response node"))
    }

    async fn do_prepay(&self, req: &PrepayRequest) -> Result<Prepared, GatewayError> {
        let biz = json!({
            "out_trade_no": req.out_trade_no,
            "total_amount": req.amount.to_yuan_string(),
            "subject": truncate_chars(&req.description, MAX_SUBJECT),
            "time_expire": req.expires_at.with_timezone(&beijing()).format("%Y-%m-%d %H:%M:%S").to_string(),
        });
        let node = self
            .call("alipay.trade.precreate", &biz, Some(&req.notify_url))
            .await?;
        let qr_code = model::required_str(&node, "qr_code")?;
        Ok(Prepared {
            prepay: json!({ "qr_code": qr_code }),
        })
    }

    async fn do_query(&self, out_trade_no: &str) -> Result<PaymentStatus, GatewayError> {
        let biz = json!({ "out_trade_no": out_trade_no });
        match self.call("alipay.trade.query", &biz, None).await {
            Ok(node) => model::payment_status(&node),
            // After precreate no trade exists until the buyer scans (B2).
            Err(GatewayError::Business { code, .. }) if code == "ACQ.TRADE_NOT_EXIST" => {
                Ok(not_found())
            }
            Err(e) => Err(e),
        }
    }

    /// Closing an unscanned precreate answers TRADE_NOT_EXIST; like every
    /// other unclean answer it is settled by a query. Note the QR code itself
    /// stays payable until `time_expire`: a later payment arrives as a
    /// notification and is handled as paid-after-cancel.
    async fn do_close(&self, out_trade_no: &str) -> Result<CloseOutcome, GatewayError> {
        let biz = json!({ "out_trade_no": out_trade_no });
        let close_error = match self.call("alipay.trade.close", &biz, None).await {
            Ok(_) => return Ok(CloseOutcome::Closed),
            Err(e) => e,
        };
        let query = self.query(out_trade_no).await;
        http_client::settle_close(close_error, query)
    }

    async fn do_refund(&self, req: &RefundRequest) -> Result<RefundStatus, GatewayError> {
        let mut biz = json!({
            "out_trade_no": req.out_trade_no,
            "refund_amount": req.amount.to_yuan_string(),
            "out_request_no": req.out_refund_no,
        });
        if !req.reason.is_empty() {
            biz["refund_reason"] = json!(truncate_chars(&req.reason, MAX_SUBJECT));
        }
        let node = self.call("alipay.trade.refund", &biz, None).await?;
        model::refund_answer(&node, req.amount)
    }

    async fn do_query_refund(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<RefundStatus, GatewayError> {
        let biz = json!({ "out_trade_no": out_trade_no, "out_request_no": out_refund_no });
        match self
            .call("alipay.trade.fastpay.refund.query", &biz, None)
            .await
        {
            Ok(node) => model::refund_query_answer(&node),
            Err(GatewayError::Business { code, .. }) if code == "ACQ.TRADE_NOT_EXIST" => {
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
        let biz = json!({ "bill_type": "trade", "bill_date": date.format("%Y-%m-%d").to_string() });
        let node = match self
            .call("alipay.data.dataservice.bill.downloadurl.query", &biz, None)
            .await
        {
            Ok(node) => node,
            Err(GatewayError::Business { code, .. }) if code == "isp.bill_not_exist" => {
                return Err(GatewayError::NoBill)
            }
            Err(e) => return Err(e),
        };
        if let Some(code) = node.get("bill_file_code").and_then(Value::as_str) {
            if code.starts_with("EMPTY_DATA") {
                return Err(GatewayError::NoBill);
            }
        }
        let url = model::required_str(&node, "bill_download_url")?;
        let parsed = url::Url::parse(&url)
            .map_err(|e| GatewayError::Protocol(format!("bill_download_url {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(GatewayError::Protocol(format!(
                "bill_download_url {url:?} is not HTTP"
            )));
        }
        // A plain GET: the URL carries its own short-lived token (B4).
        let response = self
            .client
            .get(parsed)
            .send()
            .await
            .map_err(|e| classify_transport(&e))?;
        http_client::download_to_file(response, dest).await?;
        // Alipay announces no digest for its zip.
        Ok(DownloadedBill {
            expected_sha1: None,
        })
    }
}

#[async_trait]
impl Gateway for Alipay {
    fn channel(&self) -> Channel {
        Channel::Alipay
    }

    async fn prepay(&self, req: &PrepayRequest) -> Result<Prepared, GatewayError> {
        observe(
            Channel::Alipay,
            "prepay",
            &req.out_trade_no,
            self.do_prepay(req),
        )
        .await
    }

    async fn query(&self, out_trade_no: &str) -> Result<PaymentStatus, GatewayError> {
        observe(
            Channel::Alipay,
            "query",
            out_trade_no,
            self.do_query(out_trade_no),
        )
        .await
    }

    async fn close(&self, out_trade_no: &str) -> Result<CloseOutcome, GatewayError> {
        observe(
            Channel::Alipay,
            "close",
            out_trade_no,
            self.do_close(out_trade_no),
        )
        .await
    }

    async fn refund(&self, req: &RefundRequest) -> Result<RefundStatus, GatewayError> {
        observe(
            Channel::Alipay,
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
            Channel::Alipay,
            "query_refund",
            out_trade_no,
            self.do_query_refund(out_trade_no, out_refund_no),
        )
        .await
    }

    async fn download_bill(
        &self,
        date: NaiveDate,
        dest: &Path,
    ) -> Result<DownloadedBill, GatewayError> {
        observe(
            Channel::Alipay,
            "download_bill",
            "",
            self.do_download_bill(date, dest),
        )
        .await
    }

    fn verify_notification(
        &self,
        _headers: &Headers,
        body: &[u8],
        _now: DateTime<Utc>,
    ) -> Result<Notification, NotificationError> {
        // Alipay signs no timestamp header; replays are the worker's inbox's job.
        notify::verify(&self.config, body)
    }
}
