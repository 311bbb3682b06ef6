//! A Stripe API stand-in. It answers with the objects Stripe publishes
//! (`tests/fixtures/stripe/objects.json`, from stripe/openapi) with ids, amounts and statuses
//! adjusted; it keeps state (charges, refunds, amounts refunded); it honours `Idempotency-Key`
//! as Stripe does (same parameters: the saved answer again; other parameters: an
//! `idempotency_error`); it refuses over-refunds with Stripe's codes and messages; it can be
//! told to fail; and it can send signed webhooks like Stripe.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// The API version the stand-in's events carry, as the desk's client pins it.
pub const API_VERSION: &str = "2024-10-28.acacia";

/// `Stripe-Signature` for `body` at time `t`, as Stripe computes it (HMAC-SHA256 over
/// `t.body`), written here independently of the desk's verifier.
pub fn sign_webhook(body: &[u8], secret: &str, t: i64) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

const OBJECTS: &str = include_str!("../../fixtures/stripe/objects.json");

fn template(name: &str) -> Value {
    let all: Value = serde_json::from_str(OBJECTS).expect("the fixture file is valid JSON");
    all[name].clone()
}

/// A charge to seed.
#[derive(Debug, Clone)]
pub struct ChargeSpec {
    pub amount: u64,
    pub currency: String,
    pub billing_email: Option<String>,
    pub receipt_email: Option<String>,
    /// Creates a customer with this email and links it.
    pub customer_email: Option<String>,
    pub captured: bool,
    pub disputed: bool,
    pub amount_refunded: u64,
    /// Also creates a payment intent whose latest charge this is.
    pub with_payment_intent: bool,
    pub created_days_ago: i64,
    /// Adds an early fraud warning of this type.
    pub early_fraud_warning: Option<String>,
    /// With `disputed`: whether Stripe still allows refunding (an inquiry) or not.
    pub dispute_refundable: bool,
    /// Paid by a method other than a card (e.g. `sepa_debit`): no card details, no Radar.
    pub paid_without_card: Option<String>,
}

impl Default for ChargeSpec {
    fn default() -> Self {
        ChargeSpec {
            amount: 2500,
            currency: "usd".into(),
            billing_email: Some("jenny.rosen@example.com".into()),
            receipt_email: None,
            customer_email: None,
            captured: true,
            disputed: false,
            amount_refunded: 0,
            with_payment_intent: false,
            created_days_ago: 2,
            early_fraud_warning: None,
            dispute_refundable: false,
            paid_without_card: None,
        }
    }
}

/// A request Stripe received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub form: Vec<(String, String)>,
    pub idempotency_key: Option<String>,
    pub stripe_version: Option<String>,
}

impl Received {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// How the next `POST /v1/refunds` misbehaves.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer this status with Stripe's error body, without doing anything (429s carry
    /// `Retry-After: 1`).
    Status(u16),
    /// Do nothing for this long (past the client's timeout), then answer normally.
    Hang(std::time::Duration),
    /// Make the refund, then wait this long before answering: the client gives up first.
    ApplyThenHang(std::time::Duration),
    /// Make the refund, then drop the connection without answering.
    ApplyThenDrop,
}

/// The first answer given for an idempotency key: its parameters, status and body.
type SavedAnswer = (Vec<(String, String)>, u16, Value);

struct StripeState {
    api_key: String,
    charges: HashMap<String, Value>,
    intents: HashMap<String, Value>,
    /// Early fraud warnings, by charge.
    fraud_warnings: HashMap<String, Vec<Value>>,
    /// Disputes, by charge.
    disputes: HashMap<String, Vec<Value>>,
    customers: HashMap<String, Value>,
    refunds: BTreeMap<String, Value>,
    /// Idempotency key → (parameters, status, body) of the first answer.
    saved: HashMap<String, SavedAnswer>,
    received: Vec<Received>,
    refund_faults: VecDeque<Fault>,
    /// While set, every `POST /v1/refunds` gets a 503 and changes nothing.
    refunds_down: bool,
    /// Idempotency keys are not kept (as if pruned at once).
    keys_expire: bool,
    /// Every read (GET) waits this long before answering.
    read_delay: std::time::Duration,
    /// Status of a new refund, as Stripe first reports it.
    initial_refund_status: String,
    counter: u64,
    /// Calls a second at most, as Stripe allows (25 in test mode, 100 live); `None`: no limit.
    rate_limit: Option<u32>,
    /// When the calls of the last second arrived.
    recent_calls: VecDeque<std::time::Instant>,
    /// How many calls were answered 429 for the rate limit.
    rate_limited: u64,
    webhook: Option<(String, String)>,
    events_sent: Vec<Value>,
    /// Every event Stripe made, oldest first (`GET /v1/events` lists them newest first).
    events: Vec<Value>,
    /// A restricted key's permissions (`rak_charge_read`, ...); `None`: a secret key, which may
    /// do anything.
    permissions: Option<std::collections::HashSet<String>>,
}

