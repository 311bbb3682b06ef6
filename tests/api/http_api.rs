//! The HTTP API for support tools: a request made with a bearer token takes the path of
//! `/refund`; bad bodies, wrong tokens, reused keys and floods are refused with problem
//! documents; status changes are posted, signed, to the client's callback URL.

use crate::helpers::*;
use refund_desk::config::{ApiToken, CallbackSettings, Settings};
use refund_desk::domain::{RequestId, RequestStatus};
use refund_desk_standins::{CallbackReceiver, ChargeSpec, wait_for};
use serde_json::{Value, json};
use sha2::Digest;

pub const HELPDESK_TOKEN: &str = "rdt_helpdesk_7f3a9c2e51b84d06a1e2";
pub const FORMS_TOKEN: &str = "rdt_forms_0b1c2d3e4f5a6b7c8d9e";
pub const AUDITOR_TOKEN: &str = "rdt_auditor_99aa88bb77cc66dd55ee";
pub const CALLBACK_SECRET: &str = "callback-secret-for-tests-0123";

fn token(name: &str, secret: &str, create: bool, read: bool) -> ApiToken {
    ApiToken { name: name.into(), create, read, sha256: sha2::Sha256::digest(secret.as_bytes()).into() }
}

/// Three clients: `helpdesk` and `forms` may create (and read their own), `auditor` may only
/// read, any request.
pub fn with_api_clients(s: &mut Settings) {
    s.api.tokens = vec![
        token("helpdesk", HELPDESK_TOKEN, true, false),
        token("forms", FORMS_TOKEN, true, false),
        token("auditor", AUDITOR_TOKEN, false, true),
    ];
}

/// The answer to an API call: status, headers, body (JSON, or `Null`).
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn bad_fields(&self) -> Vec<String> {
        let mut fields: Vec<String> = self.body["errors"]
            .as_array()
            .map(|e| e.iter().map(|e| e["field"].as_str().unwrap_or_default().to_string()).collect())
            .unwrap_or_default();
        fields.sort();
        fields
    }
}

pub fn base(app: &TestApp) -> String {
    format!("http://{}", app.app.as_ref().expect("running").local_addr())
}

async fn answer(response: reqwest::Response) -> Answer {
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let text = response.text().await.unwrap();
    Answer { status, headers, body: serde_json::from_str(&text).unwrap_or(Value::Null) }
}

/// `POST /api/v1/refund-requests` with `token` (if any), `key` (if any) and the raw `body`.
pub async fn post_raw(app: &TestApp, token: Option<&str>, key: Option<&str>, body: String) -> Answer {
    let mut call = reqwest::Client::new()
        .post(format!("{}/api/v1/refund-requests", base(app)))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        call = call.bearer_auth(t);
    }
    if let Some(k) = key {
        call = call.header("Idempotency-Key", k);
    }
    answer(call.send().await.unwrap()).await
}

pub async fn post(app: &TestApp, token: &str, key: &str, body: &Value) -> Answer {
    post_raw(app, Some(token), Some(key), body.to_string()).await
}

pub async fn get(app: &TestApp, token: &str, path: &str) -> Answer {
    answer(reqwest::Client::new().get(format!("{}{path}", base(app))).bearer_auth(token).send().await.unwrap()).await
}

/// A request through the API that must be accepted; its id.
pub async fn create(app: &TestApp, token: &str, key: &str, body: &Value) -> RequestId {
    let a = post(app, token, key, body).await;
    assert_eq!(a.status, 202, "{}", a.body);
    RequestId::parse(a.body["id"].as_str().unwrap()).unwrap()
}

fn body_for(charge: &str) -> Value {
    json!({ "payment": charge, "amount": "25.00", "reason": "duplicate", "note": "ticket #4411: charged twice",
            "requested_by": OUTSIDER })
}

