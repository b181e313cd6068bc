//! Alipay's 业务明细 (docs/gateways.md B4): GBK text, `#` comment lines around a
//! 25-column table, ids with a trailing tab, 交易 rows and 退款 rows whose
//! amounts are negative. The closing `#…业务明细列表结束` marker must be
//! there: a file without it was cut short.

use chrono::NaiveDateTime;

use super::lines::{split_csv, LineReader};
use super::{BillError, BillKind, BillRecord};
use crate::domain::{parse_signed_yuan, Money};

pub const DETAIL_HEADER: [&str; 25] = [
    "支付宝交易号",
    "商户订单号",
    "业务类型",
    "商品名称",
    "创建时间",
    "完成时间",
    "门店编号",
    "门店名称",
    "操作员",
    "终端号",
    "对方账户",
    "订单金额（元）",
    "商家实收（元）",
    "支付宝红包（元）",
    "集分宝（元）",
    "支付宝优惠（元）",
    "商家优惠（元）",
    "券核销金额（元）",
    "券名称",
    "商家红包消费金额（元）",
    "卡消费金额（元）",
    "退款批次号/请求号",
    "服务费（元）",
    "分润（元）",
    "备注",
];

const TRADE_NO: usize = 0;
const OUT_TRADE_NO: usize = 1;
const BIZ_TYPE: usize = 2;
const FINISHED: usize = 5;
const ORDER_AMOUNT: usize = 11;
const REFUND_NO: usize = 21;
const SERVICE_FEE: usize = 22;

/// The footer marker that closes the detail table.
const END_MARKER: &str = "业务明细列表结束";

#[derive(Debug, PartialEq, Eq)]
enum Stage {
    Header,
    Details,
    Done,
}

pub struct AlipayBill {
    lines: LineReader,
    stage: Stage,
    payments: u64,
    refunds: u64,
    failed: bool,
}

impl AlipayBill {
    pub fn new(content: Box<dyn std::io::BufRead + Send>) -> Self {
        Self {
            lines: LineReader::new(content),
            stage: Stage::Header,
            payments: 0,
            refunds: 0,
            failed: false,
        }
    }

    fn step(&mut self) -> Result<Option<BillRecord>, BillError> {
        loop {
            let line_no = self.lines.line + 1;
            let Some(raw) = self.lines.next_line()? else {
                return match self.stage {
                    Stage::Done => Ok(None),
                    _ => Err(BillError::Truncated {
                        line: line_no - 1,
                        message: format!("the bill ends without its #…{END_MARKER} line"),
                    }),
                };
            };
            let text = encoding_rs::GBK
                .decode_without_bom_handling_and_without_replacement(raw)
                .ok_or_else(|| BillError::line(line_no, "not valid GBK text"))?;
            let text = text.trim_end();
            if text.is_empty() {
                continue;
            }
            if let Some(comment) = text.strip_prefix('#') {
                if comment.contains(END_MARKER) {
                    if self.stage != Stage::Details {
                        return Err(BillError::line(line_no, "end marker before the header"));
                    }
                    self.stage = Stage::Done;
                } else if self.stage == Stage::Done {
                    check_footer(line_no, comment, self.payments, self.refunds)?;
                }
                continue;
            }
            match self.stage {
                Stage::Header => {
                    check_header(line_no, text)?;
                    self.stage = Stage::Details;
                }
                Stage::Details => {
                    let record = parse_detail(line_no, text)?;
                    match record.kind {
                        BillKind::Refund => self.refunds += 1,
                        _ => self.payments += 1,
                    }
                    return Ok(Some(record));
                }
                Stage::Done => {
                    return Err(BillError::line(
                        line_no,
                        "a data line after the end of the detail table",
                    ))
                }
            }
        }
    }
}

