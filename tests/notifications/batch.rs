//! A batch of mixed notifications on `P.notifications`, published back to
//! back so the consumer takes them together: its plain payments are
//! confirmed in one go (`store::payments::confirm_many`), and the outcomes
//! must still be those of applying them one by one: a second payment for
//! an order of the same batch finds it paid, a wrong amount is an anomaly.

use chrono::Utc;

use super::ingress::Ingress;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_ends_as_if_applied_one_by_one() {
    let mut t = Ingress::start("nbatch").await;
    let a = t.prepared_order("wechat_pay").await;
    let b = t.prepared_order("wechat_pay").await;
    let c = t.prepared_order("wechat_pay").await;
    let now = Utc::now().timestamp();
    let key = &t.keys.wechat_platform_private;
    let first_a = t.tx(&a.out_trade_no(), 3998);
    let second_a = t.tx(&a.out_trade_no(), 3998);
    let batch = [
        t.wechat_tx(&first_a, now, key),
        t.wechat_tx(&second_a, now, key),
        t.wechat_tx(&t.tx(&b.out_trade_no(), 1), now, key),
        t.wechat_tx(&t.tx(&c.out_trade_no(), 3998), now, key),
    ];
    for (headers, body) in &batch {
        t.enqueue("wechat_pay", headers, body).await;
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = t.broker.next_event(20).await;
        let order = e["data"]["order"]["order_id"].as_str().map(str::to_string);
        seen.push((e["type"].as_str().unwrap_or("").to_string(), order));
    }
    seen.sort();
    let id = |o: payrecon::domain::OrderId| Some(o.to_string());
    let mut expected = vec![
        ("order.paid".to_string(), id(a)),
        ("order.paid".to_string(), id(c)),
        ("payment.anomaly".to_string(), id(b)),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    t.quiet(1500).await;
    let row = t.order_row(a).await;
    assert_eq!(row["status"], "paid");
    assert_eq!(
        row["gateway_transaction_id"],
        first_a.transaction_id.as_str()
    );
    t.assert_unpaid(b).await;
    assert_eq!(t.order_row(c).await["status"], "paid");
    t.dlq_empty().await;
    t.daemon.stop().await;
}
