//! WeChat Pay's `ALL` trade bill (docs/gateways.md A5): a 27-column header, detail
//! rows whose every value is prefixed with a backtick, then a summary header
//! and one summary row. The summary is checked against the rows, so a file
//! cut short or tampered with fails instead of reconciling a partial day.

use chrono::NaiveDateTime;

use super::lines::{split_csv, LineReader};
use super::{BillError, BillKind, BillRecord};
use crate::domain::{parse_signed_yuan, Money};

pub const DETAIL_HEADER: [&str; 27] = [
    "交易时间",
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "应结订单金额",
    "代金券金额",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "充值券退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
    "订单金额",
    "申请退款金额",
    "费率备注",
];

pub const SUMMARY_HEADER: [&str; 7] = [
    "总交易单数",
    "应结订单总金额",
    "退款总金额",
    "充值券退款总金额",
    "手续费总金额",
    "订单总金额",
    "申请退款总金额",
];

// Column positions in DETAIL_HEADER.
const TIME: usize = 0;
const TRANSACTION_ID: usize = 5;
const OUT_TRADE_NO: usize = 6;
const STATE: usize = 9;
const SETTLEMENT: usize = 12;
const REFUND_NO: usize = 15;
const REFUND: usize = 16;
const FEE: usize = 22;
const ORDER_AMOUNT: usize = 24;
const REFUND_APPLIED: usize = 25;

#[derive(Debug, PartialEq, Eq)]
enum Stage {
    Header,
    Details,
    SummaryRow,
    Done,
}

/// Sums of the detail rows, to check against the bill's own summary row.
#[derive(Debug, Default)]
struct Sums {
    rows: i64,
    settlement: i64,
    refund: i64,
    fee: i64,
}

pub struct WechatBill {
    lines: LineReader,
    stage: Stage,
    sums: Sums,
    failed: bool,
}

impl WechatBill {
    pub fn new(content: Box<dyn std::io::BufRead + Send>) -> Self {
        Self {
            lines: LineReader::new(content),
            stage: Stage::Header,
            sums: Sums::default(),
            failed: false,
        }
    }

    fn step(&mut self) -> Result<Option<BillRecord>, BillError> {
        loop {
            let line_no = self.lines.line + 1;
            let Some(raw) = self.lines.next_line()? else {
                return match self.stage {
                    Stage::Done => Ok(None),
                    Stage::Header => Err(BillError::Truncated {
                        line: 0,
                        message: "the bill is empty (no header line)".into(),
                    }),
                    _ => Err(BillError::Truncated {
                        line: line_no - 1,
                        message: "the bill ends before its summary row".into(),
                    }),
                };
            };
            let text = std::str::from_utf8(raw)
                .map_err(|_| BillError::line(line_no, "not valid UTF-8"))?;
            let text = text.strip_prefix('\u{feff}').unwrap_or(text);
            if text.trim().is_empty() {
                continue;
            }
            match self.stage {
                Stage::Header => {
                    check_header(line_no, text, &DETAIL_HEADER, "detail")?;
                    self.stage = Stage::Details;
                }
                Stage::Details if text.starts_with('`') => {
                    return parse_detail(line_no, text, &mut self.sums).map(Some);
                }
                Stage::Details => {
                    check_header(line_no, text, &SUMMARY_HEADER, "summary")?;
                    self.stage = Stage::SummaryRow;
                }
                Stage::SummaryRow => {
                    check_summary(line_no, text, &self.sums)?;
                    self.stage = Stage::Done;
                }
                Stage::Done => {
                    return Err(BillError::line(
                        line_no,
                        "unexpected content after the summary row",
                    ))
                }
            }
        }
    }
}

impl Iterator for WechatBill {
    type Item = Result<BillRecord, BillError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let result = self.step();
        if result.is_err() {
            self.failed = true;
        }
        result.transpose()
    }
}

fn check_header(line: u64, text: &str, expected: &[&str], what: &str) -> Result<(), BillError> {
    let fields: Vec<&str> = text.split(',').map(str::trim).collect();
    if fields != expected {
        return Err(BillError::line(
            line,
            format!(
                "expected the {what} header of an ALL trade bill ({} columns starting {:?}), found {:?}",
                expected.len(),
                expected[0],
                truncate(text, 80)
            ),
        ));
    }
    Ok(())
}

