//! The storage contract: one suite, run unchanged against every engine. Each test below is a
//! function of a [`Store`]; the `contract!` macro runs it on sled (always) and on PostgreSQL
//! (in a schema of its own, when `REFUND_DESK_TEST_DATABASE_URL` names a database).

use super::*;
use crate::domain::request::tests::{approvers, charge_facts, one_approval, user};
use crate::domain::{Currency, DecisionError, Notice, PaymentRef, RefundReason};
use chrono::Duration as Span;
use std::collections::HashSet;

fn usd(cents: u64) -> Money {
    Money::new(cents, Currency::parse("usd").unwrap())
}

fn new_request(charge: &str) -> NewRequest {
    NewRequest::full_refund(user("UREQ"), "C1", PaymentRef::parse(charge).unwrap(), RefundReason::Duplicate)
}

/// A request checked against a `charge` of $25.00 and awaiting approval, for `cents`.
async fn waiting(store: &Store, charge: &str, cents: u64) -> RefundRequest {
    let r = store.insert_request(new_request(charge), Utc::now()).await.unwrap();
    let now = Utc::now();
    let facts = charge_facts(charge, 2500);
    let moved = store
        .transition(r.id, now, |r| r.accept(facts.clone(), usd(cents), one_approval(), now).map(Some))
        .await
        .unwrap();
    moved.unwrap().unwrap()
}

/// Every job due now, in every lane, as one runner would ask.
async fn due_now(store: &Store, running: &HashSet<u64>) -> Vec<Job> {
    let wanted: Vec<_> = Lane::ALL.iter().map(|&l| (l, 100)).collect();
    store.due_jobs(&wanted, Utc::now(), running).await.unwrap().jobs
}

async fn a_new_request_is_numbered_audited_and_queued(store: Store) {
    let a = store.insert_request(new_request("ch_1"), Utc::now()).await.unwrap();
    let b = store.insert_request(new_request("ch_1"), Utc::now()).await.unwrap();
    assert_eq!(a.id.to_string(), "R-1001", "numbers start at 1001");
    assert_eq!(b.id.number(), a.id.number() + 1);
    assert_eq!(store.get_request(a.id).await.unwrap(), Some(a.clone()));
    let audit = store.audit_of(a.id).await.unwrap();
    assert_eq!((audit.len(), audit[0].to), (1, RequestStatus::Requested));
    let effects: Vec<Effect> =
        store.all_jobs().await.unwrap().into_iter().filter(|j| j.request_id == a.id).map(|j| j.effect).collect();
    assert_eq!(effects, [Effect::CheckPayment, Effect::RefreshHomes]);
    assert_eq!(store.totals_on(Utc::now().date_naive()).await.unwrap().0, 2);
}

async fn a_refused_or_empty_change_writes_nothing(store: Store) {
    let r = waiting(&store, "ch_1", 2500).await;
    let jobs = store.all_jobs().await.unwrap().len();
    let audit = store.audit_of(r.id).await.unwrap().len();
    let now = Utc::now();
    // The requester may not approve their own request: refused, and nothing written.
    let refused = store
        .transition(r.id, now, |r| {
            r.approve(&user("UREQ"), &approvers(), &crate::domain::Approval::default(), now).map(Some)
        })
        .await;
    assert!(matches!(refused.unwrap(), Err(DecisionError::OwnRequest(_))));
    let nothing = store.transition(r.id, now, |_| Ok::<_, ()>(None)).await.unwrap();
    assert_eq!(nothing, Ok(None));
    assert_eq!(store.get_request(r.id).await.unwrap(), Some(r.clone()));
    assert_eq!(store.all_jobs().await.unwrap().len(), jobs);
    assert_eq!(store.audit_of(r.id).await.unwrap().len(), audit);
    let missing = store.transition(RequestId::new(99), now, |_| Ok::<_, ()>(None)).await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))));
}

