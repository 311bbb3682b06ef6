//! Verifying `Stripe-Signature` and reading refund updates out of events.
//!
//! The scheme, as Stripe's libraries implement it: `t=<unix>,v1=<hex>[,v1=<hex>...]`; the MAC is
//! HMAC-SHA256 keyed with the whole `whsec_...` string over `"{t}.{raw body}"`; any `v1` may match
//! (one per active secret during rotation); other schemes are ignored; an event older than the
//! tolerance is refused, one from the future is not.

use super::client::{INSTALL_METADATA, REQUEST_METADATA};
use super::types::{Charge, Event, Refund};
use crate::domain::{ChargeId, PaymentIntentId, RefundId, RequestId};
use crate::storage::RefundUpdate;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// Stripe's default tolerance.
pub const TOLERANCE_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no Stripe-Signature header")]
    Missing,
    #[error("the Stripe-Signature header has no timestamp")]
    NoTimestamp,
    #[error("no signatures found with expected scheme v1")]
    NoV1,
    #[error("timestamp outside the tolerance zone")]
    TooOld,
    #[error("no signature matches the payload")]
    NoMatch,
}

/// Checks `header` against `body` with any of `secrets`, as of `now` (unix seconds).
pub fn verify_signature(
    header: Option<&str>,
    body: &[u8],
    secrets: &[SecretString],
    now: i64,
    tolerance: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = vec![];
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", sig)) => signatures.push(sig),
            _ => {}
        }
    }
    let t = timestamp.ok_or(SignatureError::NoTimestamp)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoV1);
    }
    let matches = secrets.iter().any(|secret| {
        signatures.iter().any(|sig| {
            let Ok(expected) = hex::decode(sig) else {
                return false;
            };
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) else {
                return false;
            };
            mac.update(t.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            // verify_slice compares in constant time.
            mac.verify_slice(&expected).is_ok()
        })
    });
    if !matches {
        return Err(SignatureError::NoMatch);
    }
    if tolerance > 0 && now - t > tolerance {
        return Err(SignatureError::TooOld);
    }
    Ok(())
}

/// The `Stripe-Signature` header for `body`, as Stripe would send it (for stand-ins and tests).
pub fn sign(body: &[u8], secret: &str, t: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The event types that carry refund news.
pub const REFUND_EVENTS: [&str; 5] =
    ["refund.created", "refund.updated", "refund.failed", "charge.refunded", "charge.refund.updated"];

/// What a refund object says, in the terms [`crate::storage::Store::apply_refund_updates`] takes;
/// `None` for a refund without an id or status Stripe would send.
pub fn update_from(refund: &Refund) -> Option<RefundUpdate> {
    Some(RefundUpdate {
        refund: RefundId::parse(&refund.id).ok()?,
        status: refund.status.clone()?,
        failure_reason: refund.failure_reason.clone(),
        request_hint: refund.metadata.get(REQUEST_METADATA).and_then(|v| RequestId::parse(v).ok()),
        install: refund.metadata.get(INSTALL_METADATA).cloned(),
        charge: refund.charge.as_ref().and_then(|c| ChargeId::parse(c.id()).ok()),
        payment_intent: refund.payment_intent.as_ref().and_then(|p| PaymentIntentId::parse(p.id()).ok()),
        amount: crate::domain::Currency::parse(&refund.currency)
            .ok()
            .map(|c| crate::domain::Money::new(refund.amount, c)),
    })
}

/// The refund updates in an event; empty for events refund-desk does not act on.
pub fn refund_updates(event: &Event) -> Result<Vec<RefundUpdate>, serde_json::Error> {
    let object = event.data.object.clone();
    Ok(match event.kind.as_str() {
        "refund.created" | "refund.updated" | "refund.failed" | "charge.refund.updated" => {
            let refund: Refund = serde_json::from_value(object)?;
            update_from(&refund).into_iter().collect()
        }
        "charge.refunded" => {
            let charge: Charge = serde_json::from_value(object)?;
            charge.refunds.map(|list| list.data.iter().filter_map(update_from).collect()).unwrap_or_default()
        }
        _ => vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn every_official_stripe_vector_gives_the_official_answer() {
        let vectors: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/signatures/stripe_sig_vectors.json")).unwrap();
        let vectors = vectors["vectors"].as_array().unwrap();
        assert_eq!(vectors.len(), 9);
        for v in vectors {
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            let secrets = vec![SecretString::from(s("secret"))];
            let now = v["now"].as_i64().unwrap();
            let tolerance = v["tolerance_s"].as_i64().unwrap();
            let result = verify_signature(Some(&s("header")), s("payload").as_bytes(), &secrets, now, tolerance);
            assert_eq!(result.is_ok(), v["expect_valid"].as_bool().unwrap(), "{}: {result:?}", s("name"));
        }
    }

    #[test]
    fn any_of_several_secrets_may_sign() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(body, "whsec_old", 1_700_000_000);
        let secrets = vec![SecretString::from("whsec_new".to_string()), SecretString::from("whsec_old".to_string())];
        assert_eq!(verify_signature(Some(&header), body, &secrets, 1_700_000_001, 300), Ok(()));
        assert_eq!(
            verify_signature(Some(&header), body, &secrets[..1], 1_700_000_001, 300),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(verify_signature(None, body, &secrets, 1_700_000_001, 300), Err(SignatureError::Missing));
        assert_eq!(
            verify_signature(Some("v1=00"), body, &secrets, 1_700_000_001, 300),
            Err(SignatureError::NoTimestamp)
        );
    }

    #[test]
    fn refund_updates_come_from_refund_and_charge_events() {
        let objects: Value = serde_json::from_str(include_str!("../../tests/fixtures/stripe/objects.json")).unwrap();
        let mut refund = objects["refund"].clone();
        refund["metadata"] = serde_json::json!({"refund_request_id": "R-1001"});
        let mut event = objects["event"].clone();
        event["type"] = "refund.updated".into();
        event["data"]["object"] = refund.clone();
        let event: Event = serde_json::from_value(event).unwrap();
        let updates = refund_updates(&event).unwrap();
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].status, "succeeded");
        assert_eq!(updates[0].request_hint, Some(RequestId::new(1001)));

        let mut charge = objects["charge"].clone();
        charge["refunds"]["data"] = serde_json::json!([refund]);
        let mut event = objects["event"].clone();
        event["type"] = "charge.refunded".into();
        event["data"]["object"] = charge;
        let event: Event = serde_json::from_value(event).unwrap();
        assert_eq!(refund_updates(&event).unwrap().len(), 1);

        let plan: Event = serde_json::from_value(objects["event"].clone()).unwrap();
        assert!(refund_updates(&plan).unwrap().is_empty(), "plan.created is not ours");
    }
}
