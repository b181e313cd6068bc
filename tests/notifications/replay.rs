//! Replays, with time honestly let pass: a notification signed at the edge
//! of WeChat Pay's 5-minute window is applied, replayed at once (no further
//! effect), and replayed again once the window has closed on it (refused at
//! the edge, dead-lettered in the queue). The order row is compared byte
//! for byte, so a replay that rewrote it would show.

use std::time::Duration;

use chrono::Utc;

use super::ingress::Ingress;

/// Seconds the signed timestamp lies in the past when first delivered.
const AGE: i64 = 290;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_replays_before_and_after_the_window_change_nothing() {
    let mut t = Ingress::start("hreplayw").await;
    let id = t.prepared_order("wechat_pay").await;
    let signed_at = Utc::now().timestamp() - AGE;
    let (headers, body) = t.wechat_tx(
        &t.tx(&id.out_trade_no(), 3998),
        signed_at,
        &t.keys.wechat_platform_private,
    );
    let (status, _) = t
        .post("wechat_pay", &headers, body.clone().into_bytes())
        .await;
    assert_eq!(status, 204, "accepted inside the window");
    let paid = t.broker.wait_event("order.paid", 20).await;
    assert_eq!(paid["data"]["order"]["status"], "paid");
    let row = t.order_row(id).await;

    // Still inside the window: verified and enqueued, but nothing changes.
    let (status, _) = t
        .post("wechat_pay", &headers, body.clone().into_bytes())
        .await;
    assert_eq!(status, 204);
    t.enqueue("wechat_pay", &headers, &body).await;
    t.quiet(2000).await;
    assert_eq!(t.order_row(id).await, row);

    // Let the window close on it (5 minutes after signing, plus a margin).
    let closes = signed_at + 300 + 2;
    let wait = (closes - Utc::now().timestamp()).max(0) as u64;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (status, text) = t
        .post("wechat_pay", &headers, body.clone().into_bytes())
        .await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("5-minute"), "{text}");
    t.dlq_empty().await;
    t.queue_refuses("wechat_pay", &headers, &body, "5-minute")
        .await;
    t.quiet(1000).await;
    assert_eq!(t.order_row(id).await, row);
    t.daemon.stop().await;
}

/// Alipay signs no time: a replay is verified and acknowledged each time,
/// and the order's state makes it harmless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alipay_replays_change_nothing() {
    let mut t = Ingress::start("hreplaya").await;
    let id = t.prepared_order("alipay").await;
    let body = Ingress::alipay_signed(
        &t.alipay_form(&id.out_trade_no(), "39.98"),
        &t.keys.alipay_private,
    );
    let (status, text) = t.post("alipay", &vec![], body.clone().into_bytes()).await;
    assert_eq!((status, text.as_str()), (200, "success"));
    t.broker.wait_event("order.paid", 20).await;
    let row = t.order_row(id).await;
    for _ in 0..2 {
        let (status, text) = t.post("alipay", &vec![], body.clone().into_bytes()).await;
        assert_eq!((status, text.as_str()), (200, "success"));
        t.enqueue("alipay", &vec![], &body).await;
    }
    t.quiet(2000).await;
    t.dlq_empty().await;
    assert_eq!(t.order_row(id).await, row);
    t.daemon.stop().await;
}
