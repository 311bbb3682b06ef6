use crate::helpers::*;
use refund_desk::domain::RequestStatus;
use refund_desk::slack::views::{AMOUNT_BLOCK, CHARGE_BLOCK, EMAIL_BLOCK, NOTE_BLOCK, REASON_BLOCK, REQUEST_CALLBACK};
use refund_desk_standins::{ChargeSpec, wait_for};
use std::time::Duration;

#[tokio::test]
async fn refund_alone_opens_the_form_with_the_commands_trigger() {
    let app = TestApp::spawn().await;
    let (status, body) = app.driver.slash(REQUESTER, "").await;
    assert_eq!((status, body), (200, serde_json::Value::Null), "no message: the form opens instead");
    let opened = wait_for(DEADLINE, || app.slack.views_opened().pop()).await.expect("views.open");
    assert_eq!(opened["trigger_id"], "13345224609.738474920.8088930838d88f008e0", "the command's own trigger_id");
    assert_eq!(opened["view"]["callback_id"], REQUEST_CALLBACK);
    assert_eq!(opened["view"]["private_metadata"], "C0SUPPORT1");
    let blocks = opened["view"]["blocks"].to_string();
    for block in [CHARGE_BLOCK, AMOUNT_BLOCK, REASON_BLOCK, EMAIL_BLOCK, NOTE_BLOCK] {
        assert!(blocks.contains(block), "{block} missing: {blocks}");
    }
}

#[tokio::test]
async fn bad_form_input_is_answered_on_its_field_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .driver
        .submit_view(
            REQUESTER,
            REQUEST_CALLBACK,
            "C0SUPPORT1",
            &[
                (CHARGE_BLOCK, "re_123"),
                (AMOUNT_BLOCK, "-5"),
                (EMAIL_BLOCK, "jenny at example"),
                (REASON_BLOCK, "duplicate"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["response_action"], "errors");
    let errors = &body["errors"];
    assert!(errors[CHARGE_BLOCK].as_str().unwrap().contains("ch_"), "{errors}");
    assert!(errors[AMOUNT_BLOCK].as_str().unwrap().contains("negative"), "{errors}");
    assert!(errors[EMAIL_BLOCK].as_str().unwrap().contains("not an email address"), "{errors}");
    assert!(errors.get(REASON_BLOCK).is_none());
    assert!(app.store().all_requests().await.unwrap().is_empty());
    assert!(app.stripe.received().is_empty(), "format errors never reach Stripe");
}

#[tokio::test]
async fn the_form_asks_stripe_before_accepting_when_stripe_answers_in_time() {
    let app = TestApp::spawn().await;
    let charge = app.add_charge(ChargeSpec { amount: 2500, ..ChargeSpec::default() });
    let submit = |charge: String, amount: &'static str| {
        let driver = app.driver.clone();
        async move {
            let values = [
                (CHARGE_BLOCK, charge.as_str()),
                (AMOUNT_BLOCK, amount),
                (REASON_BLOCK, "duplicate"),
                (EMAIL_BLOCK, "jenny@shop.example"),
                (NOTE_BLOCK, "double charged"),
            ];
            driver.submit_view(REQUESTER, REQUEST_CALLBACK, "C0SUPPORT1", &values).await.1
        }
    };
    let unknown = submit("ch_3DoesNotExist".into(), "5").await;
    assert!(unknown["errors"][CHARGE_BLOCK].as_str().unwrap().contains("Stripe has no"), "{unknown}");
    let too_much = submit(charge.clone(), "30.00").await;
    assert!(too_much["errors"][AMOUNT_BLOCK].as_str().unwrap().contains("more than the $25.00"), "{too_much}");
    assert!(app.store().all_requests().await.unwrap().is_empty());

    let accepted = submit(charge, "10.00").await;
    assert_eq!(accepted["response_action"], "update", "{accepted}");
    let id = request_id_in(&accepted["view"]["blocks"].to_string());
    let r = app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    assert_eq!(r.customer_email.as_deref(), Some("jenny@shop.example"));
    assert_eq!(r.note.unwrap().as_str(), "double charged");
    // The address given in the form wins over Stripe's.
    app.approve_and_settle(id).await;
    let email = wait_for(DEADLINE, || app.smtp.messages().pop()).await.expect("emailed");
    assert_eq!(email.rcpt_to, vec!["jenny@shop.example".to_string()]);
}

