//! Builds the enabled gateways from the settings. In `simulator` mode the
//! adapters use the simulator's key files and ids and its address, ignoring
//! their own `gateways.*` keys (docs/contract.md §1); in `live` mode those keys.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::alipay::{Alipay, AlipayConfig};
use super::crypto::{RsaPrivateKey, RsaPublicKey};
use super::wechat_pay::{WechatPay, WechatPayConfig};
use super::{Gateway, GatewayError};
use crate::config::{GatewayMode, Settings};
use crate::domain::Channel;

/// The simulator answers on loopback; 5 s is far beyond its latency and still
/// short enough for tests that inject timeouts.
const SIMULATOR_TIMEOUT: Duration = Duration::from_secs(5);
/// Live gateways answer within a few seconds; 10 s leaves room for slow days.
const LIVE_TIMEOUT: Duration = Duration::from_secs(10);

fn key_error(key: &str, e: impl std::fmt::Display) -> GatewayError {
    GatewayError::Protocol(format!("{key}: {e}"))
}

fn private_key(path: &Path, key: &str) -> Result<RsaPrivateKey, GatewayError> {
    RsaPrivateKey::from_pem_file(path).map_err(|e| key_error(key, e))
}

fn public_key(path: &Path, key: &str) -> Result<RsaPublicKey, GatewayError> {
    RsaPublicKey::from_pem_file(path).map_err(|e| key_error(key, e))
}

fn simulator_base(base: Option<&str>, channel: Channel) -> Result<&str, GatewayError> {
    base.map(|b| b.trim_end_matches('/')).ok_or_else(|| {
        GatewayError::Protocol(format!(
            "gateways.{channel}.mode is simulator but no simulator address was given"
        ))
    })
}

pub fn build_gateways(
    settings: &Settings,
    simulator_base_url: Option<&str>,
) -> Result<HashMap<Channel, Arc<dyn Gateway>>, GatewayError> {
    let mut gateways: HashMap<Channel, Arc<dyn Gateway>> = HashMap::new();
    let timeout = |default: Duration| {
        settings
            .retry
            .call_timeout
            .as_ref()
            .map_or(default, |t| t.0)
    };
    let sim = &settings.simulator;
    let keys = |file: &str| sim.keys_dir.join(file);
    let sim_key = |file: &str| format!("simulator.keys_dir ({})", keys(file).display());

    let w = &settings.gateways.wechat_pay;
    if w.enabled {
        let config = match w.mode {
            GatewayMode::Simulator => {
                let apiv3_path = keys("wechat_apiv3_key");
                let apiv3_key = std::fs::read_to_string(&apiv3_path)
                    .map_err(|e| key_error(&sim_key("wechat_apiv3_key"), e))?;
                WechatPayConfig {
                    base_url: simulator_base(simulator_base_url, Channel::WechatPay)?.to_string(),
                    mchid: sim.wechat_mchid.clone(),
                    appid: sim.wechat_appid.clone(),
                    merchant_serial_no: sim.wechat_merchant_serial_no.clone(),
                    merchant_key: private_key(
                        &keys("wechat_merchant_private.pem"),
                        &sim_key("wechat_merchant_private.pem"),
                    )?,
                    platform_public_key: public_key(
                        &keys("wechat_platform_public.pem"),
                        &sim_key("wechat_platform_public.pem"),
                    )?,
                    platform_serial: sim.wechat_platform_serial.clone(),
                    // The file has no newline by contract; a hand-made one might.
                    apiv3_key: apiv3_key.trim_end_matches(['\r', '\n']).to_string(),
                    timeout: timeout(SIMULATOR_TIMEOUT),
                }
            }
            GatewayMode::Live => WechatPayConfig {
                base_url: w.base_url.clone(),
                mchid: w.mchid.clone(),
                appid: w.appid.clone(),
                merchant_serial_no: w.merchant_serial_no.clone(),
                merchant_key: private_key(
                    Path::new(&w.merchant_private_key),
                    "gateways.wechat_pay.merchant_private_key",
                )?,
                platform_public_key: public_key(
                    Path::new(&w.platform_public_key),
                    "gateways.wechat_pay.platform_public_key",
                )?,
                platform_serial: w.platform_serial.clone(),
                apiv3_key: w.apiv3_key.expose().to_string(),
                timeout: timeout(LIVE_TIMEOUT),
            },
        };
        let key_name = match w.mode {
            GatewayMode::Simulator => sim_key("wechat_apiv3_key"),
            GatewayMode::Live => "gateways.wechat_pay.apiv3_key".to_string(),
        };
        if config.apiv3_key.len() != 32 {
            return Err(key_error(&key_name, "must be 32 ASCII bytes"));
        }
        gateways.insert(Channel::WechatPay, Arc::new(WechatPay::new(config)?));
    }

    let a = &settings.gateways.alipay;
    if a.enabled {
        let config = match a.mode {
            GatewayMode::Simulator => AlipayConfig {
                gateway_url: format!(
                    "{}/gateway.do",
                    simulator_base(simulator_base_url, Channel::Alipay)?
                ),
                app_id: sim.alipay_app_id.clone(),
                app_private_key: private_key(
                    &keys("alipay_app_private.pem"),
                    &sim_key("alipay_app_private.pem"),
                )?,
                alipay_public_key: public_key(
                    &keys("alipay_public.pem"),
                    &sim_key("alipay_public.pem"),
                )?,
                timeout: timeout(SIMULATOR_TIMEOUT),
            },
            GatewayMode::Live => AlipayConfig {
                gateway_url: a.base_url.clone(),
                app_id: a.app_id.clone(),
                app_private_key: private_key(
                    Path::new(&a.app_private_key),
                    "gateways.alipay.app_private_key",
                )?,
                alipay_public_key: public_key(
                    Path::new(&a.alipay_public_key),
                    "gateways.alipay.alipay_public_key",
                )?,
                timeout: timeout(LIVE_TIMEOUT),
            },
        };
        gateways.insert(Channel::Alipay, Arc::new(Alipay::new(config)?));
    }
    Ok(gateways)
}

/// Where the gateway should send a channel's notifications.
pub fn notify_url(settings: &Settings, channel: Channel) -> String {
    match channel {
        Channel::WechatPay => settings.gateways.wechat_pay.notify_url.clone(),
        Channel::Alipay => settings.gateways.alipay.notify_url.clone(),
    }
}
