//! The body of `POST /api/v1/refund-requests`: read field by field, so that every bad field is
//! named at once; and its fingerprint, for the idempotency key.

use super::problem::FieldError;
use crate::domain::{AmountAsked, AmountInput, Note, PaymentRef, RefundReason, UserId, capitalised};
use sha2::Digest;

/// Who asks: a Slack user id, or an email to look up in Slack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requester {
    User(UserId),
    Email(String),
}

/// A valid body, before the requester is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestBody {
    pub target: PaymentRef,
    pub amount: AmountAsked,
    pub reason: RefundReason,
    pub note: Option<Note>,
    pub customer_email: Option<String>,
    pub requested_by: Requester,
}

const FIELDS: [&str; 6] = ["payment", "amount", "reason", "note", "customer_email", "requested_by"];

/// A body with mistakes: every bad field (none: it is not a JSON object at all), and the
/// requester when that field was valid, so it can be checked too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub errors: Vec<FieldError>,
    pub requested_by: Option<Requester>,
}

/// Reads `body`, naming every bad field.
pub fn parse(body: &serde_json::Value) -> Result<RequestBody, Invalid> {
    let Some(object) = body.as_object() else {
        return Err(Invalid { errors: vec![], requested_by: None });
    };
    let mut errors = vec![];
    for name in object.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
        errors.push(FieldError::new(name, format!("`{name}` is not a field of a refund request")));
    }
    let mut read = |name: &str, required: Option<&str>| read_text(object, name, required, &mut errors);
    let payment = read("payment", Some("the charge (ch_...) or payment intent (pi_...)"));
    // Never a full refund by default: a client that lost the amount must not refund it all.
    let amount = read("amount", Some("the amount in the charge's currency (\"25.00\"), or \"full\""));
    let reason = read("reason", None);
    let note = read("note", None);
    let email = read("customer_email", None);
    let requested_by = read("requested_by", Some("the Slack user id (U012AB3CD) or email of the person asking"));
    let target = payment.and_then(|p| {
        PaymentRef::parse(&p).map_err(|e| errors.push(FieldError::new("payment", capitalised(&e.to_string())))).ok()
    });
    let amount = match amount {
        None => None,
        Some(a) if a.eq_ignore_ascii_case("full") => Some(AmountAsked::Full),
        Some(a) => match AmountInput::parse(&a) {
            Ok(input) => Some(AmountAsked::Exact(input)),
            Err(e) => {
                errors.push(FieldError::new("amount", capitalised(&e.to_string())));
                None
            }
        },
    };
    let reason = match reason {
        None => Some(RefundReason::RequestedByCustomer),
        Some(r) => RefundReason::parse(&r).or_else(|| {
            let names: Vec<&str> = RefundReason::ALL.iter().map(|r| r.as_str()).collect();
            errors.push(FieldError::new("reason", format!("`{r}` is not a reason; use one of {}", names.join(", "))));
            None
        }),
    };
    let note = match Note::parse(&note.unwrap_or_default()) {
        Ok(n) => Some(n),
        Err(e) => {
            errors.push(FieldError::new("note", capitalised(&e.to_string())));
            None
        }
    };
    let customer_email = match email {
        Some(e) if e.parse::<lettre::Address>().is_err() => {
            errors.push(FieldError::new("customer_email", format!("`{e}` is not an email address")));
            None
        }
        other => Some(other),
    };
    let requested_by = match requested_by {
        None => None,
        Some(r) if r.contains('@') => match r.parse::<lettre::Address>() {
            Ok(_) => Some(Requester::Email(r)),
            Err(_) => {
                errors.push(FieldError::new("requested_by", format!("`{r}` is not an email address")));
                None
            }
        },
        Some(r) => UserId::parse(&r)
            .map(Requester::User)
            .map_err(|e| errors.push(FieldError::new("requested_by", capitalised(&e.to_string()))))
            .ok(),
    };
    match (target, amount, reason, note, customer_email, requested_by) {
        (Some(target), Some(amount), Some(reason), Some(note), Some(customer_email), Some(requested_by))
            if errors.is_empty() =>
        {
            Ok(RequestBody { target, amount, reason, note, customer_email, requested_by })
        }
        (.., requested_by) => Err(Invalid { errors, requested_by }),
    }
}

