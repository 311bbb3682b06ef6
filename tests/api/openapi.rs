//! The OpenAPI document says what the API does: every route it serves is in it, and every
//! answer the API gives (and every callback it posts) fits the schema the document gives for
//! that route and status. A field added to an answer and not to the document fails here.

use crate::helpers::*;
use crate::http_api::{AUDITOR_TOKEN, CALLBACK_SECRET, HELPDESK_TOKEN, base, get, post, post_raw, with_api_clients};
use refund_desk::config::CallbackSettings;
use refund_desk::domain::RequestStatus;
use refund_desk_standins::{CallbackReceiver, ChargeSpec, wait_for};
use serde_json::{Value, json};

/// What in `value` breaks `schema` (a subset of JSON Schema: the keywords the document uses),
/// resolving `$ref`s in `doc`; `at` names the place for the message.
fn violations(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    if let Some(r) = schema["$ref"].as_str() {
        let target = r.trim_start_matches("#/").split('/').fold(doc, |v, k| &v[k]);
        assert!(!target.is_null(), "{r} points nowhere");
        return violations(doc, target, value, at);
    }
    let mut out = vec![];
    if let Some(options) = schema["oneOf"].as_array() {
        let fitting = options.iter().filter(|o| violations(doc, o, value, at).is_empty()).count();
        if fitting != 1 {
            out.push(format!("{at}: fits {fitting} of oneOf"));
        }
        return out;
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let type_of = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let fits = types.is_empty() || types.contains(&type_of) || (type_of == "integer" && types.contains(&"number"));
    if !fits {
        out.push(format!("{at}: is {type_of}, not {types:?}"));
        return out;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        out.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Value::Object(fields) = value {
        for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !fields.contains_key(name) {
                out.push(format!("{at}: lacks required `{name}`"));
            }
        }
        for (name, v) in fields {
            match schema["properties"].get(name) {
                Some(s) => out.extend(violations(doc, s, v, &format!("{at}.{name}"))),
                None if schema["additionalProperties"] == false => {
                    out.push(format!("{at}: `{name}` is not in the document"));
                }
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(item)) = (value, schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            out.extend(violations(doc, item, v, &format!("{at}[{i}]")));
        }
    }
    out
}

/// The schema the document gives for `method path` answering `status` with `media`.
fn response_schema<'d>(doc: &'d Value, method: &str, path: &str, status: u16, media: &str) -> &'d Value {
    let mut response = &doc["paths"][path][method]["responses"][status.to_string()];
    assert!(!response.is_null(), "{method} {path} does not document {status}");
    if let Some(r) = response["$ref"].as_str() {
        response = r.trim_start_matches("#/").split('/').fold(doc, |v, k| &v[k]);
    }
    let schema = &response["content"][media]["schema"];
    assert!(!schema.is_null(), "{method} {path} {status} documents no {media} body");
    schema
}

fn assert_fits(doc: &Value, schema: &Value, value: &Value, what: &str) {
    let problems = violations(doc, schema, value, what);
    assert!(problems.is_empty(), "{what} does not fit the document: {problems:?}\n{value:#}");
}

