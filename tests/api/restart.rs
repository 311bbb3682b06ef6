use crate::helpers::*;
use refund_desk::domain::RequestStatus;
use refund_desk_standins::wait_for;

#[tokio::test]
async fn a_restart_between_approval_and_the_stripe_call_still_refunds_once() {
    let mut app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;

    // Stripe is down when the approval comes: the refund job fails and waits to retry.
    app.stripe.set_refunds_down(true);
    app.approve(APPROVER, id, &card).await;
    app.wait_for_status(id, RequestStatus::Approved).await;
    wait_for(DEADLINE, || (!app.stripe.refund_posts().is_empty()).then_some(())).await.expect("a refund attempt");

    // The desk stops with the approval recorded but no refund made; Stripe comes back.
    app.stop().await;
    assert!(app.stripe.refunds().is_empty());
    app.stripe.set_refunds_down(false);
    app.restart().await;

    app.wait_for_status(id, RequestStatus::Submitted).await;
    app.wait_until_idle().await;
    assert_eq!(app.stripe.refunds().len(), 1, "exactly one refund");
    let keys: std::collections::HashSet<_> = app.stripe.refund_posts().into_iter().map(|p| p.idempotency_key).collect();
    assert_eq!(keys.len(), 1, "every try carried the same idempotency key: {keys:?}");
    assert!(app.thread_texts(&card).iter().any(|t| t.contains("Submitted to Stripe")));
}

#[tokio::test]
async fn a_request_acknowledged_in_slack_is_stored_and_carries_on_after_a_stop_and_restart() {
    // A graceful stop flushes whatever it holds, so this proves the request is stored and picked
    // up again, not that it was on disk when answered: `durability.rs` proves that (every
    // fdatasync held up under strace), and `crash.rs` kills the real binary with SIGKILL.
    let mut app = TestApp::spawn().await;
    let charge = app.add_charge(Default::default());
    let id = app.request_refund(&format!("{charge} 5")).await;
    app.stop().await;
    // Straight from the files (or the database), with no desk running.
    let store = app.open_store_stopped().await;
    assert!(store.get_request(id).await.unwrap().is_some(), "acknowledged means stored");
    drop(store);
    app.restart().await;
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    app.card(id).await;
}
