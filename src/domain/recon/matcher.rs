//! Matching a streamed bill against the local side of one channel-day.
//!
//! The local side is loaded up front (orders paid in the business day) or on
//! demand (orders the bill mentions, looked up in batches by the caller);
//! the bill side is only ever seen one row at a time. What is kept per
//! `out_trade_no` is one compact slot (see `keys.rs`): what matching needs
//! of our order, whether it was looked up in vain, whether the bill paid it
//! already (duplicates need that); for refunds, a sum per order.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::keys::KeyMap;
use super::{BillKind, BillRecord, BillTotals, Category, Discrepancy, Resolution};
use crate::domain::{Money, MoneyError, Order, OrderId, OrderStatus};

/// What matching needs of one of our orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalOrder {
    pub order_id: OrderId,
    pub out_trade_no: String,
    pub status: OrderStatus,
    pub total_amount: Money,
    pub paid_amount: Money,
    pub paid_at: Option<DateTime<Utc>>,
}

impl From<&Order> for LocalOrder {
    fn from(o: &Order) -> Self {
        LocalOrder {
            order_id: o.order_id,
            out_trade_no: o.out_trade_no(),
            status: o.status,
            total_amount: o.total_amount,
            paid_amount: o.paid_amount,
            paid_at: o.paid_at,
        }
    }
}

/// Our order as the matcher keeps it: its key is the out_trade_no.
#[derive(Debug, Clone, Copy)]
struct Local {
    order_id: OrderId,
    status: OrderStatus,
    total_amount: Money,
    paid_amount: Money,
}

impl Local {
    fn of(o: &LocalOrder) -> Local {
        Local {
            order_id: o.order_id,
            status: o.status,
            total_amount: o.total_amount,
            paid_amount: o.paid_amount,
        }
    }

    /// The amount our side holds: what was paid, or what is due while unpaid.
    fn amount(&self) -> Money {
        if self.status.is_paid_or_later() {
            self.paid_amount
        } else {
            self.total_amount
        }
    }
}

/// Everything known of one out_trade_no.
#[derive(Debug, Default)]
struct Slot {
    local: Option<Local>,
    /// Paid in the business day: the bill must list it.
    expected: bool,
    /// Looked up and not ours.
    absent: bool,
    /// The bill listed its payment.
    seen: bool,
}

/// Our refunds of one order that fall in the business day, summed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRefund {
    pub order: LocalOrder,
    pub amount: Money,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MatchOutcome {
    /// Sorted by category, then `out_trade_no`.
    pub discrepancies: Vec<Discrepancy>,
    pub matched_count: i64,
    pub matched_amount: i64,
    pub bill: BillTotals,
}

#[derive(Debug, Default)]
pub struct Matcher {
    slots: KeyMap<Slot>,
    bill_refunds: HashMap<String, BillRefund>,
    bill: BillTotals,
    matched_count: i64,
    matched_amount: i64,
    discrepancies: Vec<Discrepancy>,
}

