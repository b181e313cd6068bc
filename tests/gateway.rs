//! The gateway adapters, three ways: against vectors made by another
//! implementation (`vectors`: openssl signatures, Python `cryptography`
//! AES-GCM), against a scripted HTTP stub that misbehaves on demand (`stub`:
//! unverifiable answers, timeouts, refused connections), and against the
//! gateway simulator (`simulator`).

#[path = "gateway/factory.rs"]
mod factory;
#[path = "gateway/sim_harness.rs"]
mod sim_harness;
#[path = "gateway/simulator.rs"]
mod simulator;
#[path = "gateway/stub.rs"]
mod stub;
#[path = "gateway/stub_alipay.rs"]
mod stub_alipay;
#[path = "gateway/stub_wechat.rs"]
mod stub_wechat;
#[path = "gateway/vectors.rs"]
mod vectors;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use payrecon::gateway::alipay::{Alipay, AlipayConfig};
use payrecon::gateway::crypto::{RsaPrivateKey, RsaPublicKey};
use payrecon::gateway::wechat_pay::{WechatPay, WechatPayConfig};
use payrecon::gateway::{Gateway, Notification, NotificationError};
use serde_json::Value;

pub(crate) const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gateway");

pub(crate) fn vectors() -> Value {
    let text = std::fs::read_to_string(format!("{FIXTURES}/vectors.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub(crate) fn private_key(name: &str) -> RsaPrivateKey {
    RsaPrivateKey::from_pem_file(format!("{FIXTURES}/{name}").as_ref()).unwrap()
}

pub(crate) fn public_key(name: &str) -> RsaPublicKey {
    RsaPublicKey::from_pem_file(format!("{FIXTURES}/{name}").as_ref()).unwrap()
}

pub(crate) fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector lacks {key}"))
}

/// An adapter whose platform key is a fixture key. `wechat(..)` points at a
/// port nothing listens on: the vector tests never reach the network.
pub(crate) fn wechat(platform_key: &str) -> WechatPay {
    wechat_at("http://127.0.0.1:9", platform_key, Duration::from_secs(1))
}

pub(crate) fn wechat_at(base_url: &str, platform_key: &str, timeout: Duration) -> WechatPay {
    let cfg = &vectors()["wechat"]["config"];
    WechatPay::new(WechatPayConfig {
        base_url: base_url.into(),
        mchid: str_of(cfg, "mchid").into(),
        appid: str_of(cfg, "appid").into(),
        merchant_serial_no: "5157F09EFDC096DE15EBE81A47057A7232F1B8E1".into(),
        merchant_key: private_key("test_rsa_private.pem"),
        platform_public_key: public_key(platform_key),
        platform_serial: str_of(cfg, "platform_serial").into(),
        apiv3_key: str_of(cfg, "apiv3_key").into(),
        timeout,
    })
    .unwrap()
}

pub(crate) fn alipay(alipay_key: &str) -> Alipay {
    alipay_at(
        "http://127.0.0.1:9/gateway.do",
        alipay_key,
        Duration::from_secs(1),
    )
}

pub(crate) fn alipay_at(gateway_url: &str, alipay_key: &str, timeout: Duration) -> Alipay {
    Alipay::new(AlipayConfig {
        gateway_url: gateway_url.into(),
        app_id: str_of(&vectors()["alipay"]["config"], "app_id").into(),
        app_private_key: private_key("test_rsa_private.pem"),
        alipay_public_key: public_key(alipay_key),
        timeout,
    })
    .unwrap()
}

pub(crate) fn wechat_vector_time() -> DateTime<Utc> {
    let ts = vectors()["wechat"]["config"]["timestamp"].as_i64().unwrap();
    Utc.timestamp_opt(ts, 0).unwrap()
}

/// Headers as a queued notification carries them (docs/contract.md §3.8 spelling).
pub(crate) fn wechat_notification(name: &str) -> (HashMap<String, String>, Vec<u8>) {
    let v = &vectors()["wechat"][name];
    let headers = v["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    (headers, str_of(v, "body").as_bytes().to_vec())
}

pub(crate) fn verify_wechat(
    name: &str,
    now: DateTime<Utc>,
    platform_key: &str,
) -> Result<Notification, NotificationError> {
    let (headers, body) = wechat_notification(name);
    wechat(platform_key).verify_notification(&headers, &body, now)
}
