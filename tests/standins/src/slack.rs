//! A Slack Web API stand-in: `POST /api/{method}` with the bot token, answering as Slack does.

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::routing::any;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex, MutexGuard};

/// One message the app posted (and its latest edit).
#[derive(Debug, Clone, PartialEq)]
pub struct Posted {
    pub channel: String,
    pub ts: String,
    pub thread_ts: Option<String>,
    pub text: String,
    pub blocks: Value,
    /// How many times `chat.update` edited it.
    pub edits: usize,
    /// When the stand-in received it.
    pub posted_at: std::time::Instant,
}

/// A call as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: String,
    pub body: Value,
}

#[derive(Default)]
struct SlackState {
    token: String,
    calls: Vec<Call>,
    messages: Vec<Posted>,
    /// `ts` → index in `messages`, so `chat.update` stays cheap under load.
    by_ts: std::collections::HashMap<String, usize>,
    /// Button `value` (a request id) → the top-level messages whose buttons carry it.
    by_button_value: std::collections::HashMap<String, Vec<usize>>,
    ephemerals: Vec<Value>,
    views: Vec<Value>,
    next_ts: u64,
    /// Answers to give instead of the normal one, per method, in order (429s, errors).
    faults: Vec<(String, u16, Value)>,
    /// User group id → member ids.
    groups: std::collections::HashMap<String, Vec<String>>,
    /// Each user's App Home as last published.
    homes: std::collections::HashMap<String, Value>,
    /// How many times each user's Home was published.
    home_publishes: std::collections::HashMap<String, usize>,
    /// Channels the bot may not post in (`not_in_channel`).
    closed_channels: std::collections::HashSet<String>,
    /// The scopes `auth.test` reports the token has (`x-oauth-scopes`); `None`: all the
    /// manifest asks for.
    scopes: Option<Vec<String>>,
    /// Socket Mode: the app-level token `apps.connections.open` takes, and where it sends the app.
    socket_mode: Option<(String, crate::socket::SocketModeStandIn)>,
    /// Posts to `response_url`s: (the URL's path, the body).
    responses: Vec<(String, Value)>,
    responses_expired: bool,
    /// Members by email, as `users.lookupByEmail` finds them: (user id, deactivated).
    members: std::collections::HashMap<String, (String, bool)>,
}

/// A post to a slash command's `response_url`: Slack takes up to 5 per URL (then `used_url`),
/// answers a plain `ok`, and wants a message (text or blocks).
async fn respond(
    State(state): State<Arc<Mutex<SlackState>>>,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
    body: String,
) -> (axum::http::StatusCode, String) {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    let path = uri.path().to_string();
    if s.responses_expired {
        return (axum::http::StatusCode::NOT_FOUND, "expired_url".into());
    }
    if s.responses.iter().filter(|(p, _)| *p == path).count() >= 5 {
        return (axum::http::StatusCode::NOT_FOUND, "used_url".into());
    }
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return (axum::http::StatusCode::BAD_REQUEST, "invalid_payload".into());
    };
    if text_of(&body).is_empty() && body["blocks"].is_null() {
        return (axum::http::StatusCode::BAD_REQUEST, "no_text".into());
    }
    s.responses.push((path, body));
    (axum::http::StatusCode::OK, "ok".into())
}

#[derive(Clone)]
pub struct FakeSlack {
    pub url: String,
    state: Arc<Mutex<SlackState>>,
}

impl FakeSlack {
    /// Starts on 127.0.0.1, accepting `token` as the bot token.
    pub async fn start(token: &str) -> std::io::Result<FakeSlack> {
        let state = Arc::new(Mutex::new(SlackState { token: token.to_string(), next_ts: 1, ..Default::default() }));
        let app = Router::new()
            .route("/api/{method}", any(handle))
            .route("/response/commands/{team}/{n}/{key}", axum::routing::post(respond))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/api", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(FakeSlack { url, state })
    }

    fn lock(&self) -> MutexGuard<'_, SlackState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next call to `method` gets HTTP `status` with `body` (e.g. 429, or `ok: false`).
    pub fn fail_next(&self, method: &str, status: u16, body: Value) {
        self.lock().faults.push((method.to_string(), status, body));
    }

    /// The base of the `response_url`s this stand-in takes (give it to
    /// [`crate::driver::SlackDriver::with_response_urls`]).
    pub fn response_url_base(&self) -> String {
        format!("{}/response", self.url.trim_end_matches("/api"))
    }

