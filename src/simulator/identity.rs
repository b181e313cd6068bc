//! Who a simulator is: its merchant/app ids and the SHA-256 fingerprints of
//! its public keys (never private material). `GET /sim/identity` answers it,
//! so a daemon that finds `simulator.listen` taken can tell a simulator it can
//! share (same ids, same keys) from one it cannot talk to, or from something
//! that is no simulator at all.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::SimulatorSettings;
use crate::gateway::crypto::RsaPublicKey;

use super::keys::{
    SimKeys, ALIPAY_APP_PUBLIC, ALIPAY_PUBLIC, WECHAT_MERCHANT_PUBLIC, WECHAT_PLATFORM_PUBLIC,
};

/// What `service` says, so a stray JSON server is not taken for a simulator.
pub const SERVICE: &str = "payrecon-gateway-sim";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimIdentity {
    pub service: String,
    pub wechat_mchid: String,
    pub wechat_appid: String,
    pub wechat_merchant_serial_no: String,
    pub wechat_platform_serial: String,
    pub alipay_app_id: String,
    pub keys: KeyFingerprints,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFingerprints {
    pub wechat_merchant_public: String,
    pub wechat_platform_public: String,
    pub alipay_app_public: String,
    pub alipay_public: String,
}

impl SimIdentity {
    /// A running simulator's identity.
    pub fn of(settings: &SimulatorSettings, keys: &SimKeys) -> SimIdentity {
        Self::with_keys(
            settings,
            KeyFingerprints {
                wechat_merchant_public: keys.wechat_merchant_public.sha256_fingerprint(),
                wechat_platform_public: keys.wechat_platform_public.sha256_fingerprint(),
                alipay_app_public: keys.alipay_app_public.sha256_fingerprint(),
                alipay_public: keys.alipay_public.sha256_fingerprint(),
            },
        )
    }

    /// The identity a simulator on these settings would have, read from the
    /// public key files only: what a daemon expects of the simulator it uses.
    /// `Err` names the file that is missing or unreadable.
    pub fn from_keys_dir(settings: &SimulatorSettings) -> Result<SimIdentity, String> {
        let dir = settings.keys_dir.as_path();
        Ok(Self::with_keys(
            settings,
            KeyFingerprints {
                wechat_merchant_public: fingerprint(dir, WECHAT_MERCHANT_PUBLIC)?,
                wechat_platform_public: fingerprint(dir, WECHAT_PLATFORM_PUBLIC)?,
                alipay_app_public: fingerprint(dir, ALIPAY_APP_PUBLIC)?,
                alipay_public: fingerprint(dir, ALIPAY_PUBLIC)?,
            },
        ))
    }

    fn with_keys(settings: &SimulatorSettings, keys: KeyFingerprints) -> SimIdentity {
        SimIdentity {
            service: SERVICE.to_string(),
            wechat_mchid: settings.wechat_mchid.clone(),
            wechat_appid: settings.wechat_appid.clone(),
            wechat_merchant_serial_no: settings.wechat_merchant_serial_no.clone(),
            wechat_platform_serial: settings.wechat_platform_serial.clone(),
            alipay_app_id: settings.alipay_app_id.clone(),
            keys,
        }
    }

    /// The names of what differs from `other`, for an error message.
    pub fn differences(&self, other: &SimIdentity) -> Vec<&'static str> {
        let (a, b) = (self, other);
        [
            ("wechat_mchid", a.wechat_mchid == b.wechat_mchid),
            ("wechat_appid", a.wechat_appid == b.wechat_appid),
            (
                "wechat_merchant_serial_no",
                a.wechat_merchant_serial_no == b.wechat_merchant_serial_no,
            ),
            (
                "wechat_platform_serial",
                a.wechat_platform_serial == b.wechat_platform_serial,
            ),
            ("alipay_app_id", a.alipay_app_id == b.alipay_app_id),
            (
                WECHAT_MERCHANT_PUBLIC,
                a.keys.wechat_merchant_public == b.keys.wechat_merchant_public,
            ),
            (
                WECHAT_PLATFORM_PUBLIC,
                a.keys.wechat_platform_public == b.keys.wechat_platform_public,
            ),
            (
                ALIPAY_APP_PUBLIC,
                a.keys.alipay_app_public == b.keys.alipay_app_public,
            ),
            (ALIPAY_PUBLIC, a.keys.alipay_public == b.keys.alipay_public),
        ]
        .into_iter()
        .filter_map(|(name, same)| (!same).then_some(name))
        .collect()
    }
}

fn fingerprint(dir: &Path, file: &str) -> Result<String, String> {
    let path = dir.join(file);
    RsaPublicKey::from_pem_file(&path)
        .map(|k| k.sha256_fingerprint())
        .map_err(|e| format!("{} ({e})", path.display()))
}

/// Why `fetch` found no simulator identity at an address.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing accepted the connection (or nothing answered in time).
    #[error("nothing answered: {0}")]
    Unreachable(String),
    /// Something answered, but not as a payrecon simulator does.
    #[error("{0}")]
    NotASimulator(String),
}

/// Asks `http://{addr}/sim/identity`. `wait` bounds the whole exchange: a
/// simulator that is still creating its keys has bound its address but
/// answers only once they exist, so a caller racing its start waits that long.
pub async fn fetch(addr: &str, wait: Duration) -> Result<SimIdentity, ProbeError> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(wait)
        .build()
        .map_err(|e| ProbeError::Unreachable(e.to_string()))?;
    let response = client
        .get(format!("http://{addr}/sim/identity"))
        .send()
        .await
        .map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                ProbeError::Unreachable(e.to_string())
            } else {
                ProbeError::NotASimulator(format!("not an HTTP answer ({e})"))
            }
        })?;
    let status = response.status();
    if !status.is_success() {
        return Err(ProbeError::NotASimulator(format!(
            "GET /sim/identity answered HTTP {status}"
        )));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| ProbeError::NotASimulator(format!("unreadable answer ({e})")))?;
    match serde_json::from_slice::<SimIdentity>(&body) {
        Ok(identity) if identity.service == SERVICE => Ok(identity),
        _ => Err(ProbeError::NotASimulator(
            "GET /sim/identity did not answer a payrecon simulator identity".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_dir_identity_is_the_running_one_and_names_differences() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = crate::config::Settings::default().simulator;
        settings.keys_dir = dir.path().to_path_buf();
        assert!(SimIdentity::from_keys_dir(&settings)
            .unwrap_err()
            .contains(WECHAT_MERCHANT_PUBLIC));
        let keys = SimKeys::load_or_create(dir.path()).unwrap();
        let running = SimIdentity::of(&settings, &keys);
        let expected = SimIdentity::from_keys_dir(&settings).unwrap();
        assert_eq!(running, expected);
        assert!(running.keys.alipay_public.starts_with("sha256:"));
        assert_eq!(running.keys.alipay_public.len(), "sha256:".len() + 64);

        let mut other = expected.clone();
        other.alipay_app_id = "2021000000000002".into();
        other.keys.wechat_platform_public = "sha256:00".into();
        assert_eq!(
            running.differences(&other),
            vec!["alipay_app_id", WECHAT_PLATFORM_PUBLIC]
        );
    }
}
