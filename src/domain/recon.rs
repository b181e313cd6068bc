//! Reconciliation without I/O (docs/contract.md §6): the discrepancy categories, the
//! matching of a bill against our orders, and the summary figures. The bill
//! streams through [`Matcher::observe`]; only the ids seen and the orders the
//! bill mentions are kept, so memory follows the local side, not the bill.

mod keys;
mod matcher;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Channel, Money, OrderId, OrderStatus};

pub use matcher::{LocalOrder, LocalRefund, MatchOutcome, Matcher};

/// What a bill row says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillKind {
    /// A successful payment.
    Payment,
    /// A refund initiated that day (WeChat 交易状态 REFUND, Alipay 业务类型 退款).
    Refund,
    /// A payment revoked at the gateway (WeChat REVOKED): no money moved.
    Revoked,
}

/// One detail row of a gateway's bill, already in our types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillRecord {
    /// The line number in the (decompressed) bill, 1-based, for messages.
    pub line: u64,
    pub kind: BillKind,
    pub out_trade_no: String,
    pub transaction_id: String,
    /// The bill's own status text (WeChat 交易状态, Alipay 业务类型).
    pub gateway_status: String,
    /// Payments: the order amount; refunds: the refunded amount (positive).
    pub amount: Money,
    /// The service fee charged to the merchant for this row, in 10^-5 yuan
    /// (WeChat's precision), signed: a refund gives part of it back.
    pub fee: i64,
    pub refund_no: Option<String>,
    pub time: Option<NaiveDateTime>,
}

/// The discrepancy categories, in report order. The strings are the contract's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    AmountMismatch,
    MissingLocal,
    MissingGateway,
    StatusMismatch,
    PaidAfterCancel,
    RefundMismatch,
    Duplicate,
}

impl Category {
    pub const ALL: [Category; 7] = [
        Category::AmountMismatch,
        Category::MissingLocal,
        Category::MissingGateway,
        Category::StatusMismatch,
        Category::PaidAfterCancel,
        Category::RefundMismatch,
        Category::Duplicate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::AmountMismatch => "amount_mismatch",
            Category::MissingLocal => "missing_local",
            Category::MissingGateway => "missing_gateway",
            Category::StatusMismatch => "status_mismatch",
            Category::PaidAfterCancel => "paid_after_cancel",
            Category::RefundMismatch => "refund_mismatch",
            Category::Duplicate => "duplicate",
        }
    }

    /// What finance reads as the group title.
    pub fn title(self) -> &'static str {
        match self {
            Category::AmountMismatch => "Amount mismatch",
            Category::MissingLocal => "In the bill, unknown to us",
            Category::MissingGateway => "Paid with us, missing from the bill",
            Category::StatusMismatch => "Paid per bill, pending with us",
            Category::PaidAfterCancel => "Paid after cancellation",
            Category::RefundMismatch => "Refund mismatch",
            Category::Duplicate => "Listed twice in the bill",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Category {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown discrepancy category {s:?}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Open,
    AutoRepaired,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Open => "open",
            Resolution::AutoRepaired => "auto_repaired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(Resolution::Open),
            "auto_repaired" => Some(Resolution::AutoRepaired),
            _ => None,
        }
    }
}

/// One line of the report. Absent sides are `None` (JSON null), never 0:
/// "we have nothing" and "we have 0 fen" are different findings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discrepancy {
    pub category: Category,
    pub out_trade_no: String,
    pub order_id: Option<OrderId>,
    pub local_amount: Option<Money>,
    pub gateway_amount: Option<Money>,
    pub local_status: Option<OrderStatus>,
    pub gateway_status: Option<String>,
    pub gateway_transaction_id: Option<String>,
    pub resolution: Resolution,
}

/// Orders of one status created in the business day (an SQL `GROUP BY`, so
/// the summary never loads the orders themselves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusGroup {
    pub status: OrderStatus,
    /// The prepay failed for good (payment_state `failed`).
    pub prepay_failed: bool,
    pub count: i64,
    pub total: i64,
}

/// What the bill itself says, from its own columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BillTotals {
    pub count: i64,
    pub amount: i64,
    pub refund_amount: i64,
    /// 10^-5 yuan, as WeChat states fees.
    pub fee_e5: i64,
}

impl BillTotals {
    /// The fee in fen, rounded half away from zero (the fee total is the
    /// only figure the bills give with more precision than a fen).
    pub fn fee_fen(&self) -> i64 {
        let (q, r) = (self.fee_e5 / 1000, self.fee_e5 % 1000);
        if r.abs() >= 500 {
            q + self.fee_e5.signum()
        } else {
            q
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub order_count: i64,
    pub total_amount: i64,
    pub average_amount: i64,
    pub paid_count: i64,
    pub failed_count: i64,
    pub pending_count: i64,
    pub success_rate: f64,
    pub bill_count: i64,
    pub bill_amount: i64,
    pub bill_refund_amount: i64,
    pub bill_fee: i64,
    pub matched_count: i64,
    pub matched_amount: i64,
    pub discrepancy_count: i64,
    pub discrepancies_by_category: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(RunStatus::Running),
            "completed" => Some(RunStatus::Completed),
            "failed" => Some(RunStatus::Failed),
            _ => None,
        }
    }
}

