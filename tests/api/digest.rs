//! The daily digest: the day's figures in the finance channel, once.

use crate::helpers::*;
use refund_desk::desk::digest::{Sent, post_digest_if_due};
use refund_desk::domain::{RefundReason, RequestStatus};
use refund_desk_standins::{ChargeSpec, wait_for};
use std::time::Duration;

/// A fixed-offset zone in which it is now between 10:00 and 11:00, so a digest at 12:00 is
/// not due when the desk starts, whatever the hour the suite runs at.
fn zone_where_it_is_ten() -> (String, i64) {
    use chrono::Timelike;
    let hour = i64::from(chrono::Utc::now().hour());
    let mut offset = (10 - hour).rem_euclid(24);
    if offset > 14 {
        offset -= 24;
    }
    // The Etc zones' signs are POSIX's: Etc/GMT-3 is three hours ahead of UTC.
    let name = match offset {
        0 => "UTC".to_string(),
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    };
    (name, offset)
}

#[tokio::test]
async fn the_digest_gives_the_days_figures_once_with_links_to_what_waits() {
    let (zone, offset) = zone_where_it_is_ten();
    let mut app =
        TestApp::spawn_with_policy(&format!("[policy]\ndigest_at = \"12:00\"\ntimezone = \"{zone}\"\n")).await;
    let day = (chrono::Utc::now() + chrono::Duration::hours(offset)).date_naive();

    // One refunded, one denied, one still waiting.
    let refunded = app.request_refund(&format!("{} 25.00 duplicate", app.add_charge(ChargeSpec::default()))).await;
    app.wait_for_status(refunded, RequestStatus::AwaitingApproval).await;
    app.approve_and_settle(refunded).await;
    let denied = app.request_refund(&format!("{} 10.00 goodwill", app.add_charge(ChargeSpec::default()))).await;
    app.wait_for_status(denied, RequestStatus::AwaitingApproval).await;
    app.card(denied).await;
    assert_eq!(app.driver.submit_deny(APPROVER_2, &denied.to_string(), "not our fault").await.0, 200);
    app.wait_for_status(denied, RequestStatus::Denied).await;
    let (waiting, _card) = app.waiting_request().await;
    app.wait_until_idle().await;
    let is_digest = |t: &str| t.starts_with("Daily digest for");
    assert!(!app.slack.messages_in(FINANCE).iter().any(|m| is_digest(&m.text)), "not due before 12:00");

    // The next day, past 12:00 there.
    let ctx = app.app.as_ref().unwrap().context();
    ctx.advance_clock(Duration::from_secs(26 * 3600));
    let digest = wait_for(DEADLINE, || app.slack.messages_in(FINANCE).into_iter().find(|m| is_digest(&m.text)))
        .await
        .expect("the digest is posted");
    let text = digest.blocks.to_string();
    assert!(digest.text.contains(&day.format("%-d %B %Y").to_string()), "{}", digest.text);
    assert!(text.contains("3 requests made"), "{text}");
    assert!(
        text.contains("Refunded 1") && text.contains("Denied 1") && text.contains("Waiting for approval 1"),
        "{text}"
    );
    assert!(text.contains("*Refunded:* $25.00"), "{text}");
    assert!(text.contains(&format!("{} 2", RefundReason::Duplicate.label())), "{text}");
    assert!(text.contains(&format!("{} 1", RefundReason::Goodwill.label())), "{text}");
    assert!(text.contains(&format!("<@{APPROVER}> approved 1, denied 0")), "{text}");
    assert!(text.contains(&format!("<@{APPROVER_2}> approved 0, denied 1")), "{text}");
    assert!(text.contains("median") && text.contains("longest"), "{text}");
    let card = app.request(waiting).await.card.unwrap();
    let link = format!("https://example.slack.com/archives/{}/p{}|{waiting}", card.channel, card.ts.replace('.', ""));
    assert!(text.contains(&link), "a link to the waiting card: {text}");

    // Asked again (another replica, a restart at that minute): it was sent.
    let again = post_digest_if_due(&ctx, Duration::from_secs(60)).await.unwrap();
    assert_eq!(again, Sent::Already(day));
    drop(ctx); // it holds the store
    app.restart().await;
    let ctx = app.app.as_ref().unwrap().context();
    ctx.advance_clock(Duration::from_secs(26 * 3600));
    assert_eq!(post_digest_if_due(&ctx, Duration::from_secs(60)).await.unwrap(), Sent::Already(day));
    assert_eq!(app.slack.messages_in(FINANCE).iter().filter(|m| is_digest(&m.text)).count(), 1);
}
