//! Every bad notification of the contract, through the daemon's HTTP ingress
//! and straight onto `P.notifications`: forged, probe, stale, wrong
//! merchant/app id, replayed, unknown order. The notifications are built
//! here from the simulator's key files with the crypto primitives alone, not
//! with the adapters under test.

mod common;

use chrono::{Duration, FixedOffset, Utc};
use common::{header_str, Broker, TestEnv};
use payrecon::app::Daemon;
use payrecon::domain::OrderId;
use payrecon::gateway::crypto::{aes_256_gcm_encrypt, RsaPrivateKey};
use payrecon::simulator::SimKeys;
use serde_json::{json, Value};

struct Ingress {
    env: TestEnv,
    daemon: Daemon,
    broker: Broker,
    keys: SimKeys,
    http: reqwest::Client,
}

impl Ingress {
    async fn start(tag: &str) -> Ingress {
        let env = TestEnv::new(tag);
        let broker = Broker::connect(&env).await;
        let daemon = Daemon::start(env.settings.clone()).await.expect("daemon");
        let keys = SimKeys::load_or_create(env.keys_dir.path()).expect("keys");
        // Until the broker session is up the ingress (rightly) answers 503.
        let ready = format!("http://{}/readyz", daemon.http_addr);
        for _ in 0..100 {
            if reqwest::get(&ready)
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ingress {
            env,
            daemon,
            broker,
            keys,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, channel: &str) -> String {
        format!("http://{}/notify/{channel}", self.daemon.http_addr)
    }

    async fn post_wechat(&self, n: &(Vec<(String, String)>, String)) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.url("wechat_pay"))
            .header("content-type", "application/json");
        for (k, v) in &n.0 {
            req = req.header(k, v);
        }
        req.body(n.1.clone()).send().await.expect("ingress")
    }

    async fn post_alipay(&self, body: String) -> reqwest::Response {
        self.http
            .post(self.url("alipay"))
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(body)
            .send()
            .await
            .expect("ingress")
    }

    async fn prepared_order(&mut self, method: &str) -> OrderId {
        let id = self.broker.place_order(method).await;
        let pay = json!({"order_id": id.to_string(), "amount": 3998, "payment_method": method});
        self.broker
            .request("payment.request", &format!("pay-{id}"), pay)
            .await;
        self.broker.wait_event("payment.prepared", 20).await;
        id
    }

    fn wechat(
        &self,
        otn: &str,
        amount: i64,
        mchid: &str,
        ts: i64,
        signer: &RsaPrivateKey,
    ) -> (Vec<(String, String)>, String) {
        let s = &self.env.settings.simulator;
        let beijing = FixedOffset::east_opt(8 * 3600).unwrap();
        let resource = json!({
            "mchid": mchid, "appid": s.wechat_appid, "out_trade_no": otn,
            "transaction_id": format!("42000{}", &otn[..20]), "trade_type": "NATIVE",
            "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS", "attach": "",
            "success_time": Utc::now().with_timezone(&beijing).to_rfc3339(),
            "payer": {"openid": "oTest"},
            "amount": {"total": amount, "payer_total": amount, "currency": "CNY", "payer_currency": "CNY"},
        });
        let nonce = "a1b2c3d4e5f6";
        let ciphertext = aes_256_gcm_encrypt(
            self.keys.wechat_apiv3_key.as_bytes(),
            nonce.as_bytes(),
            b"transaction",
            resource.to_string().as_bytes(),
        )
        .unwrap();
        let body = json!({
            "id": format!("EV-{}", uuid::Uuid::new_v4().simple()), "create_time": Utc::now().with_timezone(&beijing).to_rfc3339(),
            "resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS", "summary": "支付成功",
            "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM", "ciphertext": ciphertext,
                         "associated_data": "transaction", "nonce": nonce},
        })
        .to_string();
        let header_nonce = uuid::Uuid::new_v4().simple().to_string();
        let message = format!("{ts}\n{header_nonce}\n{body}\n");
        let signature = signer.sign_sha256_base64(message.as_bytes()).unwrap();
        let headers = vec![
            ("Wechatpay-Timestamp".to_string(), ts.to_string()),
            ("Wechatpay-Nonce".to_string(), header_nonce),
            ("Wechatpay-Signature".to_string(), signature),
            (
                "Wechatpay-Serial".to_string(),
                s.wechat_platform_serial.clone(),
            ),
            (
                "Wechatpay-Signature-Type".to_string(),
                "WECHATPAY2-SHA256-RSA2048".to_string(),
            ),
        ];
        (headers, body)
    }

    fn alipay(&self, otn: &str, amount: &str, app_id: &str, signer: &RsaPrivateKey) -> String {
        let mut fields = vec![
            ("app_id", app_id.to_string()),
            ("auth_app_id", app_id.to_string()),
            ("charset", "utf-8".into()),
            ("gmt_payment", "2026-11-25 12:00:05".into()),
            ("notify_id", uuid::Uuid::new_v4().simple().to_string()),
            ("notify_time", "2026-11-25 12:00:06".into()),
            ("notify_type", "trade_status_sync".into()),
            ("out_trade_no", otn.to_string()),
            ("total_amount", amount.to_string()),
            ("receipt_amount", amount.to_string()),
            ("trade_no", format!("2026112522{}", &otn[..18])),
            ("trade_status", "TRADE_SUCCESS".into()),
            ("version", "1.0".into()),
        ];
        fields.sort();
        let content = fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let sign = signer.sign_sha256_base64(content.as_bytes()).unwrap();
        fields.push(("sign_type", "RSA2".into()));
        fields.push(("sign", sign));
        serde_urlencoded::to_string(&fields).unwrap()
    }
}

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
