//! WeChat Pay API v3 against the simulator, with a hand-rolled client.

use base64::Engine;
use chrono::Utc;
use payrecon::gateway::crypto::{aes_256_gcm_decrypt, RsaPrivateKey};
use serde_json::{json, Value};

use crate::helpers::*;

pub fn prepay_body(h: &Harness, otn: &str, total: i64, notify_url: &str) -> Value {
    json!({"appid": h.settings.wechat_appid, "mchid": h.settings.wechat_mchid,
           "description": "Order, with comma", "out_trade_no": otn,
           "notify_url": notify_url, "amount": {"total": total, "currency": "CNY"}})
}

fn query_uri(h: &Harness, otn: &str) -> String {
    format!(
        "/v3/pay/transactions/out-trade-no/{otn}?mchid={}",
        h.settings.wechat_mchid
    )
}

/// Decrypts a notification's resource after checking its signature.
fn open_notification(h: &Harness, n: &Received) -> (Value, Value) {
    let header = |k: &str| n.headers.get(k).cloned().unwrap_or_default();
    assert_eq!(
        header("wechatpay-signature-type"),
        "WECHATPAY2-SHA256-RSA2048"
    );
    assert_eq!(
        header("wechatpay-serial"),
        h.settings.wechat_platform_serial
    );
    let ts: i64 = header("wechatpay-timestamp").parse().expect("timestamp");
    assert!((Utc::now().timestamp() - ts).abs() < 60);
    let mut message = format!("{ts}\n{}\n", header("wechatpay-nonce")).into_bytes();
    message.extend_from_slice(&n.body);
    message.push(b'\n');
    assert!(h
        .keys()
        .wechat_platform_public
        .verify_sha256_base64(&message, &header("wechatpay-signature")));
    let envelope: Value = serde_json::from_slice(&n.body).expect("JSON envelope");
    let r = &envelope["resource"];
    assert_eq!(r["algorithm"], "AEAD_AES_256_GCM");
    let plain = aes_256_gcm_decrypt(
        h.keys().wechat_apiv3_key.as_bytes(),
        r["nonce"].as_str().expect("nonce").as_bytes(),
        r["associated_data"].as_str().expect("aad").as_bytes(),
        r["ciphertext"].as_str().expect("ciphertext"),
    )
    .expect("resource decrypts with the APIv3 key");
    (
        envelope.clone(),
        serde_json::from_slice(&plain).expect("resource JSON"),
    )
}

#[tokio::test]
async fn signed_requests_are_accepted_and_answers_verify() {
    let h = Harness::start().await;
    let body = prepay_body(&h, "WX0001TEST", 1999, "http://127.0.0.1:9/notify");
    let r = wx(&h, "POST", "/v3/pay/transactions/native", Some(&body)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.verifies_with(&h.keys().wechat_platform_public));
    assert_eq!(
        r.header("wechatpay-signature-type"),
        "WECHATPAY2-SHA256-RSA2048"
    );
    assert_eq!(
        r.header("wechatpay-serial"),
        h.settings.wechat_platform_serial
    );
    assert!(r.header("request-id").ends_with("-0"));
    let code_url = r.json()["code_url"].as_str().expect("code_url").to_string();
    assert!(code_url.starts_with("weixin://wxpay/bizpayurl?pr="));

    // Idempotent with the same parameters; refused with a different amount.
    let again = wx(&h, "POST", "/v3/pay/transactions/native", Some(&body)).await;
    assert_eq!(again.json()["code_url"], code_url.as_str());
    let other = prepay_body(&h, "WX0001TEST", 2000, "http://127.0.0.1:9/notify");
    let r = wx(&h, "POST", "/v3/pay/transactions/native", Some(&other)).await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (403, json!("OUT_TRADE_NO_USED"))
    );

    let q = wx(&h, "GET", &query_uri(&h, "WX0001TEST"), None).await;
    assert_eq!(q.status, 200);
    assert!(q.verifies_with(&h.keys().wechat_platform_public));
    assert_eq!(q.json()["trade_state"], "NOTPAY");
    assert_eq!(q.json()["amount"]["total"], 1999);

    let missing = wx(&h, "GET", &query_uri(&h, "NOSUCHORDER"), None).await;
    assert_eq!(
        (missing.status, missing.json()["code"].clone()),
        (404, json!("ORDER_NOT_EXIST"))
    );

    let bad = wx(
        &h,
        "POST",
        "/v3/pay/transactions/native",
        Some(&json!({"appid": "x"})),
    )
    .await;
    assert_eq!(
        (bad.status, bad.json()["code"].clone()),
        (400, json!("PARAM_ERROR"))
    );
}