#[derive(Clone)]
pub struct FakeStripe {
    pub url: String,
    state: Arc<Mutex<StripeState>>,
    http: reqwest::Client,
}

fn error(status: u16, kind: &str, code: Option<&str>, message: &str, param: Option<&str>) -> Response {
    let mut body = json!({ "error": { "type": kind, "message": message } });
    if let Some(code) = code {
        body["error"]["code"] = code.into();
        body["error"]["doc_url"] = format!("https://stripe.com/docs/error-codes/{}", code.replace('_', "-")).into();
    }
    if let Some(param) = param {
        body["error"]["param"] = param.into();
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, [("request-id", "req_standin")], axum::Json(body)).into_response()
}

/// Stripe's answer to a call over the rate limit.
fn rate_limit_error() -> Response {
    let message = "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.";
    error(429, "invalid_request_error", Some("rate_limit"), message, None)
}

fn no_such(kind: &str, id: &str) -> Response {
    error(404, "invalid_request_error", Some("resource_missing"), &format!("No such {kind}: '{id}'"), Some("id"))
}

/// An amount as Stripe's messages write it: `$25.00`, `¥1200`, `1.250 KWD`.
fn format_amount(minor: u64, currency: &str) -> String {
    const ZERO_DECIMAL: [&str; 16] = [
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
    ];
    const THREE_DECIMAL: [&str; 5] = ["bhd", "jod", "kwd", "omr", "tnd"];
    let currency = currency.to_ascii_lowercase();
    let decimals = if ZERO_DECIMAL.contains(&currency.as_str()) {
        0
    } else if THREE_DECIMAL.contains(&currency.as_str()) {
        3
    } else {
        2
    };
    let scale = 10u64.pow(decimals);
    let number = match decimals {
        0 => minor.to_string(),
        d => format!("{}.{:0width$}", minor / scale, minor % scale, width = d as usize),
    };
    match currency.as_str() {
        "usd" | "cad" | "aud" => format!("${number}"),
        "eur" => format!("€{number}"),
        "gbp" => format!("£{number}"),
        "jpy" => format!("¥{number}"),
        other => format!("{number} {}", other.to_ascii_uppercase()),
    }
}

impl FakeStripe {
    /// Starts on 127.0.0.1, accepting `api_key`.
    pub async fn start(api_key: &str) -> std::io::Result<FakeStripe> {
        crate::install_crypto_provider();
        let state = Arc::new(Mutex::new(StripeState {
            api_key: api_key.to_string(),
            charges: HashMap::new(),
            intents: HashMap::new(),
            fraud_warnings: HashMap::new(),
            disputes: HashMap::new(),
            customers: HashMap::new(),
            refunds: BTreeMap::new(),
            saved: HashMap::new(),
            received: vec![],
            refund_faults: VecDeque::new(),
            refunds_down: false,
            keys_expire: false,
            read_delay: std::time::Duration::ZERO,
            initial_refund_status: "pending".into(),
            counter: 0,
            rate_limit: Some(if api_key.contains("_live_") { 100 } else { 25 }),
            recent_calls: VecDeque::new(),
            rate_limited: 0,
            webhook: None,
            events_sent: vec![],
            events: vec![],
            permissions: None,
        }));
        let app = Router::new()
            .route("/v1/charges/{id}", get(get_charge))
            .route("/v1/payment_intents/{id}", get(get_intent))
            .route("/v1/customers/{id}", get(get_customer))
            .route("/v1/refunds", post(create_refund).get(list_refunds))
            .route("/v1/refunds/{id}", get(get_refund))
            .route("/v1/radar/early_fraud_warnings", get(list_fraud_warnings))
            .route("/v1/balance", get(get_balance))
            .route("/v1/disputes", get(list_disputes))
            .route("/v1/events", get(list_events))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(FakeStripe { url, state, http: reqwest::Client::new() })
    }