async fn a_transition_writes_the_request_its_audit_entry_and_its_jobs_together(store: Store) {
    let r = waiting(&store, "ch_1", 2500).await;
    let now = Utc::now();
    let moved = store
        .transition(r.id, now, |r| {
            r.approve(&user("UFIN"), &approvers(), &crate::domain::Approval::default(), now).map(Some)
        })
        .await;
    let moved = moved.unwrap().unwrap().unwrap();
    assert_eq!(moved.status, RequestStatus::Approved);
    assert_eq!(store.get_request(r.id).await.unwrap().unwrap().status, RequestStatus::Approved);
    let last = store.audit_of(r.id).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.from, last.to, last.actor),
        (RequestStatus::AwaitingApproval, RequestStatus::Approved, Actor::User(user("UFIN")))
    );
    let effects: Vec<Effect> =
        store.all_jobs().await.unwrap().into_iter().filter(|j| j.request_id == r.id).map(|j| j.effect).collect();
    assert!(effects.contains(&Effect::CreateRefund), "{effects:?}");
    assert!(effects.contains(&Effect::RefreshHomes), "App Home's refresh comes with every transition");
    assert_eq!(store.requests_with_status(RequestStatus::Approved, 10).await.unwrap().len(), 1);
    assert!(store.requests_with_status(RequestStatus::AwaitingApproval, 10).await.unwrap().is_empty());
}

