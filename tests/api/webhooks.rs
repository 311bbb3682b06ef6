use crate::helpers::*;
use refund_desk::domain::RequestStatus;
use refund_desk::standins::wait_for;

/// A request approved and submitted to Stripe.
async fn submitted(app: &TestApp) -> (refund_desk::domain::RequestId, refund_desk::standins::slack::Posted) {
    let (id, card) = app.waiting_request().await;
    app.approve(APPROVER, id, &card).await;
    app.wait_for_status(id, RequestStatus::Submitted).await;
    (id, card)
}

#[tokio::test]
async fn the_same_stripe_event_twice_sends_one_email() {
    let app = TestApp::spawn().await;
    let (id, card) = submitted(&app).await;
    let event = app.refund_event(id, "refund.updated", "succeeded");
    assert_eq!(app.deliver_stripe_event(&event).await, 200);
    assert_eq!(app.deliver_stripe_event(&event).await, 200, "a repeat is acknowledged");
    app.wait_for_status(id, RequestStatus::Succeeded).await;
    wait_for(DEADLINE, || Some(()).filter(|_| !app.smtp.messages().is_empty())).await.expect("an email");
    app.wait_until_idle().await;
    assert_eq!(app.smtp.messages().len(), 1);
    let succeeded_replies = app.thread_texts(&card).iter().filter(|t| t.contains("succeeded")).count();
    assert_eq!(succeeded_replies, 1);
}

#[tokio::test]
async fn succeeded_before_created_ends_succeeded_with_one_email() {
    let app = TestApp::spawn().await;
    let (id, _card) = submitted(&app).await;
    let created = app.refund_event(id, "refund.created", "pending");
    let succeeded = app.refund_event(id, "refund.updated", "succeeded");
    let charge_refunded = app.refund_event(id, "charge.refunded", "succeeded");
    assert_eq!(app.deliver_stripe_event(&succeeded).await, 200);
    assert_eq!(app.deliver_stripe_event(&created).await, 200);
    assert_eq!(app.deliver_stripe_event(&charge_refunded).await, 200);
    app.wait_for_status(id, RequestStatus::Succeeded).await;
    app.wait_until_idle().await;
    assert_eq!(app.request(id).status, RequestStatus::Succeeded, "an old pending cannot undo succeeded");
    assert_eq!(app.smtp.messages().len(), 1);
}

#[tokio::test]
async fn a_refund_that_fails_at_stripe_is_reported_and_nobody_is_emailed() {
    let app = TestApp::spawn().await;
    let (id, card) = submitted(&app).await;
    let refund = app.request(id).refund.unwrap().id;
    let failed =
        app.stripe.refund_event(refund.as_str(), "refund.failed", "failed", Some("expired_or_canceled_card")).unwrap();
    assert_eq!(app.deliver_stripe_event(&failed).await, 200);
    app.wait_for_status(id, RequestStatus::Failed).await;
    app.wait_until_idle().await;
    assert!(app.smtp.messages().is_empty());
    assert!(app.thread_texts(&card).iter().any(|t| t.contains("failed") && t.contains("expired_or_canceled_card")));
    assert!(app.direct_messages(REQUESTER).iter().any(|m| m.contains("failed")));
}

#[tokio::test]
async fn events_for_refunds_made_elsewhere_get_2xx_and_change_nothing() {
    let app = TestApp::spawn().await;
    let charge = app.add_charge(Default::default());
    // A refund made in the Stripe dashboard: no metadata, unknown to the desk.
    let mut event: serde_json::Value = serde_json::from_str(include_str!("../fixtures/stripe/objects.json")).unwrap();
    let mut refund = event["refund"].clone();
    refund["charge"] = charge.into();
    event = event["event"].clone();
    event["id"] = "evt_elsewhere_1".into();
    event["type"] = "refund.created".into();
    event["data"]["object"] = refund;
    assert_eq!(app.deliver_stripe_event(&event).await, 200);
    assert!(app.store().all_requests().unwrap().is_empty());
    assert!(app.store().all_jobs().unwrap().is_empty());
}
