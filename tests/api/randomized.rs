//! Many flows with random faults, repeated and concurrent clicks, restarts, and duplicated,
//! reordered webhooks; every invariant is checked after each flow. The seed is printed:
//! `REFUND_DESK_SEED=<seed> cargo test --test api randomized` replays a failure.

use crate::helpers::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use refund_desk::domain::{Actor, RequestId, RequestStatus, UserId};
use refund_desk_standins::ChargeSpec;
use refund_desk_standins::stripe::Fault;
use std::collections::HashMap;

const POLICY: &str = r#"
[policy]
always_require_approval = ["goodwill"]
[policy.currency.usd]
auto_approve_up_to = "20.00"
second_approval_from = "800.00"
max_amount = "1500.00"
"#;

/// Where each status stands in a request's life; transitions never go back.
fn order(s: RequestStatus) -> u8 {
    use RequestStatus::*;
    match s {
        Requested => 0,
        AwaitingApproval => 1,
        Approved => 2,
        Submitted => 3,
        Pending => 4,
        Succeeded => 5,
        Failed | Canceled => 6,
        Denied | Rejected | Withdrawn | Expired => 7,
    }
}

/// What the test expects of a request once all is quiet.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Refunded(RequestStatus),
    NoRefund,
}

async fn check_invariants(app: &TestApp, expectations: &HashMap<RequestId, Expect>, seed: u64) {
    let store = app.store();
    // 7. The audit trail's chain is intact, whatever raced.
    assert_eq!(store.verify_audit().await.unwrap().problem, None, "seed {seed}");
    let approvers: Vec<UserId> = [APPROVER, APPROVER_2, REQUESTER].iter().map(|u| UserId::parse(u).unwrap()).collect();
    for (id, expect) in expectations {
        let r = store.get_request(*id).await.unwrap().unwrap();
        let refunds = app.stripe.refunds_for(&id.to_string());
        let emails = r
            .refund
            .as_ref()
            .map_or(0, |f| app.smtp.messages().iter().filter(|m| m.body().contains(f.id.as_str())).count());
        let ctx = format!("seed {seed}, {id} ({:?}, expected {expect:?})", r.status);
        // 1. At most one refund per request; exactly one when it was approved.
        match expect {
            Expect::Refunded(final_status) => {
                assert_eq!(refunds.len(), 1, "{ctx}: one refund");
                assert_eq!(r.status, *final_status, "{ctx}: final status");
            }
            Expect::NoRefund => {
                assert!(refunds.is_empty(), "{ctx}: no refund; audit {:#?}", store.audit_of(*id).await.unwrap())
            }
        }
        // 4. At most one email, and only after Stripe said succeeded.
        assert!(emails <= 1, "{ctx}: {emails} emails");
        if emails == 1 {
            assert!(
                matches!(r.status, RequestStatus::Succeeded | RequestStatus::Failed),
                "{ctx}: emailed before success"
            );
        }
        if r.status == RequestStatus::Succeeded {
            assert_eq!(emails, 1, "{ctx}: the customer was emailed");
        }
        // 5. Statuses only move forward; 3. approvals as the policy asks, never by the requester.
        let audit = store.audit_of(*id).await.unwrap();
        assert_eq!(audit[0].to, RequestStatus::Requested, "{ctx}");
        for pair in audit.windows(2) {
            assert_eq!(pair[0].to, pair[1].from, "{ctx}: the trail is unbroken");
            assert!(order(pair[1].to) >= order(pair[1].from), "{ctx}: {:?} → {:?}", pair[1].from, pair[1].to);
        }
        let approvals: Vec<_> = audit
            .iter()
            .filter(|e| {
                e.from == RequestStatus::AwaitingApproval
                    && matches!(e.to, RequestStatus::AwaitingApproval | RequestStatus::Approved)
            })
            .collect();
        for a in &approvals {
            let Actor::User(u) = &a.actor else { panic!("{ctx}: approved by {:?}", a.actor) };
            assert!(*u != r.requester && approvers.contains(u), "{ctx}: approved by {u}");
        }
        if order(r.status) >= order(RequestStatus::Approved) && order(r.status) <= order(RequestStatus::Failed) {
            let by_policy = audit.iter().any(|e| e.actor == Actor::Policy && e.to == RequestStatus::Approved);
            assert!(
                by_policy || approvals.len() >= usize::from(r.required_approvals),
                "{ctx}: {} approvals",
                approvals.len()
            );
        }
    }
}

