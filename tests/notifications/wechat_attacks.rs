//! WeChat Pay notifications built to break the contract's promises: each is
//! refused at the HTTP ingress (and enqueues nothing) and dead-lettered with
//! its reason when put straight onto `P.notifications`; none changes the
//! order or emits `order.paid`. An honest one then pays the order, so the
//! harness itself is shown able to pay.

use chrono::Utc;
use serde_json::Value;

use super::ingress::{invalid_utf8, Headers, Ingress};

/// One attack: what is sent, the ingress's status, what the queue's dead
/// letter reason must mention.
struct Attack {
    name: String,
    headers: Headers,
    body: Vec<u8>,
    status: u16,
    reason: String,
}

fn without(headers: &Headers, name: &str) -> Headers {
    headers.iter().filter(|(k, _)| k != name).cloned().collect()
}

fn attacks(t: &Ingress, otn: &str) -> Vec<Attack> {
    let now = Utc::now().timestamp();
    let platform = &t.keys.wechat_platform_private;
    let honest = t.tx(otn, 3998);
    let (good_headers, good_body) = t.wechat_tx(&honest, now, platform);
    let mut list = Vec::new();
    let mut add = |name: &str, headers: Headers, body: Vec<u8>, status: u16, reason: &str| {
        list.push(Attack {
            name: name.to_string(),
            headers,
            body,
            status,
            reason: reason.to_string(),
        })
    };

    let (h, b) = t.wechat_tx(&honest, now, &t.keys.wechat_merchant_private);
    add("forged signature", h, b.into_bytes(), 401, "signature");

    // A genuine signature, lifted onto a body it was not made for.
    let other = t.wechat_body(&t.tx(otn, 3998));
    add(
        "signature of another body",
        good_headers.clone(),
        other.into_bytes(),
        401,
        "signature",
    );

    // The amount lives in the encrypted resource: swap in one that says 1 fen.
    let mut tampered: Value = serde_json::from_str(&good_body).unwrap();
    let cheap: Value = serde_json::from_str(&t.wechat_body(&t.tx(otn, 1))).unwrap();
    tampered["resource"]["ciphertext"] = cheap["resource"]["ciphertext"].clone();
    add(
        "amount tampered after signing",
        good_headers.clone(),
        tampered.to_string().into_bytes(),
        401,
        "signature",
    );

    let (h, b) = t.wechat_tx(&honest, now - 600, platform);
    add("signed 10 minutes ago", h, b.into_bytes(), 401, "5-minute");
    let (h, b) = t.wechat_tx(&honest, now + 600, platform);
    add(
        "signed 10 minutes ahead",
        h,
        b.into_bytes(),
        401,
        "5-minute",
    );

    let mut tx = honest.clone();
    tx.mchid = "1999999999".into();
    let (h, b) = t.wechat_tx(&tx, now, platform);
    add(
        "another merchant",
        h,
        b.into_bytes(),
        401,
        "mchid 1999999999",
    );
    let mut tx = honest.clone();
    tx.appid = "wx0000000000000000".into();
    let (h, b) = t.wechat_tx(&tx, now, platform);
    add(
        "another app id",
        h,
        b.into_bytes(),
        401,
        "appid wx0000000000000000",
    );

    for name in [
        "Wechatpay-Signature",
        "Wechatpay-Timestamp",
        "Wechatpay-Nonce",
        "Wechatpay-Serial",
    ] {
        add(
            &format!("missing {name}"),
            without(&good_headers, name),
            good_body.clone().into_bytes(),
            401,
            // The reason names the header (lower-cased).
            &format!("missing header {}", name.to_ascii_lowercase()),
        );
    }

    let probe: Headers = good_headers
        .iter()
        .map(|(k, v)| match k.as_str() {
            "Wechatpay-Signature" => (k.clone(), format!("WECHATPAY/SIGNTEST/{v}")),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    add(
        "SIGNTEST probe",
        probe,
        good_body.clone().into_bytes(),
        401,
        "probe",
    );

    // Genuinely signed, but 1 MiB: refused by size before anything else.
    let mut big = honest.clone();
    big.attach = "x".repeat(1024 * 1024);
    let (h, b) = t.wechat_tx(&big, now, platform);
    add("1 MiB body", h, b.into_bytes(), 413, "exceeds");

    // Genuinely signed bytes that are not UTF-8 (in a field the
    // verification skips, so only the UTF-8 check can refuse them).
    let bad = invalid_utf8(good_body.replace("支付成功", "\u{FFFD}").into_bytes());
    let h = t.wechat_headers(&bad, now, platform);
    add("invalid UTF-8", h, bad, 400, "not JSON");

    let h = t.wechat_headers(b"", now, platform);
    add("empty body", h, Vec::new(), 401, "malformed");
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_attacks_are_refused_at_the_edge_and_dead_lettered_in_the_queue() {
    let mut t = Ingress::start("hwechat").await;
    let id = t.prepared_order("wechat_pay").await;
    let otn = id.out_trade_no();
    let list = attacks(&t, &otn);

    for a in &list {
        let (status, text) = match t.try_post("wechat_pay", &a.headers, a.body.clone()).await {
            Ok(answer) => answer,
            Err(e) if a.status == 413 => {
                // Refused by its length before it was read: the connection
                // closed under the client's feet. Not enqueued either way.
                eprintln!("{}: connection closed: {e}", a.name);
                continue;
            }
            Err(e) => panic!("{}: {e}", a.name),
        };
        assert_eq!(status, a.status, "{}: {text}", a.name);
        let answer: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{}: not WeChat's JSON: {text}", a.name));
        assert_eq!(answer["code"], "FAIL", "{}", a.name);
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}: a reason",
            a.name
        );
    }
    t.dlq_empty().await;
    t.quiet(1000).await;
    t.assert_unpaid(id).await;

    for a in &list {
        let envelope = match std::str::from_utf8(&a.body) {
            Ok(body) => Ingress::envelope("wechat_pay", &a.headers, body),
            // Raw bytes cannot be a JSON string: the envelope itself is then
            // not JSON, as it would be if a publisher copied them in.
            Err(_) => invalid_utf8(Ingress::envelope(
                "wechat_pay",
                &a.headers,
                &String::from_utf8_lossy(&a.body),
            )),
        };
        t.expect_dead_letter(&envelope, &a.reason).await;
    }
    t.quiet(1000).await;
    t.assert_unpaid(id).await;

    // The same order can still be paid by an honest notification.
    let honest = t.wechat_tx(
        &t.tx(&otn, 3998),
        Utc::now().timestamp(),
        &t.keys.wechat_platform_private,
    );
    let (status, _) = t
        .post("wechat_pay", &honest.0, honest.1.clone().into_bytes())
        .await;
    assert_eq!(status, 204);
    let paid = t.broker.wait_event("order.paid", 20).await;
    assert_eq!(paid["data"]["order"]["order_id"], id.to_string());
    t.daemon.stop().await;
}
