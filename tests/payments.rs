//! Payments and refunds end to end through RabbitMQ, the daemon's HTTP
//! ingress and the gateway simulator speaking the real protocols.

mod common;

use common::{Broker, TestEnv};
use payrecon::app::Daemon;
use payrecon::domain::OrderId;
use serde_json::{json, Value};

struct Shop {
    env: TestEnv,
    daemon: Daemon,
    broker: Broker,
    http: reqwest::Client,
}

impl Shop {
    async fn open(tag: &str) -> Shop {
        let env = TestEnv::new(tag);
        let broker = Broker::connect(&env).await;
        let daemon = Daemon::start(env.settings.clone()).await.expect("daemon");
        Shop {
            env,
            daemon,
            broker,
            http: reqwest::Client::new(),
        }
    }

    fn sim(&self) -> String {
        self.daemon
            .simulator_base_url
            .clone()
            .expect("simulator mode")
    }

    async fn sim_post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.sim()))
            .json(&body)
            .send()
            .await
            .expect("simulator")
    }

    async fn place(&mut self, method: &str) -> OrderId {
        self.broker.place_order(method).await
    }

    async fn prepare(&mut self, id: OrderId, method: &str) -> Value {
        let data = json!({"order_id": id.to_string(), "amount": 3998, "payment_method": method});
        self.broker
            .request("payment.request", &format!("pay-{id}"), data)
            .await;
        self.broker.wait_event("payment.prepared", 20).await
    }

    async fn pay(&mut self, id: OrderId, method: &str, amount: Option<i64>) -> reqwest::Response {
        let mut body = json!({"channel": method, "out_trade_no": id.out_trade_no()});
        if let Some(a) = amount {
            body["amount"] = json!(a);
        }
        self.sim_post("/sim/pay", body).await
    }

    async fn stop(self) {
        self.daemon.stop().await;
    }
}

