//! Plays Slack's part towards refund-desk: signs and sends slash commands, button clicks and
//! form submissions in the shapes Slack uses, and builds settings that point a desk at the
//! stand-ins.

use serde_json::{Value, json};
use std::sync::Arc;

/// The secrets and ids the stand-ins and the desk share.
pub const SIGNING_SECRET: &str = "standin-signing-secret";
pub const BOT_TOKEN: &str = "xoxb-standin-bot-token";
pub const STRIPE_KEY: &str = "sk_test_standin_key";
pub const WEBHOOK_SECRET: &str = "whsec_standin_webhook_secret";
pub const FINANCE_CHANNEL: &str = "C0FINANCE1";
pub const EMAIL_FROM: &str = "Acme Billing <billing@acme.example>";

/// The ids refund-desk's messages and forms carry (its contract with Slack).
pub const APPROVE_ACTION: &str = "refund_approve";
pub const REMIND_ACTION: &str = "refund_remind";
pub const APPROVE_CALLBACK: &str = "refund_approve_modal";
pub const APPROVE_NOTE_BLOCK: &str = "approve_note_block";
pub const APPROVE_AMOUNT_BLOCK: &str = "approve_amount_block";
pub const DENY_CALLBACK: &str = "refund_deny_modal";
pub const DENY_REASON_BLOCK: &str = "deny_reason_block";
pub const DENY_REASON_ACTION: &str = "deny_reason";
pub const REASON_BLOCK: &str = "reason_block";
pub const INPUT_ACTION: &str = "value";