#[tokio::test]
async fn forged_stale_and_wrong_key_requests_get_401() {
    let h = Harness::start().await;
    let uri = query_uri(&h, "WX0002TEST");
    let now = Utc::now().timestamp();
    let sign_error = |r: &WxResponse| r.status == 401 && r.json()["code"] == "SIGN_ERROR";

    // Forged: a valid header for another URI.
    let auth = wx_authorization(
        &h,
        "GET",
        "/v3/pay/transactions/out-trade-no/OTHER?mchid=1",
        "",
        now,
    );
    assert!(sign_error(&wx_raw(&h, "GET", &uri, "", &auth).await));
    // Stale and future by five minutes.
    for ts in [now - 301, now + 301] {
        let auth = wx_authorization(&h, "GET", &uri, "", ts);
        assert!(
            sign_error(&wx_raw(&h, "GET", &uri, "", &auth).await),
            "ts {ts}"
        );
    }
    // Signed with a key that is not the merchant's.
    let stranger = RsaPrivateKey::generate_2048().expect("key");
    let nonce = "ABCDEF0123456789ABCDEF0123456789";
    let sig = stranger
        .sign_sha256_base64(format!("GET\n{uri}\n{now}\n{nonce}\n\n").as_bytes())
        .expect("sign");
    let auth = format!(
        r#"WECHATPAY2-SHA256-RSA2048 mchid="{}",nonce_str="{nonce}",timestamp="{now}",serial_no="{}",signature="{sig}""#,
        h.settings.wechat_mchid, h.settings.wechat_merchant_serial_no
    );
    assert!(sign_error(&wx_raw(&h, "GET", &uri, "", &auth).await));
    // Body changed after signing.
    let body = prepay_body(&h, "WX0002TEST", 100, "http://127.0.0.1:9/n").to_string();
    let auth = wx_authorization(&h, "POST", "/v3/pay/transactions/native", &body, now);
    let tampered = body.replace("100", "1");
    assert!(sign_error(
        &wx_raw(&h, "POST", "/v3/pay/transactions/native", &tampered, &auth).await
    ));
    // No header at all.
    assert!(sign_error(&wx_raw(&h, "GET", &uri, "", "").await));
    // The same request, properly signed, in wechatpay-go's item order: accepted.
    let sig = h
        .keys()
        .wechat_merchant_private
        .sign_sha256_base64(format!("GET\n{uri}\n{now}\n{nonce}\n\n").as_bytes())
        .expect("sign");
    let auth = format!(
        r#"WECHATPAY2-SHA256-RSA2048 mchid="{}",nonce_str="{nonce}",timestamp="{now}",serial_no="{}",signature="{sig}""#,
        h.settings.wechat_mchid, h.settings.wechat_merchant_serial_no
    );
    let r = wx_raw(&h, "GET", &uri, "", &auth).await;
    assert_eq!(r.status, 404, "authenticated, and the order does not exist");
}

