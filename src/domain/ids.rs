//! Identifiers that cross the edges: request ids, Stripe object ids, Slack user ids.
//!
//! Each is made only by `parse`, so past the edge no function takes a raw `String` for an id.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why a piece of text is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a valid {what}: {hint}")]
pub struct IdError {
    pub what: &'static str,
    pub text: String,
    pub hint: &'static str,
}

/// A refund request's number, shown to people as `R-1001`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(u64);

impl RequestId {
    pub fn new(n: u64) -> Self {
        RequestId(n)
    }
    pub fn number(self) -> u64 {
        self.0
    }
    /// Storage key: big-endian so that keys sort by number.
    pub fn to_key(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
    pub fn from_key(key: &[u8]) -> Option<Self> {
        Some(RequestId(u64::from_be_bytes(key.get(..8)?.try_into().ok()?)))
    }
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let err = || IdError { what: "request id", text: text.to_string(), hint: "request ids look like R-1001" };
        let t = text.trim();
        let digits = t.strip_prefix("R-").or_else(|| t.strip_prefix("r-")).ok_or_else(err)?;
        if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        digits.parse().map(RequestId).map_err(|_| err())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "R-{}", self.0)
    }
}
impl FromStr for RequestId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        RequestId::parse(s)
    }
}
impl TryFrom<String> for RequestId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        RequestId::parse(&s)
    }
}
impl From<RequestId> for String {
    fn from(id: RequestId) -> String {
        id.to_string()
    }
}

/// Stripe ids are `prefix_` plus letters and digits.
fn stripe_id(text: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| {
        text.strip_prefix(p).is_some_and(|rest| {
            !rest.is_empty() && rest.len() <= 250 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
    })
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $hint:literal, [$($prefix:literal),+]) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(text: &str) -> Result<Self, IdError> {
                let t = text.trim();
                if stripe_id(t, &[$($prefix),+]) {
                    Ok($name(t.to_string()))
                } else {
                    Err(IdError { what: $what, text: text.to_string(), hint: $hint })
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                $name::parse(&s)
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

string_id!(
    /// A Stripe charge, `ch_...` (or `py_...` for non-card payments).
    ChargeId, "charge id", "charge ids start with ch_", ["ch_", "py_"]
);
string_id!(
    /// A Stripe payment intent, `pi_...`.
    PaymentIntentId, "payment intent id", "payment intent ids start with pi_", ["pi_"]
);
string_id!(
    /// A Stripe refund, `re_...` (or `pyr_...`).
    RefundId, "refund id", "refund ids start with re_", ["re_", "pyr_"]
);
string_id!(
    /// A Stripe customer, `cus_...`.
    CustomerId, "customer id", "customer ids start with cus_", ["cus_"]
);

/// What a refund is made against: a charge or a payment intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentRef {
    Charge(ChargeId),
    PaymentIntent(PaymentIntentId),
}

impl PaymentRef {
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let t = text.trim();
        if t.starts_with("pi_") {
            PaymentIntentId::parse(t).map(PaymentRef::PaymentIntent)
        } else if t.starts_with("ch_") || t.starts_with("py_") {
            ChargeId::parse(t).map(PaymentRef::Charge)
        } else {
            Err(IdError {
                what: "charge or payment intent id",
                text: text.to_string(),
                hint: "give a charge (ch_...) or a payment intent (pi_...) as shown in Stripe",
            })
        }
    }
    pub fn as_str(&self) -> &str {
        match self {
            PaymentRef::Charge(c) => c.as_str(),
            PaymentRef::PaymentIntent(p) => p.as_str(),
        }
    }
}

impl fmt::Display for PaymentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Slack user id (`U...` or `W...`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let t = text.trim();
        let ok = t.len() >= 2
            && t.len() <= 32
            && (t.starts_with('U') || t.starts_with('W'))
            && t.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if ok {
            Ok(UserId(t.to_string()))
        } else {
            Err(IdError { what: "Slack user id", text: text.to_string(), hint: "Slack user ids look like U012AB3CD" })
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl TryFrom<String> for UserId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        UserId::parse(&s)
    }
}
impl From<UserId> for String {
    fn from(id: UserId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_round_trip_through_text() {
        let id = RequestId::parse("R-1001").unwrap();
        assert_eq!(id.number(), 1001);
        assert_eq!(id.to_string(), "R-1001");
        assert_eq!(RequestId::from_key(&id.to_key()), Some(id));
    }

    #[test]
    fn malformed_request_ids_are_refused() {
        for bad in ["", "R-", "1001", "R-12a", "R--1", "X-1", "R-1234567890123456789"] {
            assert!(RequestId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn payment_refs_are_told_apart_by_prefix() {
        assert!(matches!(PaymentRef::parse("ch_3Mtw"), Ok(PaymentRef::Charge(_))));
        assert!(matches!(PaymentRef::parse("pi_3Mtw"), Ok(PaymentRef::PaymentIntent(_))));
        for bad in ["re_1", "ch_", "cus_1", "ch_1;drop", "https://x", "25.00"] {
            assert!(PaymentRef::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn slack_user_ids_must_look_like_slack_ids() {
        assert!(UserId::parse("U012AB3CD").is_ok());
        assert!(UserId::parse("W0123").is_ok());
        for bad in ["", "u012", "C0123", "U01 2", "<@U012>"] {
            assert!(UserId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
