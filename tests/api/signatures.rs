use crate::helpers::*;
use refund_desk::domain::RequestStatus;
use refund_desk_standins::driver::{SIGNING_SECRET, SlackDriver};

const FORM: &str = "application/x-www-form-urlencoded";

async fn assert_nothing_stored(app: &TestApp) {
    assert!(app.store().all_requests().await.unwrap().is_empty(), "a request was stored");
    assert!(app.stripe.received().is_empty(), "Stripe was called");
    assert!(app.slack.calls("chat.postMessage").is_empty(), "Slack was called");
}

#[tokio::test]
async fn unsigned_forged_and_stale_slack_requests_get_401_and_change_nothing() {
    let app = TestApp::spawn().await;
    let charge = app.add_charge(Default::default());
    let body = SlackDriver::command_body(REQUESTER, &format!("{charge} 5"));
    let now = chrono::Utc::now().timestamp();
    // Seconds from now at sending: more than Slack's five minutes either way, with room for a
    // slow machine's clock to move on between signing and checking.
    let cases: [(&str, Option<(&str, i64)>); 5] = [
        ("missing", None),
        ("forged", Some(("not-the-signing-secret", 0))),
        ("stale", Some((SIGNING_SECRET, -330))),
        ("future", Some((SIGNING_SECRET, 330))),
        ("empty secret", Some(("", 0))),
    ];
    for (name, signature) in cases {
        let signature = signature.map(|(secret, offset)| (secret, chrono::Utc::now().timestamp() + offset));
        let status = app.driver.post_signed("/slack/commands", FORM, body.clone(), signature).await.status();
        assert_eq!(status, 401, "{name}");
    }
    // A genuine signature over one body does not carry over to another (5 changed to 50).
    let tampered = reqwest::Client::new()
        .post(format!("{}/slack/commands", app.driver.base))
        .header("content-type", FORM)
        .header("x-slack-request-timestamp", now.to_string())
        .header("x-slack-signature", refund_desk_standins::driver::sign_request(SIGNING_SECRET, now, body.as_bytes()))
        .body(body.replace("5", "50"))
        .send()
        .await
        .unwrap();
    assert_eq!(tampered.status(), 401, "tampered body");
    let forged_click =
        app.driver.post_signed("/slack/interactions", FORM, "payload=%7B%7D".into(), Some(("forged", now))).await;
    assert_eq!(forged_click.status(), 401);
    let events = app
        .driver
        .post_signed("/slack/events", "application/json", r#"{"type":"url_verification","challenge":"x"}"#.into(), None)
        .await;
    assert_eq!(events.status(), 401);
    assert!(app.store().all_requests().await.unwrap().is_empty(), "nothing refused was stored");
    // Control: the same request, correctly signed, is accepted and stored.
    let good = app.driver.post_signed("/slack/commands", FORM, body, Some((SIGNING_SECRET, now))).await;
    assert_eq!(good.status(), 200);
    assert_eq!(app.store().all_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_forged_click_cannot_approve() {
    let app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;
    let payload = SlackDriver::click_payload(APPROVER, "refund_approve", &id.to_string(), &card.ts);
    let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
    let status = app
        .driver
        .post_signed("/slack/interactions", FORM, body, Some(("forged", chrono::Utc::now().timestamp())))
        .await
        .status();
    assert_eq!(status, 401);
    app.wait_until_idle().await;
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval);
    assert!(app.stripe.refund_posts().is_empty());
}

#[tokio::test]
async fn bodies_over_one_mebibyte_get_413() {
    let app = TestApp::spawn().await;
    let body = format!("text={}", "a".repeat(1024 * 1024 + 1));
    let status = app
        .driver
        .post_signed("/slack/commands", FORM, body, Some((SIGNING_SECRET, chrono::Utc::now().timestamp())))
        .await
        .status();
    assert_eq!(status, 413);
    let status = reqwest::Client::new()
        .post(format!("{}/stripe/webhook", app.driver.base))
        .body(vec![b'{'; 1024 * 1024 + 1])
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 413);
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_forged_stripe_event_gets_400_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let (id, card) = app.waiting_request().await;
    app.approve(APPROVER, id, &card).await;
    app.wait_for_status(id, RequestStatus::Submitted).await;
    let event = app.refund_event(id, "refund.updated", "succeeded").await;
    let body = serde_json::to_vec(&event).unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/stripe/webhook", app.driver.base);
    let now = chrono::Utc::now().timestamp();
    for (name, header) in [
        ("wrong secret", Some(refund_desk_standins::stripe::sign_webhook(&body, "whsec_forged", now))),
        (
            "too old",
            Some(refund_desk_standins::stripe::sign_webhook(
                &body,
                refund_desk_standins::driver::WEBHOOK_SECRET,
                now - 301,
            )),
        ),
        ("missing", None),
    ] {
        let mut req = http.post(&url).body(body.clone());
        if let Some(h) = header {
            req = req.header("stripe-signature", h);
        }
        assert_eq!(req.send().await.unwrap().status(), 400, "{name}");
    }
    app.wait_until_idle().await;
    assert_eq!(app.request(id).await.status, RequestStatus::Submitted);
    assert!(app.smtp.messages().is_empty());
    // The genuine event still applies afterwards: nothing was recorded for the forged ones.
    assert_eq!(app.deliver_stripe_event(&event).await, 200);
    app.wait_for_status(id, RequestStatus::Succeeded).await;
}

#[tokio::test]
async fn url_verification_echoes_the_challenge() {
    let app = TestApp::spawn().await;
    let body =
        r#"{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let response = app
        .driver
        .post_signed(
            "/slack/events",
            "application/json",
            body.into(),
            Some((SIGNING_SECRET, chrono::Utc::now().timestamp())),
        )
        .await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["challenge"], "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P");
}

