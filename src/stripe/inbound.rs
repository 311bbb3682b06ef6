//! `POST /stripe/webhook`: verify, parse, record durably (through [`crate::desk::stripe_news`]),
//! then answer 2xx (5xx if it could not be recorded, so Stripe sends it again).

use super::webhook::{TOLERANCE_SECS, verify_signature};
use crate::context::AppContext;
use crate::desk::stripe_news::apply_event;
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
    let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    match apply_event(&ctx, value, now).await {
        Ok(()) => StatusCode::OK.into_response(),
        // Not recorded: Stripe sends it again.
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