/// Strips the backtick that prefixes every value (and its absence is an error:
/// it is how the format marks data lines).
fn values(line: u64, text: &str, expected: usize) -> Result<Vec<String>, BillError> {
    let fields = split_csv(text);
    if fields.len() != expected {
        return Err(BillError::line(
            line,
            format!("expected {expected} fields, found {}", fields.len()),
        ));
    }
    fields
        .into_iter()
        .enumerate()
        .map(|(i, f)| match f.strip_prefix('`') {
            Some(v) => Ok(v.trim().to_string()),
            None if f.is_empty() => Ok(String::new()),
            None => Err(BillError::line(
                line,
                format!(
                    "field {} is not backtick-prefixed: {:?}",
                    i + 1,
                    truncate(&f, 40)
                ),
            )),
        })
        .collect()
}

fn amount(line: u64, v: &[String], col: usize, decimals: usize) -> Result<i64, BillError> {
    parse_signed_yuan(&v[col], decimals).map_err(|_| {
        BillError::line(
            line,
            format!("bad amount in column {}: {:?}", column_name(col), v[col]),
        )
    })
}

fn column_name(col: usize) -> &'static str {
    DETAIL_HEADER.get(col).copied().unwrap_or("?")
}

fn money(line: u64, v: &[String], col: usize) -> Result<Money, BillError> {
    let fen = amount(line, v, col, 2)?;
    Money::from_fen(fen).map_err(|_| {
        BillError::line(
            line,
            format!(
                "negative amount in column {}: {:?}",
                column_name(col),
                v[col]
            ),
        )
    })
}

fn parse_detail(line: u64, text: &str, sums: &mut Sums) -> Result<BillRecord, BillError> {
    let v = values(line, text, DETAIL_HEADER.len())?;
    let state = v[STATE].clone();
    let kind = match state.as_str() {
        "SUCCESS" => BillKind::Payment,
        "REFUND" => BillKind::Refund,
        "REVOKED" => BillKind::Revoked,
        other => return Err(BillError::line(line, format!("unknown 交易状态 {other:?}"))),
    };
    let out_trade_no = v[OUT_TRADE_NO].clone();
    if out_trade_no.is_empty() {
        return Err(BillError::line(line, "empty 商户订单号"));
    }
    let time = NaiveDateTime::parse_from_str(&v[TIME], "%Y-%m-%d %H:%M:%S")
        .map_err(|_| BillError::line(line, format!("bad 交易时间 {:?}", v[TIME])))?;
    let fee = amount(line, &v, FEE, 5)?;
    let settlement = amount(line, &v, SETTLEMENT, 2)?;
    let refund = amount(line, &v, REFUND, 2)?;
    let (amount, refund_no) = match kind {
        BillKind::Refund => (money(line, &v, REFUND_APPLIED)?, Some(v[REFUND_NO].clone())),
        BillKind::Payment | BillKind::Revoked => (money(line, &v, ORDER_AMOUNT)?, None),
    };
    let overflow = || BillError::line(line, "sums overflow");
    sums.rows += 1;
    sums.settlement = sums
        .settlement
        .checked_add(settlement)
        .ok_or_else(overflow)?;
    sums.refund = sums.refund.checked_add(refund).ok_or_else(overflow)?;
    sums.fee = sums.fee.checked_add(fee).ok_or_else(overflow)?;
    Ok(BillRecord {
        line,
        kind,
        out_trade_no,
        transaction_id: v[TRANSACTION_ID].clone(),
        gateway_status: state,
        amount,
        fee,
        refund_no,
        time: Some(time),
    })
}

fn check_summary(line: u64, text: &str, sums: &Sums) -> Result<(), BillError> {
    let v = values(line, text, SUMMARY_HEADER.len())?;
    let count: i64 = v[0]
        .parse()
        .map_err(|_| BillError::line(line, format!("bad 总交易单数 {:?}", v[0])))?;
    let parse = |i: usize, decimals: usize| {
        parse_signed_yuan(&v[i], decimals).map_err(|_| {
            BillError::line(
                line,
                format!("bad amount in {}: {:?}", SUMMARY_HEADER[i], v[i]),
            )
        })
    };
    let checks = [
        (SUMMARY_HEADER[0], count, sums.rows),
        (SUMMARY_HEADER[1], parse(1, 2)?, sums.settlement),
        (SUMMARY_HEADER[2], parse(2, 2)?, sums.refund),
        (SUMMARY_HEADER[4], parse(4, 5)?, sums.fee),
    ];
    for (name, stated, summed) in checks {
        if stated != summed {
            return Err(BillError::line(
                line,
                format!("the summary's {name} is {stated} but the detail rows add up to {summed} (a truncated or altered bill)"),
            ));
        }
    }
    Ok(())
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}