async fn twenty_concurrent_approvals_move_the_request_once(store: Store) {
    let r = waiting(&store, "ch_1", 2500).await;
    let tasks: Vec<_> = (0..20)
        .map(|n| {
            let store = store.clone();
            let approver = if n % 2 == 0 { "UFIN" } else { "UFIN2" };
            tokio::spawn(async move {
                let approvers =
                    crate::domain::Authority::of(crate::domain::Approvers::new([user("UFIN"), user("UFIN2")]));
                let now = Utc::now();
                store
                    .transition(r.id, now, |r| {
                        r.approve(&user(approver), &approvers, &crate::domain::Approval::default(), now).map(Some)
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut moved = 0;
    for task in tasks {
        if let Ok(Some(_)) = task.await.unwrap() {
            moved += 1;
        }
    }
    assert_eq!(moved, 1, "one approval moved it; the others found it approved");
    let approvals: Vec<_> =
        store.audit_of(r.id).await.unwrap().into_iter().filter(|e| e.to == RequestStatus::Approved).collect();
    assert_eq!(approvals.len(), 1);
    let refunds = store.all_jobs().await.unwrap().into_iter().filter(|j| j.effect == Effect::CreateRefund).count();
    assert_eq!(refunds, 1, "one refund job");
}

async fn two_requests_on_one_charge_cannot_both_count_on_the_same_money(store: Store) {
    // $25.00 on the charge; two requests for $20.00 each, accepted at the same time.
    let a = store.insert_request(new_request("ch_shared"), Utc::now()).await.unwrap();
    let b = store.insert_request(new_request("ch_shared"), Utc::now()).await.unwrap();
    let charge = ChargeId::parse("ch_shared").unwrap();
    let accept = |id: RequestId| {
        let (store, charge) = (store.clone(), charge.clone());
        tokio::spawn(async move {
            let now = Utc::now();
            let facts = charge_facts("ch_shared", 2500);
            store
                .transition_on_charge(id, &charge, now, |r, holds| {
                    let held: u64 = holds.iter().map(|h| h.amount.minor()).sum();
                    if held + 2000 > 2500 {
                        return Err("not enough left");
                    }
                    r.accept(facts.clone(), usd(2000), one_approval(), now).map(Some).map_err(|_| "state")
                })
                .await
                .unwrap()
        })
    };
    let (ra, rb) = tokio::join!(accept(a.id), accept(b.id));
    let outcomes = [ra.unwrap(), rb.unwrap()];
    assert_eq!(outcomes.iter().filter(|o| matches!(o, Ok(Some(_)))).count(), 1, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| **o == Err("not enough left")).count(), 1, "{outcomes:?}");
}

async fn only_the_head_of_a_lane_is_handed_out_and_then_the_next(store: Store) {
    let r = store.insert_request(new_request("ch_1"), Utc::now()).await.unwrap();
    store.enqueue(r.id, &[Effect::PostCard, Effect::RefreshCard, Effect::CreateRefund], Utc::now()).await.unwrap();
    let first = due_now(&store, &HashSet::new()).await;
    let mut kinds: Vec<_> = first.iter().map(|j| j.effect.clone()).collect();
    kinds.sort_by_key(|e| e.lane());
    assert_eq!(kinds, [Effect::CheckPayment, Effect::PostCard, Effect::RefreshHomes]);
    let running: HashSet<u64> = first.iter().map(|j| j.id).collect();
    assert!(due_now(&store, &running).await.is_empty(), "a lane runs one job at a time");
    for job in &first {
        store.complete_job(job).await.unwrap();
    }
    let next: Vec<_> = due_now(&store, &HashSet::new()).await.into_iter().map(|j| j.effect).collect();
    assert!(next.contains(&Effect::CreateRefund) && next.contains(&Effect::RefreshCard), "{next:?}");
}

async fn a_job_put_off_is_due_at_its_time_and_keeps_the_message_it_posted(store: Store) {
    let r = store.insert_request(new_request("ch_1"), Utc::now()).await.unwrap();
    let check = store.all_jobs().await.unwrap().into_iter().find(|j| j.request_id == r.id).unwrap();
    store.record_job_posted(&check, "1700000000.000042").await.unwrap();
    let mut later = check.clone();
    later.attempts = 1;
    later.last_error = Some("Stripe answered 500".into());
    later.not_before = Utc::now() + Span::minutes(5);
    store.reschedule_job(&later).await.unwrap();
    let stored = store.find_job(check.id).await.unwrap().unwrap();
    assert_eq!((stored.attempts, stored.posted_ts.as_deref()), (1, Some("1700000000.000042")));
    let found = store.due_jobs(&[(Lane::Stripe, 10)], Utc::now(), &HashSet::new()).await.unwrap();
    assert!(found.jobs.is_empty());
    assert_eq!(found.next.map(|n| n.timestamp_millis()), Some(later.not_before.timestamp_millis()));
    let at = later.not_before + Span::seconds(1);
    let due = store.due_jobs(&[(Lane::Stripe, 10)], at, &HashSet::new()).await.unwrap().jobs;
    assert_eq!(due.iter().map(|j| j.id).collect::<Vec<_>>(), [check.id]);
}

async fn a_parked_job_waits_for_a_person_to_retry_it(store: Store) {
    let r = store.insert_request(new_request("ch_1"), Utc::now()).await.unwrap();
    let mut job = store.all_jobs().await.unwrap().into_iter().find(|j| j.request_id == r.id).unwrap();
    job.parked = true;
    job.attempts = 12;
    store.reschedule_job(&job).await.unwrap();
    assert!(store.due_jobs(&[(Lane::Stripe, 10)], Utc::now(), &HashSet::new()).await.unwrap().jobs.is_empty());
    assert_eq!(store.retry_job(job.id, Utc::now()).await.unwrap(), Retry::Queued);
    let again = store.find_job(job.id).await.unwrap().unwrap();
    assert_eq!((again.attempts, again.parked), (0, false));
    let due = store.due_jobs(&[(Lane::Stripe, 10)], Utc::now(), &HashSet::new()).await.unwrap().jobs;
    assert_eq!(due.len(), 1);
    // Now handed out (running): a retry leaves it alone rather than queue it a second time.
    assert_eq!(store.retry_job(job.id, Utc::now()).await.unwrap(), Retry::NotParked);
    assert_eq!(store.find_job(job.id).await.unwrap().unwrap(), again);
    assert_eq!(store.retry_job(999_999, Utc::now()).await.unwrap(), Retry::NoSuchJob);
}

fn refund_news(refund: &str, request: RequestId, status: &str) -> RefundUpdate {
    RefundUpdate {
        refund: RefundId::parse(refund).unwrap(),
        status: status.into(),
        failure_reason: None,
        request_hint: Some(request),
        install: None,
        charge: Some(ChargeId::parse("ch_1").unwrap()),
        payment_intent: None,
        amount: Some(usd(2500)),
    }
}

/// A request approved and submitted to Stripe as refund `re_1`.
async fn submitted(store: &Store) -> RefundRequest {
    let r = waiting(store, "ch_1", 2500).await;
    let now = Utc::now();
    store
        .transition(r.id, now, |r| {
            r.approve(&user("UFIN"), &approvers(), &crate::domain::Approval::default(), now).map(Some)
        })
        .await
        .unwrap()
        .unwrap();
    store.submit_refund(r.id, RefundId::parse("re_1").unwrap(), "pending", now).await.unwrap().unwrap()
}

async fn a_stripe_event_delivered_twice_at_once_is_applied_once(store: Store) {
    let r = submitted(&store).await;
    let news = [refund_news("re_1", r.id, "succeeded")];
    let deliver = || {
        let (store, news) = (store.clone(), news.clone());
        tokio::spawn(async move { store.apply_stripe_event("evt_1", &news, Utc::now()).await.unwrap() })
    };
    let (a, b) = tokio::join!(deliver(), deliver());
    let mut outcomes = [a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|o| *o == EventOutcome::Duplicate);
    assert_eq!(outcomes[0], EventOutcome::Applied(vec![RefundOutcome::Moved(r.id, RequestStatus::Succeeded)]));
    assert_eq!(outcomes[1], EventOutcome::Duplicate);
    assert!(store.stripe_event_seen("evt_1").await.unwrap());
    let succeeded = store.audit_of(r.id).await.unwrap().into_iter().filter(|e| e.to == RequestStatus::Succeeded);
    assert_eq!(succeeded.count(), 1);
    let today = store.totals_on(Utc::now().date_naive()).await.unwrap().1;
    assert_eq!(today, [usd(2500)], "the day's refunded total counts it once");
}

async fn a_refund_made_outside_the_desk_is_recorded_and_announced_once(store: Store) {
    let r = waiting(&store, "ch_1", 1000).await;
    let outside = RefundUpdate { request_hint: None, ..refund_news("re_dash", r.id, "succeeded") };
    let first = store.apply_refund_updates(None, std::slice::from_ref(&outside), Utc::now()).await.unwrap();
    assert_eq!(first, EventOutcome::Applied(vec![RefundOutcome::NotOurs(outside.refund.clone())]));
    let announced = |jobs: &[Job]| {
        jobs.iter().filter(|j| matches!(&j.effect, Effect::ThreadReply(Notice::OutsideRefund { .. }))).count()
    };
    assert_eq!(announced(&store.all_jobs().await.unwrap()), 1);
    assert_eq!(store.outside_refunds().await.unwrap().len(), 1);
    store.apply_refund_updates(None, std::slice::from_ref(&outside), Utc::now()).await.unwrap();
    assert_eq!(announced(&store.all_jobs().await.unwrap()), 1, "seen again: not announced again");
    assert_eq!(store.get_request(r.id).await.unwrap().unwrap().status, RequestStatus::AwaitingApproval);
}

async fn a_refund_made_outside_the_desk_reported_by_two_events_at_once_is_announced_once(store: Store) {
    let r = waiting(&store, "ch_1", 1000).await;
    let outside = RefundUpdate { request_hint: None, ..refund_news("re_dash", r.id, "succeeded") };
    // Stripe sends charge.refunded and refund.created for one refund: two event ids, at once.
    let deliver = |event: &'static str| {
        let (store, outside) = (store.clone(), outside.clone());
        tokio::spawn(async move { store.apply_stripe_event(event, &[outside], Utc::now()).await.unwrap() })
    };
    let (a, b) = tokio::join!(deliver("evt_charge_refunded"), deliver("evt_refund_created"));
    let not_ours = EventOutcome::Applied(vec![RefundOutcome::NotOurs(outside.refund.clone())]);
    assert_eq!((a.unwrap(), b.unwrap()), (not_ours.clone(), not_ours));
    let announced = store
        .all_jobs()
        .await
        .unwrap()
        .into_iter()
        .filter(|j| matches!(&j.effect, Effect::ThreadReply(Notice::OutsideRefund { .. })))
        .count();
    assert_eq!(announced, 1, "announced once, whichever event came first");
}

async fn slack_event_ids_and_alert_claims_are_taken_once(store: Store) {
    let now = Utc::now();
    let takes: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.remember_slack_event("Ev1", now).await.unwrap() })
        })
        .collect();
    let mut fresh = 0;
    for t in takes {
        fresh += usize::from(t.await.unwrap());
    }
    assert_eq!(fresh, 1, "one delivery is the first");
    let hour_ago = now - Span::hours(1);
    assert!(store.claim_alert("stripe/key", 1, hour_ago, now).await.unwrap());
    assert!(!store.claim_alert("stripe/key", 2, hour_ago, now).await.unwrap(), "another job within the hour");
    assert!(store.claim_alert("stripe/key", 1, hour_ago, now).await.unwrap(), "the same job again (its retry)");
    let later = now + Span::hours(2);
    assert!(store.claim_alert("stripe/key", 3, later - Span::hours(1), later).await.unwrap(), "an hour on");
    store.release_alert("stripe/key", 3).await.unwrap();
    assert!(store.claim_alert("stripe/key", 4, later - Span::hours(1), later).await.unwrap(), "released");
    assert_eq!(store.prune_seen_events(now + Span::seconds(1)).await.unwrap(), 1);
    assert!(store.remember_slack_event("Ev1", now).await.unwrap(), "forgotten after the prune");
}