/// `X-Slack-Signature` for `body` at `timestamp`, as Slack computes it (HMAC-SHA256 over
/// `v0:timestamp:body`), written here independently of the desk's verifier.
pub fn sign_request(secret: &str, timestamp: i64, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends signed requests to a desk as Slack would.
#[derive(Clone)]
pub struct SlackDriver {
    pub base: String,
    http: reqwest::Client,
    /// Where this driver's slash commands' `response_url`s point: the Slack stand-in's
    /// (`FakeSlack::response_url_base`); `None` gives Slack's own form of URL.
    response_base: Option<String>,
    commands_sent: Arc<std::sync::atomic::AtomicU64>,
}

impl SlackDriver {
    pub fn new(base: String) -> Self {
        SlackDriver::with_client(base, reqwest::Client::new())
    }

    /// A driver sending through `http` (for its timeout, or its connection pool).
    pub fn with_client(base: String, http: reqwest::Client) -> Self {
        crate::install_crypto_provider();
        SlackDriver { base, http, response_base: None, commands_sent: Arc::default() }
    }

    /// Gives each slash command a `response_url` on the Slack stand-in at `base`.
    pub fn with_response_urls(mut self, base: String) -> Self {
        self.response_base = Some(base);
        self
    }

    /// Posts `body` to `path`, signed at `timestamp` with `secret` (or unsigned when `None`).
    pub async fn post_signed(
        &self,
        path: &str,
        content_type: &str,
        body: String,
        signature: Option<(&str, i64)>,
    ) -> reqwest::Response {
        self.try_post_signed(path, content_type, body, signature).await.expect("the desk answers")
    }

    /// Like [`SlackDriver::post_signed`], but a desk that does not answer is an error, not a panic.
    pub async fn try_post_signed(
        &self,
        path: &str,
        content_type: &str,
        body: String,
        signature: Option<(&str, i64)>,
    ) -> Result<reqwest::Response, String> {
        let mut req = self.http.post(format!("{}{path}", self.base)).header("content-type", content_type);
        if let Some((secret, ts)) = signature {
            req = req
                .header("x-slack-request-timestamp", ts.to_string())
                .header("x-slack-signature", sign_request(secret, ts, body.as_bytes()));
        }
        req.body(body).send().await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        })
    }

    async fn try_post(&self, path: &str, content_type: &str, body: String) -> Result<reqwest::Response, String> {
        let signature = Some((SIGNING_SECRET, chrono::Utc::now().timestamp()));
        self.try_post_signed(path, content_type, body, signature).await
    }

    async fn post(&self, path: &str, content_type: &str, body: String) -> reqwest::Response {
        self.try_post(path, content_type, body).await.expect("the desk answers")
    }

    /// The form body of `/refund <text>` typed by `user`.
    pub fn command_body(user: &str, text: &str) -> String {
        Self::command_body_answering_at(user, text, "https://hooks.slack.com/commands/T00000001/1/abc")
    }

    /// `/refund <text>` typed by `user`, as a Socket Mode envelope's payload carries it.
    pub fn command_payload(user: &str, text: &str) -> Value {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(&Self::command_body(user, text)).expect("our own form");
        Value::Object(pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
    }

    /// Like [`SlackDriver::command_body`], with the given `response_url`.
    pub fn command_body_answering_at(user: &str, text: &str, response_url: &str) -> String {
        serde_urlencoded::to_string([
            ("token", "gIkuvaNzQIHg97ATvDxqgjtO"),
            ("team_id", "T00000001"),
            ("team_domain", "acme"),
            ("channel_id", "C0SUPPORT1"),
            ("channel_name", "support"),
            ("user_id", user),
            ("user_name", "someone"),
            ("command", "/refund"),
            ("text", text),
            ("api_app_id", "A00000001"),
            ("response_url", response_url),
            ("trigger_id", "13345224609.738474920.8088930838d88f008e0"),
        ])
        .expect("static form")
    }

    /// `/refund <text>` as `user`; returns the HTTP status and the JSON answer.
    pub async fn slash(&self, user: &str, text: &str) -> (u16, Value) {
        self.try_slash(user, text).await.expect("the desk answers")
    }

    /// Like [`SlackDriver::slash`], but a desk that does not answer is an error, not a panic.
    pub async fn try_slash(&self, user: &str, text: &str) -> Result<(u16, Value), String> {
        let body = match &self.response_base {
            Some(base) => {
                let n = self.commands_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                Self::command_body_answering_at(user, text, &format!("{base}/commands/T00000001/{n}/x"))
            }
            None => Self::command_body(user, text),
        };
        let response = self.try_post("/slack/commands", "application/x-www-form-urlencoded", body).await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// The `payload` of a button click on the card at `card_ts`.
    pub fn click_payload(user: &str, action_id: &str, request_id: &str, card_ts: &str) -> Value {
        json!({
            "type": "block_actions",
            "user": { "id": user, "username": "someone", "name": "someone", "team_id": "T00000001" },
            "api_app_id": "A00000001",
            "token": "gIkuvaNzQIHg97ATvDxqgjtO",
            "container": { "type": "message", "message_ts": card_ts, "channel_id": FINANCE_CHANNEL, "is_ephemeral": false },
            "trigger_id": format!("{}.738474920.{user}", chrono::Utc::now().timestamp_millis()),
            "team": { "id": "T00000001", "domain": "acme" },
            "channel": { "id": FINANCE_CHANNEL, "name": "finance" },
            "message": { "type": "message", "ts": card_ts, "text": "Refund request", "bot_id": "B00000001" },
            "response_url": "https://hooks.slack.com/actions/T00000001/1/abc",
            "actions": [{
                "action_id": action_id, "block_id": format!("decide_{request_id}"), "type": "button",
                "text": { "type": "plain_text", "text": action_id, "emoji": true },
                "value": request_id, "action_ts": "1700000000.000001"
            }]
        })
    }

    async fn interaction(&self, payload: &Value) -> reqwest::Response {
        self.try_interaction(payload).await.expect("the desk answers")
    }

    async fn try_interaction(&self, payload: &Value) -> Result<reqwest::Response, String> {
        let body = serde_urlencoded::to_string([("payload", payload.to_string())]).expect("form");
        self.try_post("/slack/interactions", "application/x-www-form-urlencoded", body).await
    }

    /// Sends any interaction `payload` (a click built by hand); returns the status.
    pub async fn post_interaction(&self, payload: &Value) -> u16 {
        self.interaction(payload).await.status().as_u16()
    }

    /// Like [`SlackDriver::click`], but a desk that does not answer is an error, not a panic.
    pub async fn try_click(&self, user: &str, action_id: &str, request_id: &str, card_ts: &str) -> Result<u16, String> {
        let response = self.try_interaction(&Self::click_payload(user, action_id, request_id, card_ts)).await?;
        Ok(response.status().as_u16())
    }

    /// `user` clicks `action_id` (`refund_approve` / `refund_deny`) on the card; returns the status.
    pub async fn click(&self, user: &str, action_id: &str, request_id: &str, card_ts: &str) -> u16 {
        self.interaction(&Self::click_payload(user, action_id, request_id, card_ts)).await.status().as_u16()
    }

    /// The `view_submission` of the deny form for `request_id` with `reason`.
    pub fn deny_payload(user: &str, request_id: &str, reason: &str) -> Value {
        Self::view_submission_payload(user, DENY_CALLBACK, request_id, &[(DENY_REASON_BLOCK, reason)])
    }

    /// `user` submits the deny form for `request_id` with `reason`; returns status and body.
    pub async fn submit_deny(&self, user: &str, request_id: &str, reason: &str) -> (u16, String) {
        let payload = Self::deny_payload(user, request_id, reason);
        let response = self.interaction(&payload).await;
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    }

    /// The `view_submission` of the form `callback_id` with `values` (block id → text), as
    /// Slack sends it: the view's title, buttons and state.
    pub fn view_submission_payload(
        user: &str,
        callback_id: &str,
        private_metadata: &str,
        values: &[(&str, &str)],
    ) -> Value {
        let state: serde_json::Map<String, Value> = values
            .iter()
            .map(|(block, text)| {
                let input = if *block == REASON_BLOCK {
                    json!({ "type": "static_select",
                            "selected_option": { "text": { "type": "plain_text", "text": text, "emoji": true }, "value": text } })
                } else {
                    json!({ "type": "plain_text_input", "value": text })
                };
                let action = if *block == DENY_REASON_BLOCK { DENY_REASON_ACTION } else { INPUT_ACTION };
                (block.to_string(), json!({ action: input }))
            })
            .collect();
        // The desk's forms, titled as it opens them.
        let (title, submit) = match callback_id {
            DENY_CALLBACK => (format!("Deny {private_metadata}"), "Deny"),
            APPROVE_CALLBACK => (format!("Approve {private_metadata}"), "Approve"),
            _ => ("Refund request".to_string(), "Send"),
        };
        json!({
            "type": "view_submission",
            "team": { "id": "T00000001", "domain": "acme" },
            "user": { "id": user, "username": "someone", "name": "someone", "team_id": "T00000001" },
            "api_app_id": "A00000001",
            "trigger_id": "12466734323.1395872398.form",
            "view": {
                "id": "V0000002", "team_id": "T00000001", "type": "modal", "app_id": "A00000001", "bot_id": "B00000001",
                "title": { "type": "plain_text", "text": title, "emoji": true },
                "submit": { "type": "plain_text", "text": submit, "emoji": true },
                "close": { "type": "plain_text", "text": "Cancel", "emoji": true },
                "blocks": [], "root_view_id": "V0000002", "previous_view_id": null, "external_id": "",
                "clear_on_close": false, "notify_on_close": true,
                "callback_id": callback_id, "private_metadata": private_metadata, "hash": "1700000000.form",
                "state": { "values": state }
            }
        })
    }

    /// The `view_closed` Slack sends when `user` closes (cancels) the form `callback_id`, with
    /// what had been typed into it (`values`, block id → text).
    pub fn view_closed_payload(
        user: &str,
        callback_id: &str,
        private_metadata: &str,
        values: &[(&str, &str)],
    ) -> Value {
        let mut payload = Self::view_submission_payload(user, callback_id, private_metadata, values);
        payload["type"] = "view_closed".into();
        payload["is_cleared"] = false.into();
        payload
    }

    /// `user` submits the form `callback_id` with `values` (block id → text); returns status
    /// and the JSON answer (`null` for an empty 200, which closes the form).
    pub async fn submit_view(
        &self,
        user: &str,
        callback_id: &str,
        private_metadata: &str,
        values: &[(&str, &str)],
    ) -> (u16, Value) {
        let payload = Self::view_submission_payload(user, callback_id, private_metadata, values);
        let response = self.interaction(&payload).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `user` closes the form `callback_id` with `values` typed into it; returns the status.
    pub async fn close_view(
        &self,
        user: &str,
        callback_id: &str,
        private_metadata: &str,
        values: &[(&str, &str)],
    ) -> u16 {
        let payload = Self::view_closed_payload(user, callback_id, private_metadata, values);
        self.interaction(&payload).await.status().as_u16()
    }

    /// Slack tells the desk that `user` opened its App Home tab.
    pub async fn open_home(&self, user: &str) -> u16 {
        let body = json!({
            "token": "gIkuvaNzQIHg97ATvDxqgjtO",
            "team_id": "T00000001",
            "api_app_id": "A00000001",
            "type": "event_callback",
            "event_id": format!("Ev{}{}", user, chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()),
            "event_time": chrono::Utc::now().timestamp(),
            "event": { "type": "app_home_opened", "user": user, "channel": "D0APPHOME", "tab": "home", "event_ts": "1700000000.000100" }
        });
        self.post("/slack/events", "application/json", body.to_string()).await.status().as_u16()
    }

    /// `user` clicks `action_id` on the request shown in their App Home (no channel, as Slack sends).
    pub async fn click_in_home(&self, user: &str, action_id: &str, request_id: &str) -> u16 {
        let mut payload = Self::click_payload(user, action_id, request_id, "");
        payload["container"] = json!({ "type": "view", "view_id": "V0HOME0001" });
        payload["channel"] = Value::Null;
        payload["message"] = Value::Null;
        payload["view"] = json!({
            "id": "V0HOME0001", "team_id": "T00000001", "type": "home", "blocks": [], "callback_id": "",
            "private_metadata": "", "hash": "1700000000.home"
        });
        self.interaction(&payload).await.status().as_u16()
    }
}
