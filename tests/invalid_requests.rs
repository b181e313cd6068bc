//! Every bad input of docs/contract.md §3's table gets exactly its outcome: invalid
//! bodies are dead-lettered with `x-payrecon-error` (and `request.rejected`
//! when a request id could be read); business-rule breaks are acknowledged
//! with `request.rejected` and their reason code. The daemon keeps running.

mod common;

use common::{header_str, place_data, Broker, TestEnv};
use payrecon::app::Daemon;
use payrecon::domain::OrderId;
use serde_json::{json, Value};

struct Harness {
    env: TestEnv,
    daemon: Daemon,
    broker: Broker,
}

impl Harness {
    async fn new(tag: &str) -> Harness {
        let env = TestEnv::new(tag);
        let broker = Broker::connect(&env).await;
        let daemon = Daemon::start(env.settings.clone()).await.expect("daemon");
        Harness {
            env,
            daemon,
            broker,
        }
    }

    /// Publishes `body` raw and expects it in `P.requests.dlq` with a reason,
    /// and `request.rejected` (invalid_request) iff `request_id` is given.
    async fn expect_dead_letter(
        &mut self,
        body: &[u8],
        request_id: Option<&str>,
        reason_contains: &str,
    ) {
        let requests = self.env.names().requests.clone();
        self.broker.publish_raw(&requests, body).await;
        let dlq = self.env.names().requests_dlq.clone();
        let msg = self.broker.get_from(&dlq, 10).await.expect("dead-lettered");
        assert_eq!(
            msg.delivery.data, body,
            "the dead letter carries the original body"
        );
        let reason = header_str(&msg.delivery.properties, "x-payrecon-error")
            .expect("x-payrecon-error header");
        assert!(
            reason.contains(reason_contains),
            "reason {reason:?} should mention {reason_contains:?}"
        );
        match request_id {
            Some(rid) => {
                let e = self.broker.wait_event("request.rejected", 10).await;
                assert_eq!(e["request_id"], rid);
                assert_eq!(e["data"]["reason"], "invalid_request");
                assert!(e["data"]["message"].as_str().is_some_and(|m| !m.is_empty()));
                assert!(e["data"].get("order").is_none());
            }
            None => self.broker.assert_quiet(800).await,
        }
        self.still_alive().await;
    }

    async fn expect_invalid(&mut self, kind: &str, rid: &str, data: Value, reason_contains: &str) {
        let body = json!({"type": kind, "request_id": rid, "sent_at": "2026-11-24T10:00:00+08:00", "data": data});
        self.expect_dead_letter(body.to_string().as_bytes(), Some(rid), reason_contains)
            .await;
    }

    /// A business rejection: acknowledged (not dead-lettered), with its reason.
    async fn expect_rejected(&mut self, kind: &str, rid: &str, data: Value, reason: &str) {
        self.broker.request(kind, rid, data).await;
        let e = self.broker.wait_event("request.rejected", 10).await;
        assert_eq!(e["request_id"], rid);
        assert_eq!(e["data"]["reason"], reason, "{e}");
        assert_eq!(e["data"]["request_type"], kind);
        let dlq = self.env.names().requests_dlq.clone();
        assert!(
            self.broker.get_from(&dlq, 0).await.is_none(),
            "business rejections are not dead-lettered"
        );
    }

    /// The consumer still processes a valid request after the bad one.
    async fn still_alive(&mut self) {
        let rid = format!("alive-{}", uuid::Uuid::new_v4().simple());
        self.broker
            .request("order.place", &rid, place_data("wechat_pay"))
            .await;
        let e = self.broker.wait_event("order.created", 10).await;
        assert_eq!(e["request_id"], rid.as_str());
    }

    async fn place(&mut self, method: &str) -> OrderId {
        self.broker.place_order(method).await
    }

    async fn stop(self) {
        self.daemon.stop().await;
    }
}