#[tokio::test]
async fn when_stripe_is_slow_the_form_accepts_and_the_requester_hears_later() {
    let app = TestApp::spawn().await;
    app.stripe.set_read_delay(Duration::from_secs(3));
    let (_, body) = app
        .driver
        .submit_view(
            REQUESTER,
            REQUEST_CALLBACK,
            "C0SUPPORT1",
            &[(CHARGE_BLOCK, "ch_3DoesNotExist"), (REASON_BLOCK, "duplicate")],
        )
        .await;
    assert_eq!(body["response_action"], "update", "accepted without waiting: {body}");
    let id = request_id_in(&body["view"]["blocks"].to_string());
    app.stripe.set_read_delay(Duration::ZERO);
    app.wait_for_status(id, RequestStatus::Rejected).await;
    let dm = wait_for(DEADLINE, || app.direct_messages(REQUESTER).pop()).await.expect("told by DM");
    assert!(dm.contains("Stripe has no"), "{dm}");
}

#[tokio::test]
async fn app_home_shows_approvers_their_queue_and_everyone_their_requests() {
    let app = TestApp::spawn().await;
    let (id, _card) = app.waiting_request().await;
    assert_eq!(app.driver.open_home(APPROVER).await, 200);
    assert_eq!(app.driver.open_home(REQUESTER).await, 200);
    let (home, _) = wait_for(DEADLINE, || app.slack.home_of(APPROVER)).await.expect("approver's Home");
    let text = home.to_string();
    assert!(
        text.contains("Waiting for you* (1)")
            && text.contains(&id.to_string())
            && text.contains("refund_approve")
            && text.contains("waiting "),
        "{text}"
    );
    assert!(text.contains("Today:* 1 requested"), "{text}");
    let (home, _) = wait_for(DEADLINE, || app.slack.home_of(REQUESTER)).await.expect("requester's Home");
    let text = home.to_string();
    // The requester is an approver too, but never sees their own request in the queue.
    assert!(
        text.contains("Waiting for you* (0)")
            && text.contains("Your requests")
            && text.contains("Waiting for approval"),
        "{text}"
    );

    // Approving from Home works like the card, and both Homes are republished.
    let (_, before) = app.slack.home_of(APPROVER).unwrap();
    assert_eq!(app.driver.click_in_home(APPROVER, "refund_approve", &id.to_string()).await, 200);
    app.wait_for_status(id, RequestStatus::Submitted).await;
    let (home, _) = wait_for(DEADLINE, || {
        app.slack.home_of(APPROVER).filter(|(h, n)| *n > before && h.to_string().contains("Waiting for you* (0)"))
    })
    .await
    .expect("republished");
    assert!(!home.to_string().contains(&format!("*{id}*")), "{home}");
    wait_for(DEADLINE, || app.slack.home_of(REQUESTER).filter(|(h, _)| h.to_string().contains("Submitted to Stripe")))
        .await
        .expect("requester's Home updated");
}

#[tokio::test]
async fn a_withdrawn_request_cannot_be_approved_afterwards() {
    let app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;
    let refused = app.slash_refund(APPROVER, &format!("cancel {id}")).await;
    assert!(refused.contains("Only the person who asked"), "{refused}");
    let answer = app.slash_refund(REQUESTER, &format!("cancel {id}")).await;
    assert!(answer.contains("withdrawn"), "{answer}");
    app.wait_for_status(id, RequestStatus::Withdrawn).await;
    app.approve(APPROVER, id, &card).await;
    let note = wait_for(DEADLINE, || app.slack.ephemerals().pop()).await.expect("told privately");
    assert!(note["text"].as_str().unwrap().contains("no longer waiting"), "{note}");
    app.wait_until_idle().await;
    assert!(app.stripe.refund_posts().is_empty());
    assert_eq!(app.request(id).await.status, RequestStatus::Withdrawn);
    let blocks = app.slack.message(&card.ts).unwrap().blocks.to_string();
    assert!(blocks.contains("Withdrawn") && !blocks.contains("refund_approve"), "{blocks}");
    assert!(app.thread_texts(&card).iter().any(|t| t.contains("Withdrawn by <@U0REQUEST1>")));
    let again = app.slash_refund(REQUESTER, &format!("cancel {id}")).await;
    assert!(again.contains("no longer waiting"), "{again}");
}

