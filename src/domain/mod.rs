//! The payment domain with no I/O: money, identifiers, channels, the order
//! state machine. Everything else parses into these types at its edge.

mod channel;
mod ids;
mod money;
mod order;
pub mod recon;

pub use channel::{Channel, UnknownChannel};
pub use ids::{BadRequestId, OrderId, RefundId, RequestId};
pub use money::{format_signed_yuan, parse_signed_yuan, Money, MoneyError};
pub use order::{
    InvalidTransition, LineItem, NewOrder, Order, OrderEvent, OrderStatus, PaymentAnomaly,
    PaymentState, PaymentVerdict, PlaceError, RefundError,
};
