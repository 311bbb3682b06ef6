//! Status changes of API-made requests, posted to the client's callback URL
//! (`REFUND_DESK_CALLBACK_URL`), signed so the receiver knows they come from this desk.
//!
//! Each delivery carries `Refund-Desk-Signature: t=<unix seconds>,v1=<hex>`, the HMAC-SHA256
//! keyed with `REFUND_DESK_CALLBACK_SECRET` over `{t}.{body}` (the scheme Stripe's webhooks
//! use, so receivers know it), and `Refund-Desk-Event-Id`, the event's id, the same on every
//! attempt: deliveries are at least once, and a receiver deduplicates on it.

use crate::config::CallbackSettings;
use crate::domain::{RefundRequest, StatusChange};
use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::Digest;
use std::time::Duration;

pub const SIGNATURE_HEADER: &str = "refund-desk-signature";
pub const EVENT_ID_HEADER: &str = "refund-desk-event-id";

/// Why a delivery did not land; every one is tried again later.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("the callback URL answered {0}")]
    Status(reqwest::StatusCode),
    #[error("the callback URL could not be reached")]
    Unreachable(#[source] reqwest::Error),
}

/// The client for the callback URL.
#[derive(Clone)]
pub struct CallbackClient {
    http: reqwest::Client,
    url: url::Url,
    /// Signs every delivery; never logged.
    secret: SecretString,
}

impl std::fmt::Debug for CallbackClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackClient").field("url", &self.url.as_str()).finish_non_exhaustive()
    }
}

/// The document posted for a status change.
#[derive(Debug, Serialize)]
pub struct StatusEvent {
    /// The same on every attempt at this delivery.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub request_id: String,
    /// The API client that made the request (its token's name).
    pub client: String,
    pub from: &'static str,
    pub to: &'static str,
    pub at: DateTime<Utc>,
    /// Integer minor units, once Stripe's charge is known.
    pub amount_minor: Option<u64>,
    pub currency: Option<String>,
    pub refund_id: Option<String>,
}

impl StatusEvent {
    /// The event for `change` of `request`, with an id unique to this installation, request
    /// and change.
    pub fn new(install_id: &str, request: &RefundRequest, change: &StatusChange) -> StatusEvent {
        let mut h = sha2::Sha256::new();
        for part in
            [install_id, &request.id.to_string(), change.from.api_name(), change.to.api_name(), &change.at.to_rfc3339()]
        {
            h.update(part.as_bytes());
            h.update(b"\n");
        }
        StatusEvent {
            id: format!("evt_{}", &hex::encode(h.finalize())[..32]),
            kind: "refund_request.status_changed",
            request_id: request.id.to_string(),
            client: request.api.as_ref().map(|a| a.client.clone()).unwrap_or_default(),
            from: change.from.api_name(),
            to: change.to.api_name(),
            at: change.at,
            amount_minor: change.amount.map(|m| m.minor()),
            currency: change.amount.map(|m| m.currency().code().to_string()),
            refund_id: change.refund_id.as_ref().map(|r| r.to_string()),
        }
    }
}

/// `t=<timestamp>,v1=<hex HMAC-SHA256 of "{t}.{body}">`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl CallbackClient {
    pub fn new(settings: &CallbackSettings) -> reqwest::Result<CallbackClient> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("refund-desk/", env!("CARGO_PKG_VERSION")))
            // A redirect is not a delivery: followed, a POST becomes a GET without its body.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(CallbackClient { http, url: settings.url.clone(), secret: settings.secret.clone() })
    }

    /// Posts `event`, signed at `now`. Any answer but 2xx is a failure, tried again.
    #[tracing::instrument(skip_all, fields(event_id = %event.id))]
    pub async fn deliver(&self, event: &StatusEvent, now: DateTime<Utc>) -> Result<(), CallbackError> {
        let body = serde_json::to_vec(event).expect("an event always serialises");
        let answer = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature(self.secret.expose_secret(), now.timestamp(), &body))
            .header(EVENT_ID_HEADER, &event.id)
            .body(body)
            .send()
            .await
            .map_err(|e| CallbackError::Unreachable(e.without_url()))?;
        if answer.status().is_success() { Ok(()) } else { Err(CallbackError::Status(answer.status())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_the_timestamp_and_body() {
        // Computed independently: printf '1733230000.{"a":1}' | openssl dgst -sha256 -hmac 'whsec-like-secret-1'
        let sig = signature("whsec-like-secret-1", 1_733_230_000, br#"{"a":1}"#);
        assert_eq!(sig, "t=1733230000,v1=6104b96451f3ab296afe0ad4167cf921014133b04dd52ecba16470910dedad72");
    }
}
