//! `POST /notify/{channel}`: the gateways' callbacks. The signature (and
//! WeChat Pay's timestamp window) is verified here, at the edge, so a forged
//! notification — or WeChat Pay's deliberate `WECHATPAY/SIGNTEST/` probe —
//! gets 401 and enqueues nothing. A verified one is put raw on
//! `P.notifications` with publisher confirms and acknowledged only then;
//! if the broker did not take it the gateway gets a 5xx and sends it again.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use lapin::types::ShortString;
use serde_json::json;

use super::notify_queue::EnqueueError;
use super::HttpState;
use crate::domain::Channel;
use crate::gateway::Headers;
use crate::messaging::publisher;

pub async fn ingress(
    State(s): State<HttpState>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(channel) = channel.parse::<Channel>() else {
        return (StatusCode::NOT_FOUND, "unknown channel").into_response();
    };
    let Some(gateway) = s.gateways.get(&channel) else {
        return (StatusCode::NOT_FOUND, "channel not enabled").into_response();
    };
    // Over the route's body limit (MAX_NOTIFICATION_BODY_BYTES) or cut
    // short: answered in the gateway's own failure format, never enqueued.
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            tracing::warn!(channel = %channel, error = %rejection, "refused a notification body");
            metrics::counter!("payrecon_notifications_rejected_total", "channel" => channel.as_str())
                .increment(1);
            return fail(channel, rejection.status(), &rejection.body_text());
        }
    };
    let lowered: Headers = headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_ascii_lowercase(), v.to_string()))
        })
        .collect();
    if let Err(e) = gateway.verify_notification(&lowered, &body, Utc::now()) {
        tracing::warn!(channel = %channel, error = %e, "rejected a notification at the edge");
        metrics::counter!("payrecon_notifications_rejected_total", "channel" => channel.as_str())
            .increment(1);
        return fail(channel, StatusCode::UNAUTHORIZED, &e.to_string());
    }
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return fail(channel, StatusCode::BAD_REQUEST, "body is not UTF-8");
    };
    match enqueue(&s, channel, &lowered, text).await {
        Ok(()) => match channel {
            Channel::WechatPay => StatusCode::NO_CONTENT.into_response(),
            Channel::Alipay => (StatusCode::OK, "success").into_response(),
        },
        Err(e) => {
            tracing::error!(channel = %channel, error = %e, "could not enqueue a verified notification");
            fail(
                channel,
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily unable to accept",
            )
        }
    }
}

fn fail(channel: Channel, status: StatusCode, message: &str) -> Response {
    match channel {
        Channel::WechatPay => (
            status,
            axum::Json(json!({ "code": "FAIL", "message": message })),
        )
            .into_response(),
        Channel::Alipay => (status, "fail").into_response(),
    }
}

/// The headers a notification is verified with, under the names the
/// contract shows ("Wechatpay-Signature").
fn kept_headers(headers: &Headers) -> serde_json::Map<String, serde_json::Value> {
    headers
        .iter()
        .filter(|(k, _)| k.starts_with("wechatpay-") || k.as_str() == "content-type")
        .map(|(k, v)| (canonical_name(k), serde_json::Value::String(v.clone())))
        .collect()
}

fn canonical_name(lower: &str) -> String {
    lower
        .split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

async fn enqueue(
    s: &HttpState,
    channel: Channel,
    headers: &Headers,
    body: String,
) -> Result<(), EnqueueError> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let message = json!({
        "type": "gateway.notification",
        "request_id": request_id,
        "sent_at": crate::messaging::contracts::rfc3339(Utc::now()),
        "data": { "channel": channel.as_str(), "headers": kept_headers(headers), "body": body },
    })
    .to_string();
    let properties = publisher::json_properties()
        .with_message_id(ShortString::from(request_id.as_str()))
        .with_timestamp(Utc::now().timestamp() as u64);
    s.notify_queue
        .enqueue(message.into_bytes(), properties)
        .await
}
