use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A payment channel: the gateway an order is paid through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    WechatPay,
    Alipay,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Channel::WechatPay, Channel::Alipay];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::WechatPay => "wechat_pay",
            Channel::Alipay => "alipay",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown channel {0:?} (expected wechat_pay or alipay)")]
pub struct UnknownChannel(pub String);

impl FromStr for Channel {
    type Err = UnknownChannel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "wechat_pay" => Ok(Channel::WechatPay),
            "alipay" => Ok(Channel::Alipay),
            other => Err(UnknownChannel(other.to_string())),
        }
    }
}