    /// From now on posts to `response_url`s get `expired_url` (as after Slack's 30 minutes).
    pub fn expire_response_urls(&self) {
        self.lock().responses_expired = true;
    }

    /// What was posted to each `response_url` (its path), in order.
    pub fn responses(&self) -> Vec<(String, Value)> {
        self.lock().responses.clone()
    }

    /// Serves Socket Mode to an app holding `app_token` (`xapp-...`); returns the WebSocket
    /// side, which sends envelopes and records acknowledgements.
    pub async fn enable_socket_mode(&self, app_token: &str) -> std::io::Result<crate::socket::SocketModeStandIn> {
        let socket = crate::socket::SocketModeStandIn::start().await?;
        self.lock().socket_mode = Some((app_token.to_string(), socket.clone()));
        Ok(socket)
    }

    /// From now on the bot may not post in `channel`: Slack answers `not_in_channel`, as it does
    /// when the bot was never invited (or was removed).
    /// A workspace member with `email` (deactivated when `deleted`), for `users.lookupByEmail`.
    pub fn add_member(&self, email: &str, user: &str, deleted: bool) {
        self.lock().members.insert(email.to_ascii_lowercase(), (user.to_string(), deleted));
    }

    /// The token has only `scopes` from now on (as `auth.test` reports them).
    pub fn grant_scopes(&self, scopes: &[&str]) {
        self.lock().scopes = Some(scopes.iter().map(|s| s.to_string()).collect());
    }

    pub fn remove_bot_from(&self, channel: &str) {
        self.lock().closed_channels.insert(channel.to_string());
    }

    /// Sets the members `usergroups.users.list` returns for `group`.
    pub fn set_group_members(&self, group: &str, members: &[&str]) {
        self.lock().groups.insert(group.to_string(), members.iter().map(|m| m.to_string()).collect());
    }

    pub fn calls(&self, method: &str) -> Vec<Call> {
        self.lock().calls.iter().filter(|c| c.method == method).cloned().collect()
    }

    /// Top-level messages in a channel (not thread replies); a user id means the app's direct
    /// messages with them.
    pub fn messages_in(&self, channel: &str) -> Vec<Posted> {
        let channel = dm_channel(channel);
        self.lock().messages.iter().filter(|m| m.channel == channel && m.thread_ts.is_none()).cloned().collect()
    }

    /// Replies in the thread under `ts`, oldest first.
    pub fn thread(&self, ts: &str) -> Vec<Posted> {
        self.lock().messages.iter().filter(|m| m.thread_ts.as_deref() == Some(ts)).cloned().collect()
    }

    pub fn message(&self, ts: &str) -> Option<Posted> {
        let s = self.lock();
        s.by_ts.get(ts).and_then(|&i| s.messages.get(i)).cloned()
    }

    /// Top-level messages in a channel (not a direct message) with a button whose `value` is
    /// `value`: the cards of a request.
    pub fn messages_with_button(&self, value: &str) -> Vec<Posted> {
        let s = self.lock();
        s.by_button_value.get(value).into_iter().flatten().filter_map(|&i| s.messages.get(i)).cloned().collect()
    }

    /// How many top-level messages in channels carry buttons for each `value`.
    pub fn button_message_counts(&self) -> std::collections::HashMap<String, usize> {
        self.lock().by_button_value.iter().map(|(v, list)| (v.clone(), list.len())).collect()
    }

    /// Ephemeral messages, as `{channel, user, text}`.
    pub fn ephemerals(&self) -> Vec<Value> {
        self.lock().ephemerals.clone()
    }

    /// `user`'s App Home as last published, and how many times it was.
    pub fn home_of(&self, user: &str) -> Option<(Value, usize)> {
        let s = self.lock();
        Some((s.homes.get(user)?.clone(), s.home_publishes.get(user).copied().unwrap_or(0)))
    }

    /// Views opened with `views.open`, as `{trigger_id, view}`.
    pub fn views_opened(&self) -> Vec<Value> {
        self.lock().views.clone()
    }
}

/// The conversation a message to `channel` lands in: a user id (`U...`, `W...`) means the app's
/// direct message with them, `D` and the rest of the id; any other channel is itself.
pub fn dm_channel(channel: &str) -> String {
    match channel.strip_prefix('U').or_else(|| channel.strip_prefix('W')) {
        Some(rest) => format!("D{rest}"),
        None => channel.to_string(),
    }
}

fn slack_error(code: &str) -> Value {
    json!({ "ok": false, "error": code })
}

