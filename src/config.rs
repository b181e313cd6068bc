//! Typed settings (docs/contract.md §1). Layers, lowest first: built-in defaults, the
//! config file(s), `DATABASE_URL` / `AMQP_URL`, then `PAYRECON__SECTION__KEY`.
//! Only `cli`/`app` call `Settings::load`; modules below receive their section.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::Channel;

mod secret_files;
mod sources;
mod tls_files;
use sources::{check_url, describe_figment, merge_env_strings};
pub use tls_files::ca_certificates;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub http: HttpSettings,
    pub orders: OrderSettings,
    pub retry: RetrySettings,
    pub jobs: JobsSettings,
    pub gateways: GatewaysSettings,
    pub simulator: SimulatorSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub max_connections: u32,
    /// A file whose content replaces the password in `url` (see secret_files).
    #[serde(default)]
    pub password_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// One broker URL, or several separated by commas: the daemon moves to
    /// the next when one is lost or refuses it.
    pub url: Secret,
    pub prefix: String,
    pub prefetch: u16,
    #[serde(default)]
    pub password_file: String,
    /// A PEM file of the CA that signed the brokers' certificates, trusted
    /// for `amqps://` besides the public roots (messaging::broker_tls).
    #[serde(default)]
    pub tls_ca_file: String,
}