async fn the_audit_chain_stays_a_chain_under_concurrent_writers(store: Store) {
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { waiting(&store, "ch_1", 100).await })
        })
        .collect();
    for r in requests {
        r.await.unwrap();
    }
    let report = store.verify_audit().await.unwrap();
    assert_eq!((report.entries, report.problem), (12, None));
}

async fn the_queries_behind_app_home_and_the_card_read_what_was_written(store: Store) {
    let a = waiting(&store, "ch_1", 500).await;
    let b = waiting(&store, "ch_1", 500).await;
    let other = store.insert_request(new_request("ch_2"), Utc::now()).await.unwrap();
    let (others, more) = store.others_on_payment(&a, 10).await.unwrap();
    assert_eq!((others.iter().map(|r| r.id).collect::<Vec<_>>(), more), (vec![b.id], 0));
    let (shown, more) = store.others_on_payment(&other, 10).await.unwrap();
    assert!(shown.is_empty() && more == 0);
    let mine: Vec<_> = store.requests_of("UREQ", 2).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(mine, [other.id, b.id], "newest first, as many as asked");
    assert!(store.requests_of("UNOBODY", 10).await.unwrap().is_empty());
    let waiting_ids: Vec<_> = store
        .requests_with_status(RequestStatus::AwaitingApproval, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(waiting_ids, [a.id, b.id], "oldest first");
    assert_eq!(store.oldest_open_since().await.unwrap().map(|t| t.timestamp()), Some(a.created_at.timestamp()));
    assert_eq!(store.all_requests().await.unwrap().len(), 3);
    store
        .update_request(a.id, |r| r.card = Some(crate::domain::MessageRef { channel: "C9".into(), ts: "1.2".into() }))
        .await
        .unwrap();
    assert_eq!(store.get_request(a.id).await.unwrap().unwrap().card.map(|c| c.ts), Some("1.2".into()));
}

async fn emails_home_users_and_the_events_cursor_are_kept(store: Store) {
    let r = store.insert_request(new_request("ch_1"), Utc::now()).await.unwrap();
    let record = EmailRecord { to: "j***@example.com".into(), sent_at: Utc::now(), message_id: "<m1@desk>".into() };
    assert_eq!(store.email_sent(r.id, EmailKind::RefundSucceeded).await.unwrap(), None);
    store
        .record_email_sent(r.id, EmailKind::RefundSucceeded, &record, &[Effect::RefreshCard], Utc::now())
        .await
        .unwrap();
    assert_eq!(store.email_sent(r.id, EmailKind::RefundSucceeded).await.unwrap(), Some(record));
    assert!(store.all_jobs().await.unwrap().iter().any(|j| j.effect == Effect::RefreshCard), "its jobs with it");
    assert!(!store.has_home("U1").await.unwrap());
    store.remember_home_user("U1", Utc::now()).await.unwrap();
    assert!(store.has_home("U1").await.unwrap());
    assert_eq!(store.events_cursor().await.unwrap(), None);
    store.set_events_cursor(Some("evt_9")).await.unwrap();
    assert_eq!(store.events_cursor().await.unwrap().as_deref(), Some("evt_9"));
    store.set_events_cursor(None).await.unwrap();
    assert_eq!(store.events_cursor().await.unwrap(), None);
    store.set_events_looked_back_at(1_700_000_000).await.unwrap();
    assert_eq!(store.events_looked_back_at().await.unwrap(), Some(1_700_000_000));
    assert!(!store.install_id().is_empty());
}

async fn an_imported_request_keeps_its_number_and_new_ones_follow_it(store: Store) {
    // One numbered below where numbering starts moves nothing: the next is still R-1001.
    let low = RefundRequest::new(RequestId::new(900), new_request("ch_1"), Utc::now());
    store.import_request(&low).await.unwrap();
    let first = store.insert_request(new_request("ch_1"), Utc::now()).await.unwrap();
    assert_eq!(first.id.to_string(), "R-1001");
    let mut r = RefundRequest::new(RequestId::new(5000), new_request("ch_1"), Utc::now());
    r.status = RequestStatus::Succeeded;
    store.import_request(&r).await.unwrap();
    store.flush().await.unwrap();
    assert_eq!(store.get_request(r.id).await.unwrap(), Some(r));
    let next = store.insert_request(new_request("ch_1"), Utc::now()).await.unwrap();
    assert!(next.id.number() > 5000, "{} would reuse a number", next.id);
}

async fn a_lease_is_taken_and_renewed_by_its_holder_and_a_shared_value_is_read_back(store: Store) {
    let now = Utc::now();
    assert!(store.take_lease("work", "replica-a", now, now + Span::seconds(30)).await.unwrap());
    assert!(store.take_lease("work", "replica-a", now, now + Span::seconds(60)).await.unwrap(), "renewed");
    store.release_lease("work", "replica-a").await.unwrap();
    assert_eq!(store.shared_value("members").await.unwrap(), None);
    store.set_shared_value("members", "[\"U1\"]").await.unwrap();
    store.set_shared_value("members", "[\"U1\",\"U2\"]").await.unwrap();
    assert_eq!(store.shared_value("members").await.unwrap().as_deref(), Some("[\"U1\",\"U2\"]"));
    // Listed by prefix, by key; `_` and `%` in a prefix are plain characters.
    store.set_shared_value("delegation/U2", "b").await.unwrap();
    store.set_shared_value("delegation/U1", "a").await.unwrap();
    store.set_shared_value("delegationX", "not under the prefix").await.unwrap();
    store.set_shared_value("a_b/1", "underscore").await.unwrap();
    store.set_shared_value("axb/1", "no underscore").await.unwrap();
    let listed = store.shared_values("delegation/").await.unwrap();
    assert_eq!(listed, vec![("delegation/U1".into(), "a".into()), ("delegation/U2".into(), "b".into())]);
    assert_eq!(store.shared_values("a_b/").await.unwrap(), vec![("a_b/1".into(), "underscore".into())]);
}

async fn a_client_key_makes_one_request_however_many_times_and_at_once_it_comes(store: Store) {
    let key = |client: &str, fingerprint: &str| ClientKey {
        client: client.into(),
        key: "ticket-4411".into(),
        fingerprint: fingerprint.into(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let store = store.clone();
        tasks.spawn(async move {
            store.insert_keyed_request(new_request("ch_1"), &key("helpdesk", "f1"), Utc::now()).await
        });
    }
    let (mut created, mut existing) = (vec![], vec![]);
    while let Some(done) = tasks.join_next().await {
        match done.unwrap().unwrap() {
            KeyedInsert::Created(r) => created.push(r.id),
            KeyedInsert::Existing { request, same_body } => {
                assert!(same_body);
                existing.push(request.id);
            }
        }
    }
    assert_eq!(created.len(), 1, "ten inserts with one key at once make one request");
    assert!(existing.iter().all(|id| *id == created[0]), "and the others get it back");
    // Another body with the key is told apart; another client's same key is its own.
    match store.insert_keyed_request(new_request("ch_2"), &key("helpdesk", "f2"), Utc::now()).await.unwrap() {
        KeyedInsert::Existing { request, same_body } => assert_eq!((request.id, same_body), (created[0], false)),
        other => panic!("{other:?}"),
    }
    let forms = store.insert_keyed_request(new_request("ch_1"), &key("forms", "f1"), Utc::now()).await.unwrap();
    assert!(matches!(forms, KeyedInsert::Created(r) if r.id != created[0]));
    assert_eq!(store.all_requests().await.unwrap().len(), 2);
    let audit = store.audit_entries().await.unwrap();
    assert_eq!(audit.len(), 2, "one audit entry per request made, none for a replay");
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod on_sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$name(super::Store::open(dir.path()).unwrap()).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    use secrecy::ExposeSecret;
                    let Some(url) = refund_desk_standins::postgres::fresh_database_url().await else { return };
                    let lease = std::time::Duration::from_secs(60);
                    let store = crate::storage::postgres::PgStore::connect(url.expose_secret(), lease).await.unwrap();
                    super::$name(super::Store::Postgres(store)).await;
                }
            )*
        }
    };
}

