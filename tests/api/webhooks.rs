use crate::helpers::*;
use refund_desk::domain::RequestId;
use refund_desk::domain::RequestStatus;
use refund_desk_standins::slack::Posted;
use refund_desk_standins::wait_for;

#[tokio::test]
async fn the_same_stripe_event_twice_sends_one_email() {
    let app = TestApp::spawn().await;
    let (id, card) = app.submitted_request().await;
    let event = app.refund_event(id, "refund.updated", "succeeded").await;
    assert_eq!(app.deliver_stripe_event(&event).await, 200);
    assert_eq!(app.deliver_stripe_event(&event).await, 200, "a repeat is acknowledged");
    app.wait_for_status(id, RequestStatus::Succeeded).await;
    wait_for(DEADLINE, || Some(()).filter(|_| !app.smtp.messages().is_empty())).await.expect("an email");
    app.wait_until_idle().await;
    assert_eq!(app.smtp.messages().len(), 1);
    let succeeded_replies = app.thread_texts(&card).iter().filter(|t| t.contains("succeeded")).count();
    assert_eq!(succeeded_replies, 1, "one reply says it succeeded: {:#?}", app.thread_texts(&card));
}

#[tokio::test]
async fn an_event_id_seen_before_is_ignored_even_when_its_content_would_move_the_request() {
    let app = TestApp::spawn().await;
    let (id, _card) = app.submitted_request().await;
    let mut event = app.refund_event(id, "refund.updated", "pending").await;
    assert_eq!(app.deliver_stripe_event(&event).await, 200);
    app.wait_for_status(id, RequestStatus::Pending).await;
    // The same event id again, now saying succeeded: applying it would move the request on
    // (statuses only move forward, and this is forward), so only the id can stop it.
    event["data"]["object"]["status"] = "succeeded".into();
    assert_eq!(app.deliver_stripe_event(&event).await, 200, "a repeat is acknowledged");
    app.wait_until_idle().await;
    assert_eq!(app.request(id).await.status, RequestStatus::Pending);
    assert!(app.smtp.messages().is_empty());
}

#[tokio::test]
async fn succeeded_before_created_ends_succeeded_with_one_email() {
    let app = TestApp::spawn().await;
    let (id, _card) = app.submitted_request().await;
    let created = app.refund_event(id, "refund.created", "pending").await;
    let succeeded = app.refund_event(id, "refund.updated", "succeeded").await;
    let charge_refunded = app.refund_event(id, "charge.refunded", "succeeded").await;
    assert_eq!(app.deliver_stripe_event(&succeeded).await, 200);
    assert_eq!(app.deliver_stripe_event(&created).await, 200);
    assert_eq!(app.deliver_stripe_event(&charge_refunded).await, 200);
    app.wait_for_status(id, RequestStatus::Succeeded).await;
    app.wait_until_idle().await;
    assert_eq!(app.request(id).await.status, RequestStatus::Succeeded, "an old pending cannot undo succeeded");
    assert_eq!(app.smtp.messages().len(), 1);
}

