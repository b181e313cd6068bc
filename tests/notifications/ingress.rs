//! A daemon with its ingress, and notifications forged here from the
//! simulator's key files with the crypto primitives alone (not with the
//! adapters under test): honest ones, and every way of getting them wrong.

use chrono::{FixedOffset, Utc};
use payrecon::app::Daemon;
use payrecon::domain::OrderId;
use payrecon::gateway::crypto::{aes_256_gcm_encrypt, RsaPrivateKey};
use payrecon::simulator::SimKeys;
use serde_json::{json, Value};

use crate::common::{header_str, Broker, TestEnv};

pub type Headers = Vec<(String, String)>;

/// `bytes` with its first U+FFFD (EF BF BD) replaced by a lone 0xFF: a
/// marker placed in a string, turned into bytes that are not UTF-8.
pub fn invalid_utf8(mut bytes: Vec<u8>) -> Vec<u8> {
    let at = bytes
        .windows(3)
        .position(|w| w == [0xEF, 0xBF, 0xBD])
        .expect("a U+FFFD marker");
    bytes.splice(at..at + 3, [0xFF]);
    bytes
}

pub struct Ingress {
    pub env: TestEnv,
    pub daemon: Daemon,
    pub broker: Broker,
    pub keys: SimKeys,
    pub http: reqwest::Client,
}

/// What a WeChat Pay transaction resource says; `Default` is an honest
/// payment of 3998 fen to our merchant, completed by the caller.
#[derive(Clone)]
pub struct Tx {
    pub out_trade_no: String,
    pub amount: i64,
    pub mchid: String,
    pub appid: String,
    pub transaction_id: String,
    /// Extra characters in `attach`: bodies of any size.
    pub attach: String,
}

/// An Alipay notification's fields before signing.
pub type Form = Vec<(String, String)>;

impl Ingress {
    pub async fn start(tag: &str) -> Ingress {
        let env = TestEnv::new(tag);
        let broker = Broker::connect(&env).await;
        let daemon = Daemon::start(env.settings.clone()).await.expect("daemon");
        let keys = SimKeys::load_or_create(env.keys_dir.path()).expect("keys");
        // Until the broker session is up the ingress (rightly) answers 503.
        let ready = format!("http://{}/readyz", daemon.http_addr);
        for _ in 0..200 {
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
            // No pooled connections: after a 413 the server closes the
            // connection, and a pooled one would fail the next request.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client"),
        }
    }

    pub fn url(&self, channel: &str) -> String {
        format!("http://{}/notify/{channel}", self.daemon.http_addr)
    }

    /// POSTs raw bytes to the ingress: (status, body text).
    pub async fn post(&self, channel: &str, headers: &Headers, body: Vec<u8>) -> (u16, String) {
        self.try_post(channel, headers, body)
            .await
            .expect("ingress")
    }

    /// Like `post`, but a connection the server closed is an answer too: a
    /// body over the limit is refused by its Content-Length, and the 413
    /// may race the client still writing it.
    pub async fn try_post(
        &self,
        channel: &str,
        headers: &Headers,
        body: Vec<u8>,
    ) -> Result<(u16, String), reqwest::Error> {
        let content_type = match channel {
            "alipay" => "application/x-www-form-urlencoded; charset=utf-8",
            _ => "application/json",
        };
        let mut req = self
            .http
            .post(self.url(channel))
            .header("content-type", content_type);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let r = req.body(body).send().await?;
        let status = r.status().as_u16();
        Ok((status, r.text().await.unwrap_or_default()))
    }