contract!(
    a_new_request_is_numbered_audited_and_queued,
    a_refused_or_empty_change_writes_nothing,
    a_transition_writes_the_request_its_audit_entry_and_its_jobs_together,
    twenty_concurrent_approvals_move_the_request_once,
    two_requests_on_one_charge_cannot_both_count_on_the_same_money,
    only_the_head_of_a_lane_is_handed_out_and_then_the_next,
    a_job_put_off_is_due_at_its_time_and_keeps_the_message_it_posted,
    a_parked_job_waits_for_a_person_to_retry_it,
    a_stripe_event_delivered_twice_at_once_is_applied_once,
    a_refund_made_outside_the_desk_is_recorded_and_announced_once,
    a_refund_made_outside_the_desk_reported_by_two_events_at_once_is_announced_once,
    slack_event_ids_and_alert_claims_are_taken_once,
    the_audit_chain_stays_a_chain_under_concurrent_writers,
    the_queries_behind_app_home_and_the_card_read_what_was_written,
    emails_home_users_and_the_events_cursor_are_kept,
    an_imported_request_keeps_its_number_and_new_ones_follow_it,
    a_lease_is_taken_and_renewed_by_its_holder_and_a_shared_value_is_read_back,
    a_client_key_makes_one_request_however_many_times_and_at_once_it_comes,
);