#[tokio::test]
async fn pay_notify_query_refund_and_close() {
    let h = Harness::start().await;
    let rx = Receiver::start().await;
    rx.fail_first.store(2, std::sync::atomic::Ordering::SeqCst);
    let notify_url = format!("{}/wechat", rx.base);
    let body = prepay_body(&h, "WX0003TEST", 3998, &notify_url);
    assert_eq!(
        wx(&h, "POST", "/v3/pay/transactions/native", Some(&body))
            .await
            .status,
        200
    );

    let (status, paid) = h
        .control(
            "/sim/pay",
            json!({"channel": "wechat_pay", "out_trade_no": "WX0003TEST"}),
        )
        .await;
    assert_eq!(status, 200);
    let tid = paid["transaction_id"]
        .as_str()
        .expect("transaction_id")
        .to_string();
    assert_eq!(tid.len(), 28);

    // Two refused deliveries, then the third is acknowledged.
    let mut last = None;
    for _ in 0..3 {
        last = Some(rx.next().await);
    }
    let last = last.expect("delivery");
    assert_eq!(last.path, "/wechat");
    let (envelope, resource) = open_notification(&h, &last);
    assert_eq!(envelope["event_type"], "TRANSACTION.SUCCESS");
    assert_eq!(envelope["resource_type"], "encrypt-resource");
    assert_eq!(resource["out_trade_no"], "WX0003TEST");
    assert_eq!(resource["transaction_id"], tid.as_str());
    assert_eq!(resource["trade_state"], "SUCCESS");
    assert_eq!(resource["amount"]["total"], 3998);
    assert_eq!(resource["mchid"], h.settings.wechat_mchid.as_str());
    let v = h
        .wait_payment("WX0003TEST", |v| {
            v["notifications"][0]["acknowledged"] == true
        })
        .await;
    assert_eq!(v["notifications"][0]["attempts"], 3);

    let by_id = format!(
        "/v3/pay/transactions/id/{tid}?mchid={}",
        h.settings.wechat_mchid
    );
    assert_eq!(
        wx(&h, "GET", &by_id, None).await.json()["trade_state"],
        "SUCCESS"
    );

    let close_uri = "/v3/pay/transactions/out-trade-no/WX0003TEST/close";
    let mchid = json!({"mchid": h.settings.wechat_mchid});
    let r = wx(&h, "POST", close_uri, Some(&mchid)).await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (403, json!("TRADE_ERROR"))
    );
    let (status, _) = h
        .control(
            "/sim/pay",
            json!({"channel": "wechat_pay", "out_trade_no": "WX0003TEST"}),
        )
        .await;
    assert_eq!(status, 409, "cannot pay twice");

    let refund = |no: &str, amount: i64| {
        json!({"out_trade_no": "WX0003TEST", "out_refund_no": no, "reason": "test",
               "notify_url": notify_url, "amount": {"refund": amount, "total": 3998, "currency": "CNY"}})
    };
    let r = wx(
        &h,
        "POST",
        "/v3/refund/domestic/refunds",
        Some(&refund("RF1", 1000)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.verifies_with(&h.keys().wechat_platform_public));
    assert_eq!(r.json()["status"], "SUCCESS");
    assert_eq!(r.json()["amount"]["refund"], 1000);
    let again = wx(
        &h,
        "POST",
        "/v3/refund/domestic/refunds",
        Some(&refund("RF1", 1000)),
    )
    .await;
    assert_eq!(
        again.json()["refund_id"],
        r.json()["refund_id"],
        "same out_refund_no, same refund"
    );
    let (_, refund_resource) = open_notification(&h, &rx.next().await);
    assert_eq!(refund_resource["refund_status"], "SUCCESS");
    assert_eq!(refund_resource["out_refund_no"], "RF1");
    assert_eq!(refund_resource["amount"]["refund"], 1000);

    let over = wx(
        &h,
        "POST",
        "/v3/refund/domestic/refunds",
        Some(&refund("RF2", 2999)),
    )
    .await;
    assert_eq!(
        (over.status, over.json()["code"].clone()),
        (400, json!("INVALID_REQUEST"))
    );
    let q = wx(&h, "GET", "/v3/refund/domestic/refunds/RF1", None).await;
    assert_eq!(
        (q.status, q.json()["out_trade_no"].clone()),
        (200, json!("WX0003TEST"))
    );
    let none = wx(&h, "GET", "/v3/refund/domestic/refunds/RF9", None).await;
    assert_eq!(
        (none.status, none.json()["code"].clone()),
        (404, json!("RESOURCE_NOT_EXISTS"))
    );
    assert_eq!(
        wx(&h, "GET", &query_uri(&h, "WX0003TEST"), None)
            .await
            .json()["trade_state"],
        "REFUND"
    );

    // An unpaid order closes with a signed 204 and cannot be re-prepared or paid.
    let body = prepay_body(&h, "WX0004TEST", 100, &notify_url);
    wx(&h, "POST", "/v3/pay/transactions/native", Some(&body)).await;
    let r = wx(
        &h,
        "POST",
        "/v3/pay/transactions/out-trade-no/WX0004TEST/close",
        Some(&mchid),
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty() && r.verifies_with(&h.keys().wechat_platform_public));
    let r = wx(&h, "POST", "/v3/pay/transactions/native", Some(&body)).await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (400, json!("ORDER_CLOSED"))
    );
    let unpaid_refund = json!({"out_trade_no": "WX0004TEST", "out_refund_no": "RF3",
        "amount": {"refund": 1, "total": 100, "currency": "CNY"}});
    let r = wx(
        &h,
        "POST",
        "/v3/refund/domestic/refunds",
        Some(&unpaid_refund),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (404, json!("RESOURCE_NOT_EXISTS"))
    );
}

