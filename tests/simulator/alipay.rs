//! Alipay's gateway.do against the simulator, with a hand-rolled client.

use serde_json::json;
use std::collections::HashMap;

use crate::helpers::*;

/// The notification's V1 check: without `sign` and `sign_type`, sorted.
fn verify_notification(h: &Harness, n: &Received) -> HashMap<String, String> {
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&n.body).expect("form body");
    assert!(
        fields.iter().all(|(_, v)| !v.is_empty()),
        "empty fields are omitted"
    );
    let map: HashMap<String, String> = fields.iter().cloned().collect();
    let mut signed: Vec<&(String, String)> = fields
        .iter()
        .filter(|(k, _)| k != "sign" && k != "sign_type")
        .collect();
    signed.sort();
    let content = signed
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    assert!(
        h.keys()
            .alipay_public
            .verify_sha256_base64(content.as_bytes(), &map["sign"]),
        "notification signature"
    );
    map
}

#[tokio::test]
async fn signed_calls_verify_and_bad_signatures_are_refused() {
    let h = Harness::start().await;
    let biz = json!({"out_trade_no": "ALI0001", "total_amount": "88.88", "subject": "测试{x}"});
    let node = ali(
        &h,
        "alipay.trade.precreate",
        biz.clone(),
        Some("http://127.0.0.1:9/alipay"),
    )
    .await;
    assert_eq!(node["code"], "10000", "{node}");
    let qr = node["qr_code"].as_str().expect("qr_code").to_string();
    assert!(qr.starts_with("https://qr.alipay.com/"));
    let again = ali(&h, "alipay.trade.precreate", biz, None).await;
    assert_eq!(again["qr_code"], qr.as_str(), "idempotent");
    let changed = json!({"out_trade_no": "ALI0001", "total_amount": 88.8, "subject": "x"});
    let node = ali(&h, "alipay.trade.precreate", changed, None).await;
    assert_eq!(
        (node["code"].clone(), node["sub_code"].clone()),
        (json!("40004"), json!("ACQ.CONTEXT_INCONSISTENT"))
    );

    // Tampered after signing, signed by another key, wrong app id.
    let mut p = ali_params(
        &h,
        "alipay.trade.query",
        &json!({"out_trade_no": "ALI0001"}),
    );
    ali_sign(&h, &mut p);
    p.insert(
        "biz_content".into(),
        json!({"out_trade_no": "ALI0002"}).to_string(),
    );
    let (raw, node) = ali_send(&h, &p).await;
    assert_eq!(node["sub_code"], "isv.invalid-signature", "{raw}");
    assert!(!raw.contains("\\/"));
    let mut p = ali_params(
        &h,
        "alipay.trade.query",
        &json!({"out_trade_no": "ALI0001"}),
    );
    p.insert("app_id".into(), "2021999999999999".into());
    ali_sign(&h, &mut p);
    assert_eq!(ali_send(&h, &p).await.1["sub_code"], "isv.invalid-app-id");
    let mut p = ali_params(
        &h,
        "alipay.trade.query",
        &json!({"out_trade_no": "ALI0001"}),
    );
    p.insert(
        "sign".into(),
        h.keys()
            .alipay_private
            .sign_sha256_base64(b"x")
            .expect("sign"),
    );
    assert_eq!(ali_send(&h, &p).await.1["code"], "40002");

    // The same call as a form POST (smartwalle) and split query/form (Java).
    let mut p = ali_params(
        &h,
        "alipay.trade.query",
        &json!({"out_trade_no": "ALI0001"}),
    );
    ali_sign(&h, &mut p);
    let form = serde_urlencoded::to_string(&p).expect("form");
    let raw = h
        .http
        .post(h.url("/gateway.do"))
        .header(
            "content-type",
            "application/x-www-form-urlencoded;charset=utf-8",
        )
        .body(form)
        .send()
        .await
        .expect("post")
        .text()
        .await
        .expect("text");
    assert_eq!(
        ali_verified_node(&h, &raw)["sub_code"],
        "ACQ.TRADE_NOT_EXIST",
        "no trade before the scan"
    );
    let biz = p.remove("biz_content").expect("biz");
    let query = serde_urlencoded::to_string(&p).expect("query");
    let raw = h
        .http
        .post(format!("{}?{query}", h.url("/gateway.do")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("biz_content", biz)]).expect("form"))
        .send()
        .await
        .expect("post")
        .text()
        .await
        .expect("text");
    assert_eq!(
        ali_verified_node(&h, &raw)["sub_code"],
        "ACQ.TRADE_NOT_EXIST"
    );

    let node = ali(&h, "alipay.trade.nonsense", json!({}), None).await;
    assert_eq!(node["code"], "40002");
}

