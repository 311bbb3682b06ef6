use crate::helpers::*;
use refund_desk::domain::RequestStatus;
use refund_desk_standins::wait_for;

#[tokio::test]
async fn denying_with_a_reason_never_calls_stripe_and_tells_everyone_why() {
    let app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;

    assert_eq!(app.click(APPROVER, "refund_deny", id, &card).await, 200);
    let opened = wait_for(DEADLINE, || app.slack.views_opened().pop()).await.expect("the deny form opened");
    assert!(opened["trigger_id"].as_str().unwrap().ends_with(APPROVER), "opened with the click's trigger_id");
    assert_eq!(opened["view"]["private_metadata"], id.to_string());

    let (status, body) = app.driver.submit_deny(APPROVER, &id.to_string(), "Outside the 30-day window").await;
    assert_eq!((status, body.as_str()), (200, ""), "an empty 200 closes the form");
    app.wait_for_status(id, RequestStatus::Denied).await;
    app.wait_until_idle().await;

    assert!(app.stripe.refund_posts().is_empty(), "no refund for a denied request");
    let thread = app.thread_texts(&card).join("\n");
    assert!(thread.contains("Denied by <@U0APPROVE1>") && thread.contains("Outside the 30-day window"), "{thread}");
    assert!(
        app.direct_messages(REQUESTER).iter().any(|m| m.contains("denied") && m.contains("Outside the 30-day window"))
    );
    let blocks = app.slack.message(&card.ts).unwrap().blocks.to_string();
    assert!(!blocks.contains("refund_approve") && blocks.contains("Denied by"), "{blocks}");
    assert!(app.smtp.messages().is_empty());
}

#[tokio::test]
async fn a_denial_without_a_reason_is_refused_on_the_field() {
    let app = TestApp::spawn().await;
    let (id, _card) = app.waiting_request().await;
    let (status, body) = app.driver.submit_deny(APPROVER, &id.to_string(), "   ").await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["response_action"], "errors");
    assert!(body["errors"]["deny_reason_block"].as_str().unwrap().contains("reason"));
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval);
}

#[tokio::test]
async fn the_requester_cannot_approve_their_own_request_even_as_an_approver() {
    let app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;
    app.approve_own_request_and_be_refused(id, &card).await;
    // Nor deny it: the form does not even open.
    assert_eq!(app.click(REQUESTER, "refund_deny", id, &card).await, 200);
    wait_for(DEADLINE, || (app.slack.ephemerals().len() == 2).then_some(())).await.expect("told again");
    assert!(app.slack.views_opened().is_empty());
}

#[tokio::test]
async fn someone_who_is_not_an_approver_cannot_approve() {
    let app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;
    app.approve(OUTSIDER, id, &card).await;
    let note = wait_for(DEADLINE, || app.slack.ephemerals().pop()).await.expect("told privately");
    assert_eq!(note["user"], OUTSIDER);
    assert!(note["text"].as_str().unwrap().contains("Only finance approvers"), "{note}");
    app.wait_until_idle().await;
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval);
    assert!(app.stripe.refund_posts().is_empty());
    assert_eq!(app.store().audit_of(id).await.unwrap().len(), 2, "created and sent for approval; nothing more");
}

#[tokio::test]
async fn two_approvals_at_the_same_moment_refund_once() {
    let app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;
    let (a, b) = tokio::join!(
        app.click(APPROVER, "refund_approve", id, &card),
        app.click(APPROVER_2, "refund_approve", id, &card)
    );
    assert_eq!((a, b), (200, 200));
    app.wait_for_status(id, RequestStatus::Submitted).await;
    app.wait_until_idle().await;
    assert_eq!(app.stripe.refund_posts().len(), 1, "exactly one refund call");
    assert_eq!(app.stripe.refunds().len(), 1);
    let loser = wait_for(DEADLINE, || app.slack.ephemerals().pop()).await.expect("the second approver is told");
    assert!(loser["text"].as_str().unwrap().contains("no longer waiting"), "{loser}");
    let approvals = app.store().audit_of(id).await.unwrap().iter().filter(|e| e.to == RequestStatus::Approved).count();
    assert_eq!(approvals, 1);
}

#[tokio::test]
async fn a_second_approver_clicking_after_the_first_is_told_it_is_decided_and_nothing_is_refunded_twice() {
    let app = TestApp::spawn().await;
    let (id, card) = app.submitted_request().await;
    // Another approver, who may approve: only the request's status can refuse them.
    app.approve(APPROVER_2, id, &card).await;
    let told = wait_for(DEADLINE, || {
        app.slack
            .ephemerals()
            .into_iter()
            .find(|e| e["user"] == APPROVER_2 && e["text"].as_str().is_some_and(|t| t.contains("no longer waiting")))
    })
    .await
    .expect("the second approver is told");
    assert!(told["text"].as_str().unwrap().contains(&format!("<@{APPROVER}>")), "{told}");
    app.wait_until_idle().await;
    assert_eq!(app.stripe.refund_posts().len(), 1);
    let approvals =
        app.store().audit_of(id).await.unwrap().into_iter().filter(|e| e.to == RequestStatus::Approved).count();
    assert_eq!(approvals, 1, "one approval in the audit trail");
}
