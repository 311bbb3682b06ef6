//! The daily digest: once a day, at `policy.digest_at` in `policy.timezone`, a message in the
//! finance channel about the day before. One replica looks (it holds the digest lease); the day
//! is claimed in the store before posting, so two posters never both post (a replica that lost
//! its lease while posting, a restart at that minute), and recorded the moment Slack accepts the
//! message. A claim left by a poster that died unposted is taken over after ten minutes.

use crate::context::{AppContext, DIGEST_LEASE};
use crate::domain::RequestStatus;
use crate::domain::digest::digest;
use crate::domain::policy::start_of_day;
use crate::slack::views;
use chrono::NaiveDate;

fn record_key(day: NaiveDate) -> String {
    format!("digest/{day}")
}

/// The day whose digest is due now: yesterday, once today's `digest_at` has passed. A digest
/// missed because the desk was down is sent late the same day, never days later.
pub fn due_day(ctx: &AppContext) -> Option<NaiveDate> {
    let policy = &ctx.settings.policy;
    let at = policy.digest_at?;
    let local = ctx.now().with_timezone(&policy.timezone);
    (local.time() >= at).then(|| local.date_naive().pred_opt()).flatten()
}

/// What a look at the digest came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Posted now, for this day.
    Posted(NaiveDate),
    /// This day's digest was posted before.
    Already(NaiveDate),
    /// Another poster is posting this day's digest now.
    Claimed(NaiveDate),
    NotDue,
    /// Another replica holds the digest lease.
    NotOurs,
}

/// Posts the digest for `day` unless it was posted before.
pub async fn post_digest(ctx: &AppContext, day: NaiveDate) -> anyhow::Result<Sent> {
    if ctx.store.shared_value(&record_key(day)).await?.is_some() {
        return Ok(Sent::Already(day));
    }
    let key = record_key(day);
    let now = ctx.now();
    let claim = rand::random::<u64>() >> 1;
    if !ctx.store.claim_alert(&key, claim, now - chrono::Duration::minutes(10), now).await? {
        return Ok(Sent::Claimed(day));
    }
    match post(ctx, day).await {
        Ok(ts) => {
            ctx.store.set_shared_value(&key, &ts).await?;
            Ok(Sent::Posted(day))
        }
        Err(e) => {
            // Not posted: the next look may try at once.
            if let Err(release) = ctx.store.release_alert(&key, claim).await {
                tracing::warn!(error = %release, "could not release the digest's claim; it lapses in ten minutes");
            }
            Err(e)
        }
    }
}

/// Builds and posts the digest for `day`; returns the message's `ts`.
async fn post(ctx: &AppContext, day: NaiveDate) -> anyhow::Result<String> {
    let tz = ctx.settings.policy.timezone;
    let (from, to) = (start_of_day(tz, day), start_of_day(tz, day.succ_opt().unwrap_or(day)));
    let figures = digest(day, from, to, &ctx.store.all_requests().await?);
    let waiting = ctx.store.requests_with_status(RequestStatus::AwaitingApproval, views::DIGEST_WAITING_READ).await?;
    let mut links = vec![];
    for r in waiting.iter().take(views::DIGEST_WAITING_SHOWN) {
        let link = match &r.card {
            Some(card) => ctx.slack.permalink(&card.channel.as_str().into(), &card.ts.as_str().into()).await.ok(),
            None => None,
        };
        links.push((r, link));
    }
    let message = views::digest_message(&figures, tz, &links, waiting.len(), ctx.now());
    let channel = ctx.settings.slack.finance_channel.as_str().into();
    let ts = ctx.slack.post_message(&channel, message, None).await?;
    tracing::info!(%day, requests = figures.requests, "daily digest posted");
    Ok(ts.0)
}

/// Posts the digest if one is due, this replica holds the lease, and it was not posted yet.
pub async fn post_digest_if_due(ctx: &AppContext, lease: std::time::Duration) -> anyhow::Result<Sent> {
    let Some(day) = due_day(ctx) else { return Ok(Sent::NotDue) };
    if !ctx.holds_lease(DIGEST_LEASE, lease).await {
        return Ok(Sent::NotOurs);
    }
    post_digest(ctx, day).await
}
