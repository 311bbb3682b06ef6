//! Stripe's events read from `GET /v1/events`: the desk's only source of Stripe's news when it
//! has no public address (no webhook secret), and otherwise a sweep that recovers what a webhook
//! missed (an outage longer than Stripe's retries, an event Stripe failed to send).
//!
//! Stripe lists events newest first and keeps them 30 days. The reader keeps a durable cursor:
//! the newest event it has applied. Each read asks for the page just newer than the cursor
//! (`ending_before`), applies that page oldest first through the same path as a webhook (each
//! event recorded once by id), then moves the cursor to the page's newest; while Stripe says
//! there are newer ones still, it reads on. With no cursor (the first read, or a cursor event
//! Stripe no longer keeps), it reads back to when the oldest open request was made.

use super::webhook::REFUND_EVENTS;
use super::{EventPage, StripeError};
use crate::context::AppContext;
use std::sync::Arc;
use tokio::sync::watch;

/// Why a read stopped; the next read starts again from the cursor.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Stripe(#[from] StripeError),
    #[error(transparent)]
    Store(#[from] crate::storage::StoreError),
}

/// How far back every read looks again, for events Stripe lists after newer ones.
const LOOK_BACK_SECS: i64 = 5 * 60;
/// How long Stripe keeps events.
const KEPT_SECS: i64 = 30 * 24 * 3600;

/// Reads and applies every event newer than the cursor, then the last minutes' events again
/// (any not applied yet: Stripe may list an event after newer ones); returns how many events
/// were listed after the cursor.
pub async fn read_new_events(ctx: &AppContext) -> Result<usize, ReadError> {
    let started = ctx.now().timestamp();
    let listed = read_after_cursor(ctx).await?;
    // From five minutes before the last read that went through (reads may have failed for a
    // while), never further back than Stripe keeps events.
    let last = ctx.store.events_looked_back_at().await?.unwrap_or(started);
    let since = (last.min(started) - LOOK_BACK_SECS).max(started - KEPT_SECS);
    let late = apply_unseen(ctx, events_since(ctx, since).await?).await?;
    if late > 0 {
        tracing::info!(late, "Stripe events listed after newer ones were applied");
    }
    ctx.store.set_events_looked_back_at(started).await?;
    Ok(listed)
}

/// Every event of the kinds the desk acts on created at or after `since` (Unix seconds),
/// newest first, through all of Stripe's pages.
async fn events_since(ctx: &AppContext, since: i64) -> Result<Vec<serde_json::Value>, ReadError> {
    let mut events: Vec<serde_json::Value> = vec![];
    loop {
        let after = events.last().and_then(|e| e["id"].as_str());
        let page = ctx.stripe.list_events(&REFUND_EVENTS, EventPage::CreatedSince(since, after)).await?;
        events.extend(page.data);
        if !page.has_more {
            return Ok(events);
        }
    }
}

/// Applies, oldest first, the events of `newest_first` not recorded yet; returns how many.
async fn apply_unseen(ctx: &AppContext, newest_first: Vec<serde_json::Value>) -> Result<usize, ReadError> {
    let mut applied = 0;
    for event in newest_first.into_iter().rev() {
        let seen = match event["id"].as_str() {
            Some(id) => ctx.store.stripe_event_seen(id).await?,
            None => true,
        };
        if !seen {
            crate::desk::stripe_news::apply_event(ctx, event, ctx.now()).await?;
            applied += 1;
        }
    }
    Ok(applied)
}

async fn read_after_cursor(ctx: &AppContext) -> Result<usize, ReadError> {
    let Some(mut cursor) = ctx.store.events_cursor().await? else { return read_without_cursor(ctx).await };
    let mut listed = 0;
    loop {
        let page = match ctx.stripe.list_events(&REFUND_EVENTS, EventPage::NewerThan(&cursor)).await {
            Ok(page) => page,
            // Stripe no longer has the event (404, or 400 `resource_missing`).
            Err(e) if is_missing(&e) => {
                // Older than Stripe keeps events (30 days).
                tracing::warn!(%cursor, "Stripe no longer has the last event read; reading back from the oldest open request");
                ctx.store.set_events_cursor(None).await?;
                return Ok(listed + read_without_cursor(ctx).await?);
            }
            Err(e) => return Err(e.into()),
        };
        let Some(newest) = page.data.first().and_then(|e| e["id"].as_str()).map(str::to_string) else {
            return Ok(listed);
        };
        listed += page.data.len();
        for event in page.data.into_iter().rev() {
            crate::desk::stripe_news::apply_event(ctx, event, ctx.now()).await?;
        }
        ctx.store.set_events_cursor(Some(&newest)).await?;
        if !page.has_more {
            return Ok(listed);
        }
        cursor = newest;
    }
}

fn is_missing(e: &StripeError) -> bool {
    match e {
        StripeError::NotFound(_) => true,
        StripeError::Refused { code, .. } => code.as_deref() == Some("resource_missing"),
        _ => false,
    }
}

/// With no cursor (the first read, or after Stripe dropped the cursor's event): every event
/// back to when the oldest open request was made (an hour back when none is open, never more
/// than Stripe's 30 days), applied oldest first; the newest becomes the cursor.
async fn read_without_cursor(ctx: &AppContext) -> Result<usize, ReadError> {
    let now = ctx.now();
    let oldest_open = ctx.store.oldest_open_since().await?.unwrap_or(now - chrono::Duration::hours(1));
    let since = (oldest_open.timestamp() - LOOK_BACK_SECS).max(now.timestamp() - KEPT_SECS);
    let events = events_since(ctx, since).await?;
    let listed = events.len();
    let newest = events.first().and_then(|e| e["id"].as_str()).map(str::to_string);
    apply_unseen(ctx, events).await?;
    if let Some(newest) = newest {
        ctx.store.set_events_cursor(Some(&newest)).await?;
    }
    Ok(listed)
}

/// Reads Stripe's events every `STRIPE_EVENTS_POLL_SECS` (no webhook) or
/// `STRIPE_EVENTS_SWEEP_SECS` (with one) until shutdown.
pub async fn read_events_until_stopped(ctx: Arc<AppContext>, mut stop: watch::Receiver<bool>) {
    // With a webhook, events arrive by it; the first sweep comes one interval after start.
    if !ctx.settings.stripe.webhook_secrets.is_empty() {
        tokio::select! {
            _ = tokio::time::sleep(ctx.settings.stripe.events_every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
    let span = crate::context::lease_span(ctx.settings.stripe.events_every);
    loop {
        // One replica reads at a time; the others take over if it dies.
        if ctx.holds_lease(crate::context::EVENTS_LEASE, span).await {
            tokio::select! {
                result = read_new_events(&ctx) => match result {
                    Ok(n) => tracing::debug!(listed = n, "Stripe events read"),
                    Err(e) => {
                        metrics::counter!("refund_desk_stripe_event_reads_failed_total").increment(1);
                        tracing::warn!(error = %e, "could not read Stripe's events; trying again at the next read");
                    }
                },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.settings.stripe.events_every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