    fn lock(&self) -> MutexGuard<'_, StripeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a charge (and its customer and payment intent, if asked); returns its id and the
    /// payment intent's id.
    pub fn add_charge(&self, spec: ChargeSpec) -> (String, Option<String>) {
        let mut s = self.lock();
        s.counter += 1;
        let n = s.counter;
        let id = format!("ch_3Standin{n:08}");
        let created = chrono::Utc::now().timestamp() - spec.created_days_ago * 86_400;
        let mut charge = template("charge");
        charge["id"] = id.clone().into();
        charge["amount"] = spec.amount.into();
        charge["amount_captured"] = if spec.captured { spec.amount } else { 0 }.into();
        charge["captured"] = spec.captured.into();
        charge["amount_refunded"] = spec.amount_refunded.into();
        charge["refunded"] = (spec.amount_refunded >= spec.amount).into();
        charge["currency"] = spec.currency.clone().into();
        charge["created"] = created.into();
        charge["status"] = "succeeded".into();
        charge["paid"] = true.into();
        charge["disputed"] = spec.disputed.into();
        charge["billing_details"]["email"] = spec.billing_email.clone().into();
        charge["receipt_email"] = spec.receipt_email.clone().into();
        if let Some(method) = &spec.paid_without_card {
            charge["payment_method_details"] = json!({ "type": method, method: {} });
        }
        charge["refunds"] =
            json!({ "object": "list", "data": [], "has_more": false, "url": format!("/v1/charges/{id}/refunds") });
        if let Some(email) = &spec.customer_email {
            let mut customer = template("customer");
            let cus = format!("cus_Standin{n:08}");
            customer["id"] = cus.clone().into();
            customer["email"] = email.clone().into();
            s.customers.insert(cus.clone(), customer);
            charge["customer"] = cus.into();
        }
        let mut pi_id = None;
        if spec.with_payment_intent {
            let pi = format!("pi_3Standin{n:08}");
            let mut intent = template("payment_intent");
            intent["id"] = pi.clone().into();
            intent["amount"] = spec.amount.into();
            intent["amount_received"] = spec.amount.into();
            intent["currency"] = spec.currency.clone().into();
            intent["status"] = "succeeded".into();
            intent["latest_charge"] = id.clone().into();
            intent["canceled_at"] = Value::Null;
            intent["last_payment_error"] = Value::Null;
            charge["payment_intent"] = pi.clone().into();
            s.intents.insert(pi.clone(), intent);
            pi_id = Some(pi);
        }
        if spec.disputed {
            let mut dispute = template("dispute");
            dispute["id"] = format!("dp_Standin{n:08}").into();
            dispute["charge"] = id.clone().into();
            dispute["amount"] = spec.amount.into();
            dispute["currency"] = spec.currency.clone().into();
            dispute["status"] =
                if spec.dispute_refundable { "warning_needs_response" } else { "needs_response" }.into();
            dispute["reason"] = "fraudulent".into();
            dispute["is_charge_refundable"] = spec.dispute_refundable.into();
            s.disputes.insert(id.clone(), vec![dispute]);
        }
        if let Some(kind) = &spec.early_fraud_warning {
            let mut warning = template("radar.early_fraud_warning");
            warning["id"] = format!("issfr_Standin{n:08}").into();
            warning["charge"] = id.clone().into();
            warning["fraud_type"] = kind.clone().into();
            s.fraud_warnings.insert(id.clone(), vec![warning]);
        }
        s.charges.insert(id.clone(), charge);
        (id, pi_id)
    }