/// The trimmed text of string field `name`, `None` when it is absent, null or empty (an error
/// when `required`, saying what it needs) or not a string (an error).
fn read_text(
    object: &serde_json::Map<String, serde_json::Value>,
    name: &str,
    required: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let text = match object.get(name) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Some(_) => {
            let hint = if name == "amount" { " (like \"25.00\", or \"full\")" } else { "" };
            errors.push(FieldError::new(name, format!("must be a string{hint}")));
            return None;
        }
    };
    if let (None, Some(what)) = (&text, required) {
        errors.push(FieldError::new(name, format!("is required: {what}")));
    }
    text
}

/// The SHA-256 of `body` with its object keys in order and no spaces, so the same request
/// written another way has the same fingerprint.
pub fn fingerprint(body: &serde_json::Value) -> String {
    fn canonical(value: &serde_json::Value, out: &mut String) {
        match value {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, key) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(key.clone()).to_string());
                    out.push(':');
                    canonical(&map[key], out);
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canonical(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    canonical(body, &mut out);
    hex::encode(sha2::Sha256::digest(out.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_full_body_reads_into_a_request() {
        let body = parse(&json!({
            "payment": "ch_3MmlLrLkdIwHu7ix0snN0B15", "amount": "25.00", "reason": "dup",
            "note": "charged twice", "customer_email": "jenny@example.com", "requested_by": "U0AGENT01"
        }))
        .unwrap();
        assert_eq!(body.reason, RefundReason::Duplicate);
        assert!(matches!(body.amount, AmountAsked::Exact(_)));
        assert_eq!(body.requested_by, Requester::User(UserId::parse("U0AGENT01").unwrap()));
        assert_eq!(body.customer_email.as_deref(), Some("jenny@example.com"));
    }

    #[test]
    fn full_must_be_written_and_the_reason_defaults_to_the_customers_request() {
        let body =
            json!({"payment": "pi_3MtwBwLkdIwHu7ix28a3tqPa", "amount": "FULL", "requested_by": "agent@example.com"});
        let body = parse(&body).unwrap();
        assert_eq!((body.amount, body.reason), (AmountAsked::Full, RefundReason::RequestedByCustomer));
        for amount in [json!(null), json!(""), json!("  ")] {
            let without =
                json!({"payment": "pi_3MtwBwLkdIwHu7ix28a3tqPa", "amount": amount, "requested_by": "U0AGENT01"});
            let errors = parse(&without).unwrap_err().errors;
            assert_eq!(errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["amount"], "{amount}");
        }
        assert_eq!(body.requested_by, Requester::Email("agent@example.com".into()));
    }

    #[test]
    fn every_bad_field_is_named_at_once() {
        let errors = parse(&json!({
            "payment": "cus_123", "amount": 25.0, "reason": "because", "customer_email": "nope",
            "requested_by": "someone", "ammount": "1"
        }))
        .unwrap_err()
        .errors;
        let mut fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["ammount", "amount", "customer_email", "payment", "reason", "requested_by"]);
        assert!(errors.iter().all(|e| e.pointer == Some(format!("#/{}", e.field))));
        let missing = parse(&json!({})).unwrap_err().errors;
        let fields: Vec<&str> = missing.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["payment", "amount", "requested_by"]);
        assert!(parse(&json!([1])).unwrap_err().errors.is_empty(), "not an object");
        let requester = parse(&json!({"payment": "nope", "requested_by": "U0AGENT01"})).unwrap_err().requested_by;
        assert_eq!(requester, Some(Requester::User(UserId::parse("U0AGENT01").unwrap())), "checked on its own");
    }

    #[test]
    fn the_fingerprint_ignores_key_order_and_spacing_but_not_values() {
        let a: serde_json::Value = serde_json::from_str(r#"{"payment":"ch_1","amount":"5.00"}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{ "amount": "5.00",  "payment": "ch_1" }"#).unwrap();
        let c: serde_json::Value = serde_json::from_str(r#"{"payment":"ch_1","amount":"5.01"}"#).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }
}