impl Matcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `orders` ids from the start: growing a map of a million
    /// holds the old table and the new one at once.
    pub fn with_capacity(orders: usize) -> Self {
        Matcher {
            slots: KeyMap::with_capacity(orders),
            ..Self::default()
        }
    }

    /// An order paid in the business day: the bill must list it.
    pub fn add_expected(&mut self, order: LocalOrder) {
        let slot = self
            .slots
            .get_or_insert_with(&order.out_trade_no, Slot::default);
        slot.expected = true;
        slot.local = Some(Local::of(&order));
    }

    /// An order the bill mentions, found by the caller's lookup.
    pub fn add_known(&mut self, order: LocalOrder) {
        let slot = self
            .slots
            .get_or_insert_with(&order.out_trade_no, Slot::default);
        if slot.local.is_none() {
            slot.local = Some(Local::of(&order));
        }
    }

    /// An `out_trade_no` the caller looked up and did not find.
    pub fn mark_absent(&mut self, out_trade_no: &str) {
        self.slots
            .get_or_insert_with(out_trade_no, Slot::default)
            .absent = true;
    }

    fn local(&self, out_trade_no: &str) -> Option<Local> {
        self.slots.get(out_trade_no).and_then(|s| s.local)
    }

    /// The ids among `records` the caller still has to look up.
    pub fn to_look_up<'a>(&self, records: impl IntoIterator<Item = &'a BillRecord>) -> Vec<String> {
        let mut wanted: Vec<String> = records
            .into_iter()
            .map(|r| &r.out_trade_no)
            .filter(|otn| {
                self.slots
                    .get(otn)
                    .is_none_or(|s| s.local.is_none() && !s.absent)
            })
            .cloned()
            .collect();
        wanted.sort();
        wanted.dedup();
        wanted
    }

    /// Matches one bill row. Its order, if we have one, must already have
    /// been added (see [`Matcher::to_look_up`]); otherwise it is unknown to us.
    pub fn observe(&mut self, rec: &BillRecord) -> Result<(), MoneyError> {
        match rec.kind {
            BillKind::Revoked => {}
            BillKind::Refund => {
                self.bill.refund_amount = add(self.bill.refund_amount, rec.amount.fen())?;
                self.bill.fee_e5 = add(self.bill.fee_e5, rec.fee)?;
                let entry = match self.bill_refunds.get_mut(&rec.out_trade_no) {
                    Some(e) => e,
                    None => self
                        .bill_refunds
                        .entry(rec.out_trade_no.clone())
                        .or_insert_with(|| BillRefund {
                            amount: Money::ZERO,
                            transaction_id: rec.transaction_id.clone(),
                            status: rec.gateway_status.clone(),
                        }),
                };
                entry.amount = entry.amount.checked_add(rec.amount)?;
            }
            BillKind::Payment => {
                self.bill.count += 1;
                self.bill.amount = add(self.bill.amount, rec.amount.fen())?;
                self.bill.fee_e5 = add(self.bill.fee_e5, rec.fee)?;
                self.observe_payment(rec)?;
            }
        }
        Ok(())
    }

    fn observe_payment(&mut self, rec: &BillRecord) -> Result<(), MoneyError> {
        let slot = self
            .slots
            .get_or_insert_with(&rec.out_trade_no, Slot::default);
        let local = slot.local;
        if std::mem::replace(&mut slot.seen, true) {
            self.discrepancies
                .push(discrepancy(Category::Duplicate, rec, local.as_ref()));
            return Ok(());
        }
        let Some(local) = local else {
            self.discrepancies
                .push(discrepancy(Category::MissingLocal, rec, None));
            return Ok(());
        };
        let category = match local.status {
            OrderStatus::PendingPayment => Some(Category::StatusMismatch),
            OrderStatus::Cancelled => Some(Category::PaidAfterCancel),
            _ if local.paid_amount != rec.amount => Some(Category::AmountMismatch),
            _ => None,
        };
        match category {
            Some(c) => self.discrepancies.push(discrepancy(c, rec, Some(&local))),
            None => {
                self.matched_count += 1;
                self.matched_amount = add(self.matched_amount, rec.amount.fen())?;
            }
        }
        Ok(())
    }

    /// Closes the match: what we have paid and the bill does not list, and
    /// refunds that differ between the sides (`local_refunds`: our refunds
    /// of the business day, one entry per order).
    pub fn finish(mut self, local_refunds: Vec<LocalRefund>) -> MatchOutcome {
        let mut missing: Vec<(String, Local)> = self
            .slots
            .iter_text()
            .filter(|(_, s)| s.expected && !s.seen)
            .filter_map(|(otn, s)| s.local.map(|l| (otn, l)))
            .collect();
        missing.sort_by(|a, b| a.0.cmp(&b.0));
        for (otn, local) in missing {
            self.discrepancies.push(Discrepancy {
                category: Category::MissingGateway,
                out_trade_no: otn,
                order_id: Some(local.order_id),
                local_amount: Some(local.amount()),
                gateway_amount: None,
                local_status: Some(local.status),
                gateway_status: None,
                gateway_transaction_id: None,
                resolution: Resolution::Open,
            });
        }
        self.finish_refunds(local_refunds);
        self.discrepancies
            .sort_by(|a, b| (a.category, &a.out_trade_no).cmp(&(b.category, &b.out_trade_no)));
        MatchOutcome {
            discrepancies: self.discrepancies,
            matched_count: self.matched_count,
            matched_amount: self.matched_amount,
            bill: self.bill,
        }
    }

    fn finish_refunds(&mut self, local_refunds: Vec<LocalRefund>) {
        let mut local: HashMap<String, LocalRefund> = local_refunds
            .into_iter()
            .map(|r| (r.order.out_trade_no.clone(), r))
            .collect();
        let mut bill_refunds: Vec<(String, BillRefund)> = self.bill_refunds.drain().collect();
        bill_refunds.sort_by(|a, b| a.0.cmp(&b.0));
        for (otn, refund) in bill_refunds {
            let amount = refund.amount;
            let ours = local.remove(&otn);
            let order = ours
                .as_ref()
                .map(|r| Local::of(&r.order))
                .or_else(|| self.local(&otn));
            let local_amount = ours.as_ref().map(|r| r.amount).unwrap_or(Money::ZERO);
            let Some(order) = order else {
                // A refund of an order we do not know: one finding per id is
                // enough, so only if its payment was not reported already.
                if !self.slots.get(&otn).is_some_and(|s| s.seen) {
                    self.discrepancies.push(Discrepancy {
                        category: Category::MissingLocal,
                        out_trade_no: otn,
                        order_id: None,
                        local_amount: None,
                        gateway_amount: Some(amount),
                        local_status: None,
                        gateway_status: Some(refund.status),
                        gateway_transaction_id: Some(refund.transaction_id),
                        resolution: Resolution::Open,
                    });
                }
                continue;
            };
            if local_amount != amount {
                self.discrepancies.push(Discrepancy {
                    category: Category::RefundMismatch,
                    out_trade_no: otn,
                    order_id: Some(order.order_id),
                    local_amount: Some(local_amount),
                    gateway_amount: Some(amount),
                    local_status: Some(order.status),
                    gateway_status: Some(refund.status),
                    gateway_transaction_id: Some(refund.transaction_id),
                    resolution: Resolution::Open,
                });
            }
        }
        let mut rest: Vec<LocalRefund> = local.into_values().collect();
        rest.sort_by(|a, b| a.order.out_trade_no.cmp(&b.order.out_trade_no));
        for r in rest.into_iter().filter(|r| !r.amount.is_zero()) {
            self.discrepancies.push(Discrepancy {
                category: Category::RefundMismatch,
                out_trade_no: r.order.out_trade_no.clone(),
                order_id: Some(r.order.order_id),
                local_amount: Some(r.amount),
                gateway_amount: Some(Money::ZERO),
                local_status: Some(r.order.status),
                gateway_status: None,
                gateway_transaction_id: None,
                resolution: Resolution::Open,
            });
        }
    }
}