    /// Every request received, in order.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// The `POST /v1/refunds` requests received.
    pub fn refund_posts(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.method == "POST" && r.path == "/v1/refunds").collect()
    }

    /// Refunds that exist (each one money actually sent back).
    pub fn refunds(&self) -> Vec<Value> {
        self.lock().refunds.values().cloned().collect()
    }

    /// The refunds made for refund-desk's request `request_id` (by its metadata).
    pub fn refunds_for(&self, request_id: &str) -> Vec<Value> {
        self.refunds().into_iter().filter(|r| r["metadata"]["refund_request_id"] == request_id).collect()
    }

    pub fn charge(&self, id: &str) -> Option<Value> {
        self.lock().charges.get(id).cloned()
    }

    /// The next `POST /v1/refunds` misbehaves as `fault`.
    pub fn fail_next_refund(&self, fault: Fault) {
        self.lock().refund_faults.push_back(fault);
    }

    /// From now on, keeps no idempotency key: every retry looks like the first call, as
    /// after Stripe pruned keys older than 24 hours.
    pub fn forget_idempotency_keys(&self) {
        let mut s = self.lock();
        s.saved.clear();
        s.keys_expire = true;
    }

    /// Every read (GET) waits `delay` before answering, as a slow Stripe would.
    pub fn set_read_delay(&self, delay: std::time::Duration) {
        self.lock().read_delay = delay;
    }

    /// While `down`, refunds fail with 503 and nothing is applied.
    pub fn set_refunds_down(&self, down: bool) {
        self.lock().refunds_down = down;
    }

    /// Sets the status a new refund starts in (Stripe says `pending` or `succeeded`).
    pub fn set_initial_refund_status(&self, status: &str) {
        self.lock().initial_refund_status = status.into();
    }

    /// From now on the key is a restricted key with only these permissions (`rak_charge_read`,
    /// `rak_refund_write`, ...; a write permission includes its read): every other call gets
    /// Stripe's 403 naming the permission it lacks. `None` makes it a secret key again.
    pub fn restrict_key(&self, permissions: Option<&[&str]>) {
        self.lock().permissions = permissions.map(|p| p.iter().map(|s| s.to_string()).collect());
    }

    /// Sends webhooks to `url`, signed with `secret`, as Stripe does.
    pub fn send_webhooks_to(&self, url: &str, secret: &str) {
        self.lock().webhook = Some((url.to_string(), secret.to_string()));
    }

    /// Sets the calls a second Stripe allows before answering 429 (`None`: no limit, to measure
    /// the desk's own capacity).
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        self.lock().rate_limit = per_second;
    }

    /// How many calls were refused for the rate limit.
    pub fn rate_limited(&self) -> u64 {
        self.lock().rate_limited
    }

    /// The id of the refund made for `request_id` (by its `metadata[refund_request_id]`).
    pub fn refund_for_request(&self, request_id: &str) -> Option<String> {
        let s = self.lock();
        s.refunds
            .values()
            .find(|r| r["metadata"]["refund_request_id"] == request_id)
            .and_then(|r| r["id"].as_str().map(str::to_string))
    }

    /// Events sent so far.
    pub fn events_sent(&self) -> Vec<Value> {
        self.lock().events_sent.clone()
    }

    /// Moves a refund to `status` (and `failure_reason`) and returns the event Stripe would send.
    pub fn refund_event(
        &self,
        refund_id: &str,
        kind: &str,
        status: &str,
        failure_reason: Option<&str>,
    ) -> Option<Value> {
        let mut s = self.lock();
        let refund = s.refunds.get_mut(refund_id)?;
        refund["status"] = status.into();
        refund["failure_reason"] = failure_reason.map(Value::from).unwrap_or(Value::Null);
        let refund = refund.clone();
        // The charge embeds its refunds; keep that copy in step, as Stripe does.
        if let Some(charge) = refund["charge"].as_str().and_then(|c| s.charges.get_mut(c))
            && let Some(list) = charge["refunds"]["data"].as_array_mut()
        {
            for r in list.iter_mut().filter(|r| r["id"] == refund["id"]) {
                *r = refund.clone();
            }
        }
        let object = if kind.starts_with("charge.") && kind != "charge.refund.updated" {
            let charge_id = refund["charge"].as_str().unwrap_or_default().to_string();
            // Since API version 2022-11-15 a charge's refunds are only there when expanded, and
            // events are never expanded.
            let mut charge = s.charges.get(&charge_id).cloned().unwrap_or(Value::Null);
            if let Some(fields) = charge.as_object_mut() {
                fields.remove("refunds");
            }
            charge
        } else {
            refund
        };
        Some(new_event(&mut s, kind, object))
    }

    /// A refund made at Stripe by someone other than the desk (the Dashboard, another tool or
    /// installation), on `charge`, for `amount` (all that remains when `None`), with
    /// `metadata`; Stripe's rules and its `refund.created` event as for any refund. Not one of
    /// the desk's calls, so not in [`FakeStripe::received`]. Returns the refund's id; panics
    /// with Stripe's error if Stripe would refuse it.
    pub fn refund_made_outside(&self, charge: &str, amount: Option<u64>, metadata: &[(&str, &str)]) -> String {
        let mut form = vec![("charge".to_string(), charge.to_string())];
        form.extend(amount.map(|a| ("amount".to_string(), a.to_string())));
        form.extend(metadata.iter().map(|(k, v)| (format!("metadata[{k}]"), v.to_string())));
        let (status, refund) = apply_refund(&mut self.lock(), &form);
        assert_eq!(status, 200, "Stripe refused the refund: {refund}");
        refund["id"].as_str().expect("a refund has an id").to_string()
    }

    /// Makes an event about `refund` that shows up in the list late: placed `behind` events back
    /// from the newest, as an event Stripe lists after newer ones already were.
    pub fn late_refund_event(&self, refund_id: &str, kind: &str, status: &str, behind: usize) -> Option<Value> {
        let event = self.refund_event(refund_id, kind, status, None)?;
        self.list_newest_event_late(behind);
        Some(event)
    }

    /// Moves the newest event `behind` places back in the list, as if Stripe listed it late.
    pub fn list_newest_event_late(&self, behind: usize) {
        let mut s = self.lock();
        if let Some(late) = s.events.pop() {
            let at = s.events.len().saturating_sub(behind);
            s.events.insert(at, late);
        }
    }

    /// Drops every event Stripe keeps, as after its 30 days.
    pub fn forget_events(&self) {
        self.lock().events.clear();
    }

    /// Sends `event` to the configured webhook endpoint, signed; returns the HTTP status.
    pub async fn deliver(&self, event: &Value) -> Result<u16, String> {
        let (url, secret) = self.lock().webhook.clone().ok_or("no webhook endpoint configured")?;
        let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        let signature = sign_webhook(&body, &secret, chrono::Utc::now().timestamp());
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json; charset=utf-8")
            .header("stripe-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        self.lock().events_sent.push(event.clone());
        Ok(response.status().as_u16())
    }
}