#[tokio::test]
async fn a_refund_that_fails_at_stripe_is_reported_and_nobody_is_emailed() {
    let app = TestApp::spawn().await;
    let (id, card) = app.submitted_request().await;
    let refund = app.request(id).await.refund.unwrap().id;
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
async fn events_for_refunds_made_elsewhere_get_2xx_and_settle_no_request_on_the_charge() {
    let app = TestApp::spawn().await;
    let (id, _card) = app.waiting_request().await;
    app.wait_until_idle().await;
    let before = app.request(id).await;
    let charge = before.charge.as_ref().unwrap().charge.to_string();
    // A refund made in the Stripe dashboard on the very charge a request waits on: no metadata.
    let refund = app.stripe.refund_made_outside(&charge, Some(100), &[]);
    let event = app.stripe.refund_event(&refund, "refund.updated", "succeeded", None).unwrap();
    assert_eq!(app.deliver_stripe_event(&event).await, 200);
    // Not settled by it: still waiting, with no refund of its own (it is told, and reads what
    // remains: see events.rs).
    let after = app.request(id).await;
    assert_eq!((after.status, &after.refund, after.amount), (before.status, &before.refund, before.amount));
    let outside = app.store().outside_refunds().await.unwrap();
    assert_eq!(outside.len(), 1);
    assert_eq!((outside[0].refund.as_str(), outside[0].charge.as_deref()), (refund.as_str(), Some(charge.as_str())));
}

/// Approves `id`, whose refund call then does not get through: Stripe answers 503 until the
/// test lets it through.
async fn approve_with_refund_on_its_way(app: &TestApp, id: RequestId, card: &Posted) {
    let tries_before = app.stripe.refund_posts().len();
    app.stripe.set_refunds_down(true);
    app.approve(APPROVER, id, card).await;
    app.wait_for_status(id, RequestStatus::Approved).await;
    wait_for(DEADLINE, || Some(()).filter(|_| app.stripe.refund_posts().len() > tries_before))
        .await
        .expect("a refund try");
}

/// Delivers `refund.updated` (succeeded) for `refund` and checks that `id` did not move and the
/// refund is recorded as not ours. The 2xx comes after the event's write is synced, so what
/// the store holds then is all the event did.
async fn assert_not_settled_by(app: &TestApp, id: RequestId, refund: &str) {
    let event = app.stripe.refund_event(refund, "refund.updated", "succeeded", None).unwrap();
    assert_eq!(app.deliver_stripe_event(&event).await, 200, "an event for a refund not ours is acknowledged");
    let request = app.request(id).await;
    assert_eq!(request.status, RequestStatus::Approved, "another refund must not settle {id}");
    assert_eq!(request.refund, None);
    let outside = app.store().outside_refunds().await.unwrap();
    assert!(outside.iter().any(|o| o.refund.as_str() == refund && o.claimed_request == Some(id)), "{outside:?}");
}

/// Lets Stripe take the desk's call: the request is settled by its own refund, and (the refund
/// still pending) no customer has been emailed.
async fn then_our_own_refund_is_recorded(app: &TestApp, id: RequestId, not_ours: &str) {
    app.stripe.set_refunds_down(false);
    app.wait_for_status(id, RequestStatus::Submitted).await;
    assert_ne!(app.request(id).await.refund.unwrap().id.as_str(), not_ours);
    app.wait_until_idle().await;
    assert!(app.smtp.messages().is_empty(), "no customer was told of money that did not move for them");
}

#[tokio::test]
async fn a_refund_on_another_charge_naming_our_request_does_not_settle_it() {
    let app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;
    // Another installation on the same Stripe account numbers its requests from R-1001 too.
    let other_charge = app.add_charge(Default::default());
    let metadata = [("refund_request_id", id.to_string()), ("refund_desk_install", "another".to_string())];
    let refund = app.stripe.refund_made_outside(&other_charge, Some(100), &pairs(&metadata));
    approve_with_refund_on_its_way(&app, id, &card).await;
    assert_not_settled_by(&app, id, &refund).await;
    then_our_own_refund_is_recorded(&app, id, &refund).await;
}

#[tokio::test]
async fn a_refund_with_our_install_id_on_another_charge_does_not_settle_our_request() {
    let app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;
    let other_charge = app.add_charge(Default::default());
    let metadata =
        [("refund_request_id", id.to_string()), ("refund_desk_install", app.store().install_id().to_string())];
    let refund = app.stripe.refund_made_outside(&other_charge, Some(100), &pairs(&metadata));
    approve_with_refund_on_its_way(&app, id, &card).await;
    assert_not_settled_by(&app, id, &refund).await;
    then_our_own_refund_is_recorded(&app, id, &refund).await;
}

#[tokio::test]
async fn a_refund_on_our_charge_without_our_install_id_does_not_settle_our_request() {
    let app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;
    let charge = app.request(id).await.charge.unwrap().charge.to_string();
    // A store restored from a backup, or a refund made by hand with the request's id.
    let refund = app.stripe.refund_made_outside(&charge, Some(100), &[("refund_request_id", &id.to_string())]);
    approve_with_refund_on_its_way(&app, id, &card).await;
    assert_not_settled_by(&app, id, &refund).await;
    // That refund took part of the charge, so Stripe refuses ours: the request fails, and says why.
    app.stripe.set_refunds_down(false);
    let request = app.wait_for_status(id, RequestStatus::Failed).await;
    assert!(request.problem.as_deref().unwrap_or_default().contains("greater than unrefunded amount"), "{request:?}");
    app.wait_until_idle().await;
    assert!(app.smtp.messages().is_empty());
}

#[tokio::test]
async fn our_refund_announced_before_stripe_answers_the_call_settles_the_request() {
    let app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;
    let charge = app.request(id).await.charge.unwrap().charge.to_string();
    // The refund Stripe made for the desk's call, whose answer has not arrived, announced
    // first. It carries what the desk sends and is on the request's charge: it is ours.
    let install = app.store().install_id().to_string();
    let metadata = [("refund_request_id", id.to_string()), ("refund_desk_install", install.clone())];
    let refund = app.stripe.refund_made_outside(&charge, Some(100), &pairs(&metadata));
    approve_with_refund_on_its_way(&app, id, &card).await;
    let posted = app.stripe.refund_posts().pop().unwrap();
    assert_eq!(posted.param("metadata[refund_desk_install]"), Some(install.as_str()), "the desk sends what it matches");
    assert_eq!(posted.param("metadata[refund_request_id]"), Some(id.to_string().as_str()));
    let event = app.stripe.refund_event(&refund, "refund.updated", "succeeded", None).unwrap();
    assert_eq!(app.deliver_stripe_event(&event).await, 200);
    let request = app.wait_for_status(id, RequestStatus::Succeeded).await;
    assert_eq!(request.refund.unwrap().id.as_str(), refund);
    assert!(app.store().outside_refunds().await.unwrap().is_empty());
    app.stripe.set_refunds_down(false);
    app.wait_until_idle().await;
    assert_eq!(app.smtp.messages().len(), 1);
    assert_eq!(app.stripe.refunds().len(), 1, "the settled request makes no second refund");
}

fn pairs<'a>(metadata: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    metadata.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn an_event_the_desk_does_not_act_on_is_acknowledged_and_not_recorded() {
    let app = TestApp::spawn().await;
    let event = serde_json::json!({ "id": "evt_customer_1", "object": "event", "type": "customer.created",
        "created": 1, "api_version": "2024-10-28.acacia", "data": { "object": { "id": "cus_1", "object": "customer" } } });
    assert_eq!(app.deliver_stripe_event(&event).await, 200);
    // Not recorded: applying the same id now finds it new.
    let again = app.store().apply_stripe_event("evt_customer_1", &[], chrono::Utc::now()).await.unwrap();
    assert_ne!(again, refund_desk::storage::EventOutcome::Duplicate);
}