#[tokio::test]
async fn scan_pay_notify_refund_and_close() {
    let h = Harness::start().await;
    let rx = Receiver::start().await;
    let notify = format!("{}/alipay", rx.base);
    let biz = json!({"out_trade_no": "ALI0003", "total_amount": "100.00", "subject": "测试"});
    ali(&h, "alipay.trade.precreate", biz, Some(&notify)).await;

    let (status, _) = h
        .control(
            "/sim/scan",
            json!({"channel": "alipay", "out_trade_no": "ALI0003"}),
        )
        .await;
    assert_eq!(status, 200);
    let node = ali(
        &h,
        "alipay.trade.query",
        json!({"out_trade_no": "ALI0003"}),
        None,
    )
    .await;
    assert_eq!(node["trade_status"], "WAIT_BUYER_PAY");

    rx.fail_first.store(1, std::sync::atomic::Ordering::SeqCst);
    let (status, paid) = h
        .control(
            "/sim/pay",
            json!({"channel": "alipay", "out_trade_no": "ALI0003"}),
        )
        .await;
    assert_eq!(status, 200);
    let first = verify_notification(&h, &rx.next().await);
    let second = verify_notification(&h, &rx.next().await);
    assert_eq!(
        first["notify_id"], second["notify_id"],
        "a re-send keeps its notify_id"
    );
    assert_eq!(second["trade_status"], "TRADE_SUCCESS");
    assert_eq!(second["total_amount"], "100.00");
    assert_eq!(second["out_trade_no"], "ALI0003");
    assert_eq!(
        second["trade_no"],
        paid["transaction_id"].as_str().expect("tid")
    );
    assert_eq!(second["app_id"], h.settings.alipay_app_id.as_str());
    assert_eq!(second["sign_type"], "RSA2");
    h.wait_payment("ALI0003", |v| v["notifications"][0]["acknowledged"] == true)
        .await;

    let node = ali(
        &h,
        "alipay.trade.query",
        json!({"trade_no": paid["transaction_id"]}),
        None,
    )
    .await;
    assert_eq!(
        (node["trade_status"].clone(), node["total_amount"].clone()),
        (json!("TRADE_SUCCESS"), json!("100.00"))
    );
    let node = ali(
        &h,
        "alipay.trade.close",
        json!({"out_trade_no": "ALI0003"}),
        None,
    )
    .await;
    assert_eq!(node["sub_code"], "ACQ.TRADE_HAS_SUCCESS");

    let refund = |no: &str, amount: &str| json!({"out_trade_no": "ALI0003", "refund_amount": amount, "out_request_no": no});
    let node = ali(&h, "alipay.trade.refund", refund("R1", "30.00"), None).await;
    assert_eq!(
        (
            node["code"].clone(),
            node["fund_change"].clone(),
            node["refund_fee"].clone()
        ),
        (json!("10000"), json!("Y"), json!("30.00"))
    );
    let node = ali(&h, "alipay.trade.refund", refund("R1", "30.00"), None).await;
    assert_eq!(node["fund_change"], "N", "repeated out_request_no");
    let node = ali(&h, "alipay.trade.refund", refund("R1", "31.00"), None).await;
    assert_eq!(node["sub_code"], "ACQ.DISCORDANT_REPEAT_REQUEST");
    let partial = verify_notification(&h, &rx.next().await);
    assert_eq!(
        (
            partial["trade_status"].as_str(),
            partial["refund_fee"].as_str(),
            partial["out_biz_no"].as_str()
        ),
        ("TRADE_SUCCESS", "30.00", "R1")
    );
    let node = ali(&h, "alipay.trade.refund", refund("R2", "70.01"), None).await;
    assert_eq!(node["sub_code"], "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL");
    let node = ali(&h, "alipay.trade.refund", refund("R2", "70.00"), None).await;
    assert_eq!(node["refund_fee"], "100.00");
    let full = verify_notification(&h, &rx.next().await);
    assert_eq!(full["trade_status"], "TRADE_CLOSED");
    let node = ali(
        &h,
        "alipay.trade.query",
        json!({"out_trade_no": "ALI0003"}),
        None,
    )
    .await;
    assert_eq!(node["trade_status"], "TRADE_CLOSED");

    let q = json!({"out_trade_no": "ALI0003", "out_request_no": "R2", "query_options": ["gmt_refund_pay"]});
    let node = ali(&h, "alipay.trade.fastpay.refund.query", q, None).await;
    assert_eq!(
        (node["refund_status"].clone(), node["refund_amount"].clone()),
        (json!("REFUND_SUCCESS"), json!("70.00"))
    );
    assert!(node["gmt_refund_pay"].is_string());
    let q = json!({"out_trade_no": "ALI0003", "out_request_no": "R9"});
    let node = ali(&h, "alipay.trade.fastpay.refund.query", q, None).await;
    assert_eq!(node["code"], "10000");
    assert!(
        node.get("refund_status").is_none(),
        "unknown refund: no status"
    );

    // Closing after a scan works; a closed trade cannot be paid.
    let biz = json!({"out_trade_no": "ALI0004", "total_amount": "1.00", "subject": "x"});
    ali(&h, "alipay.trade.precreate", biz, Some(&notify)).await;
    let node = ali(
        &h,
        "alipay.trade.close",
        json!({"out_trade_no": "ALI0004"}),
        None,
    )
    .await;
    assert_eq!(node["sub_code"], "ACQ.TRADE_NOT_EXIST", "not scanned yet");
    h.control(
        "/sim/scan",
        json!({"channel": "alipay", "out_trade_no": "ALI0004"}),
    )
    .await;
    let node = ali(
        &h,
        "alipay.trade.close",
        json!({"out_trade_no": "ALI0004"}),
        None,
    )
    .await;
    assert_eq!(node["code"], "10000");
    let (status, _) = h
        .control(
            "/sim/pay",
            json!({"channel": "alipay", "out_trade_no": "ALI0004"}),
        )
        .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn tampered_amount_and_faults() {
    let h = Harness::start().await;
    let rx = Receiver::start().await;
    let biz = json!({"out_trade_no": "ALI0005", "total_amount": "10.00", "subject": "x"});
    ali(
        &h,
        "alipay.trade.precreate",
        biz,
        Some(&format!("{}/alipay", rx.base)),
    )
    .await;
    h.control(
        "/sim/pay",
        json!({"channel": "alipay", "out_trade_no": "ALI0005", "amount": 1}),
    )
    .await;
    let n = verify_notification(&h, &rx.next().await);
    assert_eq!(n["total_amount"], "0.01");

    h.control("/sim/faults", json!({"channel": "alipay", "fail_next": 2}))
        .await;
    let node = ali(
        &h,
        "alipay.trade.query",
        json!({"out_trade_no": "ALI0005"}),
        None,
    )
    .await;
    assert_eq!(node["code"], "20000");
    // The other channel is unaffected.
    let (status, _) = h.get_json("/sim/faults").await;
    assert_eq!(status, 200);
    let node = ali(
        &h,
        "alipay.trade.query",
        json!({"out_trade_no": "ALI0005"}),
        None,
    )
    .await;
    assert_eq!(node["code"], "20000");
    let node = ali(
        &h,
        "alipay.trade.query",
        json!({"out_trade_no": "ALI0005"}),
        None,
    )
    .await;
    assert_eq!(node["code"], "10000");
}
