//! The Stripe API client: reads charges, payment intents and customers, creates refunds.
//!
//! Every call has a deadline. Errors are sorted into what Stripe refused (the request ends, with
//! Stripe's message) and what may be retried with the same idempotency key (429, 409, 5xx,
//! timeouts, dropped connections, a key Stripe would not accept).

use super::types::{ApiErrorEnvelope, Charge, Customer, Dispute, EarlyFraudWarning, List, PaymentIntent, Refund};
use crate::domain::{Money, PaymentRef, RequestId};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// The API version whose shapes this client reads. From 2024-10-28.acacia on, Stripe sends
/// `refund.*` events for every refund, not only for refunds without a charge.
pub const API_VERSION: &str = "2024-10-28.acacia";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StripeError {
    /// 404: no such object.
    #[error("Stripe has no such object: {0}")]
    NotFound(String),
    /// Stripe understood and said no (already refunded, amount too large, disputed, ...).
    #[error("Stripe refused: {message}")]
    Refused { status: u16, code: Option<String>, message: String },
    /// The same idempotency key with other parameters: a bug, never retried blindly.
    #[error("Stripe reported an idempotency conflict: {0}")]
    Idempotency(String),
    /// Worth trying again later with the same key.
    #[error("Stripe is unavailable: {0}")]
    Unavailable(String),
    /// 429: try again later, after `Retry-After` when Stripe gives one.
    #[error("Stripe rate limited the call")]
    RateLimited(Option<Duration>),
    /// 403: the key (a restricted key) may not do this. Trying again changes nothing.
    #[error("the Stripe key lacks the permission {}: {message}", permission.as_deref().unwrap_or("this call needs"))]
    Forbidden { permission: Option<String>, message: String },
}

impl StripeError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StripeError::Unavailable(_) | StripeError::RateLimited(_))
    }
}

/// Which page of Stripe's event list (newest first) to read.
#[derive(Debug, Clone, Copy)]
pub enum EventPage<'a> {
    /// The page just newer than this event (`ending_before`).
    NewerThan(&'a str),
    /// Events created at or after this Unix time (`created[gte]`): the newest page, or the
    /// page just older than the given event.
    CreatedSince(i64, Option<&'a str>),
}

/// What the desk does at Stripe, as a restricted key's permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    ReadCharges,
    ReadPaymentIntents,
    WriteRefunds,
    ReadCustomers,
    ReadDisputes,
    ReadEarlyFraudWarnings,
    ReadEvents,
}

impl Permission {
    pub const ALL: [Permission; 7] = [
        Permission::ReadCharges,
        Permission::ReadPaymentIntents,
        Permission::WriteRefunds,
        Permission::ReadCustomers,
        Permission::ReadDisputes,
        Permission::ReadEarlyFraudWarnings,
        Permission::ReadEvents,
    ];

    /// Stripe's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Permission::ReadCharges => "rak_charge_read",
            Permission::ReadPaymentIntents => "rak_payment_intent_read",
            Permission::WriteRefunds => "rak_refund_write",
            Permission::ReadCustomers => "rak_customer_read",
            Permission::ReadDisputes => "rak_dispute_read",
            Permission::ReadEarlyFraudWarnings => "rak_radar_early_fraud_warning_read",
            Permission::ReadEvents => "rak_event_read",
        }
    }

    /// What the desk does with it, in words.
    pub fn purpose(self) -> &'static str {
        match self {
            Permission::ReadCharges => "read charges (every check)",
            Permission::ReadPaymentIntents => "read payment intents (requests by `pi_...`)",
            Permission::WriteRefunds => "make refunds and read them back",
            Permission::ReadCustomers => "read customers (the email address, when the charge has none)",
            Permission::ReadDisputes => "read disputes (on a disputed charge)",
            Permission::ReadEarlyFraudWarnings => "read Radar's early fraud warnings (card payments)",
            Permission::ReadEvents => "read Stripe's events (without a webhook; with one, the sweep)",
        }
    }

    /// Whether the desk cannot work without it (events: only when there is no webhook); without
    /// the others it goes on and says on the card what it could not read.
    pub fn required(self, has_webhook: bool) -> bool {
        match self {
            Permission::ReadCharges | Permission::ReadPaymentIntents | Permission::WriteRefunds => true,
            Permission::ReadEvents => !has_webhook,
            _ => false,
        }
    }
}