/// Where the bill came from (the report's `bill_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BillSourceKind {
    Gateway,
    File,
}

impl BillSourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BillSourceKind::Gateway => "gateway",
            BillSourceKind::File => "file",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gateway" => Some(BillSourceKind::Gateway),
            "file" => Some(BillSourceKind::File),
            _ => None,
        }
    }
}

/// One reconciliation run, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconRun {
    pub run_id: Uuid,
    pub channel: Channel,
    pub date: NaiveDate,
    pub status: RunStatus,
    pub trigger: String,
    pub bill_source: BillSourceKind,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Present once the run completed.
    pub summary: Option<Summary>,
    /// Why the run failed.
    pub error: Option<String>,
}

/// A run with its findings: what every report format renders.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub run: ReconRun,
    pub discrepancies: Vec<Discrepancy>,
}

/// `a / b` rounded half up, for non-negative `a` and positive `b`; 0 when `b` is 0.
pub fn div_round_half_up(a: i64, b: i64) -> i64 {
    if b <= 0 {
        return 0;
    }
    let (a, b) = (i128::from(a), i128::from(b));
    ((2 * a + b) / (2 * b)) as i64
}

/// The summary figures exactly as docs/contract.md §6 defines them. `paid`, `failed`
/// and `pending` partition the orders: an order still `pending_payment`
/// whose prepay failed for good counts as failed, not pending.
pub fn summarize(
    groups: &[StatusGroup],
    bill: &BillTotals,
    matched_count: i64,
    matched_amount: i64,
    discrepancies: &[Discrepancy],
) -> Summary {
    let (mut count, mut total, mut paid, mut failed, mut pending) = (0, 0, 0, 0, 0);
    for g in groups {
        count += g.count;
        total += g.total;
        match g.status {
            s if s.is_paid_or_later() => paid += g.count,
            OrderStatus::Cancelled => failed += g.count,
            OrderStatus::PendingPayment if g.prepay_failed => failed += g.count,
            _ => pending += g.count,
        }
    }
    let mut by_category: BTreeMap<String, i64> = Category::ALL
        .iter()
        .map(|c| (c.as_str().to_string(), 0))
        .collect();
    for d in discrepancies {
        *by_category
            .entry(d.category.as_str().to_string())
            .or_default() += 1;
    }
    Summary {
        order_count: count,
        total_amount: total,
        average_amount: div_round_half_up(total, count),
        paid_count: paid,
        failed_count: failed,
        pending_count: pending,
        success_rate: if count == 0 {
            0.0
        } else {
            paid as f64 / count as f64
        },
        bill_count: bill.count,
        bill_amount: bill.amount,
        bill_refund_amount: bill.refund_amount,
        bill_fee: bill.fee_fen(),
        matched_count,
        matched_amount,
        discrepancy_count: discrepancies.len() as i64,
        discrepancies_by_category: by_category,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_rounds_half_up() {
        assert_eq!(div_round_half_up(0, 0), 0);
        assert_eq!(div_round_half_up(5, 2), 3);
        assert_eq!(div_round_half_up(4, 3), 1);
        assert_eq!(div_round_half_up(5, 3), 2);
        assert_eq!(div_round_half_up(1000, 3), 333);
        assert_eq!(div_round_half_up(1001, 2), 501);
    }

    #[test]
    fn fee_rounds_to_fen_half_away_from_zero() {
        let fee = |e5| {
            BillTotals {
                fee_e5: e5,
                ..Default::default()
            }
            .fee_fen()
        };
        assert_eq!(fee(600), 1);
        assert_eq!(fee(499), 0);
        assert_eq!(fee(1500), 2);
        assert_eq!(fee(-1500), -2);
        assert_eq!(fee(-1499), -1);
    }

    #[test]
    fn summary_partitions_orders() {
        let g = |status, prepay_failed, count, total| StatusGroup {
            status,
            prepay_failed,
            count,
            total,
        };
        let groups = [
            g(OrderStatus::Paid, false, 2, 300),
            g(OrderStatus::Refunded, false, 1, 100),
            g(OrderStatus::Cancelled, false, 1, 50),
            g(OrderStatus::PendingPayment, true, 1, 25),
            g(OrderStatus::PendingPayment, false, 1, 26),
        ];
        let s = summarize(&groups, &BillTotals::default(), 0, 0, &[]);
        assert_eq!(
            (s.order_count, s.total_amount, s.average_amount),
            (6, 501, 84)
        );
        assert_eq!((s.paid_count, s.failed_count, s.pending_count), (3, 2, 1));
        assert_eq!(s.success_rate, 0.5);
        assert_eq!(s.discrepancies_by_category.len(), 7);
        let empty = summarize(&[], &BillTotals::default(), 0, 0, &[]);
        assert_eq!((empty.average_amount, empty.success_rate), (0, 0.0));
    }
}
