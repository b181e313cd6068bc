//! Alipay notifications built to break the contract's promises, through the
//! ingress and straight onto `P.notifications`, and the verified ones that
//! must not pay (a wrong amount, an unknown order): anomalies, for both
//! channels. Alipay signs no timestamp, so it has no stale case.

use chrono::Utc;
use payrecon::domain::OrderId;

use super::ingress::{invalid_utf8, Form, Ingress};

fn set(form: &Form, key: &str, value: &str) -> Form {
    let mut f: Form = form.iter().filter(|(k, _)| k != key).cloned().collect();
    f.push((key.to_string(), value.to_string()));
    f
}

/// (name, raw body, ingress status, dead-letter reason)
fn attacks(t: &Ingress, otn: &str) -> Vec<(&'static str, Vec<u8>, u16, &'static str)> {
    let alipay = &t.keys.alipay_private;
    let good = t.alipay_form(otn, "39.98");
    let good_sign = Ingress::alipay_sign(&good, alipay);
    let other = t.alipay_form(&OrderId::generate().out_trade_no(), "39.98");
    let cheap = set(&good, "total_amount", "0.01");
    let mut duplicated = Ingress::alipay_signed(&good, alipay);
    duplicated.push_str("&out_trade_no=00000000000000000000000000000000");
    let no_app: Form = good
        .iter()
        .filter(|(k, _)| k != "app_id")
        .cloned()
        .collect();
    let mut big = set(&good, "body", &"x".repeat(1024 * 1024));
    big.sort();
    // Raw 0xFF in a value; signed over what a lossy decoder reads, so only
    // the UTF-8 check can refuse it.
    let lossy = set(&good, "subject", "\u{FFFD}");
    let lossy_body = invalid_utf8(
        Ingress::alipay_signed(&lossy, alipay)
            .replace("%EF%BF%BD", "\u{FFFD}")
            .into_bytes(),
    );
    vec![
        (
            "forged signature",
            Ingress::alipay_signed(&good, &t.keys.alipay_app_private).into_bytes(),
            401,
            "signature",
        ),
        (
            "signature of another body",
            Ingress::alipay_encode(&other, &good_sign).into_bytes(),
            401,
            "signature",
        ),
        (
            "amount tampered after signing",
            Ingress::alipay_encode(&cheap, &good_sign).into_bytes(),
            401,
            "signature",
        ),
        (
            "another app id",
            Ingress::alipay_signed(&set(&good, "app_id", "2021009999999999"), alipay).into_bytes(),
            401,
            "app_id \"2021009999999999\"",
        ),
        (
            "no app id",
            Ingress::alipay_signed(&no_app, alipay).into_bytes(),
            401,
            "merchant",
        ),
        (
            "no sign",
            serde_urlencoded::to_string(&good).unwrap().into_bytes(),
            401,
            "no sign",
        ),
        (
            "sign_type RSA",
            Ingress::alipay_signed(&good, alipay)
                .replace("sign_type=RSA2", "sign_type=RSA")
                .into_bytes(),
            401,
            "RSA2",
        ),
        (
            "a field twice",
            duplicated.into_bytes(),
            401,
            "duplicate field",
        ),
        (
            "1 MiB body",
            Ingress::alipay_signed(&big, alipay).into_bytes(),
            413,
            "exceeds",
        ),
        ("invalid UTF-8", lossy_body, 400, "not JSON"),
        ("empty body", Vec::new(), 401, "no sign"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alipay_attacks_are_refused_at_the_edge_and_dead_lettered_in_the_queue() {
    let mut t = Ingress::start("halipay").await;
    let id = t.prepared_order("alipay").await;
    let otn = id.out_trade_no();
    let list = attacks(&t, &otn);
    for (name, body, status, _) in &list {
        let (got, text) = match t.try_post("alipay", &vec![], body.clone()).await {
            Ok(answer) => answer,
            // Refused by its length before it was read (see `try_post`).
            Err(e) if *status == 413 => {
                eprintln!("{name}: connection closed: {e}");
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
        };
        assert_eq!((got, text.as_str()), (*status, "fail"), "{name}");
    }
    t.dlq_empty().await;
    t.quiet(1000).await;
    t.assert_unpaid(id).await;
    for (_, body, _, reason) in &list {
        let envelope = match std::str::from_utf8(body) {
            Ok(body) => Ingress::envelope("alipay", &vec![], body),
            Err(_) => invalid_utf8(Ingress::envelope(
                "alipay",
                &vec![],
                &String::from_utf8_lossy(body),
            )),
        };
        t.expect_dead_letter(&envelope, reason).await;
    }
    t.quiet(1000).await;
    t.assert_unpaid(id).await;
    let honest = Ingress::alipay_signed(&t.alipay_form(&otn, "39.98"), &t.keys.alipay_private);
    let (status, text) = t.post("alipay", &vec![], honest.into_bytes()).await;
    assert_eq!((status, text.as_str()), (200, "success"));
    let paid = t.broker.wait_event("order.paid", 20).await;
    assert_eq!(paid["data"]["order"]["order_id"], id.to_string());
    t.daemon.stop().await;
}

/// A verified payment of the wrong amount: acknowledged, `payment.anomaly`
/// amount_mismatch (with the order, still pending), never `order.paid`; by
/// the ingress and straight from the queue alike, on both channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_wrong_amounts_are_anomalies_and_the_orders_wait() {
    let mut t = Ingress::start("hamount").await;
    let wechat = t.prepared_order("wechat_pay").await;
    let alipay = t.prepared_order("alipay").await;
    let now = Utc::now().timestamp();
    let platform = &t.keys.wechat_platform_private;

    let low = t.wechat_tx(&t.tx(&wechat.out_trade_no(), 1), now, platform);
    assert_eq!(
        t.post("wechat_pay", &low.0, low.1.into_bytes()).await.0,
        204
    );
    let high = t.wechat_tx(&t.tx(&wechat.out_trade_no(), 399_800), now, platform);
    t.enqueue("wechat_pay", &high.0, &high.1).await;
    let form = t.alipay_form(&alipay.out_trade_no(), "0.01");
    let low = Ingress::alipay_signed(&form, &t.keys.alipay_private);
    assert_eq!(
        t.post("alipay", &vec![], low.into_bytes()).await,
        (200, "success".to_string())
    );
    let form = t.alipay_form(&alipay.out_trade_no(), "3998.00");
    t.enqueue(
        "alipay",
        &vec![],
        &Ingress::alipay_signed(&form, &t.keys.alipay_private),
    )
    .await;

    let mut seen = Vec::new();
    for _ in 0..4 {
        let e = t.broker.next_event(20).await;
        assert_eq!(e["type"], "payment.anomaly", "{e}");
        assert_eq!(e["data"]["kind"], "amount_mismatch");
        assert_eq!(e["data"]["order"]["status"], "pending_payment");
        assert_eq!(e["data"]["order"]["paid_amount"], 0);
        seen.push((
            e["data"]["channel"].as_str().unwrap().to_string(),
            e["data"]["gateway_amount"].as_i64().unwrap(),
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("alipay".to_string(), 1),
            ("alipay".to_string(), 399_800),
            ("wechat_pay".to_string(), 1),
            ("wechat_pay".to_string(), 399_800),
        ]
    );
    t.quiet(1500).await;
    t.dlq_empty().await;
    t.assert_unpaid(wechat).await;
    t.assert_unpaid(alipay).await;
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payment_anomalies WHERE kind = 'amount_mismatch'")
            .fetch_one(&t.daemon.pool)
            .await
            .unwrap();
    assert_eq!(recorded, 4, "recorded for the next reconciliation");
    t.daemon.stop().await;
}

/// Alipay's unknown order, both ways (WeChat Pay's is in notifications.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alipay_unknown_orders_are_anomalies_without_an_order() {
    let mut t = Ingress::start("hunknown").await;
    for via_queue in [false, true] {
        let otn = OrderId::generate().out_trade_no();
        let body = Ingress::alipay_signed(&t.alipay_form(&otn, "12.34"), &t.keys.alipay_private);
        if via_queue {
            t.enqueue("alipay", &vec![], &body).await;
        } else {
            let (status, text) = t.post("alipay", &vec![], body.into_bytes()).await;
            assert_eq!((status, text.as_str()), (200, "success"));
        }
        let e = t.broker.wait_event("payment.anomaly", 20).await;
        assert_eq!(e["data"]["kind"], "unknown_order");
        assert_eq!(e["data"]["out_trade_no"], otn);
        assert_eq!(e["data"]["gateway_amount"], 1234);
        assert!(e["data"].get("order").is_none());
    }
    t.quiet(1000).await;
    t.dlq_empty().await;
    t.daemon.stop().await;
}
