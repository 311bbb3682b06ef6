use crate::helpers::*;
use refund_desk::domain::RequestStatus;
use refund_desk_standins::{ChargeSpec, wait_for};

#[tokio::test]
async fn malformed_commands_get_usage_privately_and_store_nothing() {
    let app = TestApp::spawn().await;
    for (text, expected) in [
        ("help", "How to ask for a refund"),
        ("ch_3abc -5", "negative"),
        ("ch_3abc 0", "more than zero"),
        ("ch_3abc 12,34", "separators"),
        ("ch_3abc 25 becauseisaidso", "not a reason"),
        ("re_3abc 25", "not something /refund understands"),
        ("ch_3abc lots", "neither an amount nor a reason"),
    ] {
        let answer = app.slash_refund(REQUESTER, text).await;
        assert!(answer.contains(expected), "{text:?} → {answer}");
        if text != "help" {
            assert!(answer.contains("Nothing was stored") && answer.contains("/refund ch_"), "{text:?} → {answer}");
        }
    }
    assert!(app.store().all_requests().await.unwrap().is_empty());
    assert!(app.stripe.received().is_empty());
}

#[tokio::test]
async fn more_than_what_remains_is_refused_privately_and_never_reaches_finance() {
    let app = TestApp::spawn().await;
    let charge = app.add_charge(ChargeSpec { amount: 2500, amount_refunded: 2000, ..ChargeSpec::default() });
    let id = app.request_refund(&format!("{charge} 10.00")).await;
    let request = app.wait_for_status(id, RequestStatus::Rejected).await;
    assert!(request.problem.as_deref().unwrap().contains("$10.00 is more than the $5.00"), "{:?}", request.problem);
    // Where they typed it: the "Got it" answer is replaced by the refusal; no DM.
    let answer = wait_for(DEADLINE, || app.replaced_answers().pop()).await.expect("told privately");
    assert!(answer.contains(&id.to_string()) && answer.contains("$5.00"), "{answer}");
    app.wait_until_idle().await;
    assert!(app.direct_messages(REQUESTER).is_empty(), "{:?}", app.direct_messages(REQUESTER));
    assert!(app.slack.messages_in(FINANCE).is_empty(), "no card for a refused request");
    assert!(app.stripe.refund_posts().is_empty());
}

#[tokio::test]
async fn unknown_fully_refunded_and_disputed_charges_are_refused_with_the_reason() {
    let app = TestApp::spawn().await;
    let refunded = app.add_charge(ChargeSpec { amount_refunded: 2500, ..ChargeSpec::default() });
    let disputed = app.add_charge(ChargeSpec { disputed: true, ..ChargeSpec::default() });
    for (target, reason) in [
        ("ch_3DoesNotExist", "Stripe has no charge"),
        (refunded.as_str(), "already fully refunded"),
        (disputed.as_str(), "disputed"),
    ] {
        let id = app.request_refund(&format!("{target} full")).await;
        let r = app.wait_for_status(id, RequestStatus::Rejected).await;
        assert!(r.problem.as_deref().unwrap().contains(reason), "{target}: {:?}", r.problem);
    }
    app.wait_until_idle().await;
    assert!(app.stripe.refund_posts().is_empty());
}

#[tokio::test]
async fn too_many_decimals_for_the_charge_currency_is_refused() {
    let app = TestApp::spawn().await;
    let yen = app.add_charge(ChargeSpec { amount: 5000, currency: "jpy".into(), ..ChargeSpec::default() });
    let id = app.request_refund(&format!("{yen} 12.50")).await;
    let r = app.wait_for_status(id, RequestStatus::Rejected).await;
    assert!(r.problem.as_deref().unwrap().contains("too many decimals for JPY"), "{:?}", r.problem);
}

#[tokio::test]
async fn only_the_listed_requesters_may_ask_by_command_or_by_form() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(|s| s.slack.requesters = Some(vec![refund_desk::domain::UserId::parse(REQUESTER).unwrap()])).await;
    let charge = app.add_charge(ChargeSpec::default());
    let answer = app.slash_refund(OUTSIDER, &format!("{charge} 5")).await;
    assert!(answer.contains("not on the list of people who may ask for refunds"), "{answer}");
    let (_, form) = app
        .driver
        .submit_view(
            OUTSIDER,
            refund_desk::slack::views::REQUEST_CALLBACK,
            "C1",
            &[(refund_desk::slack::views::CHARGE_BLOCK, &charge)],
        )
        .await;
    assert!(
        form["errors"][refund_desk::slack::views::CHARGE_BLOCK].as_str().unwrap().contains("not on the list"),
        "{form}"
    );
    assert!(app.store().all_requests().await.unwrap().is_empty());
    app.request_refund(&format!("{charge} 5")).await;
}

#[tokio::test]
async fn a_refusal_goes_by_direct_message_when_slack_no_longer_takes_the_commands_answer() {
    let app = TestApp::spawn().await;
    app.slack.expire_response_urls();
    let charge = app.add_charge(ChargeSpec { amount: 2500, amount_refunded: 2000, ..ChargeSpec::default() });
    let id = app.request_refund(&format!("{charge} 10.00")).await;
    app.wait_for_status(id, RequestStatus::Rejected).await;
    let dm = wait_for(DEADLINE, || app.direct_messages(REQUESTER).pop()).await.expect("told by DM instead");
    assert!(dm.contains(&id.to_string()) && dm.contains("$5.00"), "{dm}");
    assert!(app.replaced_answers().is_empty());
}

#[tokio::test]
async fn list_and_status_call_a_refused_request_refused() {
    let app = TestApp::spawn().await;
    let charge = app.add_charge(ChargeSpec { amount: 2500, amount_refunded: 2000, ..ChargeSpec::default() });
    let id = app.request_refund(&format!("{charge} 10.00")).await;
    app.wait_for_status(id, RequestStatus::Rejected).await;
    let list = app.slash_refund(REQUESTER, "list").await;
    let status = app.slash_refund(REQUESTER, &format!("status {id}")).await;
    for text in [&list, &status] {
        assert!(text.contains("Refused") && !text.to_lowercase().contains("waiting"), "{text}");
    }
}