/// The `value`s of the buttons in a message's blocks.
fn button_values(blocks: &Value) -> Vec<String> {
    let Some(blocks) = blocks.as_array() else { return vec![] };
    blocks
        .iter()
        .filter_map(|b| b["elements"].as_array())
        .flatten()
        .filter(|e| e["type"] == "button")
        .filter_map(|e| e["value"].as_str().map(str::to_string))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// What breaks Block Kit's documented limits in `blocks` (a JSON string, as slack-morphism's
/// form encoding sends it, or an array).
fn block_kit_problems(blocks: &Value, max_blocks: usize) -> Vec<String> {
    let parsed;
    let blocks = match blocks {
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
            &parsed
        }
        other => other,
    };
    let Some(blocks) = blocks.as_array() else { return vec![] };
    let mut problems = vec![];
    let too_long = |problems: &mut Vec<String>, what: &str, text: &Value, max: usize| {
        let len = text.as_str().map(|t| t.chars().count()).unwrap_or(0);
        if len > max {
            problems.push(format!("{what} must be at most {max} characters (it is {len})"));
        }
    };
    if blocks.len() > max_blocks {
        problems.push(format!("no more than {max_blocks} items allowed [json-pointer:/blocks]"));
    }
    for block in blocks {
        too_long(&mut problems, "block_id", &block["block_id"], 255);
        match block["type"].as_str() {
            Some("header") => too_long(&mut problems, "header text", &block["text"]["text"], 150),
            Some("section") => {
                too_long(&mut problems, "section text", &block["text"]["text"], 3000);
                let fields = block["fields"].as_array().map(Vec::as_slice).unwrap_or_default();
                if fields.len() > 10 {
                    problems.push("a section has at most 10 fields".into());
                }
                for field in fields {
                    too_long(&mut problems, "section field", &field["text"], 2000);
                }
            }
            Some("context") if block["elements"].as_array().is_some_and(|e| e.len() > 10) => {
                problems.push("a context block has at most 10 elements".into());
            }
            Some("actions") => {
                let elements = block["elements"].as_array().map(Vec::as_slice).unwrap_or_default();
                if elements.len() > 25 {
                    problems.push("an actions block has at most 25 elements".into());
                }
                for element in elements {
                    too_long(&mut problems, "button text", &element["text"]["text"], 75);
                    too_long(&mut problems, "button value", &element["value"], 2000);
                    too_long(&mut problems, "action_id", &element["action_id"], 255);
                }
            }
            _ => {}
        }
    }
    problems
}

fn text_of(body: &Value) -> String {
    body["text"].as_str().unwrap_or_default().to_string()
}