async fn full_lifecycle(method: &str, prepay_field: &str) {
    let mut shop = Shop::open(&format!("e2e_{method}")).await;
    let id = shop.place(method).await;
    let prepared = shop.prepare(id, method).await;
    assert!(
        prepared["data"]["prepay"][prepay_field].is_string(),
        "{prepared}"
    );
    assert_eq!(prepared["request_id"], format!("pay-{id}"));

    let paid_at_sim = shop.pay(id, method, None).await;
    assert_eq!(paid_at_sim.status(), 200);
    let tx: Value = paid_at_sim.json().await.unwrap();
    let paid = shop.broker.wait_event("order.paid", 20).await;
    assert_eq!(paid["data"]["source"], "notification");
    let order = &paid["data"]["order"];
    assert_eq!(order["status"], "paid");
    assert_eq!(order["paid_amount"], 3998);
    assert_eq!(order["gateway_transaction_id"], tx["transaction_id"]);
    assert!(order["paid_at"].is_string());

    shop.broker
        .request(
            "order.ship",
            &format!("ship-{id}"),
            json!({"order_id": id.to_string()}),
        )
        .await;
    shop.broker.wait_event("order.shipped", 10).await;
    shop.broker
        .request(
            "order.confirm_receipt",
            &format!("recv-{id}"),
            json!({"order_id": id.to_string()}),
        )
        .await;
    shop.broker.wait_event("order.completed", 10).await;

    let refund = json!({"order_id": id.to_string(), "amount": 1000, "reason": "one item broken"});
    shop.broker
        .request("refund.request", &format!("refund-1-{id}"), refund)
        .await;
    let first = shop.broker.wait_event("refund.succeeded", 20).await;
    assert_eq!(first["data"]["refund"]["amount"], 1000);
    assert_eq!(first["data"]["refund"]["status"], "succeeded");
    assert_eq!(first["data"]["order"]["refunded_amount"], 1000);
    assert_eq!(first["data"]["order"]["status"], "completed");

    // More than what is left is refused before any gateway call.
    let too_much = json!({"order_id": id.to_string(), "amount": 2999, "reason": "x"});
    shop.broker
        .request("refund.request", &format!("refund-x-{id}"), too_much)
        .await;
    let rejected = shop.broker.wait_event("request.rejected", 10).await;
    assert_eq!(rejected["data"]["reason"], "refund_exceeds_paid");

    let rest = json!({"order_id": id.to_string(), "amount": 2998, "reason": "returned"});
    shop.broker
        .request("refund.request", &format!("refund-2-{id}"), rest)
        .await;
    shop.broker.wait_event("refund.succeeded", 20).await;
    let refunded = shop.broker.wait_event("order.refunded", 20).await;
    assert_eq!(refunded["data"]["order"]["status"], "refunded");
    assert_eq!(refunded["data"]["order"]["refunded_amount"], 3998);
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_pay_end_to_end() {
    full_lifecycle("wechat_pay", "code_url").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alipay_end_to_end() {
    full_lifecycle("alipay", "qr_code").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_amount_is_an_anomaly_not_a_payment() {
    for method in ["wechat_pay", "alipay"] {
        let mut shop = Shop::open(&format!("tamper_{method}")).await;
        let id = shop.place(method).await;
        shop.prepare(id, method).await;
        assert_eq!(shop.pay(id, method, Some(1)).await.status(), 200);
        let anomaly = shop.broker.wait_event("payment.anomaly", 20).await;
        assert_eq!(anomaly["data"]["kind"], "amount_mismatch");
        assert_eq!(anomaly["data"]["channel"], method);
        assert_eq!(anomaly["data"]["gateway_amount"], 1);
        assert_eq!(anomaly["data"]["out_trade_no"], id.out_trade_no());
        assert_eq!(anomaly["data"]["order"]["status"], "pending_payment");
        shop.broker.assert_quiet(1000).await;
        shop.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_after_cancel_is_an_anomaly() {
    let mut shop = Shop::open("afterc").await;
    let id = shop.place("wechat_pay").await;
    shop.prepare(id, "wechat_pay").await;
    // Cancelled behind the gateway's back (as if a close had been lost):
    // the buyer still pays.
    sqlx::query("UPDATE orders SET status = 'cancelled', cancelled_at = now(), cancel_reason = 'ops' WHERE order_id = $1")
        .bind(id.0)
        .execute(&shop.daemon.pool)
        .await
        .unwrap();
    assert_eq!(shop.pay(id, "wechat_pay", None).await.status(), 200);
    let anomaly = shop.broker.wait_event("payment.anomaly", 20).await;
    assert_eq!(anomaly["data"]["kind"], "paid_after_cancel");
    assert_eq!(anomaly["data"]["order"]["status"], "cancelled");
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payment_anomalies WHERE kind = 'paid_after_cancel'",
    )
    .fetch_one(&shop.daemon.pool)
    .await
    .unwrap();
    assert_eq!(recorded, 1);
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_closes_the_payment_at_the_gateway_first() {
    for method in ["wechat_pay", "alipay"] {
        let mut shop = Shop::open(&format!("close_{method}")).await;
        let id = shop.place(method).await;
        shop.prepare(id, method).await;
        if method == "alipay" {
            // An Alipay trade exists only once the buyer scanned the code; an
            // unscanned code stays payable until it expires (a late payment is
            // then a paid_after_cancel anomaly, tested elsewhere).
            let scan = shop
                .sim_post(
                    "/sim/scan",
                    json!({"channel": "alipay", "out_trade_no": id.out_trade_no()}),
                )
                .await;
            assert!(scan.status().is_success());
        }
        shop.broker
            .request(
                "order.cancel",
                &format!("cancel-{id}"),
                json!({"order_id": id.to_string(), "reason": "buyer left"}),
            )
            .await;
        let cancelled = shop.broker.wait_event("order.cancelled", 20).await;
        assert_eq!(cancelled["data"]["reason"], "buyer left");
        // The payment is closed: the buyer can no longer pay it.
        assert_ne!(shop.pay(id, method, None).await.status(), 200);
        shop.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_an_order_paid_meanwhile_makes_it_paid() {
    let mut shop = Shop::open("closepaid").await;
    let id = shop.place("wechat_pay").await;
    shop.prepare(id, "wechat_pay").await;
    // The buyer pays, but the notification cannot reach us (the ingress is
    // not told): we learn it from the gateway's answer to the close.
    shop.sim_post("/sim/faults", json!({})).await;
    let url = format!("{}/sim/pay", shop.sim());
    let body = json!({"channel": "wechat_pay", "out_trade_no": id.out_trade_no()});
    // Stop consuming notifications by pausing the daemon's ingress: we simply
    // race the cancel right after the payment.
    shop.http.post(url).json(&body).send().await.unwrap();
    shop.broker
        .request(
            "order.cancel",
            &format!("cancel-{id}"),
            json!({"order_id": id.to_string(), "reason": "too slow"}),
        )
        .await;
    let paid = shop.broker.wait_event("order.paid", 20).await;
    assert_eq!(paid["data"]["order"]["status"], "paid");
    // Whichever came first (the notification or the close's "already paid"),
    // the order is never cancelled; a cancel that arrives after the payment
    // is rejected as invalid_state.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(1500);
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, shop.broker.try_next_event()).await {
        assert_ne!(e["type"], "order.cancelled", "{e}");
        if e["type"] == "request.rejected" {
            assert_eq!(e["data"]["reason"], "invalid_state", "{e}");
        }
    }
    let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE order_id = $1")
        .bind(id.0)
        .fetch_one(&shop.daemon.pool)
        .await
        .unwrap();
    assert_eq!(status, "paid");
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_prepared() {
    let mut shop = Shop::open("burst").await;
    let id = shop.place("alipay").await;
    assert!(shop
        .sim_post("/sim/faults", json!({"fail_next": 3}))
        .await
        .status()
        .is_success());
    let prepared = shop.prepare(id, "alipay").await;
    assert!(prepared["data"]["prepay"]["qr_code"].is_string());
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempt FROM gateway_tasks WHERE kind = 'prepay'")
            .fetch_one(&shop.daemon.pool)
            .await
            .unwrap();
    assert!(attempts >= 3, "took {attempts} attempts");
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_run_out_into_payment_failed() {
    let mut shop = Shop::open("exhaust").await;
    let id = shop.place("wechat_pay").await;
    shop.sim_post("/sim/faults", json!({"error_rate": 1.0}))
        .await;
    let data = json!({"order_id": id.to_string(), "amount": 3998, "payment_method": "wechat_pay"});
    shop.broker
        .request("payment.request", "pay-exhaust", data)
        .await;
    let failed = shop.broker.wait_event("payment.failed", 30).await;
    assert!(failed["data"]["error"]["message"].is_string(), "{failed}");
    assert_eq!(failed["data"]["order"]["status"], "pending_payment");
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_prepay_is_settled_by_query_not_doubled() {
    let mut shop = Shop::open("timeout").await;
    let id = shop.place("wechat_pay").await;
    shop.sim_post("/sim/faults", json!({"timeout_rate": 1.0}))
        .await;
    let data = json!({"order_id": id.to_string(), "amount": 3998, "payment_method": "wechat_pay"});
    shop.broker
        .request("payment.request", "pay-timeout", data)
        .await;
    // The first prepay took effect at the gateway but its answer never came.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    shop.sim_post("/sim/faults", json!({})).await;
    let prepared = shop.broker.wait_event("payment.prepared", 30).await;
    assert!(prepared["data"]["prepay"]["code_url"].is_string());
    shop.broker.assert_quiet(1000).await;
    // The buyer pays the one payment that exists.
    assert_eq!(shop.pay(id, "wechat_pay", None).await.status(), 200);
    shop.broker.wait_event("order.paid", 20).await;
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_the_retry_schedule() {
    let mut shop = Shop::open("restart").await;
    let id = shop.place("alipay").await;
    shop.sim_post("/sim/faults", json!({"error_rate": 1.0}))
        .await;
    let data = json!({"order_id": id.to_string(), "amount": 3998, "payment_method": "alipay"});
    shop.broker
        .request("payment.request", "pay-restart", data)
        .await;
    let pool = shop.daemon.pool.clone();
    for _ in 0..100 {
        let attempt: Option<i32> =
            sqlx::query_scalar("SELECT attempt FROM gateway_tasks WHERE kind = 'prepay'")
                .fetch_optional(&pool)
                .await
                .unwrap();
        if attempt.unwrap_or(0) >= 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let Shop {
        env,
        daemon,
        mut broker,
        ..
    } = shop;
    daemon.stop().await;
    // A new process (and a healthy gateway) picks the schedule up.
    let daemon = Daemon::start(env.settings.clone()).await.expect("restart");
    let prepared = broker.wait_event("payment.prepared", 30).await;
    assert_eq!(prepared["request_id"], "pay-restart");
    let state: String = sqlx::query_scalar("SELECT state FROM gateway_tasks WHERE kind = 'prepay'")
        .fetch_one(&daemon.pool)
        .await
        .unwrap();
    assert_eq!(state, "done");
    daemon.stop().await;
    drop(env);
}