/// The bill's refunds of one order, summed (a partial refund may come in several rows).
#[derive(Debug)]
struct BillRefund {
    amount: Money,
    transaction_id: String,
    status: String,
}

fn add(a: i64, b: i64) -> Result<i64, MoneyError> {
    a.checked_add(b).ok_or(MoneyError::Overflow)
}

fn discrepancy(category: Category, rec: &BillRecord, local: Option<&Local>) -> Discrepancy {
    Discrepancy {
        category,
        out_trade_no: rec.out_trade_no.clone(),
        order_id: local.map(|l| l.order_id),
        local_amount: local.map(Local::amount),
        gateway_amount: Some(rec.amount),
        local_status: local.map(|l| l.status),
        gateway_status: Some(rec.gateway_status.clone()),
        gateway_transaction_id: Some(rec.transaction_id.clone()).filter(|t| !t.is_empty()),
        resolution: Resolution::Open,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(v: i64) -> Money {
        Money::from_fen(v).unwrap()
    }

    fn local(status: OrderStatus, total: i64, paid: i64) -> LocalOrder {
        let id = OrderId::generate();
        LocalOrder {
            order_id: id,
            out_trade_no: id.out_trade_no(),
            status,
            total_amount: money(total),
            paid_amount: money(paid),
            paid_at: None,
        }
    }

    fn row(kind: BillKind, otn: &str, amount: i64, fee: i64) -> BillRecord {
        BillRecord {
            line: 2,
            kind,
            out_trade_no: otn.into(),
            transaction_id: format!("T-{otn}"),
            gateway_status: "SUCCESS".into(),
            amount: money(amount),
            fee,
            refund_no: None,
            time: None,
        }
    }

    #[test]
    fn lookups_are_asked_once() {
        let mut m = Matcher::new();
        let a = local(OrderStatus::Paid, 100, 100);
        m.add_expected(a.clone());
        m.mark_absent("x");
        let rows = [
            row(BillKind::Payment, &a.out_trade_no, 100, 0),
            row(BillKind::Payment, "x", 1, 0),
            row(BillKind::Payment, "y", 1, 0),
            row(BillKind::Refund, "y", 1, 0),
        ];
        assert_eq!(m.to_look_up(&rows), vec!["y".to_string()]);
    }

    #[test]
    fn duplicates_refunds_and_missing() {
        let mut m = Matcher::new();
        let paid = local(OrderStatus::Paid, 100, 100);
        let absent = local(OrderStatus::Shipped, 300, 300);
        m.add_expected(paid.clone());
        m.add_expected(absent.clone());
        for r in [
            row(BillKind::Payment, &paid.out_trade_no, 100, 600),
            row(BillKind::Payment, &paid.out_trade_no, 100, 600),
            row(BillKind::Refund, &paid.out_trade_no, 30, -180),
            row(BillKind::Refund, &paid.out_trade_no, 20, -120),
            row(BillKind::Refund, "stranger", 5, 0),
            row(BillKind::Revoked, "revoked", 9, 0),
        ] {
            m.observe(&r).unwrap();
        }
        let out = m.finish(vec![LocalRefund {
            order: paid.clone(),
            amount: money(50),
        }]);
        assert_eq!((out.matched_count, out.matched_amount), (1, 100));
        assert_eq!(out.bill.count, 2);
        assert_eq!(out.bill.amount, 200);
        assert_eq!(out.bill.refund_amount, 55);
        assert_eq!(out.bill.fee_e5, 900);
        let cats: Vec<(Category, &str)> = out
            .discrepancies
            .iter()
            .map(|d| (d.category, d.out_trade_no.as_str()))
            .collect();
        // The refunds of `paid` add up to ours (50): no refund_mismatch.
        assert_eq!(
            cats,
            vec![
                (Category::MissingLocal, "stranger"),
                (Category::MissingGateway, absent.out_trade_no.as_str()),
                (Category::Duplicate, paid.out_trade_no.as_str()),
            ]
        );
        let missing = &out.discrepancies[1];
        assert_eq!(missing.local_amount, Some(money(300)));
        assert_eq!(missing.gateway_amount, None);
    }

    #[test]
    fn local_refund_absent_from_the_bill() {
        let mut m = Matcher::new();
        let o = local(OrderStatus::Paid, 100, 100);
        m.add_known(o.clone());
        m.observe(&row(BillKind::Payment, &o.out_trade_no, 100, 0))
            .unwrap();
        let out = m.finish(vec![LocalRefund {
            order: o.clone(),
            amount: money(40),
        }]);
        assert_eq!(out.discrepancies.len(), 1);
        let d = &out.discrepancies[0];
        assert_eq!(d.category, Category::RefundMismatch);
        assert_eq!(
            (d.local_amount, d.gateway_amount),
            (Some(money(40)), Some(Money::ZERO))
        );
    }
}