fn with_items(items: Value) -> Value {
    let mut d = place_data("wechat_pay");
    d["items"] = items;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_body() {
    let mut h = Harness::new("nonjson").await;
    h.expect_dead_letter(b"this is {not json", None, "not JSON")
        .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_an_envelope() {
    let mut h = Harness::new("noenv").await;
    h.expect_dead_letter(br#"[1,2,3]"#, None, "invalid_request")
        .await;
    h.expect_dead_letter(br#"{"type":"order.place","data":{}}"#, None, "request_id")
        .await;
    h.expect_dead_letter(
        br#"{"type":"order.place","request_id":"","data":{}}"#,
        None,
        "request_id",
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_type() {
    let mut h = Harness::new("unktype").await;
    h.expect_invalid(
        "order.teleport",
        "bad-type",
        json!({}),
        "unknown request type",
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_ill_typed_fields() {
    let mut h = Harness::new("fields").await;
    let mut d = place_data("wechat_pay");
    d.as_object_mut().unwrap().remove("user_id");
    h.expect_invalid("order.place", "missing-user", d, "user_id")
        .await;
    h.expect_invalid(
        "order.place",
        "string-qty",
        with_items(json!([{"product_id": "p", "quantity": "2", "unit_price": 1}])),
        "invalid_request",
    )
    .await;
    h.expect_invalid(
        "order.place",
        "float-price",
        with_items(json!([{"product_id": "p", "quantity": 1, "unit_price": 19.99}])),
        "invalid_request",
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantity_zero() {
    let mut h = Harness::new("qty0").await;
    h.expect_invalid(
        "order.place",
        "qty-0",
        with_items(json!([{"product_id": "p", "quantity": 0, "unit_price": 100}])),
        "quantity",
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_price() {
    let mut h = Harness::new("negprice").await;
    h.expect_invalid(
        "order.place",
        "neg-price",
        with_items(json!([{"product_id": "p", "quantity": 1, "unit_price": -1}])),
        "unit_price",
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_items() {
    let mut h = Harness::new("items101").await;
    let items: Vec<Value> = (0..101)
        .map(|i| json!({"product_id": format!("p{i}"), "quantity": 1, "unit_price": 1}))
        .collect();
    h.expect_invalid(
        "order.place",
        "items-101",
        with_items(json!(items)),
        "items",
    )
    .await;
    h.expect_invalid("order.place", "items-0", with_items(json!([])), "items")
        .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_payment_method() {
    let mut h = Harness::new("method").await;
    h.expect_invalid(
        "order.place",
        "paypal",
        place_data("paypal"),
        "invalid_request",
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amount_overflow() {
    let mut h = Harness::new("overflow").await;
    let huge = with_items(json!([{"product_id": "p", "quantity": 4, "unit_price": i64::MAX / 2}]));
    h.expect_invalid("order.place", "overflow", huge, "overflow")
        .await;
    let zero = with_items(json!([{"product_id": "p", "quantity": 1, "unit_price": 0}]));
    h.expect_invalid("order.place", "zero-total", zero, "total_amount")
        .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_order() {
    let mut h = Harness::new("unkorder").await;
    let id = OrderId::generate().to_string();
    h.expect_rejected(
        "order.ship",
        "ship-unknown",
        json!({"order_id": id}),
        "order_not_found",
    )
    .await;
    h.expect_rejected(
        "payment.request",
        "pay-unknown",
        json!({"order_id": id, "amount": 1, "payment_method": "alipay"}),
        "order_not_found",
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_before_pay() {
    let mut h = Harness::new("shipearly").await;
    let id = h.place("wechat_pay").await;
    h.expect_rejected(
        "order.ship",
        "ship-early",
        json!({"order_id": id.to_string()}),
        "invalid_state",
    )
    .await;
    h.expect_rejected(
        "order.confirm_receipt",
        "confirm-early",
        json!({"order_id": id.to_string()}),
        "invalid_state",
    )
    .await;
    h.expect_rejected(
        "refund.request",
        "refund-early",
        json!({"order_id": id.to_string(), "amount": 1, "reason": "x"}),
        "invalid_state",
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_request_mismatches() {
    let mut h = Harness::new("paymis").await;
    let id = h.place("wechat_pay").await;
    h.expect_rejected(
        "payment.request",
        "pay-amount",
        json!({"order_id": id.to_string(), "amount": 3997, "payment_method": "wechat_pay"}),
        "amount_mismatch",
    )
    .await;
    h.expect_rejected(
        "payment.request",
        "pay-method",
        json!({"order_id": id.to_string(), "amount": 3998, "payment_method": "alipay"}),
        "payment_method_mismatch",
    )
    .await;
    h.expect_invalid(
        "payment.request",
        "pay-negative",
        json!({"order_id": id.to_string(), "amount": -5, "payment_method": "wechat_pay"}),
        "invalid_request",
    )
    .await;
    h.expect_invalid(
        "refund.request",
        "refund-zero",
        json!({"order_id": id.to_string(), "amount": 0, "reason": "x"}),
        "amount",
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_then_cancel_again_is_invalid_state() {
    let mut h = Harness::new("cancel").await;
    let id = h.place("alipay").await;
    h.broker
        .request(
            "order.cancel",
            "cancel-1",
            json!({"order_id": id.to_string(), "reason": "changed mind"}),
        )
        .await;
    let e = h.broker.wait_event("order.cancelled", 10).await;
    assert_eq!(e["data"]["reason"], "changed mind");
    assert_eq!(e["data"]["order"]["status"], "cancelled");
    assert_eq!(e["data"]["order"]["cancel_reason"], "changed mind");
    h.expect_rejected(
        "order.cancel",
        "cancel-2",
        json!({"order_id": id.to_string(), "reason": "again"}),
        "invalid_state",
    )
    .await;
    h.stop().await;
}
