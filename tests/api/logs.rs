//! What the desk writes to stderr: JSON lines with the span fields when asked, readable text
//! without colour codes otherwise, and never a secret or a customer's full address.

use crate::helpers::*;
use refund_desk_standins::driver::{self, SlackDriver};
use refund_desk_standins::{ChargeSpec, FakeSlack, FakeStripe, SmtpSink, wait_for};
use serde_json::Value;
use sha2::Digest;
use std::process::Stdio;

const CUSTOMER: &str = "jenny.rosen@example.com";
const API_TOKEN: &str = "rdt_logs_client_5d2e8f0a9b7c";
const WRONG_API_TOKEN: &str = "rdt_logs_guess_1a2b3c4d5e6f";
const CALLBACK_SECRET: &str = "logs-callback-secret-7788";
const AGENT_EMAIL: &str = "sam.agent@acme.example";

/// Runs a desk process with `format` through a whole refund (command, card, approval, Stripe's
/// confirmation, the customer's email), stops it, and returns what it wrote to stderr.
async fn stderr_of_a_whole_refund(format: Option<&str>) -> String {
    let slack = FakeSlack::start(driver::BOT_TOKEN).await.unwrap();
    let stripe = FakeStripe::start(driver::STRIPE_KEY).await.unwrap();
    let smtp = SmtpSink::start().await.unwrap();
    let receiver = refund_desk_standins::CallbackReceiver::start(0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let port = free_port();
    let mut command = desk_command(&slack.url, &stripe.url, &dir.path().join("data"));
    command
        .env("REFUND_DESK_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info,refund_desk=debug")
        .env("SMTP_URL", smtp.url())
        .env("EMAIL_FROM", driver::EMAIL_FROM)
        .env("REFUND_DESK_API_TOKENS", format!("logs:create:{}", hex::encode(sha2::Sha256::digest(API_TOKEN))))
        .env("REFUND_DESK_CALLBACK_URL", &receiver.url)
        .env("REFUND_DESK_CALLBACK_SECRET", CALLBACK_SECRET)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap());
    if let Some(format) = format {
        command.env("REFUND_DESK_LOG_FORMAT", format);
    }
    let mut desk = KillOnDrop(command.spawn().unwrap());
    wait_until_ready(port, DEADLINE).await;
    let base = format!("http://127.0.0.1:{port}");
    stripe.send_webhooks_to(&format!("{base}/stripe/webhook"), driver::WEBHOOK_SECRET);
    let slack_driver = SlackDriver::new(base.clone());

    let charge = stripe.add_charge(ChargeSpec { billing_email: Some(CUSTOMER.into()), ..ChargeSpec::default() }).0;
    let (_, answer) = slack_driver.slash(REQUESTER, &format!("{charge} 25.00 duplicate")).await;
    let id = request_id_in(answer["text"].as_str().unwrap_or_default());
    let card = card_in(&slack, id).await;
    assert_eq!(slack_driver.click(APPROVER, "refund_approve", &id.to_string(), &card.ts).await, 200);
    let refund = wait_for(DEADLINE, || stripe.refund_for_request(&id.to_string())).await.expect("refunded");
    let event = stripe.refund_event(&refund, "refund.updated", "succeeded", None).unwrap();
    assert_eq!(stripe.deliver(&event).await.unwrap(), 200);
    wait_for(DEADLINE, || smtp.messages().first().cloned()).await.expect("the customer is emailed");

    // A support tool asks through the API (its status changes posted to the callback), and a
    // wrong token is refused.
    let api = format!("{base}/api/v1/refund-requests");
    let ask = |token: &'static str| {
        let charge = stripe.add_charge(ChargeSpec::default()).0;
        reqwest::Client::new()
            .post(&api)
            .bearer_auth(token)
            .header("Idempotency-Key", "logs-1")
            .json(&serde_json::json!({ "payment": charge, "amount": "full", "requested_by": AGENT_EMAIL }))
            .send()
    };
    slack.add_member(AGENT_EMAIL, REQUESTER, false);
    assert_eq!(ask(WRONG_API_TOKEN).await.unwrap().status(), 401);
    assert_eq!(ask(API_TOKEN).await.unwrap().status(), 202);
    wait_for(DEADLINE, || receiver.deliveries().first().cloned()).await.expect("a status change is posted");
    assert_eq!(terminate(&mut desk.0, DEADLINE).await, Some(0));
    std::fs::read_to_string(&log_path).unwrap()
}

/// Fails if `log` holds any secret the desk was given, or the customer's whole address.
fn assert_no_secret(log: &str) {
    assert!(log.contains("an API call was refused"), "the wrong token is logged, without itself");
    for secret in [
        driver::BOT_TOKEN,
        driver::SIGNING_SECRET,
        driver::STRIPE_KEY,
        driver::WEBHOOK_SECRET,
        CUSTOMER,
        API_TOKEN,
        WRONG_API_TOKEN,
        CALLBACK_SECRET,
        AGENT_EMAIL,
    ] {
        assert!(!log.contains(secret), "{secret:?} is in the log");
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_span_fields_and_no_secret() {
    let log = stderr_of_a_whole_refund(Some("json")).await;
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(lines.len() > 5, "{log}");
    for line in &lines {
        assert!(line["timestamp"].is_string() && line["level"].is_string() && line["message"].is_string(), "{line}");
    }
    // A field of any span the line was written in.
    let in_span = |field: &str| {
        lines.iter().any(|l| l["spans"].as_array().is_some_and(|s| s.iter().any(|s| s.get(field).is_some())))
    };
    for field in ["request_id", "slack_user", "job_id"] {
        assert!(in_span(field), "no line carries {field}: {log}");
    }
    assert_no_secret(&log);
}

#[tokio::test]
async fn text_logs_have_no_colour_codes_off_a_terminal_and_no_secret() {
    let log = stderr_of_a_whole_refund(None).await;
    assert!(log.contains("refund-desk is listening"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a file: {log}");
    assert_no_secret(&log);
}
