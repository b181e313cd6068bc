//! A gateway simulator for one test, with the factory's adapters pointed at
//! it and a stub receiving its notifications.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{FixedOffset, Utc};
use payrecon::config::Settings;
use payrecon::domain::{Channel, Money};
use payrecon::gateway::factory::build_gateways;
use payrecon::gateway::{Gateway, Notification, PrepayRequest, RefundRequest};
use payrecon::simulator::{SimOptions, Simulator};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::stub::{Answer, Request, Stub};
use crate::FIXTURES;

pub struct Sim {
    pub base_url: String,
    cancel: CancellationToken,
    gateways: HashMap<Channel, Arc<dyn Gateway>>,
    /// Receives the simulator's notifications and acknowledges them.
    pub receiver: Stub,
    _keys: tempfile::TempDir,
    _sim: Simulator,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A simulator with the fixture keys (no slow key generation): the merchant
/// and app keys are one key pair, the gateways' keys the other, so a mix-up
/// between them fails.
pub async fn start() -> Sim {
    let keys = tempfile::tempdir().unwrap();
    let copy = |from: &str, to: &str| {
        std::fs::copy(format!("{FIXTURES}/{from}"), keys.path().join(to)).unwrap();
    };
    copy("test_rsa_private.pem", "wechat_merchant_private.pem");
    copy("test_rsa_public.pem", "wechat_merchant_public.pem");
    copy("other_rsa_private.pem", "wechat_platform_private.pem");
    copy("other_rsa_public.pem", "wechat_platform_public.pem");
    copy("test_rsa_private.pem", "alipay_app_private.pem");
    copy("test_rsa_public.pem", "alipay_app_public.pem");
    copy("other_rsa_private.pem", "alipay_private.pem");
    copy("other_rsa_public.pem", "alipay_public.pem");
    std::fs::write(
        keys.path().join("wechat_apiv3_key"),
        "abcdefghijklmnopqrstuvwxyz012345",
    )
    .unwrap();
    let mut settings = Settings::default();
    settings.simulator.keys_dir = keys.path().to_path_buf();
    let mut opts = SimOptions::new(settings.simulator.clone());
    // Longer than the adapters' 5 s simulator timeout: a "timeout" is a timeout.
    opts.hang_for = Duration::from_secs(7);
    opts.wechat_notify_retry = vec![Duration::from_millis(200); 3];
    opts.alipay_notify_retry = vec![Duration::from_millis(200); 3];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cancel = CancellationToken::new();
    let sim = Simulator::start(opts, listener, cancel.clone())
        .await
        .unwrap();
    let base_url = sim.base_url();
    let gateways = build_gateways(&settings, Some(&base_url)).unwrap();
    let receiver = Stub::start(|req: &Request, _: &str| {
        if req.path_and_query.starts_with("/notify/alipay") {
            Answer::new(200, "success")
        } else {
            Answer::new(204, "")
        }
    })
    .await;
    Sim {
        base_url,
        cancel,
        gateways,
        receiver,
        _keys: keys,
        _sim: sim,
    }
}

impl Sim {
    pub fn gw(&self, channel: Channel) -> &dyn Gateway {
        self.gateways[&channel].as_ref()
    }

    pub async fn control(&self, path: &str, body: Value) -> Value {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.base_url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap_or(Value::Null)
    }

    pub async fn pay(&self, channel: Channel, out_trade_no: &str) -> String {
        let answer = self
            .control(
                "/sim/pay",
                json!({"channel": channel, "out_trade_no": out_trade_no}),
            )
            .await;
        answer["transaction_id"].as_str().unwrap().to_string()
    }

    pub async fn faults(&self, body: Value) {
        self.control("/sim/faults", body).await;
    }

    pub fn prepay_request(&self, channel: Channel, out_trade_no: &str, fen: i64) -> PrepayRequest {
        PrepayRequest {
            out_trade_no: out_trade_no.into(),
            amount: Money::from_fen(fen).unwrap(),
            description: "payrecon test order".into(),
            notify_url: format!("{}/notify/{channel}", self.receiver.base_url),
            expires_at: Utc::now() + chrono::Duration::minutes(30),
        }
    }

    /// The first notification the simulator delivered, verified by the adapter.
    pub async fn notification(&self, channel: Channel, n: usize) -> Notification {
        for _ in 0..100 {
            let got = self.receiver.requests();
            if let Some(req) = got.get(n) {
                let headers = req
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap().to_string()))
                    .collect();
                return self
                    .gw(channel)
                    .verify_notification(&headers, &req.body, Utc::now())
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no notification {n} arrived");
    }
}

pub fn refund_request(
    out_trade_no: &str,
    out_refund_no: &str,
    fen: i64,
    total: i64,
) -> RefundRequest {
    RefundRequest {
        out_trade_no: out_trade_no.into(),
        out_refund_no: out_refund_no.into(),
        amount: Money::from_fen(fen).unwrap(),
        total: Money::from_fen(total).unwrap(),
        reason: "测试退款".into(),
        notify_url: String::new(),
    }
}

pub fn business_day() -> chrono::NaiveDate {
    Utc::now()
        .with_timezone(&FixedOffset::east_opt(8 * 3600).unwrap())
        .date_naive()
}

pub fn otn() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
