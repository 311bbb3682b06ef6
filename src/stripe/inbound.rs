//! `POST /stripe/webhook`: verify, parse, record durably, then answer 2xx (5xx if it could not
//! be recorded, so Stripe sends it again).

use super::types::Event;
use super::webhook::{REFUND_EVENTS, TOLERANCE_SECS, refund_updates, verify_signature};
use crate::app::AppContext;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::sync::Arc;

pub async fn http_stripe_webhook(State(ctx): State<Arc<AppContext>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    let now = ctx.now();
    if let Err(e) = verify_signature(
        header,
        &body,
        &ctx.settings.stripe.webhook_secrets,
        chrono::Utc::now().timestamp(),
        TOLERANCE_SECS,
    ) {
        tracing::warn!(reason = %e, "refused a Stripe webhook");
        metrics::counter!("refund_desk_stripe_events_total", "outcome" => "bad_signature").increment(1);
        return (StatusCode::BAD_REQUEST, format!("signature: {e}")).into_response();
    }
    // Signed by Stripe but unreadable (a shape this version does not know): a 4xx or 5xx would
    // have Stripe send it again for three days, to no avail. Say so, count it, and answer 2xx;
    // a refund it was about is still read back from Stripe by the pending-refund check.
    let unreadable = |what: String| {
        tracing::warn!(error = %what, "a signed Stripe event could not be read; acknowledged and dropped");
        metrics::counter!("refund_desk_stripe_events_total", "outcome" => "unreadable").increment(1);
        StatusCode::OK.into_response()
    };
    let event: Event = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return unreadable(format!("unreadable event: {e}")),
    };
    // Only the events the desk acts on are recorded (and so synced before the answer).
    if !REFUND_EVENTS.contains(&event.kind.as_str()) {
        tracing::debug!(event_id = %event.id, kind = %event.kind, "a Stripe event the desk does not act on");
        metrics::counter!("refund_desk_stripe_events_total", "outcome" => "ignored").increment(1);
        return StatusCode::OK.into_response();
    }
    let updates = match refund_updates(&event) {
        Ok(u) => u,
        Err(e) => return unreadable(format!("unreadable {} {}: {e}", event.kind, event.id)),
    };
    match ctx.store.apply_stripe_event(&event.id, &updates, now).await {
        Ok(outcome) => {
            let label = if outcome == crate::storage::EventOutcome::Duplicate { "duplicate" } else { "recorded" };
            metrics::counter!("refund_desk_stripe_events_total", "outcome" => label).increment(1);
            tracing::info!(event_id = %event.id, kind = %event.kind, ?outcome, "stripe event recorded");
            StatusCode::OK.into_response()
        }
        Err(e) => {
            tracing::error!(event_id = %event.id, error = %e, "could not record a Stripe event");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
