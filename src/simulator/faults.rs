//! Failure injection (`POST /sim/faults`). A protocol call first waits
//! `latency_ms`, then may fail outright (HTTP 500 `SYSTEM_ERROR`, Alipay code
//! 20000) without taking effect, or may "time out": it takes effect and its
//! response is held back, so the client gives up with the outcome unknown —
//! the case the worker must settle by querying.

use serde::{Deserialize, Serialize};

use crate::domain::Channel;

/// One channel's (or every channel's) injected faults. Rates are
/// probabilities, not money, so `f64` is right here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default)]
    pub timeout_rate: f64,
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default)]
    pub fail_next: u32,
}

/// The body of `POST /sim/faults`; absent fields mean "none".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    pub channel: Option<Channel>,
    pub error_rate: Option<f64>,
    pub timeout_rate: Option<f64>,
    pub latency_ms: Option<u64>,
    pub fail_next: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} must be a probability in [0, 1]")]
pub struct BadRate(&'static str);

impl FaultRequest {
    fn faults(&self) -> Result<Faults, BadRate> {
        let rate = |v: Option<f64>, name| match v {
            None => Ok(0.0),
            Some(r) if (0.0..=1.0).contains(&r) => Ok(r),
            Some(_) => Err(BadRate(name)),
        };
        Ok(Faults {
            error_rate: rate(self.error_rate, "error_rate")?,
            timeout_rate: rate(self.timeout_rate, "timeout_rate")?,
            latency_ms: self.latency_ms.unwrap_or(0),
            fail_next: self.fail_next.unwrap_or(0),
        })
    }
}

/// What happens to one protocol call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Proceed,
    Fail,
    /// Take effect, then hold the response.
    Hang,
}

/// `any` applies to both channels; a channel's own entry adds to it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FaultSet {
    pub any: Faults,
    pub wechat_pay: Faults,
    pub alipay: Faults,
}

impl FaultSet {
    /// Without a channel the request replaces everything (so `{}` clears all);
    /// with one it replaces only that channel's entry.
    pub fn apply(&mut self, req: FaultRequest) -> Result<(), BadRate> {
        let faults = req.faults()?;
        match req.channel {
            None => {
                *self = FaultSet {
                    any: faults,
                    ..FaultSet::default()
                }
            }
            Some(Channel::WechatPay) => self.wechat_pay = faults,
            Some(Channel::Alipay) => self.alipay = faults,
        }
        Ok(())
    }

    /// Decides one call's fate and consumes a `fail_next` credit if it used one.
    /// Returns the latency to wait first.
    pub fn decide(&mut self, channel: Channel) -> (u64, Verdict) {
        let own = match channel {
            Channel::WechatPay => &mut self.wechat_pay,
            Channel::Alipay => &mut self.alipay,
        };
        let latency = self.any.latency_ms.max(own.latency_ms);
        for f in [&mut self.any, own] {
            if f.fail_next > 0 {
                f.fail_next -= 1;
                return (latency, Verdict::Fail);
            }
        }
        let own = match channel {
            Channel::WechatPay => &self.wechat_pay,
            Channel::Alipay => &self.alipay,
        };
        let hit = |rate: f64| rate > 0.0 && rand::random::<f64>() < rate;
        if hit(self.any.error_rate) || hit(own.error_rate) {
            return (latency, Verdict::Fail);
        }
        if hit(self.any.timeout_rate) || hit(own.timeout_rate) {
            return (latency, Verdict::Hang);
        }
        (latency, Verdict::Proceed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> FaultRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn fail_next_counts_down_per_scope() {
        let mut set = FaultSet::default();
        set.apply(req(r#"{"channel":"alipay","fail_next":2}"#))
            .unwrap();
        assert_eq!(set.decide(Channel::WechatPay).1, Verdict::Proceed);
        assert_eq!(set.decide(Channel::Alipay).1, Verdict::Fail);
        assert_eq!(set.decide(Channel::Alipay).1, Verdict::Fail);
        assert_eq!(set.decide(Channel::Alipay).1, Verdict::Proceed);

        set.apply(req(r#"{"fail_next":1,"latency_ms":7}"#)).unwrap();
        assert_eq!(set.decide(Channel::WechatPay), (7, Verdict::Fail));
        assert_eq!(set.decide(Channel::Alipay), (7, Verdict::Proceed));
    }

    #[test]
    fn certain_rates_and_clearing() {
        let mut set = FaultSet::default();
        set.apply(req(r#"{"timeout_rate":1.0}"#)).unwrap();
        assert_eq!(set.decide(Channel::Alipay).1, Verdict::Hang);
        set.apply(req(r#"{"channel":"wechat_pay","error_rate":1}"#))
            .unwrap();
        assert_eq!(set.decide(Channel::WechatPay).1, Verdict::Fail);
        set.apply(req("{}")).unwrap();
        assert_eq!(set, FaultSet::default());
        assert!(set.apply(req(r#"{"error_rate":1.5}"#)).is_err());
        assert!(serde_json::from_str::<FaultRequest>(r#"{"channel":"visa"}"#).is_err());
    }
}
