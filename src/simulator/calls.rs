//! The call log (`GET /sim/calls`): every protocol call in the order it
//! arrived, with what fault injection made of it. A test reads it to check
//! that the client settled each unknown outcome with a query before it
//! decided anything, which the client's own records cannot prove.

use std::collections::VecDeque;

use serde::Serialize;
use serde_json::Value;

use crate::domain::Channel;

use super::faults::Verdict;

/// Enough for the largest test run; a long-lived demo simulator forgets the
/// oldest calls instead of growing without end.
const CAPACITY: usize = 200_000;

/// What a call was about, read from the request before it runs.
#[derive(Debug, Clone, Default)]
pub struct CallLabel {
    /// `prepay`, `query`, `close`, `refund`, `refund_query`, `bill`, or the
    /// protocol's own name for anything else.
    pub op: String,
    pub out_trade_no: Option<String>,
    pub out_refund_no: Option<String>,
}

impl CallLabel {
    pub fn new(op: &str) -> CallLabel {
        CallLabel {
            op: op.to_string(),
            ..CallLabel::default()
        }
    }

    pub fn trade(mut self, out_trade_no: Option<&str>) -> CallLabel {
        self.out_trade_no = out_trade_no.map(str::to_string);
        self
    }

    pub fn refund(mut self, out_refund_no: Option<&str>) -> CallLabel {
        self.out_refund_no = out_refund_no.map(str::to_string);
        self
    }

    /// WeChat Pay: from the method, the path under `/v3/` and the JSON body.
    pub fn wechat(method: &str, segs: &[&str], body: &[u8]) -> CallLabel {
        let field = |name: &str| -> Option<String> {
            serde_json::from_slice::<Value>(body)
                .ok()?
                .get(name)?
                .as_str()
                .map(str::to_string)
        };
        match (method, segs) {
            ("POST", ["pay", "transactions", "native" | "jsapi"]) => {
                CallLabel::new("prepay").trade(field("out_trade_no").as_deref())
            }
            ("GET", ["pay", "transactions", "out-trade-no", otn]) => {
                CallLabel::new("query").trade(Some(otn))
            }
            ("POST", ["pay", "transactions", "out-trade-no", otn, "close"]) => {
                CallLabel::new("close").trade(Some(otn))
            }
            ("POST", ["refund", "domestic", "refunds"]) => CallLabel::new("refund")
                .trade(field("out_trade_no").as_deref())
                .refund(field("out_refund_no").as_deref()),
            ("GET", ["refund", "domestic", "refunds", orn]) => {
                CallLabel::new("refund_query").refund(Some(orn))
            }
            ("GET", ["bill", ..] | ["billdownload", ..]) => CallLabel::new("bill"),
            _ => CallLabel::new(&format!("{method} /v3/{}", segs.join("/"))),
        }
    }

    /// Alipay: from the `method` parameter and `biz_content`.
    pub fn alipay(method: &str, biz_content: Option<&str>) -> CallLabel {
        let biz: Value = biz_content
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default();
        let field = |name: &str| biz.get(name).and_then(Value::as_str).map(str::to_string);
        let op = match method {
            "alipay.trade.precreate" => "prepay",
            "alipay.trade.query" => "query",
            "alipay.trade.close" => "close",
            "alipay.trade.refund" => "refund",
            "alipay.trade.fastpay.refund.query" => "refund_query",
            "alipay.data.dataservice.bill.downloadurl.query" => "bill",
            other => other,
        };
        CallLabel::new(op)
            .trade(field("out_trade_no").as_deref())
            .refund(field("out_request_no").as_deref())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Call {
    pub seq: u64,
    pub channel: Channel,
    pub op: String,
    pub out_trade_no: Option<String>,
    pub out_refund_no: Option<String>,
    /// `answered`; `failed` (HTTP 500, no effect); `timed_out` (took effect,
    /// the answer held past the client's timeout).
    pub fault: &'static str,
}

#[derive(Debug, Default)]
pub struct CallLog {
    next: u64,
    calls: VecDeque<Call>,
}

impl CallLog {
    pub fn record(&mut self, channel: Channel, label: CallLabel, verdict: Verdict) {
        self.next += 1;
        if self.calls.len() == CAPACITY {
            self.calls.pop_front();
        }
        self.calls.push_back(Call {
            seq: self.next,
            channel,
            op: label.op,
            out_trade_no: label.out_trade_no,
            out_refund_no: label.out_refund_no,
            fault: match verdict {
                Verdict::Proceed => "answered",
                Verdict::Fail => "failed",
                Verdict::Hang => "timed_out",
            },
        });
    }

    /// The calls after `since` (a `seq`), oldest first.
    pub fn since(&self, since: u64) -> Vec<Call> {
        self.calls
            .iter()
            .filter(|c| c.seq > since)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_payment_and_the_refund() {
        let body = br#"{"out_trade_no":"abc123","out_refund_no":"r1"}"#;
        let l = CallLabel::wechat("POST", &["refund", "domestic", "refunds"], body);
        assert_eq!(
            (
                l.op.as_str(),
                l.out_trade_no.as_deref(),
                l.out_refund_no.as_deref()
            ),
            ("refund", Some("abc123"), Some("r1"))
        );
        let l = CallLabel::wechat("GET", &["pay", "transactions", "out-trade-no", "x9"], b"");
        assert_eq!(
            (l.op.as_str(), l.out_trade_no.as_deref()),
            ("query", Some("x9"))
        );
        let l = CallLabel::alipay(
            "alipay.trade.fastpay.refund.query",
            Some(r#"{"out_trade_no":"o","out_request_no":"q"}"#),
        );
        assert_eq!(l.op, "refund_query");
        assert_eq!(l.out_refund_no.as_deref(), Some("q"));
    }

    #[test]
    fn the_log_keeps_order_and_reads_from_a_mark() {
        let mut log = CallLog::default();
        log.record(Channel::Alipay, CallLabel::new("prepay"), Verdict::Hang);
        log.record(Channel::Alipay, CallLabel::new("query"), Verdict::Proceed);
        let all = log.since(0);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].fault, "timed_out");
        assert_eq!(log.since(1)[0].op, "query");
    }
}
