//! Where a setting came from, for error messages that name the key and the
//! file or variable, and the checks that keep secret values out of them.

use figment::providers::{Env, Serialized};
use figment::Figment;

use super::{ConfigError, Secret};

/// A URL setting that holds a password: the message names the key and the
/// problem, never the value (url's errors do not quote their input).
pub(super) fn check_url(
    key: &'static str,
    url: &Secret,
    schemes: &[&str],
) -> Result<(), ConfigError> {
    let message = match url::Url::parse(url.expose()) {
        Err(e) => format!("is not a URL ({e})"),
        Ok(u) if !schemes.contains(&u.scheme()) || u.cannot_be_a_base() => {
            format!("must be a {}:// URL", schemes[0])
        }
        Ok(_) => return Ok(()),
    };
    Err(ConfigError::Invalid { key, message })
}

/// The keys whose values must never be quoted, even when they do not parse.
const SECRET_KEYS: [&str; 4] = [
    "database.url",
    "amqp.url",
    "http.api_token",
    "gateways.wechat_pay.apiv3_key",
];

/// "retry.base_delay in config/local.toml: \"soon\" is not a duration; …"
pub(super) fn describe_figment(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                Some(figment::Source::File(path)) => Some(format!("in {}", path.display())),
                Some(figment::Source::Custom(what)) => Some(format!("from {what}")),
                _ => None,
            };
            let problem = if SECRET_KEYS.contains(&key.as_str()) {
                "must be a string (value not shown)".to_string()
            } else {
                e.kind.to_string()
            };
            match (key.is_empty(), source) {
                (false, Some(source)) => format!("{key} {source}: {problem}"),
                (false, None) => format!("{key}: {problem}"),
                (true, Some(source)) => format!("{source}: {problem}"),
                (true, None) => problem,
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Merges environment variables as plain strings. figment's `Env` would
/// guess types, so `PAYRECON__HTTP__API_TOKEN=123456` or a numeric mchid
/// became a number that a string key then refused; `extract_lossy` turns the
/// strings back into numbers and booleans where a key wants one.
pub(super) fn merge_env_strings(fig: Figment, env: Env) -> Figment {
    env.iter().fold(fig, |fig, (key, value)| {
        let variable = env_variable(key.as_str());
        fig.merge(EnvString {
            value: Serialized::default(key.as_str(), value),
            variable,
        })
    })
}

/// The variable a key came from, for error messages ("PAYRECON__RETRY__BASE_DELAY").
fn env_variable(key: &str) -> String {
    match key {
        "database.url" if std::env::var_os("DATABASE_URL").is_some() => "DATABASE_URL".into(),
        "amqp.url" if std::env::var_os("AMQP_URL").is_some() => "AMQP_URL".into(),
        _ => format!("PAYRECON__{}", key.to_uppercase().replace('.', "__")),
    }
}

/// One environment variable as a figment provider that names it, so a bad
/// value is reported as coming from that variable.
struct EnvString {
    value: Serialized<String>,
    variable: String,
}

impl figment::Provider for EnvString {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::from(
            "environment",
            figment::Source::Custom(format!("environment variable {}", self.variable)),
        )
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        self.value.data()
    }
}
