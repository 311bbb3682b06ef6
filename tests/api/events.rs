//! Stripe's events read from `GET /v1/events`: with no webhook at all, and as a sweep that
//! recovers what a webhook missed.

use crate::helpers::*;
use refund_desk::domain::RequestStatus;
use refund_desk_standins::{ChargeSpec, wait_for};
use std::time::Duration;

/// No webhook secret: no webhook route, and Stripe's events read every 200 ms.
fn without_webhook(settings: &mut refund_desk::config::Settings) {
    settings.stripe.webhook_secrets.clear();
    settings.stripe.events_every = Duration::from_millis(200);
}

/// No webhook, and reads only when the test asks (the desk's own read comes hourly).
fn reading_on_demand(settings: &mut refund_desk::config::Settings) {
    settings.stripe.webhook_secrets.clear();
    settings.stripe.events_every = Duration::from_secs(3600);
}

/// A webhook, and a sweep every 300 ms.
fn with_fast_sweep(settings: &mut refund_desk::config::Settings) {
    settings.stripe.events_every = Duration::from_millis(300);
}

#[tokio::test]
async fn without_a_webhook_a_refunds_success_reaches_the_thread_the_requester_and_the_customer_once() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(without_webhook).await;
    let response =
        reqwest::Client::new().post(format!("{}/stripe/webhook", app.driver.base)).body("{}").send().await.unwrap();
    assert_eq!(response.status(), 404, "no webhook endpoint without a secret");
    let (id, card) = app.submitted_request().await;
    let refund = app.request(id).await.refund.unwrap().id;
    // Stripe makes the event; nobody delivers it.
    app.stripe.refund_event(refund.as_str(), "refund.updated", "succeeded", None).unwrap();
    app.wait_for_status(id, RequestStatus::Succeeded).await;
    wait_for(DEADLINE, || Some(()).filter(|_| !app.smtp.messages().is_empty())).await.expect("the customer's email");
    app.wait_until_idle().await;
    assert_eq!(app.smtp.messages().len(), 1);
    assert!(app.thread_texts(&card).iter().any(|t| t.contains("succeeded")));
    assert!(app.direct_messages(REQUESTER).iter().any(|m| m.contains(&id.to_string()) && m.contains("succeeded")));
    assert!(app.stripe.events_sent().is_empty(), "nothing came by webhook");
}

#[tokio::test]
async fn a_webhook_that_never_arrives_is_recovered_by_the_sweep_and_applied_once() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(with_fast_sweep).await;
    let (id, card) = app.submitted_request().await;
    let refund = app.request(id).await.refund.unwrap().id;
    let event = app.stripe.refund_event(refund.as_str(), "refund.updated", "succeeded", None).unwrap();
    app.wait_for_status(id, RequestStatus::Succeeded).await;
    // The webhook arrives after all, late: it is the same event, applied once.
    assert_eq!(app.deliver_stripe_event(&event).await, 200);
    app.wait_until_idle().await;
    assert_eq!(app.smtp.messages().len(), 1);
    assert_eq!(app.thread_texts(&card).iter().filter(|t| t.contains("succeeded")).count(), 1);
}

#[tokio::test]
async fn more_than_100_events_between_two_reads_are_all_applied() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(reading_on_demand).await;
    let ctx = app.app.as_ref().unwrap().context();
    let charge = app.add_charge(ChargeSpec { amount: 100_000, ..Default::default() });
    let made = |n: usize| {
        for _ in 0..n {
            app.stripe.refund_made_outside(&charge, Some(1), &[]);
        }
    };
    // One refund made in the Dashboard, read: the cursor now stands on its event.
    made(1);
    assert_eq!(refund_desk::stripe::events::read_new_events(&ctx).await.unwrap(), 1);
    assert_eq!(app.store().outside_refunds().await.unwrap().len(), 1);
    // 150 more before the next read: two pages.
    made(150);
    let listed = refund_desk::stripe::events::read_new_events(&ctx).await.unwrap();
    assert_eq!(listed, 150);
    assert_eq!(app.store().outside_refunds().await.unwrap().len(), 151, "every refund made outside was seen");
    assert_eq!(refund_desk::stripe::events::read_new_events(&ctx).await.unwrap(), 0, "nothing is read twice");
}