async fn handle(
    State(state): State<Arc<Mutex<SlackState>>>,
    Path(method): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: String,
) -> (axum::http::StatusCode, HeaderMap, Json<Value>) {
    let json_body = headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.contains("json"));
    // GET methods carry their arguments in the query string.
    let body: Value = if json_body {
        serde_json::from_str(&body).unwrap_or(Value::Null)
    } else {
        let form = if body.is_empty() { query.unwrap_or_default() } else { body };
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&form).unwrap_or_default();
        Value::Object(pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
    };
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    s.calls.push(Call { method: method.clone(), body: body.clone() });
    let mut out_headers = HeaderMap::new();
    let ok = axum::http::StatusCode::OK;
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    // Socket Mode's one Web API method takes the app-level token, and nothing else does.
    if method == "apps.connections.open" {
        let answer = match &s.socket_mode {
            None => slack_error("not_allowed_token_type"),
            Some((token, _)) if bearer != format!("Bearer {token}") => slack_error("invalid_auth"),
            Some((_, socket)) => json!({ "ok": true, "url": socket.url }),
        };
        return (ok, out_headers, Json(answer));
    }
    if bearer != format!("Bearer {}", s.token) {
        return (ok, out_headers, Json(slack_error(if bearer.is_empty() { "not_authed" } else { "invalid_auth" })));
    }
    if let Some(i) = s.faults.iter().position(|(m, _, _)| *m == method) {
        let (_, status, fault) = s.faults.remove(i);
        if status == 429 {
            out_headers.insert("retry-after", "1".parse().expect("static header"));
        }
        let status = axum::http::StatusCode::from_u16(status).unwrap_or(ok);
        return (status, out_headers, Json(fault));
    }
    // Block Kit's limits, as Slack enforces them: a message or view breaking one is refused
    // whole with `invalid_blocks` (views: `invalid_arguments`).
    let (blocks, max_blocks, refusal) = match method.as_str() {
        "chat.postMessage" | "chat.update" => (&body["blocks"], 50, "invalid_blocks"),
        "views.open" | "views.publish" => (&body["view"]["blocks"], 100, "invalid_arguments"),
        _ => (&Value::Null, 0, ""),
    };
    let problems = block_kit_problems(blocks, max_blocks);
    if !problems.is_empty() {
        let mut error = slack_error(refusal);
        error["errors"] = json!(problems);
        return (ok, out_headers, Json(error));
    }
    let answer = match method.as_str() {
        "auth.test" => {
            let scopes = s.scopes.clone().unwrap_or_else(|| {
                [
                    "commands",
                    "chat:write",
                    "chat:write.public",
                    "im:write",
                    "usergroups:read",
                    "users:read",
                    "users:read.email",
                    "channels:read",
                    "groups:read",
                ]
                .map(String::from)
                .to_vec()
            });
            out_headers.insert("x-oauth-scopes", scopes.join(",").parse().expect("scopes are a header value"));
            json!({ "ok": true, "url": "https://example.slack.com/", "team": "Example", "user": "refund-desk", "team_id": "T00000001", "user_id": "U0BOT0001", "bot_id": "B00000001" })
        }
        "chat.postMessage" => {
            let Some(channel) = body["channel"].as_str().filter(|c| !c.is_empty()) else {
                return (ok, out_headers, Json(slack_error("channel_not_found")));
            };
            if text_of(&body).is_empty() && body["blocks"].is_null() {
                return (ok, out_headers, Json(slack_error("no_text")));
            }
            if s.closed_channels.contains(channel) {
                return (ok, out_headers, Json(slack_error("not_in_channel")));
            }
            // Posting to a user id lands in the app's conversation with them, whose own id
            // (`D...`) the answer carries and `chat.update` needs.
            let channel = &dm_channel(channel);
            let ts = format!("1700000000.{:06}", s.next_ts);
            s.next_ts += 1;
            let posted = Posted {
                channel: channel.to_string(),
                ts: ts.clone(),
                thread_ts: body["thread_ts"].as_str().map(str::to_string),
                text: text_of(&body),
                blocks: body["blocks"].clone(),
                edits: 0,
                posted_at: std::time::Instant::now(),
            };
            let index = s.messages.len();
            s.by_ts.insert(ts.clone(), index);
            // Cards: buttons in a channel, not in a direct message (the requester's Remind).
            if posted.thread_ts.is_none() && !posted.channel.starts_with('D') {
                for value in button_values(&posted.blocks) {
                    s.by_button_value.entry(value).or_default().push(index);
                }
            }
            s.messages.push(posted);
            json!({ "ok": true, "channel": channel, "ts": ts,
                    "message": { "type": "message", "text": text_of(&body), "user": "U0BOT0001", "bot_id": "B00000001", "ts": ts } })
        }
        "chat.update" => {
            let (channel, ts) = (body["channel"].as_str().unwrap_or_default(), body["ts"].as_str().unwrap_or_default());
            let index = s.by_ts.get(ts).copied();
            match index.and_then(|i| s.messages.get_mut(i)).filter(|m| m.channel == channel) {
                None => slack_error("message_not_found"),
                Some(m) => {
                    m.text = text_of(&body);
                    m.blocks = body["blocks"].clone();
                    m.edits += 1;
                    json!({ "ok": true, "channel": channel, "ts": ts, "text": m.text,
                            "message": { "text": m.text, "user": "U0BOT0001", "bot_id": "B00000001" } })
                }
            }
        }
        "conversations.info" => {
            let channel = body["channel"].as_str().unwrap_or_default();
            let scopes = s.scopes.clone().unwrap_or_default();
            if s.scopes.is_some() && !scopes.iter().any(|g| g == "channels:read" || g == "groups:read") {
                json!({ "ok": false, "error": "missing_scope", "needed": "channels:read,groups:read" })
            } else if !channel.starts_with('C') && !channel.starts_with('G') {
                slack_error("channel_not_found")
            } else {
                json!({ "ok": true, "channel": { "id": channel, "name": "finance", "is_channel": true,
                        "is_member": !s.closed_channels.contains(channel) } })
            }
        }
        // Slack's answer: the full user object, deactivated accounts included (`deleted`);
        // `users_not_found` for an address no member has; `missing_scope` without
        // `users:read.email`.
        "users.lookupByEmail" => {
            let email = body["email"].as_str().unwrap_or_default().to_ascii_lowercase();
            let granted = s.scopes.as_ref().is_none_or(|g| g.iter().any(|g| g == "users:read.email"));
            if !granted {
                json!({ "ok": false, "error": "missing_scope", "needed": "users:read.email" })
            } else if email.is_empty() {
                slack_error("invalid_arguments")
            } else {
                match s.members.get(&email) {
                    None => slack_error("users_not_found"),
                    Some((id, deleted)) => json!({ "ok": true, "user": {
                        "id": id, "team_id": "T00000001", "name": email.split('@').next(), "deleted": deleted,
                        "real_name": email, "tz": "Europe/London", "tz_label": "Greenwich Mean Time", "tz_offset": 0,
                        "is_admin": false, "is_owner": false, "is_bot": false, "is_app_user": false, "updated": 1700000000,
                        "profile": { "email": email, "real_name": email, "display_name": "" } } }),
                }
            }
        }
        "chat.getPermalink" => {
            let (channel, ts) =
                (body["channel"].as_str().unwrap_or_default(), body["message_ts"].as_str().unwrap_or_default());
            match s.by_ts.get(ts).and_then(|i| s.messages.get(*i)).filter(|m| m.channel == channel) {
                None => slack_error("message_not_found"),
                Some(m) => json!({ "ok": true, "channel": m.channel,
                    "permalink": format!("https://example.slack.com/archives/{}/p{}", m.channel, m.ts.replace('.', "")) }),
            }
        }
        "chat.postEphemeral" => {
            s.ephemerals.push(json!({ "channel": body["channel"], "user": body["user"], "text": body["text"] }));
            json!({ "ok": true, "message_ts": format!("1700000000.{:06}", 900_000 + s.ephemerals.len()) })
        }
        "views.open" => {
            let Some(trigger) = body["trigger_id"].as_str().filter(|t| !t.is_empty()) else {
                return (ok, out_headers, Json(slack_error("invalid_trigger_id")));
            };
            s.views.push(json!({ "trigger_id": trigger, "view": body["view"] }));
            let mut view = body["view"].clone();
            for (k, v) in [
                ("id", "V0000001"),
                ("team_id", "T00000001"),
                ("hash", "1700000000.abc"),
                ("app_id", "A00000001"),
                ("bot_id", "B00000001"),
            ] {
                view[k] = Value::String(v.into());
            }
            view["state"] = json!({ "values": {} });
            json!({ "ok": true, "view": view })
        }
        "views.publish" => {
            let Some(user) = body["user_id"].as_str().filter(|u| !u.is_empty()).map(str::to_string) else {
                return (ok, out_headers, Json(slack_error("invalid_arguments")));
            };
            if body["view"]["type"] != "home" {
                return (ok, out_headers, Json(slack_error("invalid_arguments")));
            }
            let mut view = body["view"].clone();
            s.homes.insert(user.clone(), view.clone());
            *s.home_publishes.entry(user).or_default() += 1;
            for (k, v) in [
                ("id", "V0HOME0001"),
                ("team_id", "T00000001"),
                ("hash", "1700000000.home"),
                ("app_id", "A00000001"),
                ("bot_id", "B00000001"),
            ] {
                view[k] = Value::String(v.into());
            }
            view["state"] = json!({ "values": {} });
            json!({ "ok": true, "view": view })
        }
        "usergroups.users.list" => {
            let group = body["usergroup"].as_str().unwrap_or_default();
            match s.groups.get(group) {
                Some(users) => json!({ "ok": true, "users": users }),
                None => slack_error("no_such_subteam"),
            }
        }
        _ => slack_error("unknown_method"),
    };
    (ok, out_headers, Json(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_kit_limits_are_enforced_as_slack_does() {
        let section = |n: usize| json!({ "type": "section", "text": { "type": "mrkdwn", "text": "x".repeat(n) } });
        assert!(block_kit_problems(&json!([section(3000)]), 50).is_empty());
        assert_eq!(block_kit_problems(&json!([section(3001)]), 50).len(), 1);
        // slack-morphism sends blocks as a JSON string in form posts.
        assert_eq!(block_kit_problems(&Value::String(json!([section(3001)]).to_string()), 50).len(), 1);
        let many: Vec<Value> = (0..51).map(|_| section(1)).collect();
        assert_eq!(block_kit_problems(&json!(many), 50).len(), 1);
        assert!(block_kit_problems(&json!(many), 100).is_empty(), "views take 100");
        let header = json!([{ "type": "header", "text": { "type": "plain_text", "text": "h".repeat(151) } }]);
        assert_eq!(block_kit_problems(&header, 50).len(), 1);
    }
}
