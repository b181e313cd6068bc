//! The order lifecycle over the real RabbitMQ and PostgreSQL (issue: foundation).

mod common;

use common::{header_str, place_data, Broker, TestEnv};
use payrecon::app::Daemon;
use payrecon::domain::{Channel, Money, OrderId};
use payrecon::store::payments::{confirm_payment, GatewayPayment, PaidSource};
use serde_json::json;

async fn start(env: &TestEnv) -> (Daemon, Broker) {
    let broker = Broker::connect(env).await;
    let daemon = Daemon::start(env.settings.clone())
        .await
        .expect("daemon starts");
    (daemon, broker)
}

async fn mark_paid_in_store(daemon: &Daemon, order_id: OrderId, amount: i64) {
    let mut tx = daemon.pool.begin().await.unwrap();
    let payment = GatewayPayment {
        channel: Channel::WechatPay,
        out_trade_no: order_id.out_trade_no(),
        transaction_id: "4200000000000000000000000001".into(),
        amount: Money::from_fen(amount).unwrap(),
        paid_at: chrono::Utc::now(),
    };
    confirm_payment(&mut tx, &payment, PaidSource::Query, None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_lifecycle_emits_each_event() {
    let env = TestEnv::new("happy");
    let (daemon, mut broker) = start(&env).await;
    let order_id = OrderId::generate();
    let mut data = place_data("wechat_pay");
    data["order_id"] = json!(order_id.to_string());
    broker.request("order.place", "place-1", data).await;
    let created = broker.wait_event("order.created", 10).await;
    assert_eq!(created["request_id"], "place-1");
    let order = &created["data"]["order"];
    assert_eq!(order["order_id"], order_id.to_string());
    assert_eq!(order["out_trade_no"], order_id.out_trade_no());
    assert_eq!(order["total_amount"], 3998);
    assert_eq!(order["status"], "pending_payment");
    assert_eq!(order["paid_amount"], 0);
    assert!(order["expires_at"].is_string());
    assert!(order["paid_at"].is_null());

    mark_paid_in_store(&daemon, order_id, 3998).await;
    let paid = broker.wait_event("order.paid", 10).await;
    assert_eq!(paid["data"]["source"], "query");
    assert_eq!(paid["data"]["order"]["status"], "paid");
    assert_eq!(paid["data"]["order"]["paid_amount"], 3998);

    broker
        .request(
            "order.ship",
            "ship-1",
            json!({"order_id": order_id.to_string(), "carrier": "SF", "tracking_no": "SF1"}),
        )
        .await;
    let shipped = broker.wait_event("order.shipped", 10).await;
    assert_eq!(shipped["data"]["order"]["status"], "shipped");
    assert!(shipped["data"]["order"]["shipped_at"].is_string());

    broker
        .request(
            "order.confirm_receipt",
            "confirm-1",
            json!({"order_id": order_id.to_string()}),
        )
        .await;
    let completed = broker.wait_event("order.completed", 10).await;
    assert_eq!(completed["data"]["order"]["status"], "completed");
    assert!(completed["event_id"].is_string());

    let url = format!("http://{}/orders/{}", daemon.http_addr, order_id);
    let body: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(body["status"], "completed");
    let missing = reqwest::get(format!(
        "http://{}/orders/{}",
        daemon.http_addr,
        OrderId::generate()
    ))
    .await
    .unwrap();
    assert_eq!(missing.status(), 404);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_delivery_has_one_effect_and_reuse_is_rejected() {
    let env = TestEnv::new("dup");
    let (daemon, mut broker) = start(&env).await;
    let data = place_data("alipay");
    broker.request("order.place", "same-id", data.clone()).await;
    broker.request("order.place", "same-id", data.clone()).await;
    let first = broker.wait_event("order.created", 10).await;
    assert_eq!(first["request_id"], "same-id");
    broker.assert_quiet(1500).await;

    let mut other = data.clone();
    other["user_id"] = json!("someone-else");
    broker.request("order.place", "same-id", other).await;
    let rejected = broker.wait_event("request.rejected", 10).await;
    assert_eq!(rejected["data"]["reason"], "request_id_reused");
    assert_eq!(rejected["data"]["request_type"], "order.place");
    assert!(rejected["data"].get("order").is_none());
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&daemon.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_id_that_exists_is_rejected() {
    let env = TestEnv::new("exists");
    let (daemon, mut broker) = start(&env).await;
    let mut data = place_data("wechat_pay");
    data["order_id"] = json!(OrderId::generate().to_string());
    broker.request("order.place", "a", data.clone()).await;
    broker.wait_event("order.created", 10).await;
    broker.request("order.place", "b", data).await;
    let rejected = broker.wait_event("request.rejected", 10).await;
    assert_eq!(rejected["data"]["reason"], "order_exists");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_after_commit_without_ack_has_no_second_effect() {
    use lapin::options::{BasicGetOptions, QueueDeclareOptions};
    use payrecon::messaging::consumer::BatchProcessor;
    use payrecon::messaging::handler::HandlerConfig;
    use payrecon::messaging::request_processor::RequestProcessor;

    let env = TestEnv::new("killack");
    let mut broker = Broker::connect(&env).await;
    // Declare the topology as the daemon would, then act as a consumer that
    // commits a batch and dies before its ack.
    payrecon::messaging::topology::declare(&broker.channel, &env.names())
        .await
        .unwrap();
    let _ = QueueDeclareOptions::default();
    broker
        .request("order.place", "crash-1", place_data("wechat_pay"))
        .await;
    let pool = payrecon::store::connect(&env.settings.database)
        .await
        .unwrap();
    let victim = broker.conn.create_channel().await.unwrap();
    let got = victim
        .basic_get(
            env.names().requests.as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
        .expect("message is there");
    let processor = RequestProcessor {
        pool: pool.clone(),
        config: HandlerConfig {
            pay_timeout: chrono::Duration::minutes(30),
        },
    };
    let batch = std::slice::from_ref(&got.delivery);
    let (parsed, _) = processor.parse(batch);
    processor.process(batch, &parsed).await.unwrap();
    victim
        .close(200, "simulated crash before ack".into())
        .await
        .unwrap();

    // The daemon gets the redelivery: the inbox makes it a no-op, and the
    // relay publishes the event committed before the crash exactly once.
    let daemon = Daemon::start(env.settings.clone()).await.unwrap();
    let created = broker.wait_event("order.created", 10).await;
    assert_eq!(created["request_id"], "crash-1");
    broker.assert_quiet(1500).await;
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(orders, 1);
    let ready = payrecon::store::outbox::count_unpublished(&mut pool.acquire().await.unwrap())
        .await
        .unwrap();
    assert_eq!(ready, 0);
    pool.close().await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let env = TestEnv::new("health");
    let (daemon, mut broker) = start(&env).await;
    let base = format!("http://{}", daemon.http_addr);
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    // Ready once the broker session is up.
    let mut ready = false;
    for _ in 0..50 {
        if reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status()
            == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready);
    broker
        .request("order.place", "m-1", place_data("wechat_pay"))
        .await;
    broker.wait_event("order.created", 10).await;
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("payrecon_messages_total"), "{text}");
    assert!(
        text.contains("payrecon_orders{status=\"pending_payment\"} 1"),
        "{text}"
    );
    daemon.stop().await;
    let _ = header_str;
}

/// Every way requests of one batch can collide, published before the daemon
/// starts so that they arrive as one batch: the outcomes are those of
/// applying them one by one, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collisions_within_one_batch_resolve_in_order() {
    let env = TestEnv::new("burst");
    let mut broker = Broker::connect(&env).await;
    let order_x = OrderId::generate();
    let mut first = place_data("wechat_pay");
    first["order_id"] = json!(order_x.to_string());
    let mut other_body = first.clone();
    other_body["user_id"] = json!("someone-else");
    let mut same_order = place_data("alipay");
    same_order["order_id"] = json!(order_x.to_string());
    let mut overflow = place_data("alipay");
    overflow["items"] = json!([{"product_id": "p", "quantity": 2, "unit_price": i64::MAX / 2 + 1}]);
    let burst = [
        ("p1", first.clone()),        // created
        ("p1", first),                // duplicate: nothing
        ("p2", same_order),           // order_exists
        ("p1", other_body),           // request_id_reused
        ("p3", overflow),             // invalid_request (total overflows)
        ("p3", place_data("alipay")), // request_id_reused (p3 was the invalid one)
        ("p4", place_data("alipay")), // created, with a generated id
    ];
    for (rid, data) in &burst {
        broker.request("order.place", rid, data.clone()).await;
    }
    let daemon = Daemon::start(env.settings.clone())
        .await
        .expect("daemon starts");
    let mut seen = Vec::new();
    for _ in 0..6 {
        let e = broker.next_event(10).await;
        let what = match e["type"].as_str() {
            Some("order.created") => "created".to_string(),
            _ => e["data"]["reason"].as_str().unwrap_or("?").to_string(),
        };
        seen.push((e["request_id"].as_str().unwrap_or("").to_string(), what));
    }
    broker.assert_quiet(1000).await;
    seen.sort();
    let expected: Vec<(String, String)> = [
        ("p1", "created"),
        ("p1", "request_id_reused"),
        ("p2", "order_exists"),
        ("p3", "invalid_request"),
        ("p3", "request_id_reused"),
        ("p4", "created"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(seen, expected);
    let orders: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT order_id, payment_method FROM orders ORDER BY payment_method DESC")
            .fetch_all(&daemon.pool)
            .await
            .unwrap();
    assert_eq!(orders.len(), 2);
    assert_eq!(orders[0], (order_x.0, "wechat_pay".to_string()));
    let outcomes: Vec<(String, String)> =
        sqlx::query_as("SELECT request_id, outcome FROM inbox ORDER BY request_id")
            .fetch_all(&daemon.pool)
            .await
            .unwrap();
    let outcomes: Vec<(&str, &str)> = outcomes
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("p1", "processed"),
            ("p2", "order_exists"),
            ("p3", "invalid_request"),
            ("p4", "processed")
        ]
    );
    daemon.stop().await;
}
