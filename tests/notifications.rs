//! Every bad notification of the contract, through the daemon's HTTP ingress
//! and straight onto `P.notifications`: forged, probe, stale, wrong
//! merchant/app id, replayed, unknown order. The notifications are built
//! here from the simulator's key files with the crypto primitives alone, not
//! with the adapters under test (`ingress`). The attack modules try every
//! way of breaking the contract's promises for a hostile notification.

#[path = "notifications/alipay_attacks.rs"]
mod alipay_attacks;
#[path = "notifications/batch.rs"]
mod batch;
mod common;
#[path = "notifications/ingress.rs"]
mod ingress;
#[path = "notifications/replay.rs"]
mod replay;
#[path = "notifications/wechat_attacks.rs"]
mod wechat_attacks;

use chrono::{Duration, Utc};
use common::header_str;
use ingress::Ingress;
use payrecon::domain::OrderId;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_forged_stale_and_probe_get_401_and_enqueue_nothing() {
    let mut t = Ingress::start("nforged").await;
    let id = t.prepared_order("wechat_pay").await;
    let mchid = t.env.settings.simulator.wechat_mchid.clone();
    let now = Utc::now().timestamp();
    let forged = t.wechat(
        &id.out_trade_no(),
        3998,
        &mchid,
        now,
        &t.keys.wechat_merchant_private,
    );
    let r = t.post_wechat(&forged).await;
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "FAIL");
    let stale = t.wechat(
        &id.out_trade_no(),
        3998,
        &mchid,
        now - 600,
        &t.keys.wechat_platform_private,
    );
    assert_eq!(t.post_wechat(&stale).await.status(), 401);
    let probe: Value = t
        .http
        .post(format!(
            "{}/sim/probe",
            t.daemon.simulator_base_url.clone().unwrap()
        ))
        .json(&json!({"channel": "wechat_pay", "url": t.url("wechat_pay")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(probe["rejected"], true, "{probe}");
    t.broker.assert_quiet(1500).await;
    let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE order_id = $1")
        .bind(id.0)
        .fetch_one(&t.daemon.pool)
        .await
        .unwrap();
    assert_eq!(status, "pending_payment");
    t.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_replay_has_no_further_effect() {
    let mut t = Ingress::start("nreplay").await;
    let id = t.prepared_order("wechat_pay").await;
    let mchid = t.env.settings.simulator.wechat_mchid.clone();
    let n = t.wechat(
        &id.out_trade_no(),
        3998,
        &mchid,
        Utc::now().timestamp(),
        &t.keys.wechat_platform_private,
    );
    assert_eq!(t.post_wechat(&n).await.status(), 204);
    let paid = t.broker.wait_event("order.paid", 20).await;
    assert_eq!(paid["data"]["source"], "notification");
    assert_eq!(t.post_wechat(&n).await.status(), 204);
    t.broker.assert_quiet(1500).await;
    t.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_merchant_is_refused_at_the_edge_and_dead_lettered_in_the_queue() {
    let mut t = Ingress::start("nmerchant").await;
    let id = t.prepared_order("wechat_pay").await;
    let n = t.wechat(
        &id.out_trade_no(),
        3998,
        "1999999999",
        Utc::now().timestamp(),
        &t.keys.wechat_platform_private,
    );
    assert_eq!(t.post_wechat(&n).await.status(), 401);
    // The same notification put on the queue directly is verified again there.
    let headers: serde_json::Map<String, Value> =
        n.0.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let msg = json!({"type": "gateway.notification", "request_id": "n-1", "data": {"channel": "wechat_pay", "headers": headers, "body": n.1}});
    let queue = t.env.names().notifications.clone();
    t.broker
        .publish_raw(&queue, msg.to_string().as_bytes())
        .await;
    let dlq = t.env.names().notifications_dlq.clone();
    let dead = t.broker.get_from(&dlq, 10).await.expect("dead-lettered");
    let reason = header_str(&dead.delivery.properties, "x-payrecon-error").unwrap();
    assert!(reason.contains("merchant"), "{reason}");
    // And a body that is not even JSON.
    t.broker.publish_raw(&queue, b"garbage").await;
    let dead = t.broker.get_from(&dlq, 10).await.expect("dead-lettered");
    assert!(header_str(&dead.delivery.properties, "x-payrecon-error")
        .unwrap()
        .contains("invalid_request"));
    t.broker.assert_quiet(1000).await;
    t.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_order_is_an_anomaly_without_an_order() {
    let mut t = Ingress::start("nunknown").await;
    let otn = OrderId::generate().out_trade_no();
    let mchid = t.env.settings.simulator.wechat_mchid.clone();
    let n = t.wechat(
        &otn,
        500,
        &mchid,
        Utc::now().timestamp(),
        &t.keys.wechat_platform_private,
    );
    assert_eq!(t.post_wechat(&n).await.status(), 204);
    let anomaly = t.broker.wait_event("payment.anomaly", 20).await;
    assert_eq!(anomaly["data"]["kind"], "unknown_order");
    assert_eq!(anomaly["data"]["out_trade_no"], otn);
    assert_eq!(anomaly["data"]["gateway_amount"], 500);
    assert!(anomaly["data"].get("order").is_none());
    // Replayed: recorded once, published once.
    assert_eq!(t.post_wechat(&n).await.status(), 204);
    t.broker.assert_quiet(1500).await;
    t.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alipay_forged_and_wrong_app_id_get_fail() {
    let mut t = Ingress::start("nalipay").await;
    let id = t.prepared_order("alipay").await;
    let app_id = t.env.settings.simulator.alipay_app_id.clone();
    let forged = t.alipay(
        &id.out_trade_no(),
        "39.98",
        &app_id,
        &t.keys.alipay_app_private,
    );
    let r = t.post_alipay(forged).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.text().await.unwrap(), "fail");
    let other_app = t.alipay(
        &id.out_trade_no(),
        "39.98",
        "2021009999999999",
        &t.keys.alipay_private,
    );
    assert_eq!(t.post_alipay(other_app).await.status(), 401);
    // A good one pays the order, answered with exactly `success`.
    let good = t.alipay(&id.out_trade_no(), "39.98", &app_id, &t.keys.alipay_private);
    let r = t.post_alipay(good).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "success");
    let paid = t.broker.wait_event("order.paid", 20).await;
    assert_eq!(paid["data"]["order"]["paid_amount"], 3998);
    t.daemon.stop().await;
    let _ = Duration::zero();
}
