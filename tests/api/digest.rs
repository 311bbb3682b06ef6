//! The daily digest: the day's figures in the finance channel, once.

use crate::helpers::*;
use refund_desk::desk::digest::{Sent, post_digest_if_due};
use refund_desk::domain::{RefundReason, RequestId, RequestStatus};
use refund_desk_standins::ChargeSpec;
use std::time::Duration;

/// A fixed-offset zone in which it is now between 10:00 and 11:00, so a digest at 23:00 is
/// not due while the test's day goes on, whatever the hour the suite runs at.
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

async fn waiting_on(app: &TestApp, spec: ChargeSpec, text: &str) -> RequestId {
    let id = app.request_refund(&format!("{} {text}", app.add_charge(spec))).await;
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    app.card(id).await;
    id
}

#[tokio::test]
async fn the_digest_gives_the_days_figures_once_with_links_to_what_waits_oldest_first() {
    let (zone, offset) = zone_where_it_is_ten();
    let mut app =
        TestApp::spawn_with_policy(&format!("[policy]\ndigest_at = \"23:00\"\ntimezone = \"{zone}\"\n")).await;
    let day = (chrono::Utc::now() + chrono::Duration::hours(offset)).date_naive();
    let ctx = app.app.as_ref().unwrap().context();
    let hours = |h: u64| Duration::from_secs(h * 3600);

    // Made at once: refunded after 4h (USD) and 2h (EUR), denied after 1h, and two left waiting.
    let oldest = waiting_on(&app, ChargeSpec::default(), "5.00 other").await;
    let usd = waiting_on(&app, ChargeSpec::default(), "25.00 duplicate").await;
    let eur = waiting_on(&app, ChargeSpec { currency: "eur".into(), ..ChargeSpec::default() }, "20.00 duplicate").await;
    let denied = waiting_on(&app, ChargeSpec::default(), "10.00 goodwill").await;
    ctx.advance_clock(hours(1));
    assert_eq!(app.driver.submit_deny(APPROVER_2, &denied.to_string(), "not our fault").await.0, 200);
    app.wait_for_status(denied, RequestStatus::Denied).await;
    ctx.advance_clock(hours(1));
    app.approve_and_settle(eur).await;
    ctx.advance_clock(hours(2));
    app.approve_and_settle(usd).await;
    let newest = waiting_on(&app, ChargeSpec::default(), "7.00 other").await;
    app.wait_until_idle().await;
    let is_digest = |t: &str| t.starts_with("Daily digest for");
    assert!(!app.slack.messages_in(FINANCE).iter().any(|m| is_digest(&m.text)), "not due before 23:00");

    // The next day past 23:00 there, three posters at once (the desk's own loop among them).
    ctx.advance_clock(hours(33));
    let (a, b) = tokio::join!(
        post_digest_if_due(&ctx, Duration::from_secs(60)),
        post_digest_if_due(&ctx, Duration::from_secs(60))
    );
    assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
    let store = app.store();
    let recorded = wait_for_async(DEADLINE, || async { store.shared_value(&format!("digest/{day}")).await.unwrap() });
    assert!(recorded.await.is_some(), "the day's digest is recorded");
    let digests: Vec<_> = app.slack.messages_in(FINANCE).into_iter().filter(|m| is_digest(&m.text)).collect();
    assert_eq!(digests.len(), 1, "posted once");
    let digest = &digests[0];
    let text = digest.blocks.to_string();
    assert!(digest.text.contains(&day.format("%-d %B %Y").to_string()), "{}", digest.text);
    assert!(text.contains("5 requests made"), "{text}");
    assert!(
        text.contains("Refunded 2") && text.contains("Denied 1") && text.contains("Waiting for approval 2"),
        "{text}"
    );
    assert!(text.contains("*Refunded:* €20.00 · $25.00"), "per currency: {text}");
    assert!(text.contains(&format!("{} 2", RefundReason::Duplicate.label())), "{text}");
    assert!(text.contains(&format!("{} 2", RefundReason::Other.label())), "{text}");
    assert!(text.contains(&format!("{} 1", RefundReason::Goodwill.label())), "{text}");
    assert!(text.contains(&format!("<@{APPROVER}> approved 2, denied 0")), "{text}");
    assert!(text.contains(&format!("<@{APPROVER_2}> approved 0, denied 1")), "{text}");
    assert!(text.contains("median 2h 0m, longest 4h 0m"), "1h, 2h and 4h: {text}");
    let mut links = vec![];
    for id in [oldest, newest] {
        let card = app.request(id).await.card.unwrap();
        links.push(format!("https://example.slack.com/archives/{}/p{}|{id}", card.channel, card.ts.replace('.', "")));
    }
    let (first, second) = (text.find(&links[0]), text.find(&links[1]));
    assert!(first.is_some() && second.is_some() && first < second, "links, oldest first: {text}");

    // A restart at that minute: it was sent.
    drop((ctx, store)); // they hold the store
    app.restart().await;
    let ctx = app.app.as_ref().unwrap().context();
    ctx.advance_clock(hours(37));
    assert_eq!(post_digest_if_due(&ctx, Duration::from_secs(60)).await.unwrap(), Sent::Already(day));
    assert_eq!(app.slack.messages_in(FINANCE).iter().filter(|m| is_digest(&m.text)).count(), 1);
}