#[tokio::test]
async fn list_shows_your_recent_requests_newest_first() {
    let app = TestApp::spawn().await;
    assert!(app.slash_refund(REQUESTER, "list").await.contains("no refund requests"));
    let charge = app.add_charge(ChargeSpec::default());
    let first = app.request_refund(&format!("{charge} 5")).await;
    let second = app.request_refund(&format!("{charge} 6")).await;
    let list = app.slash_refund(REQUESTER, "list").await;
    let (a, b) = (list.find(&second.to_string()).unwrap(), list.find(&first.to_string()).unwrap());
    assert!(a < b, "newest first: {list}");
    assert!(app.slash_refund(APPROVER, "list").await.contains("no refund requests"), "only your own");
}

#[tokio::test]
async fn approvers_are_reminded_then_the_request_expires_even_across_a_restart() {
    let mut app = TestApp::spawn_with_policy("[policy]\nremind_after = \"4h\"\nexpire_after = \"2days\"").await;
    let (id, card) = app.waiting_request().await;
    app.app.as_ref().unwrap().context().advance_clock(Duration::from_secs(5 * 3600));
    let reminder = wait_for(DEADLINE, || app.thread_texts(&card).into_iter().find(|t| t.contains("has been waiting")))
        .await
        .expect("reminded");
    assert!(
        reminder.contains("<@U0APPROVE1>") && reminder.contains("<@U0APPROVE2>") && !reminder.contains("<@U0REQUEST1>"),
        "{reminder}"
    );
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval);

    app.restart().await;
    app.app.as_ref().unwrap().context().advance_clock(Duration::from_secs(2 * 24 * 3600 + 3600));
    app.wait_for_status(id, RequestStatus::Expired).await;
    app.wait_until_idle().await;
    let reminders = app.thread_texts(&card).iter().filter(|t| t.contains("has been waiting")).count();
    assert_eq!(reminders, 1, "reminded once");
    assert!(app.thread_texts(&card).iter().any(|t| t.contains("Expired")));
    assert!(app.direct_messages(REQUESTER).iter().any(|m| m.contains("expired")));
    let blocks = app.slack.message(&card.ts).unwrap().blocks.to_string();
    assert!(!blocks.contains("refund_approve"), "{blocks}");
    app.approve(APPROVER, id, &card).await;
    app.wait_until_idle().await;
    assert!(app.stripe.refund_posts().is_empty());
}

#[tokio::test]
async fn home_reads_the_indexes_so_a_store_of_100000_requests_shows_just_whats_waiting() {
    use refund_desk::domain::*;
    let app = TestApp::spawn().await;
    let store = app.store();
    if store.as_sled().is_none() {
        // What this proves (App Home reads the indexes, counted by the embedded engine) is
        // sled's; PostgreSQL's queries use its indexes (see migrations).
        eprintln!("skipped on PostgreSQL: the embedded engine's read counter is what this test reads");
        return;
    }
    let now = chrono::Utc::now();
    let usd = Currency::parse("usd").unwrap();
    let requester = |n: u64| UserId::parse(&format!("U0SUPPORT{:02}", n % 50)).unwrap();
    for n in 0..100_000u64 {
        let mut r = RefundRequest::new(
            RequestId::new(10_000 + n),
            NewRequest::full_refund(requester(n), "C1", PaymentRef::parse("ch_1").unwrap(), RefundReason::Duplicate),
            now,
        );
        r.amount = Some(Money::new(100, usd));
        // Five in every 100,000 still wait; the rest are long done.
        r.status = if n % 20_000 == 7 { RequestStatus::AwaitingApproval } else { RequestStatus::Succeeded };
        store.import_request(&r).await.unwrap();
    }
    store.flush().await.unwrap();
    let ctx = app.app.as_ref().unwrap().context();
    let read_before = store.as_sled().expect("the embedded engine counts its reads").requests_read();
    refund_desk::worker::handlers::publish_home(&ctx, &UserId::parse(APPROVER).unwrap()).await.unwrap();
    // What it shows, found through the indexes: the 5 waiting and the approver's own (none),
    // not a walk through 100,000 requests.
    let read = store.as_sled().expect("the embedded engine counts its reads").requests_read() - read_before;
    assert!(read <= 5 + refund_desk::slack::views::HOME_LIST_LIMIT as u64, "App Home read {read} requests");
    let (home, _) = app.slack.home_of(APPROVER).unwrap();
    let text = home.to_string();
    assert!(text.contains("Waiting for you* (5)"), "{}", &text[..text.len().min(2000)]);
    for n in [7u64, 20_007, 40_007, 60_007, 80_007] {
        assert!(text.contains(&format!("R-{}", 10_000 + n)), "R-{} missing", 10_000 + n);
    }
    let read_before = store.as_sled().expect("the embedded engine counts its reads").requests_read();
    refund_desk::worker::handlers::publish_home(&ctx, &requester(7)).await.unwrap();
    let read = store.as_sled().expect("the embedded engine counts its reads").requests_read() - read_before;
    assert!(read <= refund_desk::slack::views::HOME_LIST_LIMIT as u64, "App Home read {read} of 2,000 requests");
    let (home, _) = app.slack.home_of(requester(7).as_str()).unwrap();
    let shown = home.to_string().matches("* · $1.00 on").count();
    assert_eq!(shown, refund_desk::slack::views::HOME_LIST_LIMIT, "the newest of the person's 2,000 requests");
    assert!(home.to_string().contains("R-109957"), "the newest first");
}

