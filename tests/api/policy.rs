use crate::helpers::*;
use refund_desk::domain::{Actor, RequestStatus};
use refund_desk_standins::{ChargeSpec, wait_for};

const POLICY: &str = r#"
[policy]
refund_window_days = 60
always_require_approval = ["goodwill", "other"]

[policy.currency.usd]
auto_approve_up_to = "25.00"
second_approval_from = "1000.00"
max_amount = "5000.00"
"#;

fn big_charge() -> ChargeSpec {
    ChargeSpec { amount: 1_000_000, ..ChargeSpec::default() }
}

#[tokio::test]
async fn a_small_refund_is_made_without_a_click_and_finance_is_told() {
    let app = TestApp::spawn_with_policy(POLICY).await;
    let charge = app.add_charge(ChargeSpec::default());
    let id = app.request_refund(&format!("{charge} 20.00 duplicate")).await;
    app.wait_for_status(id, RequestStatus::Submitted).await;
    app.wait_until_idle().await;
    assert_eq!(app.stripe.refund_posts().len(), 1);
    assert_eq!(app.stripe.refund_posts()[0].param("amount"), Some("2000"));
    let card = app.card(id).await;
    let blocks = card.blocks.to_string();
    assert!(
        blocks.contains("auto-approved") && !blocks.contains("refund_approve"),
        "a notice, not a question: {blocks}"
    );
    assert!(app.thread_texts(&card).iter().any(|t| t.contains("Refunded by the policy")));
    let audit = app.store().audit_of(id).await.unwrap();
    assert!(audit.iter().any(|e| e.actor == Actor::Policy && e.to == RequestStatus::Approved), "{audit:?}");
}

#[tokio::test]
async fn reasons_that_always_need_approval_are_never_automatic() {
    let app = TestApp::spawn_with_policy(POLICY).await;
    let charge = app.add_charge(ChargeSpec::default());
    let id = app.request_refund(&format!("{charge} 5.00 goodwill")).await;
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    assert!(app.card(id).await.blocks.to_string().contains("`goodwill` refunds always need one"));
    app.wait_until_idle().await;
    assert!(app.stripe.refund_posts().is_empty());
}

#[tokio::test]
async fn an_old_charge_is_never_auto_approved_and_the_card_says_how_old() {
    let app = TestApp::spawn_with_policy(POLICY).await;
    let charge = app.add_charge(ChargeSpec { created_days_ago: 75, ..ChargeSpec::default() });
    let id = app.request_refund(&format!("{charge} 5.00")).await;
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    let blocks = app.card(id).await.blocks.to_string();
    assert!(blocks.contains("75 days ago") && blocks.contains("past the 60-day refund window"), "{blocks}");
    app.wait_until_idle().await;
    assert!(app.stripe.refund_posts().is_empty());
}

#[tokio::test]
async fn large_refunds_need_two_different_approvers() {
    let app = TestApp::spawn_with_policy(POLICY).await;
    let charge = app.add_charge(big_charge());
    let id = app.request_refund(&format!("{charge} 1500.00")).await;
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    let card = app.card(id).await;

    app.approve(APPROVER, id, &card).await;
    wait_for(DEADLINE, || app.thread_texts(&card).into_iter().find(|t| t.contains("1 of 2 approvals")))
        .await
        .expect("progress shown");
    wait_for(DEADLINE, || app.slack.message(&card.ts).filter(|m| m.blocks.to_string().contains("1 of 2 approvals")))
        .await
        .expect("card edited");
    // The same approver clicking again is not a second approval.
    app.approve(APPROVER, id, &card).await;
    let note = wait_for(DEADLINE, || app.slack.ephemerals().pop()).await.expect("told privately");
    assert!(note["text"].as_str().unwrap().contains("second, different approver"), "{note}");
    app.wait_until_idle().await;
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval);
    assert!(app.stripe.refund_posts().is_empty());

    app.approve(APPROVER_2, id, &card).await;
    app.wait_for_status(id, RequestStatus::Submitted).await;
    assert_eq!(app.stripe.refund_posts().len(), 1);
    let blocks = app.slack.message(&card.ts).unwrap().blocks.to_string();
    assert!(blocks.contains("<@U0APPROVE1>") && blocks.contains("<@U0APPROVE2>"), "{blocks}");
}

#[tokio::test]
async fn above_the_cap_is_refused_outright() {
    let app = TestApp::spawn_with_policy(POLICY).await;
    let charge = app.add_charge(big_charge());
    let id = app.request_refund(&format!("{charge} 6000")).await;
    let r = app.wait_for_status(id, RequestStatus::Rejected).await;
    assert!(r.problem.as_deref().unwrap().contains("above the $5,000.00 limit"), "{:?}", r.problem);
    app.wait_until_idle().await;
    assert!(app.slack.messages_in(FINANCE).is_empty());
    assert!(app.replaced_answers().iter().any(|m| m.contains("$5,000.00")), "{:?}", app.replaced_answers());
}

