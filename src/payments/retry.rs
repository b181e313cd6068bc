//! Exponential backoff with full jitter (AWS architecture blog's "full
//! jitter"): the delay before attempt n is uniform in [0, min(max, base·2ⁿ)],
//! so retries of many payments after an outage do not arrive together.

use std::time::Duration;

use rand::Rng;

use crate::config::RetrySettings;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl From<&RetrySettings> for RetryPolicy {
    fn from(s: &RetrySettings) -> Self {
        RetryPolicy {
            max_attempts: s.max_attempts,
            base: s.base_delay.0,
            max: s.max_delay.0,
        }
    }
}

impl RetryPolicy {
    /// The ceiling of the delay before attempt `attempt` (1 = the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
        self.base.saturating_mul(factor).min(self.max)
    }

    pub fn delay(&self, attempt: u32) -> chrono::Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        let ms = if ceiling == 0 {
            0
        } else {
            rand::thread_rng().gen_range(0..=ceiling)
        };
        chrono::Duration::milliseconds(ms as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_grows_then_caps() {
        let p = RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(200),
            max: Duration::from_secs(30),
        };
        assert_eq!(p.ceiling(1), Duration::from_millis(200));
        assert_eq!(p.ceiling(2), Duration::from_millis(400));
        assert_eq!(p.ceiling(5), Duration::from_millis(3200));
        assert_eq!(p.ceiling(40), Duration::from_secs(30));
        for _ in 0..100 {
            assert!(p.delay(3) <= chrono::Duration::milliseconds(800));
        }
    }
}