#[tokio::test]
async fn a_signed_event_that_cannot_be_read_gets_2xx_and_is_counted_so_stripe_stops_sending_it() {
    let app = TestApp::spawn().await;
    let metric = "refund_desk_stripe_events_total{outcome=\"unreadable\"}";
    let count = |text: &str| {
        text.lines()
            .find(|l| l.starts_with(metric))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let metrics =
        || async { reqwest::get(format!("{}/metrics", app.driver.base)).await.unwrap().text().await.unwrap() };
    let before = count(&metrics().await);
    // A refund event whose refund is not an object Stripe's shapes allow.
    let event = serde_json::json!({ "id": "evt_odd_1", "object": "event", "type": "refund.updated", "created": 1,
        "api_version": "2024-10-28.acacia", "data": { "object": { "id": 42 } } });
    assert_eq!(app.deliver_stripe_event(&event).await, 200);
    assert_eq!(app.deliver_stripe_event(&serde_json::json!({ "not": "an event" })).await, 200);
    assert!(count(&metrics().await) >= before + 2);
    assert!(app.store().all_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_refund_naming_a_request_not_yet_approved_is_not_lost_but_announced_on_it() {
    let app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;
    let charge = app.request(id).await.charge.unwrap().charge.to_string();
    // Ours by its metadata (a store restored from a backup made before the approval), but the
    // request cannot take a refund yet.
    let metadata =
        [("refund_request_id", id.to_string()), ("refund_desk_install", app.store().install_id().to_string())];
    let refund = app.stripe.refund_made_outside(&charge, Some(100), &pairs(&metadata));
    let event = app.stripe.refund_event(&refund, "refund.updated", "succeeded", None).unwrap();
    assert_eq!(app.deliver_stripe_event(&event).await, 200);
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval);
    assert!(app.store().outside_refunds().await.unwrap().iter().any(|o| o.refund.as_str() == refund));
    let announced = wait_for(DEADLINE, || {
        app.thread_texts(&card).into_iter().find(|t| t.contains(&refund) && t.contains("outside refund-desk"))
    })
    .await;
    assert!(announced.is_some(), "{:?}", app.thread_texts(&card));
}

#[tokio::test]
async fn a_signed_refund_event_that_cannot_be_read_is_recorded_so_it_is_not_read_again() {
    let app = TestApp::spawn().await;
    let event = serde_json::json!({ "id": "evt_odd_2", "object": "event", "type": "refund.updated", "created": 1,
        "api_version": "2024-10-28.acacia", "data": { "object": { "id": 42 } } });
    assert_eq!(app.deliver_stripe_event(&event).await, 200);
    assert!(app.store().stripe_event_seen("evt_odd_2").await.unwrap());
}
