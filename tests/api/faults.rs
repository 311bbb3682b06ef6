use crate::helpers::*;
use refund_desk::domain::RequestStatus;
use refund_desk_standins::stripe::Fault;
use refund_desk_standins::{ChargeSpec, wait_for};

#[tokio::test]
async fn a_slack_rate_limit_delays_the_card_but_posts_it_once() {
    let app = TestApp::spawn().await;
    app.slack.fail_next("chat.postMessage", 429, serde_json::json!({ "ok": false, "error": "ratelimited" }));
    let (id, _card) = app.waiting_request().await;
    app.wait_until_idle().await;
    let cards = app.slack.messages_in(FINANCE);
    assert_eq!(cards.len(), 1, "one card, after the 429");
    let to_finance = app.slack.calls("chat.postMessage").into_iter().filter(|c| c.body["channel"] == FINANCE).count();
    assert_eq!(to_finance, 2, "the 429, then the post");
    assert_eq!(app.request(id).await.card.unwrap().ts, cards[0].ts);
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
    let charge = app.request(id).await.charge.unwrap().charge;
    app.stripe.refund_made_outside(charge.as_str(), None, &[]);
    app.approve(APPROVER, id, &card).await;
    let r = app.wait_for_status(id, RequestStatus::Failed).await;
    assert!(r.problem.as_deref().unwrap().contains("has already been refunded"), "{:?}", r.problem);
    app.wait_until_idle().await;
    assert!(app.thread_texts(&card).iter().any(|t| t.contains("has already been refunded")));
    assert!(app.direct_messages(REQUESTER).iter().any(|m| m.contains("failed")));
    assert_eq!(app.stripe.refunds().len(), 1, "only the dashboard's refund");
}

fn short_stripe_timeout(settings: &mut refund_desk::config::Settings) {
    // Well under the stand-in's 2 s hang, well over a loaded machine's ordinary call.
    settings.stripe.timeout = std::time::Duration::from_secs(1);
}

/// Approves a fresh request and waits for it to reach Stripe and be recorded.
async fn approve_through(app: &TestApp) -> refund_desk::domain::RequestId {
    let (id, _card) = app.submitted_request().await;
    app.wait_until_idle().await;
    id
}

/// One refund, however many tries it took (at least `tries`: a loaded machine may time out more).
fn assert_one_refund_with_one_key(app: &TestApp, tries: usize) {
    let posts = app.stripe.refund_posts();
    assert!(posts.len() >= tries, "{posts:?}");
    assert!(posts.windows(2).all(|w| w[0].idempotency_key == w[1].idempotency_key && w[0].form == w[1].form));
    assert_eq!(app.stripe.refunds().len(), 1, "exactly one refund");
}

#[tokio::test]
async fn a_stripe_call_that_hangs_past_the_timeout_is_retried_and_refunds_once() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(short_stripe_timeout).await;
    app.stripe.fail_next_refund(Fault::Hang(std::time::Duration::from_secs(2)));
    approve_through(&app).await;
    // The hung call was applied late by the stand-in too; the key made the retry a replay.
    wait_for_posts(&app, 2).await;
    assert_one_refund_with_one_key(&app, 2);
}

#[tokio::test]
async fn a_refund_applied_then_cut_off_is_replayed_not_repeated() {
    let app = TestApp::spawn().await;
    app.stripe.fail_next_refund(Fault::ApplyThenDrop);
    let id = approve_through(&app).await;
    assert_one_refund_with_one_key(&app, 2);
    let refund = &app.stripe.refunds()[0];
    assert_eq!(app.request(id).await.refund.unwrap().id.as_str(), refund["id"].as_str().unwrap());
}

#[tokio::test]
async fn a_refund_applied_while_the_client_gave_up_is_replayed_not_repeated() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(short_stripe_timeout).await;
    app.stripe.fail_next_refund(Fault::ApplyThenHang(std::time::Duration::from_secs(2)));
    approve_through(&app).await;
    assert_one_refund_with_one_key(&app, 2);
}

#[tokio::test]
async fn after_stripe_forgets_the_key_a_retry_finds_the_refund_instead_of_making_another() {
    let mut app = TestApp::spawn().await;
    // Every retry counts as "older than Stripe keeps keys".
    app.reconfigure(|s| s.stripe.idempotency_horizon = std::time::Duration::ZERO).await;
    app.stripe.fail_next_refund(Fault::ApplyThenDrop);
    app.stripe.forget_idempotency_keys();
    let (id, card) = app.waiting_request().await;
    let charge_refunds =
        || app.stripe.received().into_iter().filter(|r| r.method == "GET" && r.path == "/v1/refunds").count();
    // The first call makes the refund and is cut off; Stripe keeps no key to replay.
    app.approve(APPROVER, id, &card).await;
    app.wait_for_status(id, RequestStatus::Submitted).await;
    app.wait_until_idle().await;
    assert_eq!(app.stripe.refunds().len(), 1, "found, not made again");
    assert!(charge_refunds() >= 1, "the desk looked for an existing refund");
}

#[tokio::test]
async fn a_lost_webhook_is_made_good_by_reading_the_refund_back() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(|s| s.stripe.pending_check_after = std::time::Duration::from_millis(300)).await;
    let (id, _card) = app.submitted_request().await;
    // Stripe settles the refund, but its webhook never arrives.
    let refund = app.request(id).await.refund.unwrap().id;
    app.stripe.refund_event(refund.as_str(), "refund.updated", "succeeded", None).unwrap();
    app.wait_for_status(id, RequestStatus::Succeeded).await;
    assert!(app.stripe.received().iter().any(|r| r.path == format!("/v1/refunds/{refund}")));
    wait_for(DEADLINE, || (app.smtp.messages().len() == 1).then_some(())).await.expect("the customer is emailed");
}

