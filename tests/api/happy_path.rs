use crate::helpers::*;
use refund_desk::domain::RequestStatus;
use refund_desk_standins::{ChargeSpec, wait_for};

#[tokio::test]
async fn a_refund_goes_from_slash_command_to_one_stripe_refund_and_one_customer_email() {
    let app = TestApp::spawn().await;
    let charge = app.add_charge(ChargeSpec { amount: 4000, ..ChargeSpec::default() });

    // The requester asks; the answer is private and names the request.
    let answer = app.slash_refund(REQUESTER, &format!("{charge} 25.00 duplicate customer charged twice")).await;
    assert!(answer.contains("*R-1001*") && answer.contains("25.00"), "{answer}");
    let id = refund_desk::domain::RequestId::new(1001);

    // Stripe is read, then the card lands in finance with what an approver needs.
    let card = app.card(id).await;
    let blocks = card.blocks.to_string();
    for expected in [
        "$25.00",
        "jenny.rosen@example.com",
        "Duplicate charge",
        "customer charged twice",
        "$40.00",
        "refund_approve",
        "refund_deny",
    ] {
        assert!(blocks.contains(expected), "card lacks {expected}: {blocks}");
    }

    // An approver approves: exactly one refund, as Stripe expects it.
    app.approve(APPROVER, id, &card).await;
    let request = app.wait_for_status(id, RequestStatus::Submitted).await;
    let posts = app.stripe.refund_posts();
    let post = posts.iter().find(|p| p.param("metadata[refund_request_id]") == Some("R-1001")).expect("refund posted");
    assert_eq!(post.param("charge"), Some(charge.as_str()));
    assert_eq!(post.param("amount"), Some("2500"));
    assert_eq!(post.param("reason"), Some("duplicate"));
    let key = post.idempotency_key.clone().expect("an Idempotency-Key");
    assert!(key.starts_with("refund-desk-") && key.ends_with("-R-1001"), "{key}");
    assert!(post.stripe_version.is_some(), "the API version is pinned");

    // Stripe confirms through webhooks: pending, then succeeded.
    let refund = request.refund.clone().unwrap();
    assert_eq!(app.deliver_stripe_event(&app.refund_event(id, "refund.created", "pending").await).await, 200);
    app.wait_for_status(id, RequestStatus::Pending).await;
    assert_eq!(app.deliver_stripe_event(&app.refund_event(id, "refund.updated", "succeeded").await).await, 200);
    app.wait_for_status(id, RequestStatus::Succeeded).await;

    // One email, to the billing address, with the amount and the refund id.
    wait_for(DEADLINE, || Some(()).filter(|_| !app.smtp.messages().is_empty())).await.expect("an email");
    app.wait_until_idle().await;
    let emails = app.smtp.messages();
    assert_eq!(emails.len(), 1, "exactly one email");
    let email = &emails[0];
    assert_eq!(email.rcpt_to, vec!["jenny.rosen@example.com".to_string()]);
    assert_eq!(email.header("Subject").as_deref(), Some("Your refund of $25.00 is on its way"));
    assert!(email.body().contains(refund.id.as_str()), "{}", email.body());
    assert!(email.header("From").unwrap().contains("billing@acme.example"));

    // The thread tells the story; the card says who decided and has no buttons left.
    let thread = app.thread_texts(&card).join("\n");
    for step in [
        "Approved by <@U0APPROVE1>",
        "Submitted to Stripe",
        "pending",
        "succeeded",
        "emailed to the customer (j***@example.com)",
    ] {
        assert!(thread.contains(step), "thread lacks {step:?}:\n{thread}");
    }
    let edited = app.slack.message(&card.ts).unwrap();
    assert!(edited.edits >= 1);
    let blocks = edited.blocks.to_string();
    assert!(
        !blocks.contains("refund_approve")
            && blocks.contains("Approved by <@U0APPROVE1>")
            && blocks.contains("Refunded"),
        "{blocks}"
    );

    // The requester hears the outcome privately, and Stripe made one refund for this request.
    assert!(app.direct_messages(REQUESTER).iter().any(|m| m.contains("R-1001") && m.contains("succeeded")));
    let ours = app.stripe.refunds_for("R-1001");
    assert_eq!(ours.len(), 1);
}

#[tokio::test]
async fn a_payment_intent_is_refunded_by_its_id_in_zero_decimal_currency() {
    let app = TestApp::spawn().await;
    let (_, pi) = app.stripe.add_charge(ChargeSpec {
        amount: 5000,
        currency: "jpy".into(),
        with_payment_intent: true,
        ..ChargeSpec::default()
    });
    let pi = pi.unwrap();
    let id = app.request_refund(&format!("{pi} ¥1200 customer")).await;
    let card = app.card(id).await;
    assert!(card.blocks.to_string().contains("¥1,200"), "{}", card.blocks);
    app.approve(APPROVER, id, &card).await;
    app.wait_for_status(id, RequestStatus::Submitted).await;
    let post = app.stripe.refund_posts().pop().unwrap();
    assert_eq!(post.param("payment_intent"), Some(pi.as_str()));
    assert_eq!(post.param("amount"), Some("1200"), "yen are not multiplied by 100");
    assert_eq!(post.param("reason"), Some("requested_by_customer"));
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    let health = http.get(format!("{}/healthz", app.driver.base)).send().await.unwrap().status();
    assert_eq!(health, 200);
    // Ready once the job runner runs; poll, never sleep-and-hope.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let ready = http.get(format!("{}/readyz", app.driver.base)).send().await.unwrap().status();
        if ready == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ready: {ready}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_text_format() {
    let app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;
    app.approve(APPROVER, id, &card).await;
    app.wait_for_status(id, RequestStatus::Submitted).await;
    app.deliver_stripe_event(&app.refund_event(id, "refund.updated", "succeeded").await).await;
    app.wait_for_status(id, RequestStatus::Succeeded).await;
    let response = reqwest::Client::new().get(format!("{}/metrics", app.driver.base)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for line in [
        "# TYPE refund_desk_requests_total counter",
        "refund_desk_slack_answer_seconds_bucket{route=\"/slack/commands\",le=\"0.1\"}",
        "refund_desk_jobs_total{effect=\"create_refund\",outcome=\"done\"}",
        "refund_desk_transitions_total{to=\"Succeeded\"}",
        "refund_desk_stripe_events_total{outcome=\"recorded\"}",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}

#[tokio::test]
async fn answers_to_paths_nobody_serves_share_one_metrics_label() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    for i in 0..5 {
        let response = http.post(format!("{}/slack/probe-{i}-x", app.driver.base)).body("x").send().await.unwrap();
        assert_eq!(response.status(), 404);
    }
    let text = http.get(format!("{}/metrics", app.driver.base)).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("probe-"), "a raw path became a label:\n{text}");
    assert!(text.contains("refund_desk_slack_answer_seconds_count{route=\"unmatched\"}"), "{text}");
}
