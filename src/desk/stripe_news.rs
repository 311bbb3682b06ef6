//! Stripe tells the desk about a refund: an event it sent (the webhook) or listed (its events
//! API, read by `stripe::events`). One path for both, recorded once by event id; what the news
//! does to a request is the domain's rule (`domain::refund_news`), applied by the store in one
//! transaction.

use crate::context::AppContext;
use crate::stripe::types::Event;
use crate::stripe::webhook::{REFUND_EVENTS, refund_updates};

/// Applies one event Stripe sent (a webhook) or listed (`GET /v1/events`): the one path both
/// take, recorded once by event id. `Ok` when it was applied, was seen before, or is not one
/// the desk acts on; `Err` only when it could not be recorded, so it must come again.
pub async fn apply_event(
    ctx: &AppContext,
    value: serde_json::Value,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), crate::storage::StoreError> {
    // Signed by Stripe but unreadable (a shape this version does not know): a 4xx or 5xx would
    // have Stripe send it again for three days, to no avail. Say so, count it, and go on; a
    // refund it was about is still read back from Stripe by the pending-refund check.
    let unreadable = |what: String| {
        tracing::warn!(error = %what, "a Stripe event could not be read; acknowledged and dropped");
        metrics::counter!("refund_desk_stripe_events_total", "outcome" => "unreadable").increment(1);
        Ok(())
    };
    let event: Event = match serde_json::from_value(value) {
        Ok(e) => e,
        Err(e) => return unreadable(format!("unreadable event: {e}")),
    };
    // Only the events the desk acts on are recorded (and so synced before the answer).
    if !REFUND_EVENTS.contains(&event.kind.as_str()) {
        tracing::debug!(event_id = %event.id, kind = %event.kind, "a Stripe event the desk does not act on");
        metrics::counter!("refund_desk_stripe_events_total", "outcome" => "ignored").increment(1);
        return Ok(());
    }
    let updates = match refund_updates(&event) {
        Ok(u) => u,
        Err(e) => {
            // Recorded by its id, with nothing to apply: seen once, not warned about again by
            // every read of Stripe's events.
            if ctx.store.apply_stripe_event(&event.id, &[], now).await? == crate::storage::EventOutcome::Duplicate {
                return Ok(());
            }
            return unreadable(format!("unreadable {} {}: {e}", event.kind, event.id));
        }
    };
    match ctx.store.apply_stripe_event(&event.id, &updates, now).await {
        Ok(outcome) => {
            let label = if outcome == crate::storage::EventOutcome::Duplicate { "duplicate" } else { "recorded" };
            metrics::counter!("refund_desk_stripe_events_total", "outcome" => label).increment(1);
            tracing::info!(event_id = %event.id, kind = %event.kind, ?outcome, "stripe event recorded");
            Ok(())
        }
        Err(e) => {
            tracing::error!(event_id = %event.id, error = %e, "could not record a Stripe event");
            Err(e)
        }
    }
}