/// The stand-ins sign with code of their own, so the desk's verifier is checked against an
/// independent signer. Both signers reproduce the official libraries' vectors, and the ids the
/// stand-ins send are the desk's.
#[test]
fn the_stand_ins_sign_as_slack_and_stripe_do_and_send_the_desks_ids() {
    use refund_desk_standins::{driver, stripe};
    let slack: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/signatures/slack_sig_vectors.json")).unwrap();
    let mut checked = 0;
    for v in slack["vectors"].as_array().unwrap() {
        let Some(expected) = v["expected_signature_for_body"].as_str() else { continue };
        let timestamp: i64 = v["timestamp"].as_str().unwrap().parse().unwrap();
        let secret = v["signing_secret"].as_str().unwrap();
        assert_eq!(driver::sign_request(secret, timestamp, v["body"].as_str().unwrap().as_bytes()), expected);
        checked += 1;
    }
    let stripe_vectors: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/signatures/stripe_sig_vectors.json")).unwrap();
    for v in stripe_vectors["vectors"].as_array().unwrap() {
        let Some(expected) = v["expected_v1_for_secret"].as_str() else { continue };
        let t = v["timestamp"].as_i64().unwrap();
        let signed = stripe::sign_webhook(v["payload"].as_str().unwrap().as_bytes(), v["secret"].as_str().unwrap(), t);
        assert_eq!(signed, format!("t={t},v1={expected}"), "{}", v["name"]);
        checked += 1;
    }
    assert!(checked >= 4, "the vectors were read: {checked}");
    use refund_desk::slack::views;
    assert_eq!(
        [driver::APPROVE_ACTION, driver::DENY_CALLBACK, driver::DENY_REASON_BLOCK, driver::DENY_REASON_ACTION],
        [views::APPROVE_ACTION, views::DENY_CALLBACK, views::DENY_REASON_BLOCK, views::DENY_REASON_ACTION]
    );
    assert_eq!(
        [driver::REMIND_ACTION, driver::APPROVE_CALLBACK, driver::APPROVE_NOTE_BLOCK, driver::APPROVE_AMOUNT_BLOCK],
        [views::REMIND_ACTION, views::APPROVE_CALLBACK, views::APPROVE_NOTE_BLOCK, views::APPROVE_AMOUNT_BLOCK]
    );
    assert_eq!([driver::REASON_BLOCK, driver::INPUT_ACTION], [views::REASON_BLOCK, views::INPUT_ACTION]);
    assert_eq!(stripe::API_VERSION, refund_desk::stripe::client::API_VERSION);
}
