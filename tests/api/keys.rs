//! Least-privilege Stripe keys: a restricted key that may not read an optional fact still gets a
//! card that says what it could not read; one that may not do what the desk needs fails the
//! request at once, tells the requester, and alerts finance with the missing permission.

use crate::helpers::*;
use refund_desk::domain::RequestStatus;
use refund_desk_standins::ChargeSpec;

/// Everything the desk reads or writes, as a restricted key's permissions.
const ALL: [&str; 6] = [
    "rak_charge_read",
    "rak_payment_intent_read",
    "rak_customer_read",
    "rak_dispute_read",
    "rak_radar_early_fraud_warning_read",
    "rak_refund_write",
];

fn all_but(missing: &str) -> Vec<&'static str> {
    ALL.iter().copied().filter(|p| *p != missing).collect()
}

/// How many calls the Stripe stand-in received on `path`.
fn calls_to(app: &TestApp, method: &str, path: &str) -> usize {
    app.stripe.received().iter().filter(|r| r.method == method && r.path == path).count()
}

/// The card's whole content, blocks included.
fn card_content(card: &refund_desk_standins::slack::Posted) -> String {
    format!("{} {}", card.text, card.blocks)
}

#[tokio::test]
async fn a_key_that_cannot_read_radar_still_gets_a_card_that_says_so_and_is_not_retried() {
    let app = TestApp::spawn().await;
    app.stripe.restrict_key(Some(&all_but("rak_radar_early_fraud_warning_read")));
    let (id, card) = app.waiting_request().await;
    let content = card_content(&card);
    assert!(content.contains("early fraud warnings"), "{content}");
    assert!(content.contains("rak_radar_early_fraud_warning_read"), "{content}");
    assert!(content.contains("not readable with this Stripe key"), "{content}");
    assert_eq!(calls_to(&app, "GET", "/v1/radar/early_fraud_warnings"), 1, "a 403 is not retried");
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval);
}

#[tokio::test]
async fn a_key_that_cannot_read_customers_goes_on_without_the_email_and_says_so() {
    let app = TestApp::spawn().await;
    app.stripe.restrict_key(Some(&all_but("rak_customer_read")));
    // The address is only on the customer, which the key may not read.
    let charge = app.add_charge(ChargeSpec {
        billing_email: None,
        customer_email: Some("jenny@example.com".into()),
        ..Default::default()
    });
    let id = app.request_refund(&format!("{charge} 25.00 duplicate charged twice")).await;
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    let card = app.card(id).await;
    assert!(card_content(&card).contains("rak_customer_read"), "{}", card_content(&card));
    assert_eq!(app.request(id).await.charge.unwrap().customer_email, None);
    assert_eq!(app.stripe.received().iter().filter(|r| r.path.starts_with("/v1/customers/")).count(), 1);
}

#[tokio::test]
async fn a_key_that_cannot_read_disputes_goes_on_and_says_so() {
    let app = TestApp::spawn().await;
    app.stripe.restrict_key(Some(&all_but("rak_dispute_read")));
    let charge = app.add_charge(ChargeSpec { disputed: true, dispute_refundable: true, ..Default::default() });
    let id = app.request_refund(&format!("{charge} 25.00 duplicate charged twice")).await;
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    let card = app.card(id).await;
    assert!(card_content(&card).contains("rak_dispute_read"), "{}", card_content(&card));
    assert_eq!(calls_to(&app, "GET", "/v1/disputes"), 1);
}

#[tokio::test]
async fn a_charge_the_policy_would_auto_approve_waits_for_a_person_when_radar_was_unreadable() {
    let policy = "[policy.currency.usd]\nauto_approve_up_to = \"50.00\"\n";
    let app = TestApp::spawn_with_policy(policy).await;
    // With every permission, the policy refunds it without a click.
    let charge = app.add_charge(ChargeSpec::default());
    let id = app.request_refund(&format!("{charge} 20.00 duplicate charged twice")).await;
    app.wait_for_status(id, RequestStatus::Submitted).await;
    // Under the same limit, but Radar could not be read: a person decides.
    app.stripe.restrict_key(Some(&all_but("rak_radar_early_fraud_warning_read")));
    let charge = app.add_charge(ChargeSpec::default());
    let id = app.request_refund(&format!("{charge} 20.00 duplicate charged twice")).await;
    let request = app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    let rule = request.policy.unwrap().rule;
    assert!(rule.contains("could not be read"), "{rule}");
}