#[tokio::test]
async fn every_answer_and_callback_fits_the_openapi_document() {
    let receiver = CallbackReceiver::start(0).await.unwrap();
    let url = receiver.url.clone();
    let app = TestApp::spawn_configured("", move |s| {
        with_api_clients(s);
        s.api.per_minute = 5;
        s.api.callback =
            Some(CallbackSettings { url: url.parse().unwrap(), secret: secrecy::SecretString::from(CALLBACK_SECRET) });
    })
    .await;
    let served = reqwest::get(format!("{}/api/v1/openapi.json", base(&app))).await.unwrap();
    assert_eq!(served.status(), 200);
    let doc: Value = served.json().await.unwrap();
    assert_eq!(doc, serde_json::from_str::<Value>(refund_desk::api::OPENAPI).unwrap(), "served as written");
    for route in ["/api/v1/refund-requests", "/api/v1/refund-requests/{id}", "/api/v1/openapi.json"] {
        assert!(doc["paths"][route].is_object(), "{route} is not in the document");
    }
    let create = "/api/v1/refund-requests";
    let read = "/api/v1/refund-requests/{id}";
    let json = "application/json";
    let problem = "application/problem+json";

    let charge = app.add_charge(ChargeSpec::default());
    // Every property the document lists is one the API takes.
    let body = json!({ "payment": charge, "amount": "25.00", "reason": "duplicate", "note": "ticket 7",
                       "customer_email": "jenny@example.com", "requested_by": OUTSIDER });
    let documented = &doc["components"]["schemas"]["NewRefundRequest"];
    let mut listed: Vec<&String> = documented["properties"].as_object().unwrap().keys().collect();
    let mut sent: Vec<&String> = body.as_object().unwrap().keys().collect();
    listed.sort();
    sent.sort();
    assert_eq!(listed, sent);
    assert_fits(&doc, documented, &body, "the body");
    let made = post(&app, HELPDESK_TOKEN, "o-1", &body).await;
    assert_eq!(made.status, 202);
    assert_fits(&doc, response_schema(&doc, "post", create, 202, json), &made.body, "202");
    let id = made.body["id"].as_str().unwrap().to_string();

    let bad = post(&app, HELPDESK_TOKEN, "o-2", &json!({ "payment": "nope", "color": 1 })).await;
    assert_eq!(bad.status, 400);
    // What the document calls required is what the API says is missing from an empty body.
    let empty = post(&app, HELPDESK_TOKEN, "o-2", &json!({})).await;
    let mut required: Vec<&str> =
        documented["required"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    required.sort_unstable();
    assert_eq!(empty.bad_fields(), required);
    assert_fits(&doc, response_schema(&doc, "post", create, 400, problem), &bad.body, "400");
    let unauthorized = post_raw(&app, Some("wrong"), Some("o-3"), body.to_string()).await;
    assert_fits(&doc, response_schema(&doc, "post", create, 401, problem), &unauthorized.body, "401");
    let forbidden = post(&app, AUDITOR_TOKEN, "o-3", &body).await;
    assert_fits(&doc, response_schema(&doc, "post", create, 403, problem), &forbidden.body, "403");
    let conflict = post(&app, HELPDESK_TOKEN, "o-1", &json!({ "payment": charge, "requested_by": OUTSIDER })).await;
    assert_eq!(conflict.status, 409);
    assert_fits(&doc, response_schema(&doc, "post", create, 409, problem), &conflict.body, "409");
    let big = post(&app, HELPDESK_TOKEN, "o-4", &json!({ "note": "x".repeat(70_000) })).await;
    assert_eq!(big.status, 413);
    assert_fits(&doc, response_schema(&doc, "post", create, 413, problem), &big.body, "413");

    // The helpdesk token has used its 5 calls a minute (a refused token's calls are not its).
    let limited = get(&app, HELPDESK_TOKEN, &format!("/api/v1/refund-requests/{id}")).await;
    assert_eq!(limited.status, 429);
    assert_fits(&doc, response_schema(&doc, "get", read, 429, problem), &limited.body, "429");

    let id = refund_desk::domain::RequestId::parse(&id).unwrap();
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    app.approve_and_settle(id).await;
    let path = format!("/api/v1/refund-requests/{id}");
    let doc_of_request = get(&app, AUDITOR_TOKEN, &path).await;
    assert_eq!(doc_of_request.status, 200);
    assert_fits(&doc, response_schema(&doc, "get", read, 200, json), &doc_of_request.body, "200");
    let no_route = get(&app, AUDITOR_TOKEN, "/api/v1/refunds").await;
    assert_eq!((no_route.status, no_route.header("content-type")), (404, Some(problem)));
    assert_fits(&doc, &doc["components"]["schemas"]["Problem"], &no_route.body, "an unknown route");
    let missing = get(&app, AUDITOR_TOKEN, "/api/v1/refund-requests/R-999999").await;
    assert_fits(&doc, response_schema(&doc, "get", read, 404, problem), &missing.body, "404");

    let posted = wait_for(DEADLINE, || {
        let d = receiver.deliveries();
        d.iter().any(|d| d.body.contains("\"to\":\"succeeded\"")).then_some(d)
    })
    .await
    .expect("the callbacks were posted");
    let event_schema = &doc["webhooks"]["statusChanged"]["post"]["requestBody"]["content"][json]["schema"];
    assert!(event_schema.is_object(), "the callback is documented");
    for delivery in posted {
        assert_fits(&doc, event_schema, &serde_json::from_str(&delivery.body).unwrap(), "callback");
    }
}

#[test]
fn the_checker_catches_an_undocumented_field_a_missing_one_and_a_wrong_type() {
    let doc: Value = serde_json::from_str(refund_desk::api::OPENAPI).unwrap();
    let accepted = &doc["components"]["schemas"]["Accepted"];
    let good = json!({ "id": "R-1001", "status": "checking", "url": "/api/v1/refund-requests/R-1001" });
    assert!(violations(&doc, accepted, &good, "a").is_empty());
    let mut extra = good.clone();
    extra["eta"] = json!(3);
    assert_eq!(violations(&doc, accepted, &extra, "a").len(), 1);
    let mut wrong = good.clone();
    wrong["status"] = json!("done");
    assert_eq!(violations(&doc, accepted, &wrong, "a").len(), 1);
    assert_eq!(violations(&doc, accepted, &json!({ "id": 1001 }), "a").len(), 3);
}