/// `#交易合计：N笔，…` and `#退款合计：N笔，…` state how many rows there are.
fn check_footer(line: u64, comment: &str, payments: u64, refunds: u64) -> Result<(), BillError> {
    for (prefix, counted) in [("交易合计", payments), ("退款合计", refunds)] {
        let Some(rest) = comment.strip_prefix(prefix) else {
            continue;
        };
        let rest = rest.trim_start_matches(['：', ':']);
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(stated) = digits.parse::<u64>() else {
            return Err(BillError::line(line, format!("unreadable #{prefix} line")));
        };
        if stated != counted {
            return Err(BillError::line(
                    line,
                    format!("#{prefix} states {stated} rows but the table has {counted} (a truncated or altered bill)"),
                ));
        }
    }
    Ok(())
}

impl Iterator for AlipayBill {
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

fn check_header(line: u64, text: &str) -> Result<(), BillError> {
    let fields: Vec<String> = split_csv(text).into_iter().map(clean).collect();
    // Some merchants' files carry extra trailing columns; the 25 we read
    // must be there, in order.
    let ok = fields.len() >= DETAIL_HEADER.len()
        && fields.iter().zip(DETAIL_HEADER).all(|(f, h)| f == h);
    if !ok {
        return Err(BillError::line(
            line,
            format!(
                "expected the 业务明细 header ({} columns starting 支付宝交易号), found {:?}",
                DETAIL_HEADER.len(),
                text.chars().take(80).collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// Alipay pads ids with a trailing tab so spreadsheets keep them as text.
fn clean(field: String) -> String {
    field
        .trim_matches(|c: char| c == '\t' || c == ' ')
        .to_string()
}

fn parse_detail(line: u64, text: &str) -> Result<BillRecord, BillError> {
    let v: Vec<String> = split_csv(text).into_iter().map(clean).collect();
    if v.len() < DETAIL_HEADER.len() {
        return Err(BillError::line(
            line,
            format!("expected {} fields, found {}", DETAIL_HEADER.len(), v.len()),
        ));
    }
    let amount = |col: usize, decimals: usize| {
        parse_signed_yuan(&v[col], decimals).map_err(|_| {
            BillError::line(
                line,
                format!("bad amount in column {}: {:?}", DETAIL_HEADER[col], v[col]),
            )
        })
    };
    let order_amount = amount(ORDER_AMOUNT, 2)?;
    // 服务费 is negative when charged to the merchant; a refund gives part back.
    let fee = amount(SERVICE_FEE, 2)?
        .checked_mul(-1000)
        .ok_or_else(|| BillError::line(line, "fee overflows"))?;
    let (kind, signed_ok) = match v[BIZ_TYPE].as_str() {
        "交易" => (BillKind::Payment, order_amount >= 0),
        "退款" => (BillKind::Refund, order_amount <= 0),
        other => {
            return Err(BillError::line(line, format!("unknown 业务类型 {other:?}")));
        }
    };
    if !signed_ok {
        return Err(BillError::line(
            line,
            format!("a {} row with amount {:?}", v[BIZ_TYPE], v[ORDER_AMOUNT]),
        ));
    }
    let amount = Money::from_fen(order_amount.abs())
        .map_err(|_| BillError::line(line, "amount out of range"))?;
    if v[OUT_TRADE_NO].is_empty() {
        return Err(BillError::line(line, "empty 商户订单号"));
    }
    let time = match v[FINISHED].as_str() {
        "" => None,
        t => Some(
            NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S")
                .map_err(|_| BillError::line(line, format!("bad 完成时间 {t:?}")))?,
        ),
    };
    let refund_no = match kind {
        BillKind::Refund => Some(v[REFUND_NO].clone()).filter(|s| !s.is_empty()),
        _ => None,
    };
    Ok(BillRecord {
        line,
        kind,
        out_trade_no: v[OUT_TRADE_NO].clone(),
        transaction_id: v[TRADE_NO].clone(),
        gateway_status: v[BIZ_TYPE].clone(),
        amount,
        fee,
        refund_no,
        time,
    })
}
