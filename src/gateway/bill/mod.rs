//! The gateways' trade bills, parsed as they are downloaded: WeChat Pay's
//! `ALL` trade bill (gzip or plain CSV, backtick-prefixed values) and
//! Alipay's 业务明细 (a zip holding a GBK CSV, or that CSV alone).
//!
//! Everything streams: a bill is read line by line, so memory stays flat
//! whatever its size. When the gateway announced a SHA1 of the content, a
//! first pass hashes the decompressed stream and only then does the parse
//! start, so a corrupted download never yields a single record.

pub mod alipay;
mod lines;
mod source;
pub mod wechat;

use std::path::Path;

use crate::domain::Channel;

pub use source::{content_sha1, open_content};

pub use crate::domain::recon::{BillKind, BillRecord};

#[derive(Debug, thiserror::Error)]
pub enum BillError {
    #[error("reading the bill: {0}")]
    Io(#[from] std::io::Error),
    #[error("bill line {line}: {message}")]
    Line { line: u64, message: String },
    #[error("bill truncated after line {line}: {message}")]
    Truncated { line: u64, message: String },
    #[error(
        "bill digest mismatch: the gateway announced SHA1 {expected}, the content has {actual}"
    )]
    Digest { expected: String, actual: String },
    #[error("bill archive: {0}")]
    Archive(String),
}

impl BillError {
    pub(crate) fn line(line: u64, message: impl Into<String>) -> Self {
        BillError::Line {
            line,
            message: message.into(),
        }
    }
}

/// A streaming reader over one bill's detail rows.
pub type BillRecords = Box<dyn Iterator<Item = Result<BillRecord, BillError>> + Send>;

/// Opens a bill file as downloaded (the format is detected by its magic
/// bytes), checks `expected_sha1` over the decompressed content when given,
/// and returns its detail rows as a stream. The iterator ends after the first
/// error: a malformed bill is never half-read as if it were complete.
pub fn open_bill(
    channel: Channel,
    path: &Path,
    expected_sha1: Option<&str>,
) -> Result<BillRecords, BillError> {
    if let Some(expected) = expected_sha1 {
        let actual = content_sha1(channel, path)?;
        if !actual.eq_ignore_ascii_case(expected.trim()) {
            return Err(BillError::Digest {
                expected: expected.trim().to_ascii_lowercase(),
                actual,
            });
        }
    }
    let content = open_content(channel, path)?;
    Ok(match channel {
        Channel::WechatPay => Box::new(wechat::WechatBill::new(content)),
        Channel::Alipay => Box::new(alipay::AlipayBill::new(content)),
    })
}

/// A bill without rows in the channel's own (uncompressed) format: what a
/// day without trades reconciles against when the gateway has no bill file.
pub fn empty_bill(channel: Channel) -> Vec<u8> {
    match channel {
        Channel::WechatPay => format!(
            "{}\n{}\n`0,`0.00,`0.00,`0.00,`0.00000,`0.00,`0.00\n",
            wechat::DETAIL_HEADER.join(","),
            wechat::SUMMARY_HEADER.join(",")
        )
        .into_bytes(),
        Channel::Alipay => {
            let text = format!(
                "#支付宝业务明细查询\n#-----------------------------------------业务明细列表----------------------------------------\n{}\n#-----------------------------------------业务明细列表结束------------------------------------\n#交易合计：0笔，商家实收共0.00元，商家优惠共0.00元\n#退款合计：0笔，商家实收退款共0.00元，商家优惠退款共0.00元\n",
                alipay::DETAIL_HEADER.join(",")
            );
            encoding_rs::GBK.encode(&text).0.into_owned()
        }
    }
}
