//! Business types and rules with no I/O: money and currencies, identifiers, the `/refund`
//! grammar, and a refund request with its state machine.

pub mod authority;
pub mod command;
pub mod decisions;
pub mod digest;
pub mod ids;
pub mod money;
pub mod policy;
pub mod refund_news;
pub mod request;

pub use authority::{Approvers, Authority, Capacity, Delegation};
pub use command::{AmountAsked, Command, CommandError, Note, RefundCommand, RefundReason};
pub use decisions::{Approval, DecisionError};
pub use ids::{ChargeId, CustomerId, IdError, PaymentIntentId, PaymentRef, RefundId, RequestId, UserId};
pub use money::{AmountError, AmountInput, Currency, Money};
pub use request::{
    Actor, ApiOrigin, CardFacts, ChargeFacts, Decision, Effect, EmailKind, Lane, MessageRef, NewRequest, Notice,
    PriorRefund, RefundRecord, RefundRequest, RefundUpdate, RequestStatus, StateError, StatusChange, Transition,
    owner_of_refund,
};

/// `text` with its first letter in upper case, for messages that start with a phrase.
pub fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|c| c.to_uppercase().collect::<String>() + chars.as_str()).unwrap_or_default()
}
