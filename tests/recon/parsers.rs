//! The parsers on the committed real-format fixtures (made by
//! tests/fixtures/bills/make_fixtures.py, independently of the Rust code).

use std::path::PathBuf;

use payrecon::domain::recon::{BillKind, BillRecord};
use payrecon::domain::Channel;
use payrecon::gateway::bill::{content_sha1, open_bill, BillError};

use crate::support::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bills")
        .join(name)
}

fn read_all(
    channel: Channel,
    path: &std::path::Path,
    sha1: Option<&str>,
) -> Result<Vec<BillRecord>, BillError> {
    open_bill(channel, path, sha1)?.collect()
}

fn check_wechat_fixture(records: &[BillRecord]) {
    assert_eq!(records.len(), 3);
    let r = &records[0];
    assert_eq!(r.line, 2);
    assert_eq!(r.kind, BillKind::Payment);
    assert_eq!(r.out_trade_no, "ORD20240101001");
    assert_eq!(r.transaction_id, "4200001234202401011234567890");
    assert_eq!(r.gateway_status, "SUCCESS");
    assert_eq!(r.amount, fen(100));
    assert_eq!(r.fee, 600);
    assert_eq!(r.refund_no, None);
    assert_eq!(r.time.unwrap().to_string(), "2024-01-01 12:00:00");
    // A quoted product name with a comma does not shift the columns.
    assert_eq!(records[1].amount, fen(8888));
    assert_eq!(records[1].fee, 53328);
    let refund = &records[2];
    assert_eq!(refund.kind, BillKind::Refund);
    assert_eq!(refund.gateway_status, "REFUND");
    assert_eq!(refund.amount, fen(40));
    assert_eq!(refund.fee, -240);
    assert_eq!(refund.refund_no.as_deref(), Some("RF20240101001"));
}

#[test]
fn wechat_fixture_plain_and_gzip() {
    let sha1 = std::fs::read_to_string(fixture("wechat_all.csv.sha1")).unwrap();
    let plain = read_all(
        Channel::WechatPay,
        &fixture("wechat_all.csv"),
        Some(sha1.trim()),
    )
    .unwrap();
    check_wechat_fixture(&plain);
    let gz = read_all(
        Channel::WechatPay,
        &fixture("wechat_all.csv.gz"),
        Some(sha1.trim()),
    )
    .unwrap();
    assert_eq!(plain, gz);
    // The digest is of the uncompressed content, whatever the container.
    assert_eq!(
        content_sha1(Channel::WechatPay, &fixture("wechat_all.csv.gz")).unwrap(),
        sha1.trim()
    );
}

#[test]
fn wechat_digest_mismatch_fails_before_parsing() {
    let err = open_bill(
        Channel::WechatPay,
        &fixture("wechat_all.csv.gz"),
        Some(&"0".repeat(40)),
    )
    .err()
    .expect("must fail");
    assert!(matches!(err, BillError::Digest { .. }), "{err}");
}

fn check_alipay_fixture(records: &[BillRecord]) {
    assert_eq!(records.len(), 3);
    let r = &records[0];
    assert_eq!(r.line, 6);
    assert_eq!(r.kind, BillKind::Payment);
    assert_eq!(r.out_trade_no, "ORDER1");
    assert_eq!(r.transaction_id, "2024010122001400000000000001");
    assert_eq!(r.gateway_status, "交易");
    assert_eq!(r.amount, fen(8888));
    assert_eq!(r.fee, 53000);
    assert_eq!(r.time.unwrap().to_string(), "2024-01-01 12:00:05");
    assert_eq!(records[1].out_trade_no, "ORDER2");
    assert_eq!(records[1].amount, fen(1000));
    let refund = &records[2];
    assert_eq!(refund.kind, BillKind::Refund);
    assert_eq!(refund.gateway_status, "退款");
    assert_eq!(refund.amount, fen(1000));
    assert_eq!(refund.fee, -6000);
    assert_eq!(refund.refund_no.as_deref(), Some("RF001"));
}

#[test]
fn alipay_fixture_zip_and_bare_csv() {
    let zipped = read_all(Channel::Alipay, &fixture("alipay_bill.zip"), None).unwrap();
    check_alipay_fixture(&zipped);
    let bare = read_all(Channel::Alipay, &fixture("alipay_detail.csv"), None).unwrap();
    assert_eq!(zipped, bare);
}

