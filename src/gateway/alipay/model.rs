//! Alipay's answer nodes translated into the gateway types. Yuan strings
//! become `Money` only through the strict `Money::parse_yuan`; a bad amount is
//! a protocol violation, never a rounded guess.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value};

use crate::domain::Money;
use crate::gateway::http_client::beijing;
use crate::gateway::{GatewayError, PaymentStatus, RefundState, RefundStatus, TradeState};

type Node = Map<String, Value>;

fn text<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

pub(super) fn required_str(node: &Node, key: &str) -> Result<String, GatewayError> {
    text(node, key)
        .map(str::to_string)
        .ok_or_else(|| GatewayError::Protocol(format!("Alipay answer lacks {key}")))
}

/// Alipay's `code` (and `sub_code`), classified once (docs/gateways.md B1).
pub(super) fn check_code(node: Node) -> Result<Node, GatewayError> {
    let code = text(&node, "code").unwrap_or("").to_string();
    let sub_code = text(&node, "sub_code").map(str::to_string);
    let message = text(&node, "sub_msg")
        .or(text(&node, "msg"))
        .unwrap_or("")
        .to_string();
    let describe = || match &sub_code {
        Some(sub) => format!("{code} {sub}: {message}"),
        None => format!("{code}: {message}"),
    };
    match (code.as_str(), sub_code.as_deref()) {
        ("10000", _) => Ok(node),
        // Service unavailable, or the business layer's own system error: the
        // call may have been processed, so query before deciding.
        ("20000", _) | ("40004", Some("ACQ.SYSTEM_ERROR")) => {
            Err(GatewayError::Unknown(describe()))
        }
        // 10003: created, payment in progress (trade.pay only).
        ("10003", _) => Err(GatewayError::Unknown(describe())),
        ("40005", _) => Err(GatewayError::Transient(describe())),
        _ => Err(GatewayError::Business {
            code: sub_code.unwrap_or(code),
            message,
        }),
    }
}

pub(super) fn yuan(node: &Node, key: &str) -> Result<Option<Money>, GatewayError> {
    match text(node, key) {
        Some(v) => Money::parse_yuan(v)
            .map(Some)
            .map_err(|e| GatewayError::Protocol(format!("Alipay {key}: {e}"))),
        None => Ok(None),
    }
}

/// `yyyy-MM-dd HH:mm:ss` in Beijing time (an optional fraction is accepted:
/// `gmt_refund` carries one).
pub(crate) fn beijing_time(value: &str) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S%.f").ok()?;
    beijing()
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

fn time(node: &Node, key: &str) -> Result<Option<DateTime<Utc>>, GatewayError> {
    match text(node, key) {
        Some(v) => beijing_time(v)
            .map(Some)
            .ok_or_else(|| GatewayError::Protocol(format!("Alipay {key}: bad time {v:?}"))),
        None => Ok(None),
    }
}

pub(super) fn payment_status(node: &Node) -> Result<PaymentStatus, GatewayError> {
    let status = text(node, "trade_status").unwrap_or("");
    let paid_at = time(node, "send_pay_date")?;
    let state = match status {
        "WAIT_BUYER_PAY" => TradeState::NotPaid,
        "TRADE_SUCCESS" | "TRADE_FINISHED" => TradeState::Paid,
        // Closed unpaid (timeout) or closed by a full refund: only a paid
        // trade has a payment date.
        "TRADE_CLOSED" if paid_at.is_some() => TradeState::Refunded,
        "TRADE_CLOSED" => TradeState::Closed,
        other => {
            return Err(GatewayError::Protocol(format!(
                "Alipay trade_status {other:?}"
            )))
        }
    };
    Ok(PaymentStatus {
        state,
        transaction_id: text(node, "trade_no").map(str::to_string),
        amount: yuan(node, "total_amount")?,
        paid_at,
    })
}

/// `alipay.trade.refund` is synchronous: code 10000 with `fund_change=Y`
/// means this call moved the money. `N` means no new money moved, which is
/// also the answer to a repeated `out_request_no`; the refund query tells
/// those apart, so that is "processing" (the worker queries).
pub(super) fn refund_answer(node: &Node, requested: Money) -> Result<RefundStatus, GatewayError> {
    let moved = text(node, "fund_change") == Some("Y");
    // refund_fee is the trade's cumulative refund; it must at least cover this one.
    let cumulative = yuan(node, "refund_fee")?;
    let state = match cumulative {
        Some(total) if moved && total >= requested => RefundState::Succeeded,
        _ => RefundState::Processing,
    };
    Ok(RefundStatus {
        state,
        gateway_refund_id: None,
        amount: Some(requested),
    })
}