#[tokio::test]
async fn a_cursor_stripe_no_longer_keeps_starts_again_from_the_oldest_open_request() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(reading_on_demand).await;
    let ctx = app.app.as_ref().unwrap().context();
    let (id, _card) = app.submitted_request().await;
    refund_desk::stripe::events::read_new_events(&ctx).await.unwrap();
    assert!(app.store().events_cursor().await.unwrap().is_some());
    // Thirty days pass for Stripe's list: the cursor's event is gone; a new one comes.
    app.stripe.forget_events();
    let refund = app.request(id).await.refund.unwrap().id;
    app.stripe.refund_event(refund.as_str(), "refund.updated", "succeeded", None).unwrap();
    refund_desk::stripe::events::read_new_events(&ctx).await.unwrap();
    app.wait_for_status(id, RequestStatus::Succeeded).await;
}

#[tokio::test]
async fn a_refund_made_in_the_dashboard_on_a_charge_with_an_open_request_is_announced_and_what_remains_read_again() {
    let app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;
    let charge = app.request(id).await.charge.unwrap().charge.to_string();
    // $10.00 of the $25.00 refunded in the Stripe Dashboard; Stripe makes `refund.created`.
    let refund = app.stripe.refund_made_outside(&charge, Some(1000), &[]);
    let created = app.stripe.refund_event(&refund, "refund.created", "succeeded", None).unwrap();
    assert_eq!(app.deliver_stripe_event(&created).await, 200);
    // Announced in the card's thread, and in the audit trail.
    let announced = wait_for(DEADLINE, || {
        app.thread_texts(&card).into_iter().find(|t| t.contains("outside refund-desk") && t.contains("$10.00"))
    })
    .await;
    assert!(announced.is_some_and(|t| t.contains(&refund)), "{:?}", app.thread_texts(&card));
    let audit = app.store().audit_of(id).await.unwrap();
    assert!(audit.iter().any(|e| e.detail.as_deref().is_some_and(|d| d.contains(&refund))), "{audit:?}");
    // Read again: the card says the $25.00 asked is more than the $15.00 left.
    let edited = wait_for(DEADLINE, || {
        app.slack.message(&card.ts).filter(|m| m.blocks.to_string().contains("more than the $15.00 that remains"))
    })
    .await;
    assert!(edited.is_some(), "{:?}", app.slack.message(&card.ts).map(|m| m.blocks.to_string()));
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval);
    // Stripe's later news about that refund is not announced again.
    let updated = app.stripe.refund_event(&refund, "refund.updated", "succeeded", None).unwrap();
    assert_eq!(app.deliver_stripe_event(&updated).await, 200);
    app.wait_until_idle().await;
    assert_eq!(app.thread_texts(&card).iter().filter(|t| t.contains("outside refund-desk")).count(), 1);
}

#[tokio::test]
async fn an_event_stripe_lists_after_newer_ones_is_still_applied() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(reading_on_demand).await;
    let ctx = app.app.as_ref().unwrap().context();
    let (id, _card) = app.submitted_request().await;
    refund_desk::stripe::events::read_new_events(&ctx).await.unwrap();
    // A newer event is read, and the cursor moves past where the next one will be listed.
    app.stripe.refund_made_outside(&app.add_charge(ChargeSpec::default()), None, &[]);
    refund_desk::stripe::events::read_new_events(&ctx).await.unwrap();
    let refund = app.request(id).await.refund.unwrap().id;
    app.stripe.late_refund_event(refund.as_str(), "refund.updated", "succeeded", 1).unwrap();
    refund_desk::stripe::events::read_new_events(&ctx).await.unwrap();
    app.wait_for_status(id, RequestStatus::Succeeded).await;
}

#[tokio::test]
async fn an_event_listed_late_while_reads_were_failing_is_applied_by_the_next_read() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(reading_on_demand).await;
    let ctx = app.app.as_ref().unwrap().context();
    let refund_on_a_new_charge = || app.stripe.refund_made_outside(&app.add_charge(ChargeSpec::default()), None, &[]);
    refund_on_a_new_charge();
    refund_on_a_new_charge();
    refund_desk::stripe::events::read_new_events(&ctx).await.unwrap();
    assert_eq!(app.store().outside_refunds().await.unwrap().len(), 2);
    // Its event is listed behind the newest one already read: the cursor will not find it.
    let late = refund_on_a_new_charge();
    app.stripe.list_newest_event_late(1);
    // Ten minutes without a read that went through: the next one looks back from the last.
    ctx.advance_clock(Duration::from_secs(600));
    refund_desk::stripe::events::read_new_events(&ctx).await.unwrap();
    assert!(app.store().outside_refunds().await.unwrap().iter().any(|o| o.refund.as_str() == late));
}
