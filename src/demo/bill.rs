//! The demo's bill: the simulator's own WeChat Pay trade bill for the day,
//! with one discrepancy of each kind written into it the way a real bill
//! can differ from our records. The summary row is recomputed, as the
//! parser checks it against the rows (an altered bill would be refused).

use anyhow::{anyhow, bail, Context};

use crate::domain::format_signed_yuan;

/// Columns summed into the summary row, with their number of decimals.
const SUMS: [(&str, &str, u32); 6] = [
    ("应结订单总金额", "应结订单金额", 2),
    ("退款总金额", "退款金额", 2),
    ("充值券退款总金额", "充值券退款金额", 2),
    ("手续费总金额", "手续费", 5),
    ("订单总金额", "订单金额", 2),
    ("申请退款总金额", "申请退款金额", 2),
];

pub struct WechatBill {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    summary_header: Vec<String>,
}

/// What to write into the bill: out_trade_nos of our own orders, each used once.
pub struct Edits {
    /// Paid with us; the bill says a yuan more.
    pub amount_mismatch: String,
    /// Paid with us; the bill forgets it.
    pub missing_gateway: String,
    /// Paid with us; the bill lists it twice.
    pub duplicate: String,
    /// Refunded in part with us; the bill's refund is a yuan more.
    pub refund_mismatch: String,
    /// Cancelled with us (timed out), with its total; the bill says paid.
    pub paid_after_cancel: (String, i64),
    /// Nobody's order; the bill says paid.
    pub missing_local: String,
}

impl WechatBill {
    pub fn parse(text: &str) -> anyhow::Result<WechatBill> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header = split(lines.next().context("an empty bill")?, false);
        let mut rows = Vec::new();
        let summary_header = loop {
            let line = lines.next().context("the bill has no summary")?;
            if line.starts_with('`') {
                rows.push(split(line, true));
            } else {
                break split(line, false);
            }
        };
        if rows.iter().any(|r| r.len() != header.len()) {
            bail!("a bill row does not have the header's columns");
        }
        Ok(WechatBill {
            header,
            rows,
            summary_header,
        })
    }

    fn col(&self, name: &str) -> anyhow::Result<usize> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| anyhow!("the bill has no column {name}"))
    }

    fn row_of(&self, otn: &str, state: &str) -> anyhow::Result<usize> {
        let (o, s) = (self.col("商户订单号")?, self.col("交易状态")?);
        self.rows
            .iter()
            .position(|r| r[o] == otn && r[s] == state)
            .ok_or_else(|| anyhow!("no {state} row for {otn} in the bill"))
    }

    fn set(&mut self, row: usize, name: &str, value: String) -> anyhow::Result<()> {
        let c = self.col(name)?;
        self.rows[row][c] = value;
        Ok(())
    }

    fn add_yuan(&mut self, row: usize, name: &str, fen: i64) -> anyhow::Result<()> {
        let c = self.col(name)?;
        let now = units(&self.rows[row][c])? / 1000;
        let sum = now.checked_add(fen).context("amount out of range")?;
        self.rows[row][c] = format_signed_yuan(sum, 2);
        Ok(())
    }

    pub fn apply(&mut self, e: &Edits) -> anyhow::Result<()> {
        let row = self.row_of(&e.amount_mismatch, "SUCCESS")?;
        self.add_yuan(row, "应结订单金额", 100)?;
        self.add_yuan(row, "订单金额", 100)?;

        let row = self.row_of(&e.refund_mismatch, "REFUND")?;
        self.add_yuan(row, "退款金额", 100)?;
        self.add_yuan(row, "申请退款金额", 100)?;

        let row = self.row_of(&e.duplicate, "SUCCESS")?;
        self.rows.push(self.rows[row].clone());

        let template = self.rows[self.row_of(&e.missing_gateway, "SUCCESS")?].clone();
        let (otn, fen) = &e.paid_after_cancel;
        self.push_payment(&template, otn, *fen, "4200000000demo0cancelled")?;
        self.push_payment(&template, &e.missing_local, 1234, "4200000000demo00unknown")?;

        let row = self.row_of(&e.missing_gateway, "SUCCESS")?;
        self.rows.remove(row);
        Ok(())
    }

    fn push_payment(
        &mut self,
        template: &[String],
        otn: &str,
        fen: i64,
        transaction_id: &str,
    ) -> anyhow::Result<()> {
        self.rows.push(template.to_vec());
        let row = self.rows.len() - 1;
        self.set(row, "商户订单号", otn.to_string())?;
        self.set(row, "微信订单号", transaction_id.to_string())?;
        self.set(row, "应结订单金额", format_signed_yuan(fen, 2))?;
        self.set(row, "订单金额", format_signed_yuan(fen, 2))?;
        let fee = fen.checked_mul(6).context("amount out of range")?;
        self.set(row, "手续费", format_signed_yuan(fee, 5))
    }

    pub fn render(&self) -> anyhow::Result<String> {
        let mut text = self.header.join(",");
        text.push('\n');
        for row in &self.rows {
            text.push_str(&ticked(row));
            text.push('\n');
        }
        text.push_str(&self.summary_header.join(","));
        text.push('\n');
        let mut summary = Vec::new();
        for name in &self.summary_header {
            if name == "总交易单数" {
                summary.push(self.rows.len().to_string());
                continue;
            }
            let (_, column, decimals) = SUMS
                .iter()
                .find(|(s, _, _)| s == name)
                .ok_or_else(|| anyhow!("unknown summary column {name}"))?;
            let c = self.col(column)?;
            let mut total: i64 = 0;
            for row in &self.rows {
                total = total
                    .checked_add(units(&row[c])?)
                    .with_context(|| format!("{name} out of range"))?;
            }
            summary.push(format_signed_yuan(
                total / 10_i64.pow(5 - decimals),
                *decimals,
            ));
        }
        text.push_str(&ticked(&summary));
        text.push('\n');
        Ok(text)
    }
}

fn split(line: &str, ticked: bool) -> Vec<String> {
    line.split(',')
        .map(|v| {
            let v = v.trim_end_matches('\r');
            match ticked {
                true => v.strip_prefix('`').unwrap_or(v).to_string(),
                false => v.to_string(),
            }
        })
        .collect()
}

fn ticked(values: &[String]) -> String {
    values
        .iter()
        .map(|v| format!("`{v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A yuan amount ("-12.3", "0.06000") in units of 10^-5 yuan, exactly.
fn units(text: &str) -> anyhow::Result<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if frac.len() > 5 || whole.is_empty() {
        bail!("not an amount: {text:?}");
    }
    let whole: i64 = whole.parse().with_context(|| format!("amount {text:?}"))?;
    let frac_units: i64 = match frac {
        "" => 0,
        f => {
            f.parse::<i64>()
                .with_context(|| format!("amount {text:?}"))?
                * 10_i64.pow(5 - f.len() as u32)
        }
    };
    let v = whole
        .checked_mul(100_000)
        .and_then(|w| w.checked_add(frac_units))
        .with_context(|| format!("amount {text:?} out of range"))?;
    Ok(if negative { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_exact() {
        assert_eq!(units("12.34").unwrap(), 1_234_000);
        assert_eq!(units("-0.06000").unwrap(), -6_000);
        assert_eq!(units("7").unwrap(), 700_000);
        assert!(units("1.234567").is_err());
        assert!(units("abc").is_err());
        assert!(units("99999999999999999.00").is_err());
    }
}