#[tokio::test]
async fn random_flows_with_faults_keep_every_invariant() {
    let seed: u64 = std::env::var("REFUND_DESK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let flows: usize = std::env::var("REFUND_DESK_FLOWS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    println!("randomized: seed {seed} (REFUND_DESK_SEED={seed} replays it), {flows} flows");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut app = TestApp::spawn_with_policy(POLICY).await;
    let mut expectations = HashMap::new();

    for flow in 0..flows {
        let amount = rng.random_range(1_000..=200_000u64);
        let charge = app.add_charge(ChargeSpec { amount, ..ChargeSpec::default() });
        let asked = if rng.random_bool(0.3) {
            "full".to_string()
        } else {
            format!("{}.{:02}", rng.random_range(1..=amount / 100), rng.random_range(0..100))
        };
        let reason = ["duplicate", "customer", "goodwill", "fraud"][rng.random_range(0..4)];
        // Faults that may hit this flow.
        for _ in 0..rng.random_range(0..3) {
            let fault = [Fault::Status(500), Fault::Status(429), Fault::Status(503), Fault::ApplyThenDrop]
                [rng.random_range(0..4)]
            .clone();
            app.stripe.fail_next_refund(fault);
        }
        if rng.random_bool(0.3) {
            app.slack.fail_next("chat.postMessage", 429, serde_json::json!({ "ok": false, "error": "ratelimited" }));
        }

        let id = app.request_refund(&format!("{charge} {asked} {reason}")).await;
        let status = {
            // Not held across a restart: sled allows one opener.
            let store = app.store();
            wait_for_async(DEADLINE, || async {
                store.get_request(id).await.unwrap().map(|r| r.status).filter(|s| *s != RequestStatus::Requested)
            })
            .await
            .unwrap_or_else(|| panic!("seed {seed}: flow {flow} stuck checking"))
        };
        if rng.random_bool(0.2) {
            app.restart().await;
        }
        // Auto-approved requests may already be at Stripe by now.
        let mut approved = matches!(status, RequestStatus::Approved | RequestStatus::Submitted);
        if status == RequestStatus::AwaitingApproval {
            let card = app.card(id).await;
            if rng.random_bool(0.25) {
                // A denial racing a click by the requester.
                let id_text = id.to_string();
                let (deny, _) = tokio::join!(
                    app.driver.submit_deny(APPROVER, &id_text, "not eligible"),
                    app.click(REQUESTER, "refund_approve", id, &card)
                );
                assert_eq!(deny.0, 200);
            } else {
                // Concurrent and repeated clicks by everyone.
                let (a, b, c) = tokio::join!(
                    app.click(APPROVER, "refund_approve", id, &card),
                    app.click(APPROVER_2, "refund_approve", id, &card),
                    app.click(REQUESTER, "refund_approve", id, &card)
                );
                assert_eq!((a, b, c), (200, 200, 200));
                if rng.random_bool(0.3) {
                    app.click(APPROVER, "refund_approve", id, &card).await;
                }
                approved = true;
            }
        }
        if !approved {
            app.wait_until_idle().await;
            expectations.insert(id, Expect::NoRefund);
            check_invariants(&app, &expectations, seed).await;
            continue;
        }
        app.wait_for_status(id, RequestStatus::Submitted).await;
        if rng.random_bool(0.2) {
            app.restart().await;
        }
        // Stripe's events: shuffled, some twice.
        let final_status = if rng.random_bool(0.15) { "failed" } else { "succeeded" };
        let refund = app.request(id).await.refund.unwrap().id;
        let mut events = vec![
            app.stripe.refund_event(refund.as_str(), "refund.created", "pending", None).unwrap(),
            app.stripe.refund_event(refund.as_str(), "refund.updated", final_status, None).unwrap(),
        ];
        if final_status == "succeeded" {
            events.push(app.stripe.refund_event(refund.as_str(), "charge.refunded", "succeeded", None).unwrap());
        }
        let repeats: Vec<_> = events.iter().filter(|_| rng.random_bool(0.4)).cloned().collect();
        events.extend(repeats);
        events.shuffle(&mut rng);
        for event in &events {
            assert_eq!(app.deliver_stripe_event(event).await, 200, "seed {seed}");
        }
        let expected = if final_status == "failed" { RequestStatus::Failed } else { RequestStatus::Succeeded };
        app.wait_for_status(id, expected).await;
        app.wait_until_idle().await;
        expectations.insert(id, Expect::Refunded(expected));
        check_invariants(&app, &expectations, seed).await;
    }
}
