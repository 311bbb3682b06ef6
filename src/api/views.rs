//! The API's JSON documents: what a client reads back about a request.

use crate::domain::{Money, RefundRequest};
use crate::storage::AuditEntry;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// The answer to a request made: its id, its status and where to read it.
#[derive(Debug, Serialize)]
pub struct Accepted {
    pub id: String,
    pub status: &'static str,
    /// Where the request is read (`GET`), relative to this service's base URL.
    pub url: String,
}

pub fn accepted(request: &RefundRequest) -> Accepted {
    Accepted { id: request.id.to_string(), status: request.status.api_name(), url: url_of(request) }
}

fn url_of(request: &RefundRequest) -> String {
    format!("/api/v1/refund-requests/{}", request.id)
}

/// An amount as integer minor units with its currency, and as people write it.
#[derive(Debug, Serialize)]
pub struct Amount {
    pub minor: u64,
    pub currency: String,
    pub text: String,
}

impl From<Money> for Amount {
    fn from(m: Money) -> Amount {
        Amount { minor: m.minor(), currency: m.currency().code().to_string(), text: m.to_string() }
    }
}

#[derive(Debug, Serialize)]
pub struct Refund {
    pub id: String,
    /// Stripe's own status word, as last reported.
    pub stripe_status: String,
}

/// One step of the request's life, from its audit trail.
#[derive(Debug, Serialize)]
pub struct Step {
    pub at: DateTime<Utc>,
    pub from: &'static str,
    pub to: &'static str,
    /// A Slack user id, or `stripe`, `policy`, `refund-desk`.
    pub by: String,
    pub detail: Option<String>,
}

/// `GET /api/v1/refund-requests/{id}`.
#[derive(Debug, Serialize)]
pub struct RequestDocument {
    pub id: String,
    pub status: &'static str,
    pub payment: String,
    /// What was asked: an amount as typed, or `full`.
    pub asked: String,
    /// The amount to refund, once Stripe's charge is known.
    pub amount: Option<Amount>,
    pub reason: &'static str,
    pub requested_by: String,
    /// The API client that made it; `null` for a request made in Slack.
    pub client: Option<String>,
    pub created_at: DateTime<Utc>,
    pub refund: Option<Refund>,
    /// Why it was refused or failed, in words.
    pub problem: Option<String>,
    pub url: String,
    pub timeline: Vec<Step>,
}

pub fn request_document(request: &RefundRequest, trail: &[AuditEntry]) -> RequestDocument {
    RequestDocument {
        id: request.id.to_string(),
        status: request.status.api_name(),
        payment: request.target.to_string(),
        asked: match &request.asked {
            crate::domain::AmountAsked::Full => "full".into(),
            crate::domain::AmountAsked::Exact(a) => a.text().to_string(),
        },
        amount: request.amount.map(Amount::from),
        reason: request.reason.as_str(),
        requested_by: request.requester.to_string(),
        client: request.api.as_ref().map(|a| a.client.clone()),
        created_at: request.created_at,
        refund: request
            .refund
            .as_ref()
            .map(|r| Refund { id: r.id.to_string(), stripe_status: r.stripe_status.clone() }),
        problem: request.problem.clone(),
        url: url_of(request),
        timeline: trail
            .iter()
            .map(|e| Step {
                at: e.at,
                from: e.from.api_name(),
                to: e.to.api_name(),
                by: e.actor.to_string(),
                detail: e.detail.clone(),
            })
            .collect(),
    }
}
