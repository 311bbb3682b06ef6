use crate::helpers::*;
use refund_desk::domain::{Effect, EmailKind, RequestStatus};
use refund_desk_standins::{ChargeSpec, SmtpSink, wait_for};

/// Approves, lets Stripe confirm, and waits for the desk to finish.
async fn refunded(app: &TestApp, spec: ChargeSpec, asked: &str) -> refund_desk::domain::RequestId {
    let charge = app.add_charge(spec);
    let id = app.request_refund(&format!("{charge} {asked}")).await;
    app.approve_and_settle(id).await;
    app.wait_until_idle().await;
    id
}

#[tokio::test]
async fn the_confirmation_has_a_subject_people_understand_and_both_parts() {
    let app = TestApp::spawn().await;
    refunded(&app, ChargeSpec { amount: 4999, ..ChargeSpec::default() }, "25.00").await;
    let emails = app.smtp.messages();
    assert_eq!(emails.len(), 1);
    let email = &emails[0];
    assert_eq!(email.header("Subject").as_deref(), Some("Your refund of $25.00 is on its way"));
    let text = email.body();
    let html = email.html().expect("an HTML part");
    for part in [&text, &html] {
        assert!(
            part.contains("$25.00") && part.contains("Visa card ending in 4242") && part.contains("$49.99"),
            "{part}"
        );
        assert!(part.contains("Jenny Rosen"), "the customer is greeted by name: {part}");
        assert!(part.contains("The Acme Billing team"), "{part}");
    }
    assert!(html.contains("<strong>$25.00</strong>"), "{html}");
    assert!(email.header("Message-ID").unwrap().contains("R-1001.refund_succeeded"));
}

#[tokio::test]
async fn amounts_are_written_the_way_each_currency_is() {
    let app = TestApp::spawn().await;
    refunded(&app, ChargeSpec { amount: 5000, currency: "jpy".into(), ..ChargeSpec::default() }, "¥1200").await;
    let email = app.smtp.messages().pop().unwrap();
    assert_eq!(email.header("Subject").as_deref(), Some("Your refund of ¥1,200 is on its way"));
    assert!(email.body().contains("¥1,200") && email.body().contains("¥5,000"), "{}", email.body());
    assert!(email.html().unwrap().contains("¥1,200"));
}

#[tokio::test]
async fn a_denial_email_carries_the_reason_only_when_the_policy_says_so() {
    let app = TestApp::spawn().await;
    let (id, _card) = app.waiting_request().await;
    app.driver.submit_deny(APPROVER, &id.to_string(), "Refunds close after 30 days <sorry>").await;
    app.wait_for_status(id, RequestStatus::Denied).await;
    app.wait_until_idle().await;
    assert!(app.smtp.messages().is_empty(), "denial emails are off by default");

    let app = TestApp::spawn_with_policy("[policy]\nemail_customer_on_deny = true").await;
    let (id, card) = app.waiting_request().await;
    app.driver.submit_deny(APPROVER, &id.to_string(), "Refunds close after 30 days <sorry>").await;
    let email = wait_for(DEADLINE, || app.smtp.messages().pop()).await.expect("a denial email");
    assert_eq!(email.header("Subject").as_deref(), Some("About your refund request for $25.00"));
    assert!(email.body().contains("Refunds close after 30 days <sorry>"), "{}", email.body());
    assert!(
        email.html().unwrap().contains("Refunds close after 30 days &lt;sorry&gt;"),
        "the reason is escaped in HTML"
    );
    app.wait_until_idle().await;
    assert!(
        app.thread_texts(&card)
            .iter()
            .any(|t| t.contains("Denial, with the reason, emailed to the customer (j***@example.com)"))
    );
}

#[tokio::test]
async fn a_failed_refund_tells_finance_and_emails_the_customer_only_if_configured() {
    for (policy, emails) in [("", 0), ("[policy]\nemail_customer_on_failure = true", 1)] {
        let app = TestApp::spawn_with_policy(policy).await;
        let (id, card) = app.waiting_request().await;
        app.approve(APPROVER, id, &card).await;
        app.wait_for_status(id, RequestStatus::Submitted).await;
        let refund = app.request(id).await.refund.unwrap().id;
        let event = app
            .stripe
            .refund_event(refund.as_str(), "refund.failed", "failed", Some("expired_or_canceled_card"))
            .unwrap();
        app.deliver_stripe_event(&event).await;
        app.wait_for_status(id, RequestStatus::Failed).await;
        app.wait_until_idle().await;
        assert!(app.thread_texts(&card).iter().any(|t| t.contains("The refund failed")));
        assert_eq!(app.smtp.messages().len(), emails, "{policy:?}");
        if emails == 1 {
            let email = app.smtp.messages().pop().unwrap();
            assert_eq!(email.header("Subject").as_deref(), Some("We could not complete your refund of $25.00"));
        }
    }
}