#[tokio::test]
async fn an_events_api_retry_with_the_same_event_id_is_acknowledged_and_ignored() {
    let app = TestApp::spawn().await;
    let body = serde_json::json!({
        "type": "event_callback", "team_id": "T00000001", "api_app_id": "A00000001", "event_id": "Ev0RETRY01", "event_time": 1700000000,
        "event": { "type": "app_home_opened", "user": APPROVER, "channel": "D0APPHOME", "tab": "home", "event_ts": "1700000000.000100" }
    })
    .to_string();
    let send = |retry: Option<&'static str>| {
        let body = body.clone();
        let base = app.driver.base.clone();
        async move {
            let ts = chrono::Utc::now().timestamp();
            let mut req = reqwest::Client::new()
                .post(format!("{base}/slack/events"))
                .header("content-type", "application/json")
                .header("x-slack-request-timestamp", ts.to_string())
                .header(
                    "x-slack-signature",
                    refund_desk_standins::driver::sign_request(
                        refund_desk_standins::driver::SIGNING_SECRET,
                        ts,
                        body.as_bytes(),
                    ),
                );
            if let Some(n) = retry {
                req = req.header("x-slack-retry-num", n).header("x-slack-retry-reason", "http_timeout");
            }
            req.body(body).send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(send(None).await, 200);
    wait_for(DEADLINE, || app.slack.home_of(APPROVER)).await.expect("published");
    assert_eq!(send(Some("1")).await, 200);
    assert_eq!(send(Some("2")).await, 200);
    app.wait_until_idle().await;
    // Give a wrongly handled retry the same chance to publish as the first delivery had.
    let again = wait_for(Duration::from_millis(500), || app.slack.home_of(APPROVER).filter(|(_, n)| *n > 1)).await;
    assert!(again.is_none(), "a retry published Home again");
}

#[tokio::test]
async fn a_refused_click_in_app_home_is_answered_by_direct_message() {
    let app = TestApp::spawn().await;
    let (id, _card) = app.waiting_request().await;
    assert_eq!(app.driver.click_in_home(OUTSIDER, "refund_approve", &id.to_string()).await, 200);
    let dm = wait_for(DEADLINE, || app.direct_messages(OUTSIDER).pop()).await.expect("told by DM");
    assert!(dm.contains("Only finance approvers"), "{dm}");
    assert!(app.slack.ephemerals().is_empty(), "not as a note in a channel they may not be in");
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval);
}

#[tokio::test]
async fn closing_the_deny_form_or_the_request_form_changes_nothing() {
    let app = TestApp::spawn().await;
    let (id, _card) = app.waiting_request().await;
    // Once the card is recorded, nothing but a decision changes the request.
    let recorded = || async { Some(app.request(id).await).filter(|r| r.card.is_some()) };
    let before = wait_for_async(DEADLINE, recorded).await.expect("a card");
    use refund_desk::slack::views::{DENY_CALLBACK, DENY_REASON_BLOCK};
    // Each form closed with Cancel after something was typed into it.
    let reason = [(DENY_REASON_BLOCK, "Outside the 30-day window")];
    assert_eq!(app.driver.close_view(APPROVER, DENY_CALLBACK, &id.to_string(), &reason).await, 200);
    let charge = app.add_charge(ChargeSpec::default());
    let typed = [(CHARGE_BLOCK, charge.as_str()), (AMOUNT_BLOCK, "10.00"), (REASON_BLOCK, "duplicate")];
    assert_eq!(app.driver.close_view(REQUESTER, REQUEST_CALLBACK, "C0SUPPORT1", &typed).await, 200);
    // A decision is on disk before its answer, so one made by a close would show already.
    assert_eq!(app.request(id).await, before, "a closed form decides nothing");
    assert_eq!(app.store().all_requests().await.unwrap().len(), 1, "a closed request form stores nothing");
}