#[test]
fn writers_round_trip_through_the_parsers() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [pay("a1", 1000), pay("a2", 250), refund_row("a1", 300)];
    let w = write_file(dir.path(), "w.csv.gz", &gzip(wechat_bill(&rows).as_bytes()));
    let got = read_all(Channel::WechatPay, &w, None).unwrap();
    assert_eq!(
        got.iter()
            .map(|r| (r.out_trade_no.as_str(), r.amount.fen(), r.kind))
            .collect::<Vec<_>>(),
        vec![
            ("a1", 1000, BillKind::Payment),
            ("a2", 250, BillKind::Payment),
            ("a1", 300, BillKind::Refund)
        ]
    );
    let a = write_file(dir.path(), "a.zip", &alipay_zip(&alipay_bill(&rows)));
    let got = read_all(Channel::Alipay, &a, None).unwrap();
    assert_eq!(
        got.iter()
            .map(|r| (r.out_trade_no.as_str(), r.amount.fen(), r.kind))
            .collect::<Vec<_>>(),
        vec![
            ("a1", 1000, BillKind::Payment),
            ("a2", 250, BillKind::Payment),
            ("a1", 300, BillKind::Refund)
        ]
    );
}

/// Each malformed bill fails with a message that names the line.
#[test]
fn malformed_bills_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = wechat_bill(&[pay("a1", 1000), pay("a2", 2000)]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "wrong header",
            good.replacen("交易时间", "时间", 1).into_bytes(),
            "bill line 1:",
        ),
        (
            "bad amount",
            good.replacen("`20.00", "`20.0", 1).into_bytes(),
            "bill line 3: bad amount",
        ),
        (
            "truncated",
            good.lines()
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes(),
            "truncated after line 3",
        ),
        (
            "wrong encoding",
            encoding_rs::GBK.encode(&good).0.into_owned(),
            "bill line 1: not valid UTF-8",
        ),
        (
            "altered row",
            good.replacen("`10.00", "`11.00", 2).into_bytes(),
            "bill line 5:",
        ),
    ];
    for (what, bytes, expected) in cases {
        let path = write_file(dir.path(), "bad.csv", &bytes);
        let err = read_all(Channel::WechatPay, &path, None)
            .expect_err(what)
            .to_string();
        assert!(err.contains(expected), "{what}: {err}");
    }
    // A gzip stream cut short.
    let gz = gzip(good.as_bytes());
    let path = write_file(dir.path(), "cut.csv.gz", &gz[..gz.len() - 12]);
    let err = read_all(Channel::WechatPay, &path, None)
        .expect_err("cut gzip")
        .to_string();
    assert!(err.contains("truncated") || err.contains("line"), "{err}");

    let good = alipay_bill(&[pay("a1", 1000)]);
    let text = encoding_rs::GBK.decode(&good).0.into_owned();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "utf-8 instead of GBK",
            text.clone().into_bytes(),
            "bill line 1: not valid GBK",
        ),
        (
            "bad amount",
            encoding_rs::GBK
                .encode(&text.replacen(",10.00,", ",10.0,", 1))
                .0
                .into_owned(),
            "bill line 6: bad amount",
        ),
        (
            "truncated",
            encoding_rs::GBK
                .encode(&text.lines().take(6).collect::<Vec<_>>().join("\n"))
                .0
                .into_owned(),
            "truncated after line 6",
        ),
        (
            "wrong header",
            encoding_rs::GBK
                .encode(&text.replacen("支付宝交易号", "交易号", 1))
                .0
                .into_owned(),
            "bill line 5:",
        ),
    ];
    for (what, bytes, expected) in cases {
        let path = write_file(dir.path(), "bad.csv", &bytes);
        let err = read_all(Channel::Alipay, &path, None)
            .expect_err(what)
            .to_string();
        assert!(err.contains(expected), "{what}: {err}");
    }
}

/// A stored (uncompressed) entry damaged in transit still reads as text; its
/// CRC-32 gives it away.
#[test]
fn damaged_zip_entry_fails_its_crc() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let csv = alipay_bill(&[pay("a1", 1000), pay("a2", 2000)]);
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("2088_20261124_业务明细.csv", stored)
        .unwrap();
    zip.write_all(&csv).unwrap();
    let mut bytes = zip.finish().unwrap().into_inner();
    let good = write_file(dir.path(), "good.zip", &bytes);
    assert_eq!(read_all(Channel::Alipay, &good, None).unwrap().len(), 2);

    let at = bytes.windows(6).position(|w| w == b",20.00").unwrap();
    bytes[at + 1] = b'9';
    let bad = write_file(dir.path(), "bad.zip", &bytes);
    let err = read_all(Channel::Alipay, &bad, None)
        .expect_err("damaged")
        .to_string();
    assert!(err.contains("CRC-32"), "{err}");
}
