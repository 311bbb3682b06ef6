//! Slack over Socket Mode: the same flows as over HTTP, with no public address; every envelope
//! acknowledged within Slack's 3 s, after the same durable write.

use crate::helpers::*;
use refund_desk::domain::RequestStatus;
use refund_desk_standins::driver::SlackDriver;
use refund_desk_standins::socket::SocketModeStandIn;
use refund_desk_standins::{ChargeSpec, wait_for};
use serde_json::{Value, json};
use std::time::Duration;

const APP_TOKEN: &str = "xapp-1-A00000001-1700000000-standin";
/// Slack waits 3 s for an acknowledgement.
const ACK: Duration = Duration::from_secs(3);

/// A desk with an app-level token and no signing secret, against a Slack stand-in serving
/// Socket Mode; returns the WebSocket side once the desk has connected.
async fn socket_desk() -> (TestApp, SocketModeStandIn) {
    socket_desk_with_policy("").await
}

/// [`socket_desk`] with `[policy]` TOML applied.
async fn socket_desk_with_policy(policy_toml: &str) -> (TestApp, SocketModeStandIn) {
    let mut app = TestApp::spawn_with_policy(policy_toml).await;
    let socket = app.slack.enable_socket_mode(APP_TOKEN).await.unwrap();
    app.reconfigure(|s| {
        s.slack.app_token = Some(secrecy::SecretString::from(APP_TOKEN.to_string()));
        s.slack.signing_secret = None;
    })
    .await;
    assert!(socket.wait_until(DEADLINE, |s| s.connections_open() > 0).await, "the desk never connected");
    (app, socket)
}

/// Sends `/refund <text>` as `user` over the socket; the acknowledgement's payload.
async fn slash(socket: &SocketModeStandIn, user: &str, text: &str) -> Value {
    let id = socket.send("slash_commands", SlackDriver::command_payload(user, text), 0).expect("an open connection");
    socket.ack(&id, ACK).await.unwrap_or_else(|| panic!("no acknowledgement within 3 s for /refund {text}"))
}

fn request_id(answer: &Value) -> refund_desk::domain::RequestId {
    let text = answer["text"].as_str().unwrap_or_default();
    text.split(|c: char| c == '*' || c.is_whitespace())
        .find_map(|w| refund_desk::domain::RequestId::parse(w).ok())
        .unwrap_or_else(|| panic!("no request id in {answer}"))
}

fn home_opened(user: &str, event_id: &str) -> Value {
    json!({ "token": "x", "team_id": "T00000001", "api_app_id": "A00000001", "type": "event_callback",
        "event_id": event_id, "event_time": 1700000000,
        "event": { "type": "app_home_opened", "user": user, "channel": "D0APPHOME", "tab": "home", "event_ts": "1700000000.000100" } })
}