#[tokio::test]
async fn a_temporary_smtp_refusal_is_retried_and_one_email_arrives() {
    let app = TestApp::spawn().await;
    app.smtp.refuse_next("451 4.3.0 Mail server temporarily rejected message");
    refunded(&app, ChargeSpec::default(), "full").await;
    wait_for(DEADLINE, || (app.smtp.messages().len() == 1).then_some(())).await.expect("delivered on retry");
    app.wait_until_idle().await;
    assert_eq!(app.smtp.messages().len(), 1);
}

#[tokio::test]
async fn a_permanent_smtp_refusal_is_reported_in_the_thread_and_not_retried() {
    let app = TestApp::spawn().await;
    app.smtp.refuse_next("550 5.1.1 Mailbox unavailable");
    let charge = app.add_charge(ChargeSpec::default());
    let id = app.request_refund(&format!("{charge} full")).await;
    let card = app.card(id).await;
    app.approve_and_settle(id).await;
    let note = wait_for(DEADLINE, || app.thread_texts(&card).into_iter().find(|t| t.contains("not emailed")))
        .await
        .expect("reported");
    assert!(note.contains("550") || note.contains("refused"), "{note}");
    app.wait_until_idle().await;
    assert!(app.smtp.messages().is_empty());
    assert!(app.store().email_sent(id, EmailKind::RefundSucceeded).await.unwrap().is_none());
}

#[tokio::test]
async fn nothing_is_sent_twice_across_a_restart() {
    let mut app = TestApp::spawn().await;
    let id = refunded(&app, ChargeSpec::default(), "full").await;
    assert_eq!(app.smtp.messages().len(), 1);
    app.restart().await;
    // Stripe says it again, under another event, and an email job runs again after the restart.
    let again = app.refund_event(id, "charge.refunded", "succeeded").await;
    assert_eq!(app.deliver_stripe_event(&again).await, 200);
    app.store().enqueue(id, &[Effect::EmailCustomer(EmailKind::RefundSucceeded)], chrono::Utc::now()).await.unwrap();
    app.wait_until_idle().await;
    assert_eq!(app.smtp.messages().len(), 1);
}

#[tokio::test]
async fn the_address_is_billing_then_receipt_then_customer_and_none_is_said() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            ChargeSpec {
                billing_email: None,
                receipt_email: Some("receipt@example.com".into()),
                ..ChargeSpec::default()
            },
            Some("receipt@example.com"),
        ),
        (
            ChargeSpec {
                billing_email: None,
                customer_email: Some("customer@example.com".into()),
                ..ChargeSpec::default()
            },
            Some("customer@example.com"),
        ),
        (ChargeSpec { billing_email: None, ..ChargeSpec::default() }, None),
    ];
    for (spec, expected) in cases {
        let before = app.smtp.messages().len();
        let charge = app.add_charge(spec);
        let id = app.request_refund(&format!("{charge} full")).await;
        let card = app.card(id).await;
        app.approve_and_settle(id).await;
        app.wait_until_idle().await;
        match expected {
            Some(address) => assert_eq!(app.smtp.messages()[before].rcpt_to, vec![address.to_string()]),
            None => {
                assert_eq!(app.smtp.messages().len(), before);
                assert!(app.thread_texts(&card).iter().any(|t| t.contains("Stripe has no email address")));
            }
        }
    }
}

#[tokio::test]
async fn smtp_auth_is_used_when_the_url_carries_credentials() {
    let mut app = TestApp::spawn().await;
    app.smtp = SmtpSink::start_with_auth("bot", "s3cret").await.unwrap();
    app.restart().await;
    refunded(&app, ChargeSpec::default(), "full").await;
    assert_eq!(app.smtp.messages().len(), 1, "delivered after AUTH");
}
