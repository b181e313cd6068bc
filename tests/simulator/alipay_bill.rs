//! Alipay's trade bill through the API: the download URL, the GBK zip.

use std::io::Read;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn bill_is_a_gbk_zip() {
    let h = Harness::start().await;
    let day = today_cn();
    let biz = json!({"out_trade_no": "ALI0006", "total_amount": "88.88", "subject": "测试,商品"});
    ali(&h, "alipay.trade.precreate", biz, None).await;
    h.control(
        "/sim/pay",
        json!({"channel": "alipay", "out_trade_no": "ALI0006"}),
    )
    .await;
    let refund =
        json!({"out_trade_no": "ALI0006", "refund_amount": "10.00", "out_request_no": "RF001"});
    ali(&h, "alipay.trade.refund", refund, None).await;

    let q = json!({"bill_type": "trade", "bill_date": day.to_string()});
    let node = ali(
        &h,
        "alipay.data.dataservice.bill.downloadurl.query",
        q,
        None,
    )
    .await;
    let url = node["bill_download_url"].as_str().expect("url");
    assert!(url.starts_with(&h.sim.base_url()));
    let zip_bytes = h
        .http
        .get(url)
        .send()
        .await
        .expect("download")
        .bytes()
        .await
        .expect("bytes");
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes.to_vec())).expect("zip");
    assert_eq!(archive.len(), 2);
    let mut names = Vec::new();
    let mut detail = Vec::new();
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).expect("entry");
        let raw_name = f.name_raw().to_vec();
        let (name, _, bad) = encoding_rs::GBK.decode(&raw_name);
        assert!(!bad);
        if name.ends_with("_业务明细.csv") {
            f.read_to_end(&mut detail).expect("read");
        }
        names.push(name.into_owned());
    }
    assert!(
        names.iter().any(|n| n.ends_with("_业务明细(汇总).csv")),
        "{names:?}"
    );
    let sim_bill = h
        .http
        .get(h.url(&format!("/sim/bill?channel=alipay&date={day}")))
        .send()
        .await
        .expect("sim bill")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(
        sim_bill.to_vec(),
        detail,
        "/sim/bill is the archive's detail file"
    );
    let (text, _, bad) = encoding_rs::GBK.decode(&detail);
    assert!(!bad);
    let rows: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(rows.len(), 3, "{text}");
    assert_eq!(rows[0].split(',').count(), 25);
    let pay: Vec<&str> = rows[1].split(',').collect();
    assert_eq!(pay.len(), 25);
    assert_eq!(
        (pay[1], pay[2], pay[3], pay[11], pay[12], pay[22]),
        (
            "ALI0006\t",
            "交易\t",
            "测试，商品",
            "88.88",
            "88.88",
            "-0.53"
        )
    );
    let refund: Vec<&str> = rows[2].split(',').collect();
    assert_eq!(
        (refund[2], refund[11], refund[21], refund[22]),
        ("退款\t", "-10.00", "RF001\t", "0.06")
    );
    assert!(text.contains("#交易合计：1笔，商家实收共88.88元"));
    assert!(text.contains("#退款合计：1笔，商家实收退款共-10.00元"));

    let later = day + chrono::Duration::days(2);
    let q = json!({"bill_type": "trade", "bill_date": later.to_string()});
    let node = ali(
        &h,
        "alipay.data.dataservice.bill.downloadurl.query",
        q,
        None,
    )
    .await;
    assert_eq!(node["sub_code"], "isp.bill_not_exist");
}