#[tokio::test]
async fn a_key_that_cannot_read_charges_fails_the_request_at_once_and_alerts_finance() {
    let app = TestApp::spawn().await;
    app.stripe.restrict_key(Some(&all_but("rak_charge_read")));
    let charge = app.add_charge(ChargeSpec::default());
    let id = app.request_refund(&format!("{charge} 25.00 duplicate charged twice")).await;
    let request = app.wait_for_status(id, RequestStatus::Rejected).await;
    assert!(request.problem.as_deref().unwrap().contains("rak_charge_read"), "{:?}", request.problem);
    app.wait_until_idle().await;
    assert_eq!(calls_to(&app, "GET", &format!("/v1/charges/{charge}")), 1, "a 403 is not retried");
    assert!(app.replaced_answers().iter().any(|m| m.contains("rak_charge_read")), "{:?}", app.replaced_answers());
    let alerts: Vec<_> =
        app.slack.messages_in(FINANCE).into_iter().filter(|m| m.text.contains("Stripe key may not")).collect();
    assert_eq!(alerts.len(), 1, "one alert");
    assert!(alerts[0].text.contains("rak_charge_read") && alerts[0].text.contains(&id.to_string()));
}

#[tokio::test]
async fn a_key_that_cannot_make_refunds_fails_the_approved_request_and_alerts_finance() {
    let app = TestApp::spawn().await;
    app.stripe.restrict_key(Some(&all_but("rak_refund_write")));
    let (id, card) = app.waiting_request().await;
    app.approve(APPROVER, id, &card).await;
    let request = app.wait_for_status(id, RequestStatus::Failed).await;
    assert!(request.problem.as_deref().unwrap().contains("rak_refund_write"), "{:?}", request.problem);
    app.wait_until_idle().await;
    assert_eq!(calls_to(&app, "POST", "/v1/refunds"), 1, "a 403 is not retried");
    assert!(app.stripe.refunds().is_empty());
    assert!(app.direct_messages(REQUESTER).iter().any(|m| m.contains("failed")));
    assert!(
        app.thread_texts(&card)
            .iter()
            .any(|t| t.contains("Stripe key may not make refunds") && t.contains("rak_refund_write"))
    );
}

#[tokio::test]
async fn a_key_that_lost_refund_write_after_an_earlier_try_made_the_refund_records_that_refund() {
    let app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;
    let charge = app.request(id).await.charge.unwrap().charge.to_string();
    // The refund an earlier try made, whose answer was lost; then the key was restricted.
    let install = app.store().install_id().to_string();
    let made = app.stripe.refund_made_outside(
        &charge,
        None,
        &[("refund_request_id", &id.to_string()), ("refund_desk_install", &install)],
    );
    let mut held = all_but("rak_refund_write");
    held.push("rak_refund_read");
    app.stripe.restrict_key(Some(&held));
    app.approve(APPROVER, id, &card).await;
    let request = app.wait_for_status(id, RequestStatus::Submitted).await;
    assert_eq!(request.refund.unwrap().id.as_str(), made, "the refund already made");
    assert_eq!(app.stripe.refunds().len(), 1);
}

/// A request on a fresh charge, refused because the key may not read charges; once its
/// side effects have run.
async fn refused_for_the_key(app: &TestApp) -> refund_desk::domain::RequestId {
    let charge = app.add_charge(ChargeSpec::default());
    let id = app.request_refund(&format!("{charge} 25.00 duplicate charged twice")).await;
    app.wait_for_status(id, RequestStatus::Rejected).await;
    app.wait_until_idle().await;
    id
}

/// The alerts in the finance channel about what the Stripe key may not do.
fn key_alerts(app: &TestApp) -> Vec<refund_desk_standins::slack::Posted> {
    app.slack.messages_in(FINANCE).into_iter().filter(|m| m.text.contains("Stripe key may not")).collect()
}

#[tokio::test]
async fn a_missing_permission_alerts_finance_once_an_hour_not_once_per_request() {
    let app = TestApp::spawn().await;
    app.stripe.restrict_key(Some(&all_but("rak_charge_read")));
    for _ in 0..3 {
        refused_for_the_key(&app).await;
    }
    assert_eq!(key_alerts(&app).len(), 1, "three requests, one alert");
}

#[tokio::test]
async fn an_alert_whose_post_failed_is_sent_by_its_retry_not_suppressed_as_already_sent() {
    let app = TestApp::spawn().await;
    app.stripe.restrict_key(Some(&all_but("rak_charge_read")));
    // The alert is the first message posted; Slack fails it once.
    app.slack.fail_next("chat.postMessage", 200, serde_json::json!({ "ok": false, "error": "internal_error" }));
    refused_for_the_key(&app).await;
    assert_eq!(key_alerts(&app).len(), 1);
    assert!(app.slack.calls("chat.postMessage").len() >= 2, "the first post failed, the retry posted");
}

#[tokio::test]
async fn a_permission_alert_that_parked_does_not_keep_the_next_one_from_being_sent() {
    let app = TestApp::spawn().await;
    app.stripe.restrict_key(Some(&all_but("rak_charge_read")));
    // Slack refuses the first alert for good: its job parks.
    app.slack.fail_next("chat.postMessage", 200, serde_json::json!({ "ok": false, "error": "msg_too_long" }));
    refused_for_the_key(&app).await;
    let second = refused_for_the_key(&app).await;
    let alerts = key_alerts(&app);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(alerts[0].text.contains(&second.to_string()));
}
