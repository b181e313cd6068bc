//! Money is an integer number of fen. There is no `From<f64>` on purpose:
//! a float anywhere near an amount is how a fen goes missing.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A non-negative amount of CNY in fen (the minor unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Money(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount must not be negative, got {0}")]
    Negative(i64),
    #[error("amount overflows")]
    Overflow,
    #[error("not a yuan amount with exactly two decimals: {0:?}")]
    BadYuan(String),
}

impl Money {
    pub const ZERO: Money = Money(0);

    pub fn from_fen(fen: i64) -> Result<Self, MoneyError> {
        if fen < 0 {
            return Err(MoneyError::Negative(fen));
        }
        Ok(Self(fen))
    }

    pub fn fen(self) -> i64 {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.0
            .checked_add(other.0)
            .map(Money)
            .ok_or(MoneyError::Overflow)
    }

    /// `None` when `other` is larger: a negative amount is not money we hold.
    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).filter(|v| *v >= 0).map(Money)
    }

    pub fn checked_mul(self, quantity: u32) -> Result<Money, MoneyError> {
        self.0
            .checked_mul(i64::from(quantity))
            .map(Money)
            .ok_or(MoneyError::Overflow)
    }

    /// Alipay speaks yuan with exactly two decimals: "88.88".
    pub fn to_yuan_string(self) -> String {
        format!("{}.{:02}", self.0 / 100, self.0 % 100)
    }

    /// Parses a non-negative yuan string with exactly two decimals ("88.88").
    pub fn parse_yuan(text: &str) -> Result<Money, MoneyError> {
        let fen = parse_signed_yuan(text, 2)?;
        Money::from_fen(fen)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} fen", self.0)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fen = i64::deserialize(d)?;
        Money::from_fen(fen).map_err(serde::de::Error::custom)
    }
}

/// Parses a signed decimal yuan amount with exactly `decimals` fraction digits
/// (2 for amounts, 5 for WeChat fees) into an integer of 10^-`decimals` yuan.
/// Strict on purpose: "1.5", "1.505", "1e2", " 1.00" are all refused.
pub fn parse_signed_yuan(text: &str, decimals: usize) -> Result<i64, MoneyError> {
    let bad = || MoneyError::BadYuan(text.to_string());
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, frac) = digits.split_once('.').ok_or_else(bad)?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || !all_digits(frac) || frac.len() != decimals || whole.len() > 15 {
        return Err(bad());
    }
    let scale = 10_i64.pow(decimals as u32);
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    let frac: i64 = frac.parse().map_err(|_| bad())?;
    let value = whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(frac))
        .ok_or(MoneyError::Overflow)?;
    Ok(if negative { -value } else { value })
}

/// Formats a signed integer of 10^-`decimals` yuan, the inverse of [`parse_signed_yuan`].
pub fn format_signed_yuan(value: i64, decimals: u32) -> String {
    let scale = 10_i64.pow(decimals);
    let sign = if value < 0 { "-" } else { "" };
    let abs = value.unsigned_abs();
    let scale = scale as u64;
    format!(
        "{sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = decimals as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_round_trip() {
        assert_eq!(Money::parse_yuan("88.88").unwrap().fen(), 8888);
        assert_eq!(Money::parse_yuan("0.01").unwrap().fen(), 1);
        assert_eq!(Money::from_fen(5).unwrap().to_yuan_string(), "0.05");
        assert_eq!(
            Money::from_fen(10_000_000_000).unwrap().to_yuan_string(),
            "100000000.00"
        );
        for bad in [
            "1.5", "1.505", "1e2", " 1.00", "-1.00", "", ".50", "1.", "1,00",
        ] {
            assert!(Money::parse_yuan(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signed_and_fees() {
        assert_eq!(parse_signed_yuan("-10.00", 2).unwrap(), -1000);
        assert_eq!(parse_signed_yuan("0.00600", 5).unwrap(), 600);
        assert_eq!(parse_signed_yuan("-0.00240", 5).unwrap(), -240);
        assert_eq!(format_signed_yuan(-240, 5), "-0.00240");
        assert_eq!(format_signed_yuan(1000, 2), "10.00");
    }

    #[test]
    fn arithmetic_is_checked() {
        let max = Money::from_fen(i64::MAX).unwrap();
        assert_eq!(
            max.checked_add(Money::from_fen(1).unwrap()),
            Err(MoneyError::Overflow)
        );
        assert_eq!(max.checked_mul(2), Err(MoneyError::Overflow));
        assert_eq!(
            Money::from_fen(1)
                .unwrap()
                .checked_sub(Money::from_fen(2).unwrap()),
            None
        );
        assert!(Money::from_fen(-1).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_amount_survives_yuan(fen in 0_i64..=1_000_000_000_000) {
            let m = Money::from_fen(fen).unwrap();
            proptest::prop_assert_eq!(Money::parse_yuan(&m.to_yuan_string()).unwrap(), m);
        }
    }
}