/// Checks the key, Stripe's rate limit (a call over the limit in the last second gets Stripe's
/// 429 `rate_limit` error and changes nothing), then, for a restricted key, that it holds
/// `permission` (`rak_<resource>_read` or `_write`).
fn authorised(s: &mut StripeState, headers: &HeaderMap, permission: &str) -> Result<(), Box<Response>> {
    key_and_rate_checked(s, headers)?;
    permitted(s, permission)
}

/// Stripe's 403 for a restricted key without `permission`.
fn permitted(s: &StripeState, permission: &str) -> Result<(), Box<Response>> {
    let Some(held) = &s.permissions else { return Ok(()) };
    let write = permission.strip_suffix("_read").map(|resource| format!("{resource}_write"));
    if held.contains(permission) || write.is_some_and(|w| held.contains(&w)) {
        return Ok(());
    }
    let tail = &s.api_key[s.api_key.len().saturating_sub(4)..];
    let message = format!(
        "The provided key 'rk_test_{}{tail}' does not have the required permissions for this endpoint on account 'acct_1Standin'. Having the '{permission}' permission would allow this request to continue.",
        "*".repeat(93)
    );
    Err(Box::new(error(403, "invalid_request_error", None, &message, None)))
}

fn key_and_rate_checked(s: &mut StripeState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if bearer != format!("Bearer {}", s.api_key) {
        let message = "Invalid API Key provided: sk_test_********";
        return Err(Box::new(error(401, "invalid_request_error", None, message, None)));
    }
    let Some(limit) = s.rate_limit else { return Ok(()) };
    let now = std::time::Instant::now();
    while s.recent_calls.front().is_some_and(|t| now.duration_since(*t) >= std::time::Duration::from_secs(1)) {
        s.recent_calls.pop_front();
    }
    if s.recent_calls.len() >= limit as usize {
        s.rate_limited += 1;
        return Err(Box::new(rate_limit_error()));
    }
    s.recent_calls.push_back(now);
    Ok(())
}

fn record(s: &mut StripeState, method: &str, path: String, headers: &HeaderMap, form: Vec<(String, String)>) {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    s.received.push(Received {
        method: method.into(),
        path,
        form,
        idempotency_key: header("idempotency-key"),
        stripe_version: header("stripe-version"),
    });
}

type Shared = State<Arc<Mutex<StripeState>>>;

fn lookup(
    state: &Arc<Mutex<StripeState>>,
    headers: &HeaderMap,
    path: String,
    kind: &str,
    id: &str,
    pick: fn(&StripeState) -> &HashMap<String, Value>,
) -> Response {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    record(&mut s, "GET", path, headers, vec![]);
    if let Err(r) = authorised(&mut s, headers, &format!("rak_{kind}_read")) {
        return *r;
    }
    match pick(&s).get(id) {
        Some(v) => axum::Json(v.clone()).into_response(),
        None => no_such(kind, id),
    }
}

async fn get_balance(State(st): Shared, headers: HeaderMap) -> Response {
    let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
    record(&mut s, "GET", "/v1/balance".into(), &headers, vec![]);
    if let Err(r) = authorised(&mut s, &headers, "rak_balance_read") {
        return *r;
    }
    axum::Json(json!({ "object": "balance", "available": [], "pending": [], "livemode": false })).into_response()
}

