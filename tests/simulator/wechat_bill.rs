//! WeChat Pay's trade bill through the API: request, unsigned download, digest.

use std::io::Read;

use payrecon::gateway::crypto::sha1_hex;
use serde_json::json;

use crate::helpers::*;
use crate::wechat::prepay_body;

#[tokio::test]
async fn trade_bill_is_gzip_with_sha1_of_the_plain_text() {
    let h = Harness::start().await;
    let day = today_cn();
    let uri = format!("/v3/bill/tradebill?bill_date={day}&bill_type=ALL&tar_type=GZIP");
    let r = wx(&h, "GET", &uri, None).await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (400, json!("NO_STATEMENT_EXIST"))
    );

    let body = prepay_body(&h, "WX0005TEST", 100, "http://127.0.0.1:9/n");
    wx(&h, "POST", "/v3/pay/transactions/native", Some(&body)).await;
    h.control(
        "/sim/pay",
        json!({"channel": "wechat_pay", "out_trade_no": "WX0005TEST"}),
    )
    .await;
    let refund = json!({"out_trade_no": "WX0005TEST", "out_refund_no": "RF5",
        "amount": {"refund": 40, "total": 100, "currency": "CNY"}});
    assert_eq!(
        wx(&h, "POST", "/v3/refund/domestic/refunds", Some(&refund))
            .await
            .status,
        200
    );

    let r = wx(&h, "GET", &uri, None).await;
    assert_eq!(r.status, 200);
    assert!(r.verifies_with(&h.keys().wechat_platform_public));
    let answer = r.json();
    assert_eq!(answer["hash_type"], "SHA1");
    let url = answer["download_url"].as_str().expect("download_url");
    let base = h.sim.base_url();
    assert!(url.starts_with(&base), "{url} on {base}");
    let file = wx(&h, "GET", &url[base.len()..], None).await;
    assert_eq!(file.status, 200);
    assert!(
        file.header("wechatpay-signature").is_empty(),
        "downloads are unsigned"
    );
    let mut text = String::new();
    flate2::read::GzDecoder::new(&file.body[..])
        .read_to_string(&mut text)
        .expect("gzip");
    assert_eq!(
        sha1_hex(text.as_bytes()),
        answer["hash_value"].as_str().expect("hash")
    );

    let plain = h
        .http
        .get(h.url(&format!("/sim/bill?channel=wechat_pay&date={day}")))
        .send()
        .await
        .expect("sim bill")
        .text()
        .await
        .expect("text");
    assert_eq!(plain, text);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(lines[0].split(',').count(), 27);
    assert!(
        lines[1].contains("`SUCCESS,")
            && lines[1].contains("`1.00,")
            && lines[1].contains("`0.00600,")
    );
    assert!(lines[1].contains("`Order， with comma,"));
    assert!(
        lines[2].contains("`REFUND,")
            && lines[2].contains("`RF5,")
            && lines[2].contains("`-0.00240,")
    );
    assert_eq!(lines[1].split(',').count(), 27);
    assert_eq!(lines[4], "`2,`1.00,`0.40,`0.00,`0.00360,`1.00,`0.40");

    let gone = wx(&h, "GET", "/v3/billdownload/file?token=nope", None).await;
    assert_eq!(gone.status, 400);
    let plain_uri = format!("/v3/bill/tradebill?bill_date={day}&bill_type=SUCCESS");
    let r = wx(&h, "GET", &plain_uri, None).await;
    let url = r.json()["download_url"].as_str().expect("url").to_string();
    let file = wx(&h, "GET", &url[base.len()..], None).await;
    let text = String::from_utf8(file.body).expect("plain UTF-8");
    assert_eq!(text.lines().next().map(|l| l.split(',').count()), Some(20));
    assert_eq!(text.lines().count(), 4);
}
