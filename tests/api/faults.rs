use crate::helpers::*;
use refund_desk::domain::RequestStatus;
use refund_desk::standins::stripe::Fault;

#[tokio::test]
async fn a_slack_rate_limit_delays_the_card_but_posts_it_once() {
    let app = TestApp::spawn().await;
    app.slack.fail_next("chat.postMessage", 429, serde_json::json!({ "ok": false, "error": "ratelimited" }));
    let (id, _card) = app.waiting_request().await;
    app.wait_until_idle().await;
    let cards = app.slack.messages_in(FINANCE);
    assert_eq!(cards.len(), 1, "one card, after the 429");
    assert_eq!(app.slack.calls("chat.postMessage").len(), 2, "the 429, then the post");
    assert_eq!(app.request(id).card.unwrap().ts, cards[0].ts);
}

#[tokio::test]
async fn a_stripe_server_error_is_retried_with_the_same_key_and_refunds_once() {
    let app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;
    app.stripe.fail_next_refund(Fault::Status(500));
    app.stripe.fail_next_refund(Fault::Status(429));
    app.approve(APPROVER, id, &card).await;
    app.wait_for_status(id, RequestStatus::Submitted).await;
    app.wait_until_idle().await;
    let posts = app.stripe.refund_posts();
    assert_eq!(posts.len(), 3, "500, 429, then success");
    assert!(posts.windows(2).all(|w| w[0].idempotency_key == w[1].idempotency_key && w[0].form == w[1].form));
    assert_eq!(app.stripe.refunds().len(), 1);
}

#[tokio::test]
async fn stripe_refusing_the_refund_ends_the_request_with_stripes_message() {
    let app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;
    // Someone refunds the charge in the Stripe dashboard before finance approves.
    let charge = app.request(id).charge.unwrap().charge;
    let outside = reqwest::Client::new()
        .post(format!("{}/v1/refunds", app.stripe.url))
        .bearer_auth(refund_desk::standins::driver::STRIPE_KEY)
        .form(&[("charge", charge.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status(), 200);
    app.approve(APPROVER, id, &card).await;
    let r = app.wait_for_status(id, RequestStatus::Failed).await;
    assert!(r.problem.as_deref().unwrap().contains("has already been refunded"), "{:?}", r.problem);
    app.wait_until_idle().await;
    assert!(app.thread_texts(&card).iter().any(|t| t.contains("has already been refunded")));
    assert!(app.direct_messages(REQUESTER).iter().any(|m| m.contains("failed")));
    assert_eq!(app.stripe.refunds().len(), 1, "only the dashboard's refund");
}