    pub async fn post_wechat(&self, n: &(Headers, String)) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.url("wechat_pay"))
            .header("content-type", "application/json");
        for (k, v) in &n.0 {
            req = req.header(k, v);
        }
        req.body(n.1.clone()).send().await.expect("ingress")
    }

    pub async fn post_alipay(&self, body: String) -> reqwest::Response {
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

    pub async fn prepared_order(&mut self, method: &str) -> OrderId {
        let id = self.broker.place_order(method).await;
        let pay = json!({"order_id": id.to_string(), "amount": 3998, "payment_method": method});
        self.broker
            .request("payment.request", &format!("pay-{id}"), pay)
            .await;
        self.broker.wait_event("payment.prepared", 20).await;
        id
    }

    pub fn tx(&self, out_trade_no: &str, amount: i64) -> Tx {
        let s = &self.env.settings.simulator;
        Tx {
            out_trade_no: out_trade_no.to_string(),
            amount,
            mchid: s.wechat_mchid.clone(),
            appid: s.wechat_appid.clone(),
            transaction_id: format!("4200{}", &uuid::Uuid::new_v4().simple().to_string()[..24]),
            attach: String::new(),
        }
    }

    /// The JSON body of a TRANSACTION.SUCCESS notification, resource
    /// encrypted with the APIv3 key.
    pub fn wechat_body(&self, tx: &Tx) -> String {
        let beijing = FixedOffset::east_opt(8 * 3600).unwrap();
        let resource = json!({
            "mchid": tx.mchid, "appid": tx.appid, "out_trade_no": tx.out_trade_no,
            "transaction_id": tx.transaction_id, "trade_type": "NATIVE",
            "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS", "attach": tx.attach,
            "success_time": Utc::now().with_timezone(&beijing).to_rfc3339(),
            "payer": {"openid": "oTest"},
            "amount": {"total": tx.amount, "payer_total": tx.amount, "currency": "CNY", "payer_currency": "CNY"},
        });
        let nonce = "a1b2c3d4e5f6";
        let ciphertext = aes_256_gcm_encrypt(
            self.keys.wechat_apiv3_key.as_bytes(),
            nonce.as_bytes(),
            b"transaction",
            resource.to_string().as_bytes(),
        )
        .unwrap();
        json!({
            "id": format!("EV-{}", uuid::Uuid::new_v4().simple()), "create_time": Utc::now().with_timezone(&beijing).to_rfc3339(),
            "resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS", "summary": "支付成功",
            "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM", "ciphertext": ciphertext,
                         "associated_data": "transaction", "nonce": nonce},
        })
        .to_string()
    }

    /// The five Wechatpay-* headers of `body`, signed over `ts\nnonce\nbody\n`.
    pub fn wechat_headers(&self, body: &[u8], ts: i64, signer: &RsaPrivateKey) -> Headers {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let mut message = format!("{ts}\n{nonce}\n").into_bytes();
        message.extend_from_slice(body);
        message.push(b'\n');
        let signature = signer.sign_sha256_base64(&message).unwrap();
        vec![
            ("Wechatpay-Timestamp".into(), ts.to_string()),
            ("Wechatpay-Nonce".into(), nonce),
            ("Wechatpay-Signature".into(), signature),
            (
                "Wechatpay-Serial".into(),
                self.env.settings.simulator.wechat_platform_serial.clone(),
            ),
            (
                "Wechatpay-Signature-Type".into(),
                "WECHATPAY2-SHA256-RSA2048".into(),
            ),
        ]
    }

    /// An honest notification for `tx`, signed at `ts` by `signer`.
    pub fn wechat_tx(&self, tx: &Tx, ts: i64, signer: &RsaPrivateKey) -> (Headers, String) {
        let body = self.wechat_body(tx);
        (self.wechat_headers(body.as_bytes(), ts, signer), body)
    }

    pub fn wechat(
        &self,
        otn: &str,
        amount: i64,
        mchid: &str,
        ts: i64,
        signer: &RsaPrivateKey,
    ) -> (Headers, String) {
        let mut tx = self.tx(otn, amount);
        tx.mchid = mchid.to_string();
        self.wechat_tx(&tx, ts, signer)
    }

    /// The fields of a TRADE_SUCCESS notification (amount in yuan, "39.98").
    pub fn alipay_form(&self, otn: &str, amount: &str) -> Form {
        let app_id = self.env.settings.simulator.alipay_app_id.clone();
        vec![
            ("app_id".into(), app_id.clone()),
            ("auth_app_id".into(), app_id),
            ("charset".into(), "utf-8".into()),
            ("gmt_payment".into(), "2026-11-25 12:00:05".into()),
            (
                "notify_id".into(),
                uuid::Uuid::new_v4().simple().to_string(),
            ),
            ("notify_time".into(), "2026-11-25 12:00:06".into()),
            ("notify_type".into(), "trade_status_sync".into()),
            ("out_trade_no".into(), otn.to_string()),
            ("total_amount".into(), amount.to_string()),
            ("receipt_amount".into(), amount.to_string()),
            (
                "trade_no".into(),
                format!(
                    "2026112522{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..18]
                ),
            ),
            ("trade_status".into(), "TRADE_SUCCESS".into()),
            ("version".into(), "1.0".into()),
        ]
    }

    /// The V1 signature of `fields`: sorted `k=v` of the non-empty ones.
    pub fn alipay_sign(fields: &Form, signer: &RsaPrivateKey) -> String {
        let mut sorted: Vec<&(String, String)> =
            fields.iter().filter(|(_, v)| !v.is_empty()).collect();
        sorted.sort();
        let content = sorted
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        signer.sign_sha256_base64(content.as_bytes()).unwrap()
    }

    /// The form body with `sign_type` and `sign` appended.
    pub fn alipay_encode(fields: &Form, sign: &str) -> String {
        let mut all = fields.clone();
        all.push(("sign_type".into(), "RSA2".into()));
        all.push(("sign".into(), sign.to_string()));
        serde_urlencoded::to_string(&all).unwrap()
    }

    pub fn alipay_signed(fields: &Form, signer: &RsaPrivateKey) -> String {
        Self::alipay_encode(fields, &Self::alipay_sign(fields, signer))
    }

    pub fn alipay(&self, otn: &str, amount: &str, app_id: &str, signer: &RsaPrivateKey) -> String {
        let mut fields = self.alipay_form(otn, amount);
        for (k, v) in fields.iter_mut() {
            if k == "app_id" || k == "auth_app_id" {
                *v = app_id.to_string();
            }
        }
        Self::alipay_signed(&fields, signer)
    }

    /// The §3.8 envelope of a notification as the ingress would enqueue it.
    pub fn envelope(channel: &str, headers: &Headers, body: &str) -> Vec<u8> {
        let headers: serde_json::Map<String, Value> =
            headers.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        json!({"type": "gateway.notification", "request_id": format!("n-{}", uuid::Uuid::new_v4()),
               "data": {"channel": channel, "headers": headers, "body": body}})
        .to_string()
        .into_bytes()
    }

    /// Puts `raw` on `P.notifications` and expects it in the dead-letter
    /// queue, unchanged, with a reason that mentions `reason_contains`.
    pub async fn expect_dead_letter(&self, raw: &[u8], reason_contains: &str) {
        let queue = self.env.names().notifications.clone();
        self.broker.publish_raw(&queue, raw).await;
        let dlq = self.env.names().notifications_dlq.clone();
        let dead = self
            .broker
            .get_from(&dlq, 15)
            .await
            .unwrap_or_else(|| panic!("not dead-lettered (expected {reason_contains:?})"));
        assert_eq!(dead.delivery.data, raw, "the dead letter is the message");
        let reason =
            header_str(&dead.delivery.properties, "x-payrecon-error").expect("x-payrecon-error");
        assert!(
            reason.contains(reason_contains),
            "reason {reason:?} should mention {reason_contains:?}"
        );
    }

    /// Puts the notification on `P.notifications` as a §3.8 envelope and
    /// expects it dead-lettered with a reason that mentions `reason_contains`.
    pub async fn queue_refuses(
        &self,
        channel: &str,
        headers: &Headers,
        body: &str,
        reason_contains: &str,
    ) {
        self.expect_dead_letter(&Self::envelope(channel, headers, body), reason_contains)
            .await;
    }

    pub async fn enqueue(&self, channel: &str, headers: &Headers, body: &str) {
        let queue = self.env.names().notifications.clone();
        self.broker
            .publish_raw(&queue, &Self::envelope(channel, headers, body))
            .await;
    }

    /// Nothing reached the dead-letter queue: the edge enqueued nothing
    /// unverifiable (anything enqueued is applied or dead-lettered).
    pub async fn dlq_empty(&self) {
        let dlq = self.env.names().notifications_dlq.clone();
        if let Some(m) = self.broker.get_from(&dlq, 1).await {
            panic!(
                "unexpected dead letter: {:?}",
                header_str(&m.delivery.properties, "x-payrecon-error")
            );
        }
    }

    /// The order is untouched: still waiting for payment, nothing paid.
    pub async fn assert_unpaid(&self, id: OrderId) {
        let (status, paid, tx, paid_at): (String, i64, Option<String>, Option<chrono::DateTime<Utc>>) =
            sqlx::query_as(
                "SELECT status, paid_amount, gateway_transaction_id, paid_at FROM orders WHERE order_id = $1",
            )
            .bind(id.0)
            .fetch_one(&self.daemon.pool)
            .await
            .unwrap();
        assert_eq!(
            (status.as_str(), paid, tx, paid_at),
            ("pending_payment", 0, None, None),
            "order {id} was changed"
        );
    }

    /// The order's row, to compare before and after a replay.
    pub async fn order_row(&self, id: OrderId) -> Value {
        let row: (Value,) = sqlx::query_as("SELECT to_jsonb(o) FROM orders o WHERE order_id = $1")
            .bind(id.0)
            .fetch_one(&self.daemon.pool)
            .await
            .unwrap();
        row.0
    }

    /// No event at all (in particular no `order.paid`) within `ms`.
    pub async fn quiet(&mut self, ms: u64) {
        self.broker.assert_quiet(ms).await;
    }
}
