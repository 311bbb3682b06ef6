//! The parts of Stripe's objects refund-desk reads. Unknown fields are ignored, so newer API
//! versions parse; every field that Stripe may leave out or null is an `Option`.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A field that is an id, or the object itself when expanded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Expandable<T> {
    Id(String),
    Object(Box<T>),
}

impl<T: HasId> Expandable<T> {
    pub fn id(&self) -> &str {
        match self {
            Expandable::Id(id) => id,
            Expandable::Object(o) => o.id(),
        }
    }
}

pub trait HasId {
    fn id(&self) -> &str;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct List<T> {
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BillingDetails {
    pub email: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardDetails {
    pub brand: Option<String>,
    pub last4: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentMethodDetails {
    /// `card`, `card_present`, `sepa_debit`, `us_bank_account`, ...
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub card: Option<CardDetails>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Charge {
    pub id: String,
    pub amount: u64,
    #[serde(default)]
    pub amount_captured: u64,
    #[serde(default)]
    pub amount_refunded: u64,
    #[serde(default)]
    pub captured: bool,
    pub currency: String,
    pub created: i64,
    pub customer: Option<Expandable<Customer>>,
    #[serde(default)]
    pub billing_details: Option<BillingDetails>,
    pub receipt_email: Option<String>,
    #[serde(default)]
    pub refunded: bool,
    #[serde(default)]
    pub disputed: bool,
    pub status: Option<String>,
    #[serde(default)]
    pub paid: bool,
    pub payment_intent: Option<Expandable<PaymentIntent>>,
    pub payment_method_details: Option<PaymentMethodDetails>,
    pub refunds: Option<List<Refund>>,
}

impl HasId for Charge {
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub amount: u64,
    pub currency: String,
    pub status: String,
    pub latest_charge: Option<Expandable<Charge>>,
    pub receipt_email: Option<String>,
    pub customer: Option<Expandable<Customer>>,
}

impl HasId for PaymentIntent {
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub id: String,
    pub email: Option<String>,
    #[serde(default)]
    pub deleted: bool,
}

impl HasId for Customer {
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub amount: u64,
    pub currency: String,
    pub charge: Option<Expandable<Charge>>,
    pub payment_intent: Option<Expandable<PaymentIntent>>,
    pub status: Option<String>,
    #[serde(default)]
    pub metadata: HashMap<String, String>,
    pub failure_reason: Option<String>,
    pub reason: Option<String>,
    pub created: i64,
}

/// A dispute (or inquiry) on a charge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dispute {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// Whether Stripe still allows refunding the disputed payment.
    #[serde(default)]
    pub is_charge_refundable: bool,
}

/// A card network's early warning that a charge may be fraudulent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyFraudWarning {
    pub id: String,
    #[serde(default)]
    pub actionable: bool,
    pub fraud_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventData {
    pub object: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    pub data: EventData,
    #[serde(default)]
    pub livemode: bool,
}

/// Stripe's error body: `{"error": {...}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub code: Option<String>,
    pub message: Option<String>,
    pub param: Option<String>,
    pub decline_code: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiErrorEnvelope {
    pub error: ApiErrorBody,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn objects() -> Value {
        serde_json::from_str(include_str!("../../tests/fixtures/stripe/objects.json")).unwrap()
    }

    #[test]
    fn stripes_published_objects_parse() {
        let o = objects();
        let charge: Charge = serde_json::from_value(o["charge"].clone()).unwrap();
        assert_eq!(charge.payment_method_details.unwrap().card.unwrap().last4.as_deref(), Some("4242"));
        let refund: Refund = serde_json::from_value(o["refund"].clone()).unwrap();
        assert_eq!(refund.status.as_deref(), Some("succeeded"));
        let pi: PaymentIntent = serde_json::from_value(o["payment_intent"].clone()).unwrap();
        assert!(pi.latest_charge.is_none());
        let _: Customer = serde_json::from_value(o["customer"].clone()).unwrap();
        let _: Event = serde_json::from_value(o["event"].clone()).unwrap();
        let efw: EarlyFraudWarning = serde_json::from_value(o["radar.early_fraud_warning"].clone()).unwrap();
        assert_eq!(efw.fraud_type.as_deref(), Some("misc"));
        let dispute: Dispute = serde_json::from_value(o["dispute"].clone()).unwrap();
        assert!(dispute.is_charge_refundable);
    }

    #[test]
    fn expanded_and_plain_ids_both_read() {
        let mut pi = objects()["payment_intent"].clone();
        pi["latest_charge"] = "ch_1".into();
        let p: PaymentIntent = serde_json::from_value(pi.clone()).unwrap();
        assert_eq!(p.latest_charge.unwrap().id(), "ch_1");
        pi["latest_charge"] = objects()["charge"].clone();
        let p: PaymentIntent = serde_json::from_value(pi).unwrap();
        assert_eq!(p.latest_charge.unwrap().id(), "ch_1PgafuB7WZ01zgkWXYmPNZs8");
    }
}