/// A charge, with its `refunds` list only when `expand[]=refunds` asks for it, as Stripe does
/// since API version 2022-11-15.
async fn get_charge(
    State(st): Shared,
    Path(id): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Response {
    let delay = st.lock().unwrap_or_else(|p| p.into_inner()).read_delay;
    tokio::time::sleep(delay).await;
    let params: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or_default()).unwrap_or_default();
    let expanded = params.iter().any(|(k, v)| k == "expand[]" && v == "refunds");
    let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
    record(&mut s, "GET", format!("/v1/charges/{id}"), &headers, params);
    if let Err(r) = authorised(&mut s, &headers, "rak_charge_read") {
        return *r;
    }
    let Some(charge) = s.charges.get(&id).cloned() else { return no_such("charge", &id) };
    axum::Json(charge_as_read(charge, expanded)).into_response()
}
/// A payment intent; its `latest_charge` is an id unless `expand[]=latest_charge` (or
/// `latest_charge.refunds`, which expands the charge's refunds too) asks for the object.
async fn get_intent(
    State(st): Shared,
    Path(id): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Response {
    let params: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or_default()).unwrap_or_default();
    let expands = |what: &str| params.iter().any(|(k, v)| k == "expand[]" && v == what);
    let (with_refunds, with_charge) = (expands("latest_charge.refunds"), expands("latest_charge"));
    let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
    record(&mut s, "GET", format!("/v1/payment_intents/{id}"), &headers, params.clone());
    if let Err(r) = authorised(&mut s, &headers, "rak_payment_intent_read") {
        return *r;
    }
    // An expanded object is read with its own permission.
    if (with_charge || with_refunds)
        && let Err(r) = permitted(&s, "rak_charge_read")
    {
        return *r;
    }
    let Some(mut intent) = s.intents.get(&id).cloned() else { return no_such("payment_intent", &id) };
    if (with_charge || with_refunds)
        && let Some(charge) = intent["latest_charge"].as_str().and_then(|c| s.charges.get(c))
    {
        intent["latest_charge"] = charge_as_read(charge.clone(), with_refunds);
    }
    axum::Json(intent).into_response()
}

/// A stored charge as Stripe shows it: its `refunds` only when expanded.
fn charge_as_read(mut charge: Value, refunds_expanded: bool) -> Value {
    if !refunds_expanded && let Some(fields) = charge.as_object_mut() {
        fields.remove("refunds");
    }
    charge
}
async fn get_customer(State(st): Shared, Path(id): Path<String>, headers: HeaderMap) -> Response {
    lookup(&st, &headers, format!("/v1/customers/{id}"), "customer", &id, |s| &s.customers)
}
async fn get_refund(State(st): Shared, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
    record(&mut s, "GET", format!("/v1/refunds/{id}"), &headers, vec![]);
    if let Err(r) = authorised(&mut s, &headers, "rak_refund_read") {
        return *r;
    }
    match s.refunds.get(&id) {
        Some(v) => axum::Json(v.clone()).into_response(),
        None => no_such("refund", &id),
    }
}

/// A list request: recorded and authorised (with `permission`); its query parameters.
fn list_request(
    s: &mut StripeState,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    permission: &str,
) -> Result<Vec<(String, String)>, Box<Response>> {
    let params: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or_default()).unwrap_or_default();
    record(s, "GET", path.into(), headers, params.clone());
    authorised(s, headers, permission)?;
    Ok(params)
}

/// Lists what the stand-in keeps per charge (`?charge=`), as Stripe's list endpoints answer.
fn list_by_charge(
    st: &Mutex<StripeState>,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    permission: &str,
    pick: fn(&StripeState) -> &HashMap<String, Vec<Value>>,
) -> Response {
    let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
    let params = match list_request(&mut s, path, query, headers, permission) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let charge = params.iter().find(|(k, _)| k == "charge").map(|(_, v)| v.clone()).unwrap_or_default();
    let data = pick(&s).get(&charge).cloned().unwrap_or_default();
    axum::Json(json!({ "object": "list", "data": data, "has_more": false, "url": path })).into_response()
}