#[tokio::test]
async fn a_refund_goes_from_command_to_stripe_over_socket_mode_and_http_slack_routes_are_closed() {
    let (app, socket) = socket_desk().await;
    let charge = app.add_charge(ChargeSpec::default());
    let answer = slash(&socket, REQUESTER, &format!("{charge} 25.00 duplicate charged twice")).await;
    assert!(answer["text"].as_str().unwrap_or_default().starts_with("Got it"), "{answer}");
    assert_eq!(answer["response_type"], "ephemeral");
    let id = request_id(&answer);
    assert!(app.store().get_request(id).await.unwrap().is_some(), "acknowledged means stored");
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    let card = app.card(id).await;
    let click = SlackDriver::click_payload(APPROVER, "refund_approve", &id.to_string(), &card.ts);
    let envelope = socket.send("interactive", click, 0).unwrap();
    assert!(socket.ack(&envelope, ACK).await.is_some(), "the click is acknowledged");
    app.wait_for_status(id, RequestStatus::Submitted).await;
    assert_eq!(app.stripe.refund_posts().len(), 1);
    // Nothing comes over HTTP without a signing secret.
    let (status, _) = app.driver.slash(REQUESTER, &format!("{charge} 1.00 duplicate")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn app_home_opens_over_socket_mode_and_a_retried_envelope_changes_nothing() {
    let (app, socket) = socket_desk().await;
    let envelope = socket.send("events_api", home_opened(APPROVER, "Ev0SOCKET01"), 0).unwrap();
    assert!(socket.ack(&envelope, ACK).await.is_some());
    let published = wait_for(DEADLINE, || app.slack.home_of(APPROVER)).await;
    assert!(published.is_some_and(|(_, n)| n == 1));
    // Slack sends it again (retry_attempt 1): acknowledged, and nothing is done twice.
    let again = socket.send("events_api", home_opened(APPROVER, "Ev0SOCKET01"), 1).unwrap();
    assert!(socket.ack(&again, ACK).await.is_some());
    let fresh = socket.send("events_api", home_opened(APPROVER, "Ev0SOCKET02"), 0).unwrap();
    assert!(socket.ack(&fresh, ACK).await.is_some());
    let twice = wait_for(DEADLINE, || app.slack.home_of(APPROVER).filter(|(_, n)| *n >= 2)).await;
    assert_eq!(twice.map(|(_, n)| n), Some(2), "the retry published nothing; the new event did");
}

#[tokio::test]
async fn an_envelope_is_acknowledged_within_3_s_while_stripe_is_slow() {
    let (app, socket) = socket_desk().await;
    app.stripe.set_read_delay(Duration::from_secs(5));
    let charge = app.add_charge(ChargeSpec::default());
    let started = std::time::Instant::now();
    let answer = slash(&socket, REQUESTER, &format!("{charge} 25.00 duplicate charged twice")).await;
    assert!(started.elapsed() < ACK, "acknowledged after {:?}", started.elapsed());
    assert!(app.store().get_request(request_id(&answer)).await.unwrap().is_some());
    app.stripe.set_read_delay(Duration::ZERO);
}

#[tokio::test]
async fn a_disconnect_in_the_middle_of_a_flow_loses_nothing_and_a_dropped_socket_is_reconnected() {
    let (app, socket) = socket_desk().await;
    let charge = app.add_charge(ChargeSpec::default());
    let id = request_id(&slash(&socket, REQUESTER, &format!("{charge} 25.00 duplicate charged twice")).await);
    // Slack asks the app to reconnect while the request is being checked.
    let before = socket.connections_opened();
    socket.disconnect("refresh_requested");
    assert!(socket.wait_until(DEADLINE, |s| s.connections_opened() > before).await, "no new connection");
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    let card = app.card(id).await;
    // The network drops every socket: the desk dials again, and the flow goes on.
    let before = socket.connections_opened();
    socket.drop_connections();
    assert!(
        socket
            .wait_until(Duration::from_secs(30), |s| s.connections_opened() > before && s.connections_open() > 0)
            .await
    );
    let click = SlackDriver::click_payload(APPROVER, "refund_approve", &id.to_string(), &card.ts);
    let envelope = socket.send("interactive", click, 0).unwrap();
    assert!(socket.ack(&envelope, ACK).await.is_some());
    app.wait_for_status(id, RequestStatus::Submitted).await;
    assert_eq!(app.stripe.refund_posts().len(), 1);
}

#[tokio::test]
async fn the_deny_form_opens_and_answers_over_socket_mode() {
    let (app, socket) = socket_desk().await;
    let charge = app.add_charge(ChargeSpec::default());
    let id = request_id(&slash(&socket, REQUESTER, &format!("{charge} 25.00 duplicate charged twice")).await);
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    let card = app.card(id).await;
    let click = SlackDriver::click_payload(APPROVER, "refund_deny", &id.to_string(), &card.ts);
    let envelope = socket.send("interactive", click, 0).unwrap();
    assert!(socket.ack(&envelope, ACK).await.is_some());
    let opened = wait_for(DEADLINE, || app.slack.views_opened().pop()).await.expect("the deny form opened");
    assert_eq!(opened["view"]["private_metadata"], id.to_string());
    // No reason: the form's field says why, inside the acknowledgement.
    let blank = socket.send("interactive", SlackDriver::deny_payload(APPROVER, &id.to_string(), "  "), 0).unwrap();
    let answer = socket.ack(&blank, ACK).await.expect("acknowledged");
    assert_eq!(answer["response_action"], "errors", "{answer}");
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval);
    let reason = "Outside the 30-day window";
    let submitted =
        socket.send("interactive", SlackDriver::deny_payload(APPROVER, &id.to_string(), reason), 0).unwrap();
    let answer = socket.ack(&submitted, ACK).await.expect("acknowledged");
    assert!(answer.get("response_action").is_none(), "a bare acknowledgement closes the form: {answer}");
    app.wait_for_status(id, RequestStatus::Denied).await;
    assert!(app.stripe.refund_posts().is_empty());
}

#[tokio::test]
async fn the_request_form_answers_in_its_acknowledgement_and_closing_a_form_changes_nothing_over_socket_mode() {
    use refund_desk::slack::views::{AMOUNT_BLOCK, CHARGE_BLOCK, DENY_CALLBACK, REASON_BLOCK, REQUEST_CALLBACK};
    let (app, socket) = socket_desk().await;
    let charge = app.add_charge(ChargeSpec::default());
    let submit = |values: &[(&str, &str)]| {
        let payload = SlackDriver::view_submission_payload(REQUESTER, REQUEST_CALLBACK, "C0SUPPORT1", values);
        socket.send("interactive", payload, 0).expect("an open connection")
    };
    // A bad amount: the field says why, inside the acknowledgement, and nothing is stored.
    let bad = submit(&[(CHARGE_BLOCK, charge.as_str()), (AMOUNT_BLOCK, "-5"), (REASON_BLOCK, "duplicate")]);
    let answer = socket.ack(&bad, ACK).await.expect("acknowledged");
    assert_eq!(answer["response_action"], "errors", "{answer}");
    assert!(answer["errors"][AMOUNT_BLOCK].as_str().unwrap_or_default().contains("negative"), "{answer}");
    assert!(app.store().all_requests().await.unwrap().is_empty());
    // Closing the request form stores nothing; closing a deny form decides nothing.
    let typed = [(CHARGE_BLOCK, charge.as_str()), (AMOUNT_BLOCK, "10.00"), (REASON_BLOCK, "duplicate")];
    let closed =
        socket.send("interactive", SlackDriver::view_closed_payload(REQUESTER, REQUEST_CALLBACK, "", &typed), 0);
    assert_eq!(socket.ack(&closed.unwrap(), ACK).await, Some(Value::Null), "a bare acknowledgement");
    assert!(app.store().all_requests().await.unwrap().is_empty());
    let good = submit(&[(CHARGE_BLOCK, charge.as_str()), (AMOUNT_BLOCK, "10.00"), (REASON_BLOCK, "duplicate")]);
    let answer = socket.ack(&good, ACK).await.expect("acknowledged");
    assert_eq!(answer["response_action"], "update", "the form shows the request received: {answer}");
    let stored = app.store().all_requests().await.unwrap();
    assert_eq!(stored.len(), 1, "acknowledged means stored");
    let id = stored[0].id;
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    // Once the card is posted and recorded, nothing but a decision changes the request.
    let recorded = || async { Some(app.request(id).await).filter(|r| r.card.is_some()) };
    let before = wait_for_async(DEADLINE, recorded).await.expect("a card");
    let reason = [(refund_desk::slack::views::DENY_REASON_BLOCK, "Outside the 30-day window")];
    let closed = SlackDriver::view_closed_payload(APPROVER, DENY_CALLBACK, &id.to_string(), &reason);
    let closed = socket.send("interactive", closed, 0);
    assert_eq!(socket.ack(&closed.unwrap(), ACK).await, Some(Value::Null));
    assert_eq!(app.request(id).await, before, "a closed deny form decides nothing");
}

#[tokio::test]
async fn refund_alone_opens_the_form_and_is_acknowledged_bare_over_socket_mode() {
    let (app, socket) = socket_desk().await;
    let answer = slash(&socket, REQUESTER, "").await;
    assert_eq!(answer, Value::Null, "no message, as an empty HTTP 200: {answer}");
    let opened = wait_for(DEADLINE, || app.slack.views_opened().pop()).await;
    assert!(opened.is_some(), "the request form opened");
}

#[tokio::test]
async fn stopping_a_desk_on_socket_mode_closes_the_sockets_and_releases_the_store() {
    let (mut app, socket) = socket_desk().await;
    let charge = app.add_charge(ChargeSpec::default());
    let id = request_id(&slash(&socket, REQUESTER, &format!("{charge} 25.00 duplicate charged twice")).await);
    app.stop().await;
    assert!(socket.wait_until(DEADLINE, |s| s.connections_open() == 0).await, "the sockets were closed");
    // The listener's tasks hold no store: it opens again in this process at once.
    let store = app.open_store_stopped().await;
    assert!(store.get_request(id).await.unwrap().is_some());
}

#[tokio::test]
async fn delegation_the_typed_amount_form_and_the_remind_button_work_over_socket_mode() {
    use refund_desk_standins::driver::{APPROVE_AMOUNT_BLOCK, APPROVE_CALLBACK, REMIND_ACTION};
    let (app, socket) = socket_desk_with_policy("[policy.currency.usd]\nconfirm_amount_from = \"20.00\"\n").await;
    let delegate = "U0DELEGAT1";
    let today = chrono::Utc::now().date_naive();
    let answer = slash(&socket, APPROVER, &format!("delegate <@{delegate}|dee> until {today}")).await;
    assert!(answer["text"].as_str().unwrap_or_default().contains("on your behalf"), "{answer}");

    let charge = app.add_charge(ChargeSpec::default());
    let id = request_id(&slash(&socket, REQUESTER, &format!("{charge} 25.00 duplicate")).await);
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    let card = app.card(id).await;

    // The requester nudges from their direct message.
    let dm =
        wait_for(DEADLINE, || app.slack.messages_in(REQUESTER).into_iter().find(|m| m.text.contains("with finance")))
            .await
            .expect("told it is with finance");
    let mut press = SlackDriver::click_payload(REQUESTER, REMIND_ACTION, &id.to_string(), &dm.ts);
    press["container"]["channel_id"] = dm.channel.clone().into();
    press["channel"]["id"] = dm.channel.clone().into();
    let envelope = socket.send("interactive", press, 0).unwrap();
    assert!(socket.ack(&envelope, ACK).await.is_some());
    let nudged = wait_for(DEADLINE, || app.thread_texts(&card).into_iter().find(|t| t.contains(":wave:"))).await;
    assert!(nudged.is_some_and(|t| t.contains(&format!("<@{delegate}>"))), "the delegate is named too");

    // The delegate approves through the typed-amount form.
    let click = SlackDriver::click_payload(delegate, "refund_approve", &id.to_string(), &card.ts);
    let envelope = socket.send("interactive", click, 0).unwrap();
    assert!(socket.ack(&envelope, ACK).await.is_some());
    let opened = wait_for(DEADLINE, || {
        app.slack.views_opened().into_iter().find(|v| v["view"]["callback_id"] == APPROVE_CALLBACK)
    });
    assert!(opened.await.is_some(), "the approval form opened");
    let meta = id.to_string();
    let wrong =
        SlackDriver::view_submission_payload(delegate, APPROVE_CALLBACK, &meta, &[(APPROVE_AMOUNT_BLOCK, "52.00")]);
    let envelope = socket.send("interactive", wrong, 0).unwrap();
    let answer = socket.ack(&envelope, ACK).await.expect("acknowledged");
    assert_eq!(answer["response_action"], "errors", "{answer}");
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval);
    let right =
        SlackDriver::view_submission_payload(delegate, APPROVE_CALLBACK, &meta, &[(APPROVE_AMOUNT_BLOCK, "25")]);
    let envelope = socket.send("interactive", right, 0).unwrap();
    let answer = socket.ack(&envelope, ACK).await.expect("acknowledged");
    assert!(answer.get("response_action").is_none(), "{answer}");
    let approved = app.wait_for_status(id, RequestStatus::Submitted).await.approved.unwrap();
    assert_eq!(approved.on_behalf_of.map(|u| u.to_string()), Some(APPROVER.to_string()));
}