impl AmqpSettings {
    /// The brokers of `url`, in the order they are tried.
    pub fn urls(&self) -> Vec<Secret> {
        self.url
            .expose()
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| Secret(u.to_string()))
            .collect()
    }

    /// The first broker of `url`, for one-off tools (dlq, demo).
    pub fn first_url(&self) -> Secret {
        self.urls()
            .into_iter()
            .next()
            .unwrap_or_else(|| self.url.clone())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: String,
    pub api_token: Secret,
    #[serde(default)]
    pub api_token_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderSettings {
    pub pay_timeout: HumanDuration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    pub max_attempts: u32,
    pub base_delay: HumanDuration,
    pub max_delay: HumanDuration,
    /// How long one gateway call may take before its outcome counts as
    /// unknown. Unset: 10 s against a live gateway, 5 s against the simulator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_timeout: Option<HumanDuration>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsSettings {
    pub timeout_cancel: JobSchedule,
    pub reconcile: ReconcileJob,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSchedule {
    pub schedule: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileJob {
    pub schedule: String,
    pub timezone: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaysSettings {
    pub wechat_pay: WechatPaySettings,
    pub alipay: AlipaySettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayMode {
    Simulator,
    Live,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatPaySettings {
    pub enabled: bool,
    pub mode: GatewayMode,
    pub base_url: String,
    pub mchid: String,
    pub appid: String,
    pub merchant_serial_no: String,
    pub merchant_private_key: String,
    pub platform_public_key: String,
    pub platform_serial: String,
    pub apiv3_key: Secret,
    #[serde(default)]
    pub apiv3_key_file: String,
    pub notify_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlipaySettings {
    pub enabled: bool,
    pub mode: GatewayMode,
    pub base_url: String,
    pub app_id: String,
    pub app_private_key: String,
    pub alipay_public_key: String,
    pub notify_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSettings {
    /// `true`: `payrecon run` starts the simulator in-process at `listen`
    /// (or shares a same-key one already there); `false`: it uses the one
    /// at `listen` that `payrecon gateway-sim` runs.
    pub embedded: bool,
    pub listen: String,
    pub keys_dir: PathBuf,
    pub wechat_mchid: String,
    pub wechat_appid: String,
    pub wechat_merchant_serial_no: String,
    pub wechat_platform_serial: String,
    pub alipay_app_id: String,
}

impl Default for Settings {
    fn default() -> Self {
        let ms = |v| HumanDuration(Duration::from_millis(v));
        Settings {
            database: DatabaseSettings {
                url: Secret("postgres://postgres@127.0.0.1:5432/payrecon".into()),
                max_connections: 10,
                password_file: String::new(),
            },
            amqp: AmqpSettings {
                url: Secret("amqp://guest:guest@127.0.0.1:5672/%2f".into()),
                prefix: "payrecon".into(),
                prefetch: 256,
                password_file: String::new(),
                tls_ca_file: String::new(),
            },
            http: HttpSettings {
                listen: "127.0.0.1:8080".into(),
                api_token: Secret(String::new()),
                api_token_file: String::new(),
            },
            orders: OrderSettings {
                pay_timeout: ms(30 * 60 * 1000),
            },
            retry: RetrySettings {
                max_attempts: 6,
                base_delay: ms(200),
                max_delay: ms(30_000),
                call_timeout: None,
            },
            jobs: JobsSettings {
                timeout_cancel: JobSchedule {
                    schedule: "0 * * * * *".into(),
                },
                reconcile: ReconcileJob {
                    schedule: "0 0 10 * * *".into(),
                    timezone: "+08:00".into(),
                },
            },
            gateways: GatewaysSettings {
                wechat_pay: WechatPaySettings {
                    enabled: true,
                    mode: GatewayMode::Simulator,
                    base_url: String::new(),
                    mchid: String::new(),
                    appid: String::new(),
                    merchant_serial_no: String::new(),
                    merchant_private_key: String::new(),
                    platform_public_key: String::new(),
                    platform_serial: String::new(),
                    apiv3_key: Secret(String::new()),
                    apiv3_key_file: String::new(),
                    notify_url: "http://127.0.0.1:8080/notify/wechat_pay".into(),
                },
                alipay: AlipaySettings {
                    enabled: true,
                    mode: GatewayMode::Simulator,
                    base_url: String::new(),
                    app_id: String::new(),
                    app_private_key: String::new(),
                    alipay_public_key: String::new(),
                    notify_url: "http://127.0.0.1:8080/notify/alipay".into(),
                },
            },
            simulator: SimulatorSettings {
                embedded: true,
                listen: "127.0.0.1:8090".into(),
                keys_dir: PathBuf::from(".payrecon/sim-keys"),
                wechat_mchid: "1900000001".into(),
                wechat_appid: "wxd930ea5d5a258f4f".into(),
                wechat_merchant_serial_no: "5157F09EFDC096DE15EBE81A47057A7232F1B8E1".into(),
                wechat_platform_serial: "PUB_KEY_ID_0114232134912410000000000000".into(),
                alipay_app_id: "2021000000000001".into(),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// figment's errors, each said as "key in file: problem" on one line.
    #[error("configuration: {}", describe_figment(.0))]
    Parse(#[from] Box<figment::Error>),
    #[error("configuration key {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Settings {
    /// `explicit`: the `--config` file. Without it `config/default.toml`, then
    /// `config/local.toml`, each only if present.
    pub fn load(explicit: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        match explicit {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::Invalid {
                        key: "--config",
                        message: format!("{} does not exist", path.display()),
                    });
                }
                fig = fig.merge(Toml::file(path));
            }
            None => {
                fig = fig
                    .merge(Toml::file("config/default.toml"))
                    .merge(Toml::file("config/local.toml"))
            }
        }
        fig = merge_env_strings(
            fig,
            Env::raw()
                .only(&["DATABASE_URL"])
                .map(|_| "database.url".into()),
        );
        fig = merge_env_strings(
            fig,
            Env::raw().only(&["AMQP_URL"]).map(|_| "amqp.url".into()),
        );
        fig = merge_env_strings(
            fig,
            Env::prefixed("PAYRECON__")
                .split("__")
                .map(|k| k.as_str().to_lowercase().into()),
        );
        // Lossy: numbers and booleans may arrive as strings from the environment.
        let mut settings: Settings = fig.extract_lossy().map_err(Box::new)?;
        secret_files::apply(&mut settings)?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        check_url(
            "database.url",
            &self.database.url,
            &["postgres", "postgresql"],
        )?;
        let brokers = self.amqp.urls();
        if brokers.is_empty() {
            return invalid("amqp.url", "must name at least one broker");
        }
        for url in &brokers {
            check_url("amqp.url", url, &["amqp", "amqps"])?;
        }
        tls_files::check(&self.amqp)?;
        if self.amqp.prefix.is_empty() {
            return invalid("amqp.prefix", "must not be empty");
        }
        if self.amqp.prefetch == 0 {
            return invalid("amqp.prefetch", "must be at least 1");
        }
        if self.retry.max_attempts == 0 {
            return invalid("retry.max_attempts", "must be at least 1");
        }
        // A claimed gateway task is leased for 120 s; a call must end well
        // within it, or a second worker could run the task alongside.
        if let Some(t) = &self.retry.call_timeout {
            if t.0.is_zero() || t.0 > Duration::from_secs(60) {
                return invalid("retry.call_timeout", "must be between 1ms and 60s");
            }
        }
        for (key, expr) in [
            (
                "jobs.timeout_cancel.schedule",
                &self.jobs.timeout_cancel.schedule,
            ),
            ("jobs.reconcile.schedule", &self.jobs.reconcile.schedule),
        ] {
            if let Err(e) = expr.parse::<cron::Schedule>() {
                return Err(ConfigError::Invalid {
                    key,
                    message: e.to_string(),
                });
            }
        }
        if self.business_offset().is_none() {
            return invalid(
                "jobs.reconcile.timezone",
                "must be an offset such as +08:00",
            );
        }
        self.validate_live_gateways()
    }

    fn validate_live_gateways(&self) -> Result<(), ConfigError> {
        let missing = |key| {
            Err(ConfigError::Invalid {
                key,
                message: "is required in live mode".into(),
            })
        };
        let w = &self.gateways.wechat_pay;
        if w.enabled && w.mode == GatewayMode::Live {
            let fields: [(&'static str, &str); 8] = [
                ("gateways.wechat_pay.base_url", &w.base_url),
                ("gateways.wechat_pay.mchid", &w.mchid),
                ("gateways.wechat_pay.appid", &w.appid),
                (
                    "gateways.wechat_pay.merchant_serial_no",
                    &w.merchant_serial_no,
                ),
                (
                    "gateways.wechat_pay.merchant_private_key",
                    &w.merchant_private_key,
                ),
                (
                    "gateways.wechat_pay.platform_public_key",
                    &w.platform_public_key,
                ),
                ("gateways.wechat_pay.platform_serial", &w.platform_serial),
                ("gateways.wechat_pay.apiv3_key", w.apiv3_key.expose()),
            ];
            if let Some((key, _)) = fields.iter().find(|(_, v)| v.is_empty()) {
                return missing(key);
            }
            if w.apiv3_key.expose().len() != 32 {
                return Err(ConfigError::Invalid {
                    key: "gateways.wechat_pay.apiv3_key",
                    message: "must be 32 ASCII bytes".into(),
                });
            }
        }
        let a = &self.gateways.alipay;
        if a.enabled && a.mode == GatewayMode::Live {
            let fields: [(&'static str, &str); 4] = [
                ("gateways.alipay.base_url", &a.base_url),
                ("gateways.alipay.app_id", &a.app_id),
                ("gateways.alipay.app_private_key", &a.app_private_key),
                ("gateways.alipay.alipay_public_key", &a.alipay_public_key),
            ];
            if let Some((key, _)) = fields.iter().find(|(_, v)| v.is_empty()) {
                return missing(key);
            }
        }
        Ok(())
    }

    /// The business-day offset of `jobs.reconcile.timezone`.
    pub fn business_offset(&self) -> Option<chrono::FixedOffset> {
        parse_offset(&self.jobs.reconcile.timezone)
    }

    pub fn channel_enabled(&self, channel: Channel) -> bool {
        match channel {
            Channel::WechatPay => self.gateways.wechat_pay.enabled,
            Channel::Alipay => self.gateways.alipay.enabled,
        }
    }
}

/// "+08:00", "-05:30", "Z" or "UTC".
pub fn parse_offset(text: &str) -> Option<chrono::FixedOffset> {
    if text == "Z" || text.eq_ignore_ascii_case("utc") {
        return chrono::FixedOffset::east_opt(0);
    }
    let sign = match text.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = text[1..].split_once(':')?;
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if h > 23 || m > 59 {
        return None;
    }
    chrono::FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

/// A duration written with a unit: `250ms`, `30s`, `30m`, `2h`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{text:?} has no unit (ms, s, m, h)"))?;
        let (num, unit) = text.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{text:?} is not a duration"))?;
        let ms = match unit {
            "ms" => Some(n),
            "s" => n.checked_mul(1000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            _ => return Err(format!("{text:?}: unit must be ms, s, m or h")),
        }
        .ok_or_else(|| format!("{text:?} is too long"))?;
        Ok(HumanDuration(Duration::from_millis(ms)))
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0.as_millis()))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HumanDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A setting that must never reach a log line (passwords in URLs, tokens, keys).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(empty)"
        } else {
            "Secret(..)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            HumanDuration::parse("200ms").unwrap().0,
            Duration::from_millis(200)
        );
        assert_eq!(
            HumanDuration::parse("30m").unwrap().0,
            Duration::from_secs(1800)
        );
        assert!(HumanDuration::parse("30").is_err());
        assert!(HumanDuration::parse("1d").is_err());
    }

    #[test]
    fn offsets() {
        assert_eq!(parse_offset("+08:00").unwrap().local_minus_utc(), 8 * 3600);
        assert!(parse_offset("Asia/Shanghai").is_none());
    }

    #[test]
    fn defaults_validate() {
        Settings::default().validate().unwrap();
    }

    #[test]
    fn debug_shows_no_secret() {
        let mut s = Settings::default();
        s.database.url = Secret("postgres://u:DbPw-1a2b@127.0.0.1/x".into());
        s.amqp.url = Secret("amqp://u:AmqpPw-3c4d@127.0.0.1/%2f".into());
        s.http.api_token = Secret("Token-5e6f".into());
        s.gateways.wechat_pay.apiv3_key = Secret("Apiv3-7a8b".into());
        let debug = format!("{s:?} {s:#?}");
        for secret in ["DbPw-1a2b", "AmqpPw-3c4d", "Token-5e6f", "Apiv3-7a8b"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("Secret(..)"));
    }

    #[test]
    fn a_bad_url_is_named_not_quoted() {
        let mut s = Settings::default();
        s.amqp.url = Secret("amqp:guest:AmqpPw-3c4d@127.0.0.1".into());
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("amqp.url") && !e.contains("AmqpPw"), "{e}");
        s.amqp.url = Settings::default().amqp.url;
        s.database.url = Secret("//postgres:DbPw-1a2b@127.0.0.1/x".into());
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("database.url") && !e.contains("DbPw"), "{e}");
    }
}