#[tokio::test]
async fn a_request_made_through_the_api_takes_the_path_of_refund_and_its_key_gives_it_back() {
    let app = TestApp::spawn_configured("", with_api_clients).await;
    let charge = app.add_charge(ChargeSpec::default());
    let body = body_for(&charge);

    let first = post(&app, HELPDESK_TOKEN, "ticket-4411", &body).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let id = RequestId::parse(first.body["id"].as_str().unwrap()).unwrap();
    assert_eq!(first.body["status"], "checking");
    assert_eq!(first.body["url"], format!("/api/v1/refund-requests/{id}"));
    assert_eq!(first.header("location"), Some(format!("/api/v1/refund-requests/{id}").as_str()));
    // Durable before the answer, as a slash command is.
    assert_eq!(app.request(id).await.requester.as_str(), OUTSIDER);

    // The path of /refund: Stripe's check, the policy, the card in the finance channel.
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    let card = app.card(id).await;
    assert!(card.text.contains("$25.00"), "{}", card.text);
    let created = &app.store().audit_of(id).await.unwrap()[0];
    assert_eq!(
        created.detail.as_deref().map(|d| d.ends_with("through the API as helpdesk")),
        Some(true),
        "{created:?}"
    );

    // The same key and body (written another way) give the same request back; nothing new.
    let reordered = format!(
        r#"{{ "requested_by": "{OUTSIDER}", "note": "ticket #4411: charged twice", "reason": "duplicate", "amount": "25.00", "payment": "{charge}" }}"#
    );
    let again = post_raw(&app, Some(HELPDESK_TOKEN), Some("ticket-4411"), reordered).await;
    assert_eq!((again.status, again.body["id"].as_str()), (202, Some(id.to_string().as_str())), "{}", again.body);
    assert_eq!(again.body["status"], "awaiting_approval", "as it is now");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));

    // The same key with another body is a conflict that names the request the key made.
    let mut other = body.clone();
    other["amount"] = json!("20.00");
    let conflict = post(&app, HELPDESK_TOKEN, "ticket-4411", &other).await;
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    assert_eq!(conflict.header("content-type"), Some("application/problem+json"));
    assert_eq!(conflict.body["request_id"], id.to_string());

    // Keys are each client's own: another client's same key makes its own request.
    let forms = create(&app, FORMS_TOKEN, "ticket-4411", &body).await;
    assert_ne!(forms, id);
    assert_eq!(app.store().all_requests().await.unwrap().len(), 2, "one request per client and key");
}

#[tokio::test]
async fn every_bad_field_is_named_in_a_problem_and_nothing_is_stored() {
    let app = TestApp::spawn_configured("", with_api_clients).await;
    let bad = json!({ "payment": "cus_NffrFeUfNV2Hib", "amount": 25.5, "reason": "because",
                      "customer_email": "not-an-address", "requested_by": "sam", "priority": "high" });
    let a = post(&app, HELPDESK_TOKEN, "k-1", &bad).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    assert_eq!(a.bad_fields(), ["amount", "customer_email", "payment", "priority", "reason", "requested_by"]);
    assert_eq!(a.body["errors"][0]["pointer"], format!("#/{}", a.body["errors"][0]["field"].as_str().unwrap()));

    let missing = post(&app, HELPDESK_TOKEN, "k-2", &json!({})).await;
    let required: Vec<String> = vec!["amount".into(), "payment".into(), "requested_by".into()];
    assert_eq!((missing.status, missing.bad_fields()), (400, required), "a full refund is never assumed");
    let not_json = post_raw(&app, Some(HELPDESK_TOKEN), Some("k-3"), "payment=ch_1".into()).await;
    assert_eq!(not_json.status, 400);
    assert!(not_json.body["detail"].as_str().unwrap().contains("not JSON"), "{}", not_json.body);
    let charge = app.add_charge(ChargeSpec::default());
    let no_key = post_raw(&app, Some(HELPDESK_TOKEN), None, body_for(&charge).to_string()).await;
    assert_eq!((no_key.status, no_key.bad_fields()), (400, vec!["Idempotency-Key".into()]));

    // An email Slack does not know is a bad field too.
    let mut unknown = body_for(&charge);
    unknown["requested_by"] = json!("nobody@example.com");
    let a = post(&app, HELPDESK_TOKEN, "k-4", &unknown).await;
    assert_eq!((a.status, a.bad_fields()), (400, vec!["requested_by".into()]), "{}", a.body);

    assert!(app.store().all_requests().await.unwrap().is_empty(), "nothing was stored");
    let asked: Vec<String> =
        app.stripe.received().into_iter().map(|r| r.path).filter(|p| !p.starts_with("/v1/events")).collect();
    assert!(asked.is_empty(), "Stripe was never asked about a payment: {asked:?}");
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_refused_a_reading_token_cannot_ask_and_no_token_decides() {
    let app = TestApp::spawn_configured("", with_api_clients).await;
    let charge = app.add_charge(ChargeSpec::default());
    let body = body_for(&charge).to_string();
    for token in [None, Some("rdt_helpdesk_7f3a9c2e51b84d06a1e3"), Some("")] {
        let a = post_raw(&app, token, Some("k"), body.clone()).await;
        assert_eq!(a.status, 401, "{token:?}: {}", a.body);
        assert_eq!(a.header("www-authenticate"), Some("Bearer realm=\"refund-desk\""));
        assert_eq!(a.body["type"], "/api/v1/problems/unauthorized");
    }
    let reader = post_raw(&app, Some(AUDITOR_TOKEN), Some("k"), body).await;
    assert_eq!(reader.status, 403, "{}", reader.body);
    let read = get(&app, "rdt_wrong", "/api/v1/refund-requests/R-1001").await;
    assert_eq!(read.status, 401);
    assert!(app.store().all_requests().await.unwrap().is_empty(), "nothing stored for the refused calls");
    // Nothing in the API decides: no approving, denying or cancelling with a token.
    let id = create(&app, HELPDESK_TOKEN, "k-made", &body_for(&charge)).await;
    let http = reqwest::Client::new();
    let path = format!("{}/api/v1/refund-requests/{id}", base(&app));
    for call in [
        http.post(format!("{path}/approve")),
        http.post(format!("{path}/deny")),
        http.delete(&path),
        http.patch(&path).json(&json!({ "status": "approved" })),
    ] {
        let status = call.bearer_auth(HELPDESK_TOKEN).send().await.unwrap().status().as_u16();
        assert!(matches!(status, 404 | 405), "{status}");
    }
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    app.wait_until_idle().await;
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval);
}