#[tokio::test]
async fn faults_fail_hang_and_clear() {
    let h = Harness::start().await;
    let body = prepay_body(&h, "WX0006TEST", 100, "http://127.0.0.1:9/n");
    h.control(
        "/sim/faults",
        json!({"channel": "wechat_pay", "fail_next": 1}),
    )
    .await;
    let r = wx(&h, "POST", "/v3/pay/transactions/native", Some(&body)).await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (500, json!("SYSTEM_ERROR"))
    );
    let r = wx(&h, "GET", &query_uri(&h, "WX0006TEST"), None).await;
    assert_eq!(r.status, 404, "the failed call had no effect");

    // A timeout: the prepay takes effect, the client gives up.
    h.control("/sim/faults", json!({"timeout_rate": 1.0})).await;
    let auth_body = body.to_string();
    let auth = wx_authorization(
        &h,
        "POST",
        "/v3/pay/transactions/native",
        &auth_body,
        Utc::now().timestamp(),
    );
    let res = h
        .http
        .post(h.url("/v3/pay/transactions/native"))
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(auth_body)
        .timeout(std::time::Duration::from_millis(300))
        .send()
        .await;
    assert!(res.is_err_and(|e| e.is_timeout()));
    let (_, faults) = h.control("/sim/faults", json!({})).await;
    assert_eq!(faults["any"]["timeout_rate"], 0.0);
    let r = wx(&h, "GET", &query_uri(&h, "WX0006TEST"), None).await;
    assert_eq!(
        (r.status, r.json()["trade_state"].clone()),
        (200, json!("NOTPAY"))
    );

    h.control("/sim/faults", json!({"error_rate": 1.0, "latency_ms": 100}))
        .await;
    let started = std::time::Instant::now();
    assert_eq!(
        wx(&h, "GET", &query_uri(&h, "WX0006TEST"), None)
            .await
            .status,
        500
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(100));
    let (status, _) = h.control("/sim/faults", json!({"error_rate": 2.0})).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn signtest_probe_is_rejected_by_a_verifying_receiver() {
    let h = Harness::start().await;
    let rx = Receiver::start_verifying(Some(h.keys().wechat_platform_public.clone())).await;
    let probe = json!({"channel": "wechat_pay", "url": format!("{}/verify/wechat", rx.base)});
    let (status, answer) = h.control("/sim/probe", probe).await;
    assert_eq!(status, 200);
    let got = rx.next().await;
    let sig = got
        .headers
        .get("wechatpay-signature")
        .cloned()
        .unwrap_or_default();
    assert!(sig.starts_with("WECHATPAY/SIGNTEST/"), "{sig}");
    assert!(base64::engine::general_purpose::STANDARD
        .decode(sig.as_bytes())
        .is_err());
    assert_eq!(
        (answer["status"].clone(), answer["rejected"].clone()),
        (json!(401), json!(true))
    );

    // A receiver that does not verify is caught acknowledging the probe.
    let careless = Receiver::start().await;
    let probe = json!({"channel": "wechat_pay", "url": format!("{}/wechat", careless.base)});
    let (_, answer) = h.control("/sim/probe", probe).await;
    assert_eq!(
        (answer["status"].clone(), answer["rejected"].clone()),
        (json!(204), json!(false))
    );

    // Genuine notifications pass the same verifying receiver.
    let body = prepay_body(&h, "WX0007TEST", 100, &format!("{}/verify/wechat", rx.base));
    wx(&h, "POST", "/v3/pay/transactions/native", Some(&body)).await;
    h.control(
        "/sim/pay",
        json!({"channel": "wechat_pay", "out_trade_no": "WX0007TEST"}),
    )
    .await;
    let v = h
        .wait_payment("WX0007TEST", |v| {
            v["notifications"][0]["acknowledged"] == true
        })
        .await;
    assert_eq!(v["notifications"][0]["last_status"], 204);
}
