//! Two requests on one payment see each other: the second requester is told of the first, and
//! each card lists the others, so approving both by mistake is hard.

use crate::helpers::*;
use refund_desk::domain::RequestStatus;
use refund_desk_standins::{ChargeSpec, wait_for};

fn content(m: &refund_desk_standins::slack::Posted) -> String {
    format!("{} {}", m.text, m.blocks)
}

#[tokio::test]
async fn a_second_request_on_a_charge_is_told_of_the_first_and_both_cards_list_each_other() {
    let app = TestApp::spawn().await;
    let charge = app.add_charge(ChargeSpec::default());
    let first = app.request_refund(&format!("{charge} 10.00 duplicate charged twice")).await;
    app.wait_for_status(first, RequestStatus::AwaitingApproval).await;
    let first_card = app.card(first).await;
    assert!(!content(&first_card).contains("Other requests on this payment"), "alone on its charge at first");

    let answer = app.slash_refund(APPROVER_2, &format!("{charge} 5.00 duplicate asked again")).await;
    assert!(
        answer.contains(&format!(
            "{first} for $10.00 (asked by <@{REQUESTER}>) is already on this payment: waiting for approval"
        )),
        "{answer}"
    );
    let second = app.store().all_requests().await.unwrap().into_iter().map(|r| r.id).max().unwrap();
    assert_ne!(second, first);
    app.wait_for_status(second, RequestStatus::AwaitingApproval).await;
    let second_card = app.card(second).await;
    let text = content(&second_card);
    assert!(text.contains("Other requests on this payment") && text.contains("1 still open"), "{text}");
    assert!(text.contains(&first.to_string()) && text.contains("Waiting for approval"), "{text}");

    // The first card is edited to list the second.
    let edited =
        wait_for(DEADLINE, || app.slack.message(&first_card.ts).filter(|m| content(m).contains(&second.to_string())))
            .await;
    assert!(edited.is_some(), "the first card never listed {second}");
}

#[tokio::test]
async fn a_request_on_a_charge_already_refunded_through_the_desk_says_so() {
    let app = TestApp::spawn().await;
    let charge = app.add_charge(ChargeSpec { amount: 5000, ..Default::default() });
    let first = app.request_refund(&format!("{charge} 10.00 duplicate charged twice")).await;
    app.wait_for_status(first, RequestStatus::AwaitingApproval).await;
    app.approve_and_settle(first).await;
    let answer = app.slash_refund(REQUESTER, &format!("{charge} 10.00 duplicate again")).await;
    assert!(
        answer.contains(&format!("{first} for $10.00 (asked by <@{REQUESTER}>) was on this payment: refunded")),
        "{answer}"
    );
    let second = app.store().all_requests().await.unwrap().into_iter().map(|r| r.id).max().unwrap();
    app.wait_for_status(second, RequestStatus::AwaitingApproval).await;
    let text = content(&app.card(second).await);
    assert!(text.contains("Other requests on this payment") && !text.contains("still open"), "{text}");
    assert!(text.contains(&first.to_string()) && text.contains("Refunded"), "{text}");
}

#[tokio::test]
async fn requests_on_different_charges_are_not_listed_together() {
    let app = TestApp::spawn().await;
    let (_, _) = app.waiting_request().await;
    let charge = app.add_charge(ChargeSpec::default());
    let answer = app.slash_refund(REQUESTER, &format!("{charge} 10.00 duplicate charged twice")).await;
    assert!(!answer.contains(":warning:"), "{answer}");
    let id = app.store().all_requests().await.unwrap().into_iter().map(|r| r.id).max().unwrap();
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    assert!(!content(&app.card(id).await).contains("Other requests on this payment"));
}

#[tokio::test]
async fn a_card_lists_only_the_newest_others_and_counts_the_rest_so_it_stays_within_slacks_limits() {
    let app = TestApp::spawn().await;
    let charge = app.add_charge(ChargeSpec { amount: 100_000, ..Default::default() });
    let shown = refund_desk::slack::views::OTHERS_SHOWN;
    let mut ids = vec![];
    for _ in 0..shown + 3 {
        ids.push(app.request_refund(&format!("{charge} 1.00 duplicate asked again")).await);
    }
    let last = *ids.last().unwrap();
    app.wait_for_status(last, RequestStatus::AwaitingApproval).await;
    let text = content(&app.card(last).await);
    assert!(text.contains("and 2 older"), "{text}");
    assert!(!text.contains(&format!("{} ·", ids[0])) && !text.contains(&format!("{} ·", ids[1])), "{text}");
    assert!(text.contains(&format!("{} ·", ids[2])), "{text}");
}

#[tokio::test]
async fn a_request_by_payment_intent_and_one_by_its_charge_see_each_other() {
    let app = TestApp::spawn().await;
    let (charge, intent) = app.stripe.add_charge(ChargeSpec { with_payment_intent: true, ..Default::default() });
    let intent = intent.expect("a payment intent");
    let by_intent = app.request_refund(&format!("{intent} 10.00 duplicate charged twice")).await;
    app.wait_for_status(by_intent, RequestStatus::AwaitingApproval).await;
    // The second names the charge: found through the first one's checked charge.
    let answer = app.slash_refund(APPROVER_2, &format!("{charge} 5.00 duplicate asked again")).await;
    assert!(answer.contains(&format!("{by_intent} for $10.00")), "{answer}");
    let by_charge = app.store().all_requests().await.unwrap().into_iter().map(|r| r.id).max().unwrap();
    app.wait_for_status(by_charge, RequestStatus::AwaitingApproval).await;
    assert!(content(&app.card(by_charge).await).contains(&by_intent.to_string()));
}