/// `refund_status` absent means Alipay has no successful refund under that
/// `out_request_no` (B2: "not received or failed"). Since refunds are
/// synchronous, that is `NotFound`: the worker may safely refund again with
/// the same `out_request_no`, which Alipay treats idempotently.
pub(super) fn refund_query_answer(node: &Node) -> Result<RefundStatus, GatewayError> {
    let state = match text(node, "refund_status") {
        Some("REFUND_SUCCESS") => RefundState::Succeeded,
        Some("REFUND_PROCESSING") => RefundState::Processing,
        Some("REFUND_FAIL") => RefundState::Failed("REFUND_FAIL".into()),
        None => RefundState::NotFound,
        Some(other) => {
            return Err(GatewayError::Protocol(format!(
                "Alipay refund_status {other:?}"
            )))
        }
    };
    let amount = match state {
        RefundState::NotFound => None,
        _ => yuan(node, "refund_amount")?,
    };
    Ok(RefundStatus {
        state,
        gateway_refund_id: None,
        amount,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: &str) -> Node {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn codes() {
        assert!(check_code(node(r#"{"code":"10000"}"#)).is_ok());
        assert!(matches!(
            check_code(node(r#"{"code":"20000","sub_code":"isp.unknow-error"}"#)),
            Err(GatewayError::Unknown(_))
        ));
        assert!(matches!(
            check_code(node(r#"{"code":"40004","sub_code":"ACQ.SYSTEM_ERROR"}"#)),
            Err(GatewayError::Unknown(_))
        ));
        assert!(matches!(
            check_code(node(r#"{"code":"40005"}"#)),
            Err(GatewayError::Transient(_))
        ));
        assert_eq!(
            check_code(node(
                r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"交易不存在"}"#
            )),
            Err(GatewayError::Business {
                code: "ACQ.TRADE_NOT_EXIST".into(),
                message: "交易不存在".into()
            })
        );
        assert!(matches!(
            check_code(node(r#"{"code":"40002","msg":"Invalid Arguments"}"#)),
            Err(GatewayError::Business { code, .. }) if code == "40002"
        ));
    }

    #[test]
    fn trade_states() {
        let s = payment_status(&node(
            r#"{"trade_status":"TRADE_SUCCESS","trade_no":"T","total_amount":"88.88","send_pay_date":"2024-01-01 12:00:05"}"#,
        ))
        .unwrap();
        assert_eq!(s.state, TradeState::Paid);
        assert_eq!(s.amount, Some(Money::from_fen(8888).unwrap()));
        assert_eq!(s.paid_at.unwrap().to_rfc3339(), "2024-01-01T04:00:05+00:00");
        let closed = |extra: &str| {
            payment_status(&node(&format!(
                r#"{{"trade_status":"TRADE_CLOSED","total_amount":"1.00"{extra}}}"#
            )))
            .unwrap()
            .state
        };
        assert_eq!(closed(""), TradeState::Closed);
        assert_eq!(
            closed(r#","send_pay_date":"2024-01-01 12:00:05""#),
            TradeState::Refunded
        );
        assert!(matches!(
            payment_status(&node(
                r#"{"trade_status":"WAIT_BUYER_PAY","total_amount":"1.5"}"#
            )),
            Err(GatewayError::Protocol(_))
        ));
    }

    #[test]
    fn refunds() {
        let ten = Money::from_fen(1000).unwrap();
        let r = refund_answer(&node(r#"{"fund_change":"Y","refund_fee":"10.00"}"#), ten).unwrap();
        assert_eq!(r.state, RefundState::Succeeded);
        let r = refund_answer(&node(r#"{"fund_change":"N","refund_fee":"10.00"}"#), ten).unwrap();
        assert_eq!(r.state, RefundState::Processing);
        let q = refund_query_answer(&node(
            r#"{"refund_status":"REFUND_SUCCESS","refund_amount":"10.00"}"#,
        ))
        .unwrap();
        assert_eq!((q.state, q.amount), (RefundState::Succeeded, Some(ten)));
        assert_eq!(
            refund_query_answer(&node(r#"{"out_request_no":"R"}"#))
                .unwrap()
                .state,
            RefundState::NotFound
        );
    }
}