/// The refund's metadata key naming the request it was made for.
pub const REQUEST_METADATA: &str = "refund_request_id";
/// The refund's metadata key naming the installation that made it: request ids start at
/// R-1001 in every store, so the id alone does not say whose a refund is.
pub const INSTALL_METADATA: &str = "refund_desk_install";

/// `POST /v1/refunds`, in domain terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRefund {
    pub target: PaymentRef,
    pub amount: Money,
    pub reason: Option<&'static str>,
    pub request_id: RequestId,
    /// This installation's id ([`crate::storage::Store::install_id`]).
    pub install_id: String,
}

impl CreateRefund {
    /// The form body, with Stripe's bracketed keys.
    pub fn form(&self) -> Vec<(&'static str, String)> {
        let mut form = vec![match &self.target {
            PaymentRef::Charge(c) => ("charge", c.to_string()),
            PaymentRef::PaymentIntent(p) => ("payment_intent", p.to_string()),
        }];
        form.push(("amount", self.amount.minor().to_string()));
        if let Some(reason) = self.reason {
            form.push(("reason", reason.to_string()));
        }
        form.push(("metadata[refund_request_id]", self.request_id.to_string()));
        form.push(("metadata[refund_desk_install]", self.install_id.clone()));
        form
    }
}

#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    base: Url,
    /// Sent as the bearer token; never logged.
    key: SecretString,
    /// Paces every call under Stripe's rate limit; shared by all clones.
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl std::fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeClient").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