#[tokio::test]
async fn each_token_has_its_own_rate_and_is_told_when_to_come_back() {
    let app = TestApp::spawn_configured("", |s| {
        with_api_clients(s);
        s.api.per_minute = 2;
    })
    .await;
    let charge = app.add_charge(ChargeSpec::default());
    let body = body_for(&charge);
    create(&app, HELPDESK_TOKEN, "r-1", &body).await;
    // A replay counts too: the rate is of calls.
    create(&app, HELPDESK_TOKEN, "r-1", &body).await;
    let limited = post(&app, HELPDESK_TOKEN, "r-2", &body).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    let retry: u64 = limited.header("retry-after").expect("Retry-After").parse().unwrap();
    // Two calls a minute: the next one is about 30 s away.
    assert!((20..=30).contains(&retry), "{retry}");
    assert_eq!(get(&app, HELPDESK_TOKEN, "/api/v1/refund-requests/R-1001").await.status, 429);
    // Another client is not held back by it.
    create(&app, FORMS_TOKEN, "r-2", &body).await;
    assert_eq!(app.store().all_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_body_over_64_kib_is_refused_with_413() {
    let app = TestApp::spawn_configured("", with_api_clients).await;
    let charge = app.add_charge(ChargeSpec::default());
    let mut body = body_for(&charge);
    body["note"] = json!("x".repeat(64 * 1024));
    let a = post(&app, HELPDESK_TOKEN, "big", &body).await;
    assert_eq!(a.status, 413, "{}", a.body);
    assert_eq!(a.body["type"], "/api/v1/problems/too-large");
    // Just under the limit, the body is read, and its overlong note refused as a field.
    body["note"] = json!("x".repeat(63 * 1024));
    let a = post(&app, HELPDESK_TOKEN, "big", &body).await;
    assert_eq!((a.status, a.bad_fields()), (400, vec!["note".into()]), "{}", a.body);
    // Too large is said before anything else is checked.
    let a = post_raw(&app, Some(HELPDESK_TOKEN), None, "x".repeat(65 * 1024)).await;
    assert_eq!(a.status, 413, "{}", a.body);
    assert!(app.store().all_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_request_reads_back_for_its_client_and_readers_with_its_refund_and_timeline() {
    let app = TestApp::spawn_configured("", with_api_clients).await;
    let charge = app.add_charge(ChargeSpec::default());
    let id = create(&app, HELPDESK_TOKEN, "t-1", &body_for(&charge)).await;
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    app.approve_and_settle(id).await;

    let path = format!("/api/v1/refund-requests/{id}");
    let doc = get(&app, HELPDESK_TOKEN, &path).await;
    assert_eq!(doc.status, 200, "{}", doc.body);
    let refund = app.request(id).await.refund.unwrap().id;
    assert_eq!(doc.body["status"], "succeeded");
    assert_eq!(doc.body["amount"], json!({ "minor": 2500, "currency": "usd", "text": "$25.00" }));
    assert_eq!(doc.body["refund"]["id"], refund.as_str());
    assert_eq!(doc.body["client"], "helpdesk");
    let steps: Vec<(&str, &str)> = doc.body["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["from"].as_str().unwrap(), s["to"].as_str().unwrap()))
        .collect();
    assert_eq!(steps.first(), Some(&("checking", "checking")), "made");
    assert!(steps.contains(&("awaiting_approval", "approved")), "{steps:?}");
    assert_eq!(steps.last().map(|s| s.1), Some("succeeded"), "{steps:?}");
    let approved = doc.body["timeline"].as_array().unwrap().iter().find(|s| s["to"] == "approved").unwrap();
    assert_eq!(approved["by"], APPROVER);

    // A reader reads any request; another client reads none of this one's, nor made in Slack.
    assert_eq!(get(&app, AUDITOR_TOKEN, &path).await.body["status"], "succeeded");
    let other = get(&app, FORMS_TOKEN, &path).await;
    assert_eq!((other.status, other.body["type"].as_str()), (404, Some("/api/v1/problems/not-found")));
    let slack_made = app.request_refund(&format!("{} 5.00", app.add_charge(ChargeSpec::default()))).await;
    let slack_path = format!("/api/v1/refund-requests/{slack_made}");
    assert_eq!(get(&app, HELPDESK_TOKEN, &slack_path).await.status, 404);
    assert_eq!(get(&app, AUDITOR_TOKEN, &slack_path).await.body["client"], Value::Null);
    assert_eq!(get(&app, AUDITOR_TOKEN, "/api/v1/refund-requests/R-99999").await.status, 404);
    assert_eq!(get(&app, AUDITOR_TOKEN, "/api/v1/refund-requests/nonsense").await.status, 404);
}

#[tokio::test]
async fn the_requester_named_by_email_is_who_may_not_approve() {
    let app = TestApp::spawn_configured("", with_api_clients).await;
    // The requester is an approver too, so the refusal is the two-person rule's.
    app.slack.add_member("Requester@Example.com", REQUESTER, false);
    let charge = app.add_charge(ChargeSpec::default());
    let mut body = body_for(&charge);
    body["requested_by"] = json!("requester@example.com");
    let id = create(&app, HELPDESK_TOKEN, "e-1", &body).await;
    assert_eq!(app.request(id).await.requester.as_str(), REQUESTER);
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    let card = app.card(id).await;

    app.approve_own_request_and_be_refused(id, &card).await;

    // A retry with the key is answered from what it made, with no Slack call: Slack being down
    // does not turn it into an error.
    let lookups = app.slack.calls("users.lookupByEmail").len();
    app.slack.fail_next("users.lookupByEmail", 503, json!({ "ok": false, "error": "service_unavailable" }));
    let again = post(&app, HELPDESK_TOKEN, "e-1", &body).await;
    assert_eq!((again.status, again.body["id"].as_str()), (202, Some(id.to_string().as_str())), "{}", again.body);
    assert_eq!(app.slack.calls("users.lookupByEmail").len(), lookups);
    // A new request while Slack is down: 503, try again; nothing stored.
    let down = post(&app, HELPDESK_TOKEN, "e-3", &body).await;
    assert_eq!((down.status, down.header("retry-after").is_some()), (503, true), "{}", down.body);
    assert_eq!(app.store().all_requests().await.unwrap().len(), 1);

    // A deactivated account is no requester.
    app.slack.add_member("gone@example.com", "U0GONE0001", true);
    body["requested_by"] = json!("gone@example.com");
    let gone = post(&app, HELPDESK_TOKEN, "e-2", &body).await;
    assert_eq!((gone.status, gone.bad_fields()), (400, vec!["requested_by".into()]), "{}", gone.body);
}

/// Whether `delivery` carries a valid signature over its body with the callback secret.
pub fn signed_by_the_desk(delivery: &refund_desk_standins::receiver::Delivery) -> bool {
    use hmac::{KeyInit, Mac};
    let header = delivery.headers.get("refund-desk-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let (Some(t), Some(v1)) =
        (header.split(',').find_map(|p| p.strip_prefix("t=")), header.split(',').find_map(|p| p.strip_prefix("v1=")))
    else {
        return false;
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(CALLBACK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", delivery.body).as_bytes());
    hex::decode(v1).is_ok_and(|sig| mac.verify_slice(&sig).is_ok())
}

#[tokio::test]
async fn every_status_change_is_posted_signed_in_order_and_a_failed_delivery_is_retried() {
    let receiver = CallbackReceiver::start(0).await.unwrap();
    let url = receiver.url.clone();
    let app = TestApp::spawn_configured("", move |s| {
        with_api_clients(s);
        s.api.callback =
            Some(CallbackSettings { url: url.parse().unwrap(), secret: secrecy::SecretString::from(CALLBACK_SECRET) });
        // The receiver is down for the whole refund: its retries must not run out meanwhile.
        s.jobs.max_attempts = 1000;
    })
    .await;
    receiver.set_down(true);
    let charge = app.add_charge(ChargeSpec::default());
    let id = create(&app, HELPDESK_TOKEN, "c-1", &body_for(&charge)).await;
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    app.approve_and_settle(id).await;
    // A request made in Slack is not the client's business.
    let in_slack = app.request_refund(&format!("{} 5.00", app.add_charge(ChargeSpec::default()))).await;
    app.wait_for_status(in_slack, RequestStatus::AwaitingApproval).await;
    wait_for(DEADLINE, || (receiver.deliveries().len() >= 2).then_some(())).await.expect("tried again while down");
    receiver.set_down(false);

    let landed = wait_for(DEADLINE, || {
        let ok: Vec<_> = receiver.deliveries().into_iter().filter(|d| d.status == 200).collect();
        ok.last().is_some_and(|d| d.body.contains("\"to\":\"succeeded\"")).then_some(ok)
    })
    .await
    .expect("the last change is delivered");
    let deliveries = receiver.deliveries();
    assert!(deliveries.iter().all(signed_by_the_desk), "every delivery is signed over its timestamp and body");

    // While the receiver was down, only the first change was tried, again and again, as the
    // same event: the later ones waited behind it.
    let event_id = |d: &refund_desk_standins::receiver::Delivery| {
        d.headers.get("refund-desk-event-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    };
    let failed: Vec<_> = deliveries.iter().filter(|d| d.status == 500).collect();
    assert!(failed.len() >= 2);
    assert!(
        failed.iter().all(|d| event_id(d) == event_id(failed[0]) && d.body == failed[0].body),
        "retried as the same event"
    );
    assert_eq!(event_id(&landed[0]), event_id(failed[0]), "and delivered first once the receiver was back");

    let events: Vec<Value> = landed.iter().map(|d| serde_json::from_str(&d.body).unwrap()).collect();
    assert!(events.iter().all(|e| e["request_id"] == id.to_string()), "only the API-made request");
    assert!(events.iter().all(|e| e["client"] == "helpdesk"));
    let changes: Vec<(&str, &str)> =
        events.iter().map(|e| (e["from"].as_str().unwrap(), e["to"].as_str().unwrap())).collect();
    assert_eq!(changes[..2], [("checking", "awaiting_approval"), ("awaiting_approval", "approved")]);
    assert_eq!(changes.last().map(|c| c.1), Some("succeeded"));
    assert!(changes.windows(2).all(|w| w[0].1 == w[1].0), "in order, none missing: {changes:?}");
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), events.len(), "each change has its own event id");
    assert!(landed.iter().all(|d| event_id(d) == serde_json::from_str::<Value>(&d.body).unwrap()["id"]));
    let last = events.last().unwrap();
    assert_eq!((last["amount_minor"].as_u64(), last["currency"].as_str()), (Some(2500), Some("usd")));
    assert_eq!(last["refund_id"], app.request(id).await.refund.unwrap().id.as_str());
}