async fn wait_for_posts(app: &TestApp, n: usize) {
    wait_for(DEADLINE, || (app.stripe.refund_posts().len() >= n).then_some(())).await.expect("refund calls");
}

#[tokio::test]
async fn a_reply_whose_post_was_recorded_is_not_posted_again_when_its_job_reruns() {
    let app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;
    let ctx = app.app.as_ref().unwrap().context();
    let now = chrono::Utc::now();
    let job = |posted: Option<&str>| refund_desk::storage::Job {
        id: 1,
        request_id: id,
        effect: refund_desk::domain::Effect::ThreadReply(refund_desk::domain::Notice::Submitted),
        attempts: 0,
        not_before: now,
        created_at: now,
        last_error: None,
        parked: false,
        posted_ts: posted.map(str::to_string),
    };
    let before = app.slack.thread(&card.ts).len();
    // A crash after Slack answered and the ts was recorded, but before the job was completed.
    refund_desk::worker::handlers::run(&ctx, &job(Some("1700000000.000999"))).await.unwrap();
    assert_eq!(app.slack.thread(&card.ts).len(), before, "not posted twice");
    refund_desk::worker::handlers::run(&ctx, &job(None)).await.unwrap();
    assert_eq!(app.slack.thread(&card.ts).len(), before + 1, "control: a fresh job posts");
}

#[tokio::test]
async fn a_job_that_runs_out_of_attempts_is_parked_reported_and_can_be_retried() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(|s| s.jobs.max_attempts = 2).await;
    let (id, card) = app.waiting_request().await;
    app.stripe.set_refunds_down(true);
    app.approve(APPROVER, id, &card).await;

    // Two tries, then parked, never deleted; finance is told in the card's thread.
    let store = app.store();
    let parked = wait_for_async(DEADLINE, || async { store.all_jobs().await.unwrap().into_iter().find(|j| j.parked) })
        .await
        .expect("parked");
    assert_eq!(parked.attempts, 2);
    assert_eq!(app.stripe.refund_posts().len(), 2);
    let alert = wait_for(DEADLINE, || app.thread_texts(&card).into_iter().find(|t| t.contains("is stuck")))
        .await
        .expect("alert");
    assert!(
        alert.contains("creating the refund at Stripe")
            && alert.contains(&format!("refund-desk jobs retry {}", parked.id)),
        "{alert}"
    );
    assert_eq!(app.request(id).await.status, RequestStatus::Approved, "nothing was lost");

    // Stripe is back; a person retries the job.
    app.stripe.set_refunds_down(false);
    assert_eq!(store.retry_job(parked.id, chrono::Utc::now()).await.unwrap(), refund_desk::storage::Retry::Queued);
    app.wait_for_status(id, RequestStatus::Submitted).await;
    assert_eq!(app.stripe.refunds().len(), 1);
}

#[tokio::test]
async fn a_permanent_slack_refusal_parks_at_once_and_says_so_in_the_channel() {
    let app = TestApp::spawn().await;
    app.slack.fail_next("chat.postMessage", 200, serde_json::json!({ "ok": false, "error": "not_in_channel" }));
    let charge = app.add_charge(Default::default());
    let id = app.request_refund(&format!("{charge} 5")).await;
    let alert = wait_for(DEADLINE, || app.slack.messages_in(FINANCE).into_iter().find(|m| m.text.contains("is stuck")))
        .await
        .expect("alert");
    assert!(
        alert.text.contains("posting the approval card") && alert.text.contains("not_in_channel"),
        "{}",
        alert.text
    );
    let parked = app.store().all_jobs().await.unwrap().into_iter().find(|j| j.parked).expect("parked");
    assert_eq!(parked.attempts, 1, "a permanent refusal is not retried");
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval);
}

#[tokio::test]
async fn a_finance_channel_that_refuses_the_bot_holds_up_no_requester_message_and_approvers_are_told_by_dm() {
    let app = TestApp::spawn_with_policy("[policy.currency.usd]\nauto_approve_up_to = \"50.00\"\n").await;
    app.slack.remove_bot_from(FINANCE);
    let charge = app.add_charge(ChargeSpec::default());
    let id = app.request_refund(&format!("{charge} 20.00 duplicate charged twice")).await;
    // Auto-approved and refunded, while its card cannot be posted.
    app.wait_for_status(id, RequestStatus::Submitted).await;
    assert_eq!(app.deliver_stripe_event(&app.refund_event(id, "refund.updated", "succeeded").await).await, 200);
    app.wait_for_status(id, RequestStatus::Succeeded).await;
    // The requester hears the outcome: their messages do not wait behind the card.
    let told = wait_for(DEADLINE, || {
        Some(()).filter(|_| {
            app.direct_messages(REQUESTER).iter().any(|m| m.contains(&id.to_string()) && m.contains("succeeded"))
        })
    })
    .await;
    assert!(told.is_some(), "no outcome for the requester: {:?}", app.direct_messages(REQUESTER));
    // The card's job is parked, and the approvers hear of it in a DM that says why.
    for approver in [APPROVER, APPROVER_2] {
        let alerted = wait_for(DEADLINE, || {
            Some(()).filter(|_| {
                app.direct_messages(approver)
                    .iter()
                    .any(|m| m.contains(&id.to_string()) && m.contains("is stuck") && m.contains("not_in_channel"))
            })
        })
        .await;
        assert!(alerted.is_some(), "{approver} was not told: {:?}", app.direct_messages(approver));
    }
    assert!(app.slack.messages_in(FINANCE).is_empty());
}