#[tokio::test]
async fn partial_refunds_then_full_refund_exactly_what_remains() {
    let app = TestApp::spawn().await;
    let charge = app.add_charge(ChargeSpec::default());
    let mut amounts = vec![];
    for asked in ["10.00", "5.00", "full"] {
        let id = app.request_refund(&format!("{charge} {asked}")).await;
        app.approve_and_settle(id).await;
        amounts.push(app.stripe.refund_posts().pop().unwrap().param("amount").unwrap().to_string());
    }
    assert_eq!(amounts, ["1000", "500", "1000"]);
    assert_eq!(app.stripe.charge(&charge).unwrap()["amount_refunded"], 2500);
    // The third card listed the two earlier refunds and the requests that made them.
    let third = app.slack.messages_in(FINANCE).pop().unwrap().blocks.to_string();
    assert!(third.contains("R-1001") && third.contains("R-1002") && third.contains("Refunded before"), "{third}");
    // Nothing is left.
    let id = app.request_refund(&format!("{charge} full")).await;
    let r = app.wait_for_status(id, RequestStatus::Rejected).await;
    assert!(r.problem.as_deref().unwrap().contains("already fully refunded"), "{:?}", r.problem);
}

#[tokio::test]
async fn two_open_requests_can_never_together_exceed_the_charge() {
    let app = TestApp::spawn().await;
    let charge = app.add_charge(ChargeSpec::default());
    let first = app.request_refund(&format!("{charge} 15.00")).await;
    app.wait_for_status(first, RequestStatus::AwaitingApproval).await;
    let second = app.request_refund(&format!("{charge} 15.00")).await;
    let r = app.wait_for_status(second, RequestStatus::Rejected).await;
    let why = r.problem.unwrap();
    assert!(why.contains("$15.00 is more than the $10.00") && why.contains(&first.to_string()), "{why}");
    // `full` takes what the first leaves.
    let third = app.request_refund(&format!("{charge} full")).await;
    app.wait_for_status(third, RequestStatus::AwaitingApproval).await;
    assert_eq!(app.request(third).await.amount.unwrap().minor(), 1000);
    // Denying the first frees its amount.
    let (status, _) = app.driver.submit_deny(APPROVER, &first.to_string(), "wrong charge").await;
    assert_eq!(status, 200);
    app.wait_for_status(first, RequestStatus::Denied).await;
    let fourth = app.request_refund(&format!("{charge} 15.00")).await;
    app.wait_for_status(fourth, RequestStatus::AwaitingApproval).await;
}

#[tokio::test]
async fn two_requests_checked_at_the_same_moment_cannot_both_take_the_money() {
    let app = TestApp::spawn().await;
    let charge = app.add_charge(ChargeSpec::default());
    let text = format!("{charge} 20.00");
    let (a, b) = tokio::join!(app.request_refund(&text), app.request_refund(&text));
    let store = app.store();
    let settled = |id| {
        let store = store.clone();
        async move {
            store.get_request(id).await.unwrap().filter(|r| r.status != RequestStatus::Requested).map(|r| r.status)
        }
    };
    let sa = wait_for_async(DEADLINE, || settled(a)).await.unwrap();
    let sb = wait_for_async(DEADLINE, || settled(b)).await.unwrap();
    let mut statuses = [sa, sb];
    statuses.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(statuses, [RequestStatus::AwaitingApproval, RequestStatus::Rejected]);
}

#[tokio::test]
async fn an_early_fraud_warning_is_on_the_card_and_stops_auto_approval() {
    let app = TestApp::spawn_with_policy(POLICY).await;
    let charge = app
        .add_charge(ChargeSpec { early_fraud_warning: Some("made_with_stolen_card".into()), ..ChargeSpec::default() });
    let id = app.request_refund(&format!("{charge} 5.00 fraud")).await;
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    let blocks = app.card(id).await.blocks.to_string();
    assert!(blocks.contains("early fraud warning (made_with_stolen_card)"), "{blocks}");
    app.wait_until_idle().await;
    assert!(app.stripe.refund_posts().is_empty());
}

#[tokio::test]
async fn a_dispute_stripe_still_allows_refunding_is_shown_and_needs_a_person() {
    let app = TestApp::spawn_with_policy(POLICY).await;
    let charge = app.add_charge(ChargeSpec { disputed: true, dispute_refundable: true, ..ChargeSpec::default() });
    let id = app.request_refund(&format!("{charge} 5.00 duplicate")).await;
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    let card = app.card(id).await;
    let blocks = card.blocks.to_string();
    assert!(
        blocks.contains("disputed (warning_needs_response, fraudulent)") && blocks.contains("the charge is disputed"),
        "{blocks}"
    );
    app.approve(APPROVER, id, &card).await;
    app.wait_for_status(id, RequestStatus::Submitted).await;
    assert_eq!(app.stripe.refunds().len(), 1);
}