impl StripeClient {
    /// A client making at most `per_second` calls a second.
    pub fn new(base: Url, key: SecretString, timeout: Duration, per_second: u32) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("refund-desk/", env!("CARGO_PKG_VERSION")))
            .build()?;
        // Stripe counts calls per second. A burst as large as the rate would let through up to
        // twice the rate within one second; calls spaced evenly keep any second at the rate plus
        // one, and what the defaults (20 and 80) leave under Stripe's 25 and 100 absorbs calls
        // that the network or a busy machine bunches together on their way.
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(NonZeroU32::MIN);
        Ok(StripeClient { http, base, key, limiter: Arc::new(RateLimiter::direct(quota)) })
    }

    fn url(&self, path: &str) -> Result<Url, StripeError> {
        self.base.join(path).map_err(|e| StripeError::Unavailable(format!("bad Stripe URL: {e}")))
    }

    async fn send<T: serde::de::DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T, StripeError> {
        self.limiter.until_ready().await;
        let response = request
            .bearer_auth(self.key.expose_secret())
            .header("Stripe-Version", API_VERSION)
            .send()
            .await
            .map_err(|e| StripeError::Unavailable(describe(&e)))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let should_retry =
            response.headers().get("stripe-should-retry").and_then(|v| v.to_str().ok()).map(|v| v == "true");
        let body = response.bytes().await.map_err(|e| StripeError::Unavailable(describe(&e)))?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| StripeError::Unavailable(format!("unreadable answer from Stripe: {e}")));
        }
        let error = serde_json::from_slice::<ApiErrorEnvelope>(&body).unwrap_or_default().error;
        let message = error.message.clone().unwrap_or_else(|| format!("HTTP {status}"));
        Err(match status {
            StatusCode::NOT_FOUND => StripeError::NotFound(message),
            StatusCode::TOO_MANY_REQUESTS => StripeError::RateLimited(retry_after),
            StatusCode::CONFLICT => StripeError::Unavailable(format!("conflict: {message}")),
            // A wrong or revoked key is an operator's fix, not a reason to end requests.
            StatusCode::UNAUTHORIZED => StripeError::Unavailable(format!("Stripe rejected the API key: {message}")),
            StatusCode::FORBIDDEN => StripeError::Forbidden { permission: permission_named(&message), message },
            s if s.is_server_error() => StripeError::Unavailable(format!("HTTP {s}: {message}")),
            _ if error.kind == "idempotency_error" => StripeError::Idempotency(message),
            _ if should_retry == Some(true) => StripeError::Unavailable(message),
            s => StripeError::Refused { status: s.as_u16(), code: error.code, message },
        })
    }

    #[tracing::instrument(skip(self), fields(stripe_charge = %id))]
    pub async fn get_charge(&self, id: &str) -> Result<Charge, StripeError> {
        // With its refunds, so what was refunded before (and by which request) is known.
        let mut url = self.url(&format!("/v1/charges/{id}"))?;
        url.query_pairs_mut().append_pair("expand[]", "refunds");
        self.send(self.http.get(url)).await
    }

    #[tracing::instrument(skip(self))]
    pub async fn get_payment_intent(&self, id: &str) -> Result<PaymentIntent, StripeError> {
        // Its latest charge, with that charge's refunds, in the same read: one call, not two.
        let mut url = self.url(&format!("/v1/payment_intents/{id}"))?;
        url.query_pairs_mut().append_pair("expand[]", "latest_charge.refunds");
        self.send(self.http.get(url)).await
    }

    #[tracing::instrument(skip(self))]
    pub async fn get_customer(&self, id: &str) -> Result<Customer, StripeError> {
        let url = self.url(&format!("/v1/customers/{id}"))?;
        self.send(self.http.get(url)).await
    }

    /// The card networks' early fraud warnings on a charge.
    #[tracing::instrument(skip(self), fields(stripe_charge = %charge))]
    pub async fn early_fraud_warnings(&self, charge: &str) -> Result<Vec<EarlyFraudWarning>, StripeError> {
        let mut url = self.url("/v1/radar/early_fraud_warnings")?;
        url.query_pairs_mut().append_pair("charge", charge);
        let list: List<EarlyFraudWarning> = self.send(self.http.get(url)).await?;
        Ok(list.data)
    }

    /// The disputes on a charge.
    #[tracing::instrument(skip(self), fields(stripe_charge = %charge))]
    pub async fn disputes(&self, charge: &str) -> Result<Vec<Dispute>, StripeError> {
        let mut url = self.url("/v1/disputes")?;
        url.query_pairs_mut().append_pair("charge", charge);
        let list: List<Dispute> = self.send(self.http.get(url)).await?;
        Ok(list.data)
    }

    /// The refunds on a charge, newest first (up to 100).
    #[tracing::instrument(skip(self), fields(stripe_charge = %charge))]
    pub async fn list_refunds(&self, charge: &str) -> Result<Vec<Refund>, StripeError> {
        let mut url = self.url("/v1/refunds")?;
        url.query_pairs_mut().append_pair("charge", charge).append_pair("limit", "100");
        let list: List<Refund> = self.send(self.http.get(url)).await?;
        Ok(list.data)
    }

    /// Events of the given types, as Stripe lists them: newest first, 100 at most. With
    /// `ending_before`, the page of events just newer than that one (still newest first);
    /// `has_more` then says there are newer ones still. Kept raw: one Stripe cannot be read
    /// must not hide the others.
    #[tracing::instrument(skip(self, types))]
    pub async fn list_events(
        &self,
        types: &[&str],
        page: EventPage<'_>,
    ) -> Result<List<serde_json::Value>, StripeError> {
        let mut url = self.url("/v1/events")?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("limit", "100");
            for kind in types {
                query.append_pair("types[]", kind);
            }
            match page {
                EventPage::NewerThan(id) => {
                    query.append_pair("ending_before", id);
                }
                EventPage::CreatedSince(at, after) => {
                    query.append_pair("created[gte]", &at.to_string());
                    if let Some(id) = after {
                        query.append_pair("starting_after", id);
                    }
                }
            }
        }
        self.send(self.http.get(url)).await
    }

    #[tracing::instrument(skip(self))]
    pub async fn get_refund(&self, id: &str) -> Result<Refund, StripeError> {
        let url = self.url(&format!("/v1/refunds/{id}"))?;
        self.send(self.http.get(url)).await
    }

    /// Tries, for each [`Permission`] the desk uses, a call that changes nothing: a read (or a
    /// refund) of an object that does not exist. Stripe answers 403 when the key lacks the
    /// permission, and 404 (or 400) when it would have let the call through.
    pub async fn probe_permissions(&self) -> Vec<(Permission, Result<(), StripeError>)> {
        let mut results = vec![];
        for permission in Permission::ALL {
            let missing = "refund_desk_check";
            let request = match permission {
                Permission::ReadCharges => self.url(&format!("/v1/charges/ch_{missing}")).map(|u| self.http.get(u)),
                Permission::ReadPaymentIntents => {
                    self.url(&format!("/v1/payment_intents/pi_{missing}")).map(|u| self.http.get(u))
                }
                Permission::WriteRefunds => {
                    self.url("/v1/refunds").map(|u| self.http.post(u).form(&[("charge", format!("ch_{missing}"))]))
                }
                Permission::ReadCustomers => {
                    self.url(&format!("/v1/customers/cus_{missing}")).map(|u| self.http.get(u))
                }
                Permission::ReadDisputes => {
                    self.url(&format!("/v1/disputes?charge=ch_{missing}")).map(|u| self.http.get(u))
                }
                Permission::ReadEarlyFraudWarnings => {
                    self.url(&format!("/v1/radar/early_fraud_warnings?charge=ch_{missing}")).map(|u| self.http.get(u))
                }
                Permission::ReadEvents => self.url("/v1/events?limit=1").map(|u| self.http.get(u)),
            };
            let result = match request {
                Ok(request) => match self.send::<serde_json::Value>(request).await {
                    Ok(_) | Err(StripeError::NotFound(_)) | Err(StripeError::Refused { .. }) => Ok(()),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            results.push((permission, result));
        }
        results
    }

    /// Creates a refund. `idempotency_key` must be the same for every try of one request.
    #[tracing::instrument(skip(self, refund), fields(request_id = %refund.request_id, stripe_charge = %refund.target))]
    pub async fn create_refund(&self, refund: &CreateRefund, idempotency_key: &str) -> Result<Refund, StripeError> {
        let url = self.url("/v1/refunds")?;
        let request = self.http.post(url).header("Idempotency-Key", idempotency_key).form(&refund.form());
        self.send(request).await
    }
}

/// The permission Stripe names in a 403 ("Having the 'rak_charge_read' permission would allow
/// this request to continue.").
fn permission_named(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("Having the '")?;
    let (permission, _) = rest.split_once('\'')?;
    permission.starts_with("rak_").then(|| permission.to_string())
}

/// A transport error in words, without the URL's query (which never holds secrets here, but
/// keep logs short).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        format!("connection failed: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_403_names_the_permission_stripe_says_is_missing() {
        let message = "The provided key 'rk_test_****abcd' does not have the required permissions for this endpoint on account 'acct_1'. Having the 'rak_charge_read' permission would allow this request to continue.";
        assert_eq!(permission_named(message).as_deref(), Some("rak_charge_read"));
        assert_eq!(
            permission_named("This is a restricted API key, but the required permissions are not available"),
            None
        );
    }

    #[test]
    fn calls_are_spaced_evenly_so_no_second_exceeds_the_rate_by_more_than_one() {
        crate::app::install_crypto_provider();
        let client = StripeClient::new(
            Url::parse("http://127.0.0.1:9").unwrap(),
            SecretString::from("sk_test_x".to_string()),
            Duration::from_secs(1),
            20,
        )
        .unwrap();
        assert!(client.limiter.check().is_ok());
        assert!(client.limiter.check().is_err(), "the second call at once waits its 50 ms");
    }
}