/// `refund-desk migrate`: a sled store's whole content, copied into PostgreSQL, reads the same
/// there through every query the desk makes, and the desk's counters and chain go on from it.
mod copy_to_postgres {
    use super::*;
    use crate::storage::copy::same_jobs;
    use crate::storage::postgres::{DEFAULT_LEASE, PgStore};
    use secrecy::ExposeSecret;

    #[tokio::test]
    async fn everything_a_sled_store_holds_reads_the_same_from_postgres_after_a_copy() {
        let Some(url) = refund_desk_standins::postgres::fresh_database_url().await else { return };
        let url = url.expose_secret().to_string();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = Utc::now();
        let done = submitted(&store).await;
        store.apply_stripe_event("evt_1", &[refund_news("re_1", done.id, "succeeded")], now).await.unwrap();
        let open = waiting(&store, "ch_1", 1000).await;
        let outside = RefundUpdate { request_hint: None, ..refund_news("re_dash", open.id, "succeeded") };
        store.apply_refund_updates(None, &[outside], now).await.unwrap();
        let record = EmailRecord { to: "j***@example.com".into(), sent_at: now, message_id: "<m1@desk>".into() };
        store.record_email_sent(done.id, EmailKind::RefundSucceeded, &record, &[], now).await.unwrap();
        store.remember_slack_event("Ev1", now).await.unwrap();
        store.remember_home_user("U1", now).await.unwrap();
        store.set_events_cursor(Some("evt_9")).await.unwrap();
        store.set_events_looked_back_at(1_700_000_000).await.unwrap();
        store.set_shared_value("delegation/UFIN", "{\"to\":\"UDEL\"}").await.unwrap();
        let since = now - Span::hours(1);
        assert!(store.claim_alert("stripe_down", 7, since, now).await.unwrap());
        let mut parked = store.all_jobs().await.unwrap().remove(0);
        (parked.parked, parked.attempts, parked.last_error) = (true, 12, Some("HTTP 503".into()));
        store.reschedule_job(&parked).await.unwrap();
        let key = ClientKey { client: "helpdesk".into(), key: "t-1".into(), fingerprint: "f1".into() };
        let keyed = match store.insert_keyed_request(new_request("ch_3"), &key, now).await.unwrap() {
            KeyedInsert::Created(r) => r.id,
            other => panic!("{other:?}"),
        };
        let copy = store.as_sled().unwrap().export_copy().unwrap();

        PgStore::import_copy(&url, &copy).await.unwrap();
        let pg = Store::Postgres(PgStore::connect(&url, DEFAULT_LEASE).await.unwrap());
        assert_eq!(pg.install_id(), store.install_id(), "idempotency keys stay the same");
        assert_eq!(pg.all_requests().await.unwrap(), store.all_requests().await.unwrap());
        assert_eq!(pg.audit_entries().await.unwrap(), store.audit_entries().await.unwrap());
        assert!(same_jobs(&pg.all_jobs().await.unwrap(), &store.all_jobs().await.unwrap()));
        assert!(pg.find_job(parked.id).await.unwrap().unwrap().parked);
        assert!(pg.stripe_event_seen("evt_1").await.unwrap());
        assert!(!pg.remember_slack_event("Ev1", now).await.unwrap(), "a Slack retry is still a retry");
        assert_eq!(pg.email_sent(done.id, EmailKind::RefundSucceeded).await.unwrap(), Some(record));
        assert!(pg.has_home("U1").await.unwrap());
        assert_eq!(pg.events_cursor().await.unwrap().as_deref(), Some("evt_9"));
        assert_eq!(pg.events_looked_back_at().await.unwrap(), Some(1_700_000_000));
        assert_eq!(pg.shared_values("delegation/").await.unwrap(), store.shared_values("delegation/").await.unwrap());
        assert_eq!(pg.outside_refunds().await.unwrap(), store.outside_refunds().await.unwrap());
        let replayed = pg.insert_keyed_request(new_request("ch_3"), &key, now).await.unwrap();
        assert!(
            matches!(&replayed, KeyedInsert::Existing { request, same_body: true } if request.id == keyed),
            "an API client's key still names its request: {replayed:?}"
        );
        let today = now.date_naive();
        assert_eq!(pg.totals_on(today).await.unwrap(), store.totals_on(today).await.unwrap());
        assert!(!pg.claim_alert("stripe_down", 8, since, now).await.unwrap(), "the alert's claim came along");
        // A refund re_1 reported again is known as the request's, not a refund made outside.
        let again = pg.apply_refund_updates(None, &[refund_news("re_1", done.id, "succeeded")], now).await.unwrap();
        assert!(
            !matches!(&again, EventOutcome::Applied(o) if o.iter().any(|o| matches!(o, RefundOutcome::NotOurs(_))))
        );

        // Numbers, job ids and the chain go on from where the copy left them.
        let next = pg.insert_request(new_request("ch_2"), Utc::now()).await.unwrap();
        assert_eq!(next.id.number(), copy.next_request_number);
        let newest = pg.all_jobs().await.unwrap().into_iter().filter(|j| j.request_id == next.id).map(|j| j.id);
        let newest = newest.min().unwrap();
        assert!(newest > copy.jobs.iter().map(|j| j.id).max().unwrap());
        // Past finished jobs' ids too, which alert claims and parked-job reports name.
        assert!(newest >= copy.next_job_id && copy.next_job_id > 7, "{newest} vs {}", copy.next_job_id);
        let later = Utc::now();
        pg.transition(open.id, later, |r| {
            r.approve(&user("UFIN"), &approvers(), &crate::domain::Approval::default(), later).map(Some)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(pg.verify_audit().await.unwrap().problem, None, "the chain goes on from the copied head");

        // A database holding a copy, or one a desk has started on, is refused, unchanged.
        let held = PgStore::import_copy(&url, &copy).await;
        assert!(matches!(held, Err(StoreError::NotEmpty(_))), "{held:?}");
        assert_eq!(pg.all_requests().await.unwrap().len(), copy.requests.len() + 1);
        let Some(started) = refund_desk_standins::postgres::fresh_database_url().await else { return };
        let started = started.expose_secret().to_string();
        let desk = PgStore::connect(&started, DEFAULT_LEASE).await.unwrap();
        let refused = PgStore::import_copy(&started, &copy).await;
        assert!(matches!(refused, Err(StoreError::NotEmpty(_))), "{refused:?}");
        assert!(Store::Postgres(desk).all_requests().await.unwrap().is_empty());
    }
}