async fn list_disputes(
    State(st): Shared,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Response {
    list_by_charge(&st, "/v1/disputes", query.as_deref(), &headers, "rak_dispute_read", |s| &s.disputes)
}

async fn list_fraud_warnings(
    State(st): Shared,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Response {
    let permission = "rak_radar_early_fraud_warning_read";
    list_by_charge(&st, "/v1/radar/early_fraud_warnings", query.as_deref(), &headers, permission, |s| &s.fraud_warnings)
}

async fn create_refund(State(st): Shared, headers: HeaderMap, body: String) -> Response {
    let form: Vec<(String, String)> = serde_urlencoded::from_str(&body).unwrap_or_default();
    let fault = {
        let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
        record(&mut s, "POST", "/v1/refunds".into(), &headers, form.clone());
        if let Err(r) = authorised(&mut s, &headers, "rak_refund_write") {
            return *r;
        }
        if s.refunds_down { Some(Fault::Status(503)) } else { s.refund_faults.pop_front() }
    };
    match fault {
        Some(Fault::Status(429)) => {
            let mut response = rate_limit_error();
            response.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
            return response;
        }
        Some(Fault::Status(status)) => {
            let message = "An error occurred with our connection to Stripe. Request was retried 0 times.";
            return error(status, "api_error", None, message, None);
        }
        Some(Fault::Hang(d)) => tokio::time::sleep(d).await,
        _ => {}
    }
    let response = {
        let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
        answer_refund(&mut s, &headers, form)
    };
    match fault {
        Some(Fault::ApplyThenHang(d)) => tokio::time::sleep(d).await,
        // Unwinding the connection's task closes the socket with no answer, as a network
        // failure would; resume_unwind skips the panic hook, so nothing is printed.
        Some(Fault::ApplyThenDrop) => std::panic::resume_unwind(Box::new("connection dropped")),
        _ => {}
    }
    response
}

/// An event Stripe makes (and keeps, for `GET /v1/events`) about `object`.
fn new_event(s: &mut StripeState, kind: &str, object: Value) -> Value {
    s.counter += 1;
    let mut event = template("event");
    event["id"] = format!("evt_Standin{:08}", s.counter).into();
    event["type"] = kind.into();
    event["created"] = chrono::Utc::now().timestamp().into();
    event["api_version"] = API_VERSION.into();
    event["data"] = json!({ "object": object });
    s.events.push(event.clone());
    event
}

/// `GET /v1/events`, as Stripe pages it: newest first, `types[]`, `limit` (at most 100),
/// `starting_after` (older than) or `ending_before` (the page just newer than) an event id.
async fn list_events(
    State(st): Shared,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Response {
    let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
    let params = match list_request(&mut s, "/v1/events", query.as_deref(), &headers, "rak_event_read") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let param = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let types: Vec<&String> = params.iter().filter(|(k, _)| k == "types[]").map(|(_, v)| v).collect();
    let limit = match param("limit").map(|l| l.parse::<usize>()) {
        None => 10,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => {
            let message = "Invalid integer: limit must be between 1 and 100";
            return error(400, "invalid_request_error", Some("parameter_invalid_integer"), message, Some("limit"));
        }
    };
    let since = param("created[gte]").and_then(|t| t.parse::<i64>().ok());
    let newest_first: Vec<&Value> = s
        .events
        .iter()
        .rev()
        .filter(|e| types.is_empty() || types.iter().any(|t| e["type"] == t.as_str()))
        .filter(|e| since.is_none_or(|t| e["created"].as_i64().unwrap_or(0) >= t))
        .collect();
    let position = |id: &str| newest_first.iter().position(|e| e["id"] == id);
    let (page, has_more): (Vec<&Value>, bool) = match (param("starting_after"), param("ending_before")) {
        (Some(after), _) => {
            let Some(i) = position(&after) else { return no_such("event", &after) };
            let rest = &newest_first[i + 1..];
            (rest.iter().take(limit).copied().collect(), rest.len() > limit)
        }
        (None, Some(before)) => {
            let Some(i) = position(&before) else { return no_such("event", &before) };
            let newer = &newest_first[..i];
            let from = newer.len().saturating_sub(limit);
            (newer[from..].to_vec(), from > 0)
        }
        (None, None) => (newest_first.iter().take(limit).copied().collect(), newest_first.len() > limit),
    };
    let data: Vec<Value> = page.into_iter().cloned().collect();
    axum::Json(json!({ "object": "list", "data": data, "has_more": has_more, "url": "/v1/events" })).into_response()
}

/// Stripe's answer to `POST /v1/refunds`, honouring the idempotency key.
fn answer_refund(s: &mut StripeState, headers: &HeaderMap, form: Vec<(String, String)>) -> Response {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(key) = &key
        && let Some((params, status, saved)) = s.saved.get(key)
    {
        if *params != form {
            return error(
                400,
                "idempotency_error",
                None,
                &format!(
                    "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
                ),
                None,
            );
        }
        let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
        return (status, [("idempotent-replayed", "true")], axum::Json(saved.clone())).into_response();
    }
    let (response_status, response) = apply_refund(s, &form);
    if let Some(key) = key.filter(|_| !s.keys_expire) {
        s.saved.insert(key, (form, response_status, response.clone()));
    }
    let status = StatusCode::from_u16(response_status).unwrap_or(StatusCode::OK);
    (status, [("request-id", "req_standin")], axum::Json(response)).into_response()
}

/// Lists refunds, as `GET /v1/refunds?charge=` does (newest first).
async fn list_refunds(
    State(st): Shared,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Response {
    let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
    let params = match list_request(&mut s, "/v1/refunds", query.as_deref(), &headers, "rak_refund_read") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let charge = params.iter().find(|(k, _)| k == "charge").map(|(_, v)| v.clone());
    let mut data: Vec<Value> =
        s.refunds.values().filter(|r| charge.as_deref().is_none_or(|c| r["charge"] == c)).cloned().collect();
    data.reverse();
    axum::Json(json!({ "object": "list", "data": data, "has_more": false, "url": "/v1/refunds" })).into_response()
}

/// Creates the refund if Stripe would; returns (status, body).
fn apply_refund(s: &mut StripeState, form: &[(String, String)]) -> (u16, Value) {
    let param = |k: &str| form.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let refuse = |status: u16, code: Option<&str>, message: String, param: Option<&str>| {
        let mut body = json!({ "error": { "type": "invalid_request_error", "message": message } });
        if let Some(c) = code {
            body["error"]["code"] = c.into();
        }
        if let Some(p) = param {
            body["error"]["param"] = p.into();
        }
        (status, body)
    };
    let charge_id = match (param("charge"), param("payment_intent")) {
        (Some(c), None) => c,
        (None, Some(pi)) => match s.intents.get(&pi).and_then(|i| i["latest_charge"].as_str().map(str::to_string)) {
            Some(c) => c,
            None => {
                return refuse(
                    400,
                    Some("resource_missing"),
                    format!("No such payment_intent: '{pi}'"),
                    Some("payment_intent"),
                );
            }
        },
        _ => {
            return refuse(
                400,
                Some("parameter_missing"),
                "You must pass either a charge or a payment_intent.".into(),
                None,
            );
        }
    };
    if let Some(reason) = param("reason")
        && !["duplicate", "fraudulent", "requested_by_customer"].contains(&reason.as_str())
    {
        return refuse(
            400,
            Some("parameter_invalid_string"),
            "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer".into(),
            Some("reason"),
        );
    }
    let Some(charge) = s.charges.get(&charge_id).cloned() else {
        return refuse(400, Some("resource_missing"), format!("No such charge: '{charge_id}'"), Some("charge"));
    };
    let currency = charge["currency"].as_str().unwrap_or("usd").to_string();
    let captured = charge["amount_captured"].as_u64().unwrap_or(0);
    let refunded = charge["amount_refunded"].as_u64().unwrap_or(0);
    let remaining = captured.saturating_sub(refunded);
    let refundable_dispute =
        s.disputes.get(&charge_id).is_some_and(|ds| ds.iter().all(|d| d["is_charge_refundable"] == true));
    if charge["disputed"].as_bool() == Some(true) && !refundable_dispute {
        return refuse(
            400,
            Some("charge_disputed"),
            format!("Charge {charge_id} has been charged back; cannot issue a refund."),
            None,
        );
    }
    if remaining == 0 {
        return refuse(
            400,
            Some("charge_already_refunded"),
            format!("Charge {charge_id} has already been refunded."),
            None,
        );
    }
    let amount = match param("amount").map(|a| a.parse::<u64>()) {
        None => remaining,
        Some(Ok(a)) if a > 0 => a,
        Some(_) => {
            return refuse(400, Some("parameter_invalid_integer"), "Invalid positive integer".into(), Some("amount"));
        }
    };
    if amount > remaining {
        return refuse(
            400,
            Some("amount_too_large"),
            format!(
                "Refund amount ({}) is greater than unrefunded amount on charge ({})",
                format_amount(amount, &currency),
                format_amount(remaining, &currency)
            ),
            Some("amount"),
        );
    }
    s.counter += 1;
    let id = format!("re_3Standin{:08}", s.counter);
    let metadata: serde_json::Map<String, Value> = form
        .iter()
        .filter_map(|(k, v)| {
            Some((k.strip_prefix("metadata[")?.strip_suffix(']')?.to_string(), Value::String(v.clone())))
        })
        .collect();
    let mut refund = template("refund");
    refund["id"] = id.clone().into();
    refund["amount"] = amount.into();
    refund["charge"] = charge_id.clone().into();
    refund["payment_intent"] = charge["payment_intent"].clone();
    refund["currency"] = currency.into();
    refund["created"] = chrono::Utc::now().timestamp().into();
    refund["metadata"] = Value::Object(metadata);
    refund["reason"] = param("reason").map(Value::from).unwrap_or(Value::Null);
    refund["status"] = s.initial_refund_status.clone().into();
    s.refunds.insert(id, refund.clone());
    new_event(s, "refund.created", refund.clone());
    if let Some(c) = s.charges.get_mut(&charge_id) {
        c["amount_refunded"] = (refunded + amount).into();
        c["refunded"] = (refunded + amount >= captured).into();
        if let Some(list) = c["refunds"]["data"].as_array_mut() {
            list.insert(0, refund.clone());
        }
    }
    (200, refund)
}
