//! What both adapters share: one HTTP client per adapter, the classification
//! of transport failures, the metrics/tracing wrapper of every call, the
//! "close, and if that was not clean, query" rule, and bill file writing.
//!
//! Classification happens here, at the failure site, because only here do we
//! know whether the request could have left the machine.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{FixedOffset, Offset, Utc};
use tokio::io::AsyncWriteExt;
use tracing::Instrument;

use super::{CloseOutcome, GatewayError, PaymentStatus, TradeState};
use crate::domain::Channel;

/// Beijing time (+08:00): both gateways' wall clock.
pub(crate) fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| Utc.fix())
}

/// A client for one gateway. No redirects: a signed request must reach the
/// host it was signed for, and neither gateway redirects API calls.
pub(crate) fn build_client(timeout: Duration) -> Result<reqwest::Client, GatewayError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("payrecon/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| GatewayError::Protocol(format!("HTTP client: {e}")))
}

/// A failed `send()` or body read. Only a connect failure proves the request
/// never reached the gateway; anything after that (timeout, reset, a body cut
/// short) may have been processed.
pub(crate) fn classify_transport(err: &reqwest::Error) -> GatewayError {
    if err.is_builder() {
        return GatewayError::Protocol(format!("request could not be built: {err}"));
    }
    if err.is_connect() {
        return GatewayError::Transient(format!("connect failed: {err}"));
    }
    if err.is_timeout() {
        return GatewayError::Unknown(format!("timed out: {err}"));
    }
    GatewayError::Unknown(format!("transport: {err}"))
}

/// A non-success HTTP status before looking at any business code: 429 was
/// refused before processing; 5xx (and anything unexpected) may have been
/// processed.
pub(crate) fn classify_status(status: reqwest::StatusCode, body: &str) -> Option<GatewayError> {
    if status.as_u16() == 429 {
        return Some(GatewayError::Transient(format!(
            "rate limited (429): {}",
            snippet(body)
        )));
    }
    if status.is_server_error() {
        return Some(GatewayError::Unknown(format!(
            "HTTP {status}: {}",
            snippet(body)
        )));
    }
    None
}

/// The first characters of a body, for error texts (never a whole bill).
pub(crate) fn snippet(body: &str) -> String {
    const MAX: usize = 200;
    match body.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &body[..i]),
        None => body.to_string(),
    }
}

/// Runs one gateway call inside a span and records its outcome and latency.
pub(crate) async fn observe<T, F>(
    channel: Channel,
    operation: &'static str,
    out_trade_no: &str,
    call: F,
) -> Result<T, GatewayError>
where
    F: Future<Output = Result<T, GatewayError>>,
{
    let span = tracing::info_span!(
        "gateway_call",
        channel = channel.as_str(),
        operation,
        out_trade_no
    );
    let started = Instant::now();
    let result = call.instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.kind(),
    };
    metrics::counter!(
        "payrecon_gateway_calls_total",
        "channel" => channel.as_str(),
        "operation" => operation,
        "outcome" => outcome
    )
    .increment(1);
    metrics::histogram!(
        "payrecon_gateway_call_duration_seconds",
        "channel" => channel.as_str(),
        "operation" => operation
    )
    .record(elapsed.as_secs_f64());
    // The worker logs what it decides; this is the per-call trace.
    span.in_scope(|| {
        tracing::debug!(
            outcome,
            duration_ms = elapsed.as_millis() as u64,
            "gateway call finished"
        )
    });
    result
}

/// After any close answer other than a clean close, the query decides: the
/// protocols do not reliably say "already paid" (docs/gateways.md Part F), so the
/// trade's real state is the only trustworthy answer.
pub(crate) fn settle_close(
    close_error: GatewayError,
    query: Result<PaymentStatus, GatewayError>,
) -> Result<CloseOutcome, GatewayError> {
    match query {
        Ok(status) => match status.state {
            TradeState::Paid | TradeState::Refunded => Ok(CloseOutcome::AlreadyPaid(status)),
            TradeState::Closed | TradeState::NotFound => Ok(CloseOutcome::Closed),
            // Still payable: the close did not take; report why it failed.
            TradeState::NotPaid => Err(close_error),
        },
        // Neither answer settled it. Prefer whichever error says "try again",
        // so a final business code never hides an unknown state.
        Err(query_error) => {
            if close_error.is_retryable() || !query_error.is_retryable() {
                Err(close_error)
            } else {
                Err(query_error)
            }
        }
    }
}

/// Streams a bill download into `dest`. The status must be 200; the body is
/// written as received (the reconciliation parser decompresses and checks it).
pub(crate) async fn download_to_file(
    mut response: reqwest::Response,
    dest: &Path,
) -> Result<u64, GatewayError> {
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        let body = response.text().await.unwrap_or_default();
        if let Some(err) = classify_status(status, &body) {
            return Err(err);
        }
        return Err(GatewayError::Business {
            code: format!("HTTP_{}", status.as_u16()),
            message: format!("bill download refused: {}", snippet(&body)),
        });
    }
    let io_err = |e: std::io::Error| GatewayError::Protocol(format!("{}: {e}", dest.display()));
    let mut file = tokio::fs::File::create(dest).await.map_err(io_err)?;
    let mut written = 0u64;
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                drop(file);
                // A half-written bill must not be mistaken for a whole one.
                let _ = tokio::fs::remove_file(dest).await;
                return Err(classify_transport(&e));
            }
        };
        file.write_all(&chunk).await.map_err(io_err)?;
        written += chunk.len() as u64;
    }
    file.flush().await.map_err(io_err)?;
    file.sync_all().await.map_err(io_err)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: TradeState) -> PaymentStatus {
        PaymentStatus {
            state,
            transaction_id: None,
            amount: None,
            paid_at: None,
        }
    }

    #[test]
    fn close_is_settled_by_the_query() {
        let business = || GatewayError::Business {
            code: "X".into(),
            message: "y".into(),
        };
        let unknown = || GatewayError::Unknown("t".into());
        assert_eq!(
            settle_close(business(), Ok(status(TradeState::Paid))),
            Ok(CloseOutcome::AlreadyPaid(status(TradeState::Paid)))
        );
        assert!(matches!(
            settle_close(unknown(), Ok(status(TradeState::Refunded))),
            Ok(CloseOutcome::AlreadyPaid(_))
        ));
        assert_eq!(
            settle_close(business(), Ok(status(TradeState::NotFound))),
            Ok(CloseOutcome::Closed)
        );
        assert_eq!(
            settle_close(business(), Ok(status(TradeState::Closed))),
            Ok(CloseOutcome::Closed)
        );
        assert_eq!(
            settle_close(business(), Ok(status(TradeState::NotPaid))),
            Err(business())
        );
        assert_eq!(settle_close(business(), Err(unknown())), Err(unknown()));
        assert_eq!(settle_close(unknown(), Err(business())), Err(unknown()));
    }

    #[test]
    fn statuses() {
        assert!(matches!(
            classify_status(reqwest::StatusCode::TOO_MANY_REQUESTS, ""),
            Some(GatewayError::Transient(_))
        ));
        assert!(matches!(
            classify_status(reqwest::StatusCode::BAD_GATEWAY, ""),
            Some(GatewayError::Unknown(_))
        ));
        assert_eq!(classify_status(reqwest::StatusCode::BAD_REQUEST, ""), None);
        assert_eq!(snippet(&"é".repeat(300)).chars().count(), 201);
    }
}
