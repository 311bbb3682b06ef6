//! Settings from the environment and the optional TOML file; the only place that reads either.
//!
//! The environment wins over the file. Secrets are wrapped in [`SecretString`], so they never
//! reach a log, an error or `Debug` output.

use crate::domain::policy::{CurrencyRules, Policy};
use crate::domain::{AmountInput, Approvers, Currency, Money, RefundReason, UserId};
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// Every setting refund-desk reads, by its environment name.
pub const KNOWN_SETTINGS: [&str; 40] = [
    "STRIPE_EVENTS_POLL_SECS",
    "STRIPE_EVENTS_SWEEP_SECS",
    "REFUND_DESK_CACHE_MB",
    "REFUND_DESK_JOB_CONCURRENCY",
    "STRIPE_TIMEOUT_SECS",
    "STRIPE_RATE_LIMIT",
    "REFUND_DESK_PENDING_CHECK_SECS",
    "REFUND_DESK_JOB_ATTEMPTS",
    "REFUND_DESK_JOB_FIRST_RETRY_MS",
    "REFUND_DESK_JOB_MAX_RETRY_SECS",
    "REFUND_DESK_LISTEN",
    "REFUND_DESK_DATA_DIR",
    "DATABASE_URL",
    "REFUND_DESK_JOB_LEASE_SECS",
    "SLACK_SIGNING_SECRET",
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "SLACK_API_URL",
    "SLACK_FINANCE_CHANNEL",
    "SLACK_APPROVERS",
    "SLACK_APPROVER_GROUP",
    "SLACK_REQUESTERS",
    "SLACK_SENIOR_APPROVERS",
    "SLACK_SENIOR_APPROVER_GROUP",
    "SLACK_ESCALATION_APPROVERS",
    "SLACK_ESCALATION_APPROVER_GROUP",
    "STRIPE_SECRET_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "STRIPE_API_URL",
    "SMTP_URL",
    "EMAIL_FROM",
    "REFUND_DESK_CONFIG",
    "REFUND_DESK_LOG_FORMAT",
    "REFUND_DESK_BACKUP_DIR",
    "REFUND_DESK_BACKUP_EVERY",
    "REFUND_DESK_BACKUP_KEEP",
    "REFUND_DESK_API_TOKENS",
    "REFUND_DESK_API_RATE",
    "REFUND_DESK_CALLBACK_URL",
    "REFUND_DESK_CALLBACK_SECRET",
];

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Readable lines; colour only when stderr is a terminal.
    Text,
    /// One JSON object per line: timestamp, level, message, fields, and the spans' fields.
    Json,
}

/// `REFUND_DESK_LOG_FORMAT` from the environment, read before anything else is (logging starts
/// first), so it is not taken from the TOML file.
pub fn log_format_from_env() -> Result<LogFormat, ConfigError> {
    log_format(std::env::var("REFUND_DESK_LOG_FORMAT").ok().as_deref())
}

fn log_format(value: Option<&str>) -> Result<LogFormat, ConfigError> {
    match value.map(str::trim) {
        None | Some("") | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => Err(invalid("REFUND_DESK_LOG_FORMAT", format!("`{other}`: use text or json"))),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is required but not set")]
    Missing(&'static str),
    #[error("{name} is not valid: {why}")]
    Invalid { name: &'static str, why: String },
    #[error("the config file {path} could not be read: {why}")]
    File { path: String, why: String },
    #[error("the refund policy is not valid: {key}: {why}")]
    Policy { key: String, why: String },
}

fn invalid(name: &'static str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid { name, why: why.to_string() }
}

#[derive(Debug, Clone)]
pub struct SlackSettings {
    /// Checks requests Slack sends over HTTP; not needed over Socket Mode.
    pub signing_secret: Option<SecretString>,
    pub bot_token: SecretString,
    /// An app-level token (`xapp-...`): Slack's traffic then comes over Socket Mode.
    pub app_token: Option<SecretString>,
    /// Web API base, without a trailing slash.
    pub api_url: String,
    pub finance_channel: String,
    /// Approvers named one by one.
    pub approvers: Approvers,
    /// A user group whose members approve too, read from Slack and refreshed.
    pub approver_group: Option<String>,
    /// Senior approvers (named, and a group), one of whom approves at or above `senior_from`.
    pub seniors: Role,
    /// Escalation approvers, who may decide a request once it is escalated.
    pub escalation: Role,
    /// How often the groups' members are read again.
    pub approver_refresh: Duration,
    /// `None`: anyone may use `/refund`.
    pub requesters: Option<Vec<UserId>>,
}

#[derive(Debug, Clone)]
pub struct StripeSettings {
    pub secret_key: SecretString,
    /// Several during rotation; any may sign an event. Empty: no webhook endpoint, and Stripe's
    /// events are read from `GET /v1/events` instead.
    pub webhook_secrets: Vec<SecretString>,
    /// How often Stripe's events are read (`STRIPE_EVENTS_POLL_SECS`, default 10, without a
    /// webhook; `STRIPE_EVENTS_SWEEP_SECS`, default 3600, with one, to recover what it missed).
    pub events_every: Duration,
    pub api_url: Url,
    /// Per-call deadline (`STRIPE_TIMEOUT_SECS`, default 30).
    pub timeout: Duration,
    /// Calls per second at most (`STRIPE_RATE_LIMIT`); default under Stripe's published limits:
    /// 20 for test keys (limit 25), 80 for live keys (limit 100).
    pub max_requests_per_second: u32,
    /// Stripe keeps idempotency keys at least 24 hours; past this age a refund call first
    /// looks for a refund already made for the request.
    pub idempotency_horizon: Duration,
    /// A refund still pending after this long without a webhook is read back from Stripe
    /// (`REFUND_DESK_PENDING_CHECK_SECS`, default 3600).
    pub pending_check_after: Duration,
}

#[derive(Debug, Clone)]
pub struct EmailSettings {
    /// Holds the SMTP password when there is one.
    pub smtp_url: SecretString,
    pub from: lettre::message::Mailbox,
    /// Company name, reply-to and signature, from the `[email]` table.
    pub texts: crate::email::EmailTexts,
}

/// How the job runner retries.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Jobs running at once for each kind of work (Stripe calls, Slack posts, emails, ...).
    pub concurrency: usize,
    pub max_attempts: u32,
    pub first_retry: Duration,
    pub max_retry: Duration,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            concurrency: 16,
            max_attempts: 12,
            first_retry: Duration::from_millis(500),
            max_retry: Duration::from_secs(300),
        }
    }
}

/// Which engine holds the store.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    /// Embedded, in `REFUND_DESK_DATA_DIR`, with a page cache of `cache_mb` MiB
    /// (`REFUND_DESK_CACHE_MB`): one process.
    Sled { dir: PathBuf, cache_mb: u64 },
    /// `DATABASE_URL` (`postgres://...`), shared by every replica. A runner holds a job for
    /// `lease` (`REFUND_DESK_JOB_LEASE_SECS`, default 60) before another replica may take it.
    Postgres { url: SecretString, lease: Duration },
}

impl Settings {
    /// The embedded store's directory, when that is the store.
    pub fn store_dir(&self) -> Option<PathBuf> {
        match &self.store {
            StoreSettings::Sled { dir, .. } => Some(dir.clone()),
            StoreSettings::Postgres { .. } => None,
        }
    }
}

impl StoreSettings {
    /// Where it is, in words, with no secret: for logs and `check`.
    pub fn describe(&self) -> String {
        match self {
            StoreSettings::Sled { dir, .. } => format!("data in {}", dir.display()),
            StoreSettings::Postgres { .. } => "data in PostgreSQL (DATABASE_URL)".to_string(),
        }
    }

    fn from_sources(src: &Sources) -> Result<StoreSettings, ConfigError> {
        match src.get("DATABASE_URL").filter(|u| !u.is_empty()) {
            Some(url) => {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(invalid("DATABASE_URL", "must be a postgres:// URL"));
                }
                let lease = number(src, "REFUND_DESK_JOB_LEASE_SECS", 60)?;
                if lease == 0 {
                    return Err(invalid("REFUND_DESK_JOB_LEASE_SECS", "must be at least 1"));
                }
                Ok(StoreSettings::Postgres {
                    url: SecretString::from(url.to_string()),
                    lease: Duration::from_secs(lease),
                })
            }
            None => Ok(StoreSettings::Sled {
                dir: PathBuf::from(src.get("REFUND_DESK_DATA_DIR").unwrap_or("./data")),
                cache_mb: number(src, "REFUND_DESK_CACHE_MB", crate::storage::DEFAULT_CACHE_MB)?,
            }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Where the store is: PostgreSQL when `DATABASE_URL` is set, else sled in `data_dir`.
    pub store: StoreSettings,
    pub slack: SlackSettings,
    pub stripe: StripeSettings,
    /// `None`: customers get no email.
    pub email: Option<EmailSettings>,
    pub jobs: JobSettings,
    /// The refund policy from the `[policy]` table; empty: every refund needs one approval.
    pub policy: Policy,
    /// `None`: the service takes no backups itself.
    pub backups: Option<BackupSettings>,
    /// The HTTP API for support tools; no tokens: every API call is refused.
    pub api: ApiSettings,
}

/// The HTTP API for support tools (`/api/v1`): who may call it, how often, and where status
/// changes are posted.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `REFUND_DESK_API_TOKENS`.
    pub tokens: Vec<ApiToken>,
    /// `REFUND_DESK_API_RATE`: calls a minute each token may make (and the burst it may save
    /// up), default 60.
    pub per_minute: u32,
    /// `REFUND_DESK_CALLBACK_URL` and its secret; `None`: no callbacks.
    pub callback: Option<CallbackSettings>,
}

/// One API client: its name (shown in the audit trail), what it may do, and the SHA-256 of its
/// token (the token itself is never configured, so never kept).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    pub create: bool,
    pub read: bool,
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("create", &self.create)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

/// Where status changes of API-made requests are posted, and the secret they are signed with.
#[derive(Debug, Clone)]
pub struct CallbackSettings {
    pub url: Url,
    pub secret: SecretString,
}

impl ApiSettings {
    fn from_sources(src: &Sources) -> Result<ApiSettings, ConfigError> {
        const NAME: &str = "REFUND_DESK_API_TOKENS";
        let mut tokens: Vec<ApiToken> = vec![];
        let entries = src.get(NAME).unwrap_or_default().split(',').map(str::trim).filter(|e| !e.is_empty());
        for (n, entry) in entries.enumerate() {
            let nth = n + 1;
            let bad = |why: &str| invalid(NAME, format!("entry {nth}: {why}; write name:create+read:sha256hex"));
            let mut parts = entry.splitn(3, ':');
            let (Some(name), Some(scopes), Some(hash)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad("it needs three parts"));
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(bad("the name must be letters, digits, `-`, `_` or `.`"));
            }
            let (mut create, mut read) = (false, false);
            for scope in scopes.split('+') {
                match scope {
                    "create" => create = true,
                    "read" => read = true,
                    _ => return Err(bad(&format!("`{scope}` is not a scope (create, read)"))),
                }
            }
            let sha256: [u8; 32] = hex::decode(hash)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| bad("the last part must be the token's SHA-256, 64 hex digits"))?;
            if tokens.iter().any(|t| t.name == name) {
                return Err(bad(&format!("the name `{name}` is used twice")));
            }
            if tokens.iter().any(|t| t.sha256 == sha256) {
                return Err(bad("the same token is listed twice"));
            }
            tokens.push(ApiToken { name: name.to_string(), create, read, sha256 });
        }
        let callback = match (src.get("REFUND_DESK_CALLBACK_URL"), src.get("REFUND_DESK_CALLBACK_SECRET")) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(invalid("REFUND_DESK_CALLBACK_SECRET", "is set but REFUND_DESK_CALLBACK_URL is not"));
            }
            (Some(_), None) => {
                return Err(ConfigError::Missing("REFUND_DESK_CALLBACK_SECRET, which REFUND_DESK_CALLBACK_URL needs"));
            }
            (Some(url), Some(secret)) => {
                if secret.len() < 16 {
                    return Err(invalid("REFUND_DESK_CALLBACK_SECRET", "must be at least 16 characters"));
                }
                Some(CallbackSettings {
                    url: base_url("REFUND_DESK_CALLBACK_URL", url)?,
                    secret: SecretString::from(secret.to_string()),
                })
            }
        };
        let per_minute = u32::try_from(number(src, "REFUND_DESK_API_RATE", 60)?)
            .map_err(|_| invalid("REFUND_DESK_API_RATE", "is too large"))?;
        Ok(ApiSettings { tokens, per_minute, callback })
    }
}

/// Backups the running service takes (`REFUND_DESK_BACKUP_DIR`).
#[derive(Debug, Clone)]
pub struct BackupSettings {
    pub dir: PathBuf,
    /// `REFUND_DESK_BACKUP_EVERY`, default an hour.
    pub every: Duration,
    /// `REFUND_DESK_BACKUP_KEEP`, default 48: older ones are removed.
    pub keep: usize,
}

impl BackupSettings {
    fn from_sources(src: &Sources, store: &StoreSettings) -> Result<Option<BackupSettings>, ConfigError> {
        let Some(dir) = src.get("REFUND_DESK_BACKUP_DIR") else { return Ok(None) };
        if matches!(store, StoreSettings::Postgres { .. }) {
            return Err(invalid(
                "REFUND_DESK_BACKUP_DIR",
                "with DATABASE_URL, back up PostgreSQL with its own tools (pg_dump, point-in-time recovery)",
            ));
        }
        let every = match src.get("REFUND_DESK_BACKUP_EVERY") {
            None => Duration::from_secs(3600),
            Some(text) => humantime::parse_duration(text)
                .ok()
                .filter(|d| *d >= Duration::from_secs(1))
                .ok_or_else(|| invalid("REFUND_DESK_BACKUP_EVERY", format!("`{text}`: write it like 1h or 30m")))?,
        };
        let keep = number(src, "REFUND_DESK_BACKUP_KEEP", 48)? as usize;
        Ok(Some(BackupSettings { dir: PathBuf::from(dir), every, keep }))
    }
}

/// People with a role: named one by one, and the members of a user group.
#[derive(Debug, Clone, Default)]
pub struct Role {
    pub named: Approvers,
    pub group: Option<String>,
}

impl Role {
    fn from_sources(src: &Sources, users: &'static str, group: &'static str) -> Result<Role, ConfigError> {
        let named = Approvers::new(user_list(users, src.get(users).unwrap_or(""))?);
        let group_id = src.get(group).map(str::to_string);
        if group_id.as_deref().is_some_and(|g| !g.starts_with('S') || g.len() < 2) {
            return Err(invalid(group, "must be a user group id, like S0614TZR7"));
        }
        Ok(Role { named, group: group_id })
    }
}

/// Where settings come from: a name → value lookup (the environment in production, a map in
/// tests), plus the TOML file it may name.
pub struct Sources {
    values: HashMap<String, String>,
    policy: Option<toml::Table>,
    email: Option<toml::Table>,
}

impl Sources {
    /// The process environment, and the file `REFUND_DESK_CONFIG` names.
    pub fn from_env() -> Result<Sources, ConfigError> {
        Sources::from_lookup(|name| std::env::var(name).ok())
    }

    /// Any lookup, for tests and the demo.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Sources, ConfigError> {
        let mut values = HashMap::new();
        let mut policy = None;
        let mut email = None;
        if let Some(path) = lookup("REFUND_DESK_CONFIG").filter(|p| !p.trim().is_empty()) {
            let file_err = |why: String| ConfigError::File { path: path.clone(), why };
            let text = std::fs::read_to_string(&path).map_err(|e| file_err(e.to_string()))?;
            let table: toml::Table = text.parse().map_err(|e: toml::de::Error| file_err(e.message().to_string()))?;
            for (key, value) in table {
                if key == "policy" {
                    policy = value.as_table().cloned();
                    continue;
                }
                if key == "email" {
                    email = value.as_table().cloned();
                    continue;
                }
                let name = key.to_ascii_uppercase();
                if !KNOWN_SETTINGS.contains(&name.as_str()) {
                    return Err(file_err(format!("unknown setting `{key}`")));
                }
                if name == "REFUND_DESK_LOG_FORMAT" {
                    // Logging starts before the file is read.
                    return Err(file_err(format!("`{key}` is read from the environment only")));
                }
                let text = match value {
                    toml::Value::String(s) => s,
                    toml::Value::Array(items) => items
                        .iter()
                        .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                };
                values.insert(name, text);
            }
        }
        for name in KNOWN_SETTINGS {
            if let Some(v) = lookup(name) {
                values.insert(name.to_string(), v);
            }
        }
        Ok(Sources { values, policy, email })
    }

    fn get(&self, name: &'static str) -> Option<&str> {
        self.values.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
    }
    fn require(&self, name: &'static str) -> Result<&str, ConfigError> {
        self.get(name).ok_or(ConfigError::Missing(name))
    }
}

/// A valid value for a required setting, standing in for a missing or malformed one while
/// [`Settings::problems`] looks for the next problem; `None` for an optional one (dropped).
fn stand_in_for(name: &str) -> Option<&'static str> {
    Some(match name {
        "SLACK_SIGNING_SECRET" => "stand-in",
        "SLACK_BOT_TOKEN" => "xoxb-stand-in",
        "SLACK_FINANCE_CHANNEL" => "C0STANDIN",
        "SLACK_APPROVERS" | "SLACK_SENIOR_APPROVERS" | "SLACK_ESCALATION_APPROVERS" => "U0STANDIN",
        "STRIPE_SECRET_KEY" => "sk_test_stand_in",
        "EMAIL_FROM" => "refund-desk@example.com",
        "REFUND_DESK_CALLBACK_SECRET" => "stand-in-callback-secret",
        _ => return None,
    })
}

/// A positive whole number setting, or its default.
fn number(src: &Sources, name: &'static str, default: u64) -> Result<u64, ConfigError> {
    match src.get(name) {
        None => Ok(default),
        Some(v) => {
            v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| invalid(name, "must be a whole number above 0"))
        }
    }
}

fn user_list(name: &'static str, text: &str) -> Result<Vec<UserId>, ConfigError> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| UserId::parse(s).map_err(|e| invalid(name, e)))
        .collect()
}

fn base_url(name: &'static str, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text).map_err(|e| invalid(name, e))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(name, "must be an http:// or https:// URL"));
    }
    Ok(url)
}

/// Where the service listens (`REFUND_DESK_LISTEN`), for `healthcheck`.
pub fn listen_from_env() -> Result<SocketAddr, ConfigError> {
    let src = Sources::from_env()?;
    src.get("REFUND_DESK_LISTEN").unwrap_or("127.0.0.1:3000").parse().map_err(|e| invalid("REFUND_DESK_LISTEN", e))
}

/// Only where the store is, for commands that need nothing else.
pub fn store_from_env() -> Result<StoreSettings, ConfigError> {
    StoreSettings::from_sources(&Sources::from_env()?)
}

impl Settings {
    pub fn load() -> Result<Settings, ConfigError> {
        Settings::from_sources(&Sources::from_env()?)
    }

    /// Every problem with the settings, not only the first (for `check`): each one found is
    /// set aside (a missing required setting stands in with a valid value, a malformed
    /// optional one is dropped) and the settings are read again, until they read or a problem
    /// cannot be set aside (the file, the policy). Empty when the settings are valid.
    pub fn problems(src: &Sources) -> Vec<ConfigError> {
        let mut src = Sources { values: src.values.clone(), policy: src.policy.clone(), email: src.email.clone() };
        let mut problems = vec![];
        for _ in 0..=KNOWN_SETTINGS.len() {
            let error = match Settings::from_sources(&src) {
                Ok(_) => break,
                Err(e) => e,
            };
            let name = match &error {
                // A name, perhaps followed by why it is needed ("X, which Y needs").
                ConfigError::Missing(name) | ConfigError::Invalid { name, .. } => {
                    name.split([' ', ',']).next().unwrap_or(name)
                }
                ConfigError::File { .. } | ConfigError::Policy { .. } => {
                    problems.push(error);
                    break;
                }
            };
            // A problem that setting aside did not clear would come back every round.
            if problems.iter().any(|p: &ConfigError| p.to_string() == error.to_string()) {
                break;
            }
            let name = name.to_string();
            match stand_in_for(&name) {
                Some(value) => src.values.insert(name, value.to_string()),
                None => src.values.remove(&name),
            };
            problems.push(error);
        }
        problems
    }

    pub fn from_sources(src: &Sources) -> Result<Settings, ConfigError> {
        // Applied from the environment before anything else; checked here so `check` says so.
        log_format(src.get("REFUND_DESK_LOG_FORMAT"))?;
        let listen = src
            .get("REFUND_DESK_LISTEN")
            .unwrap_or("127.0.0.1:3000")
            .parse()
            .map_err(|e| invalid("REFUND_DESK_LISTEN", e))?;

        let app_token = match src.get("SLACK_APP_TOKEN") {
            Some(t) if !t.starts_with("xapp-") => {
                return Err(invalid("SLACK_APP_TOKEN", "must be an app-level token starting with xapp-"));
            }
            t => t.map(|s| SecretString::from(s.to_string())),
        };
        // Over Socket Mode, Slack's traffic needs no signature; over HTTP it must be signed.
        let signing_secret = match (src.get("SLACK_SIGNING_SECRET"), &app_token) {
            (Some(secret), _) => Some(SecretString::from(secret.to_string())),
            (None, Some(_)) => None,
            (None, None) => Some(SecretString::from(src.require("SLACK_SIGNING_SECRET")?.to_string())),
        };
        let bot_token = src.require("SLACK_BOT_TOKEN")?;
        if !bot_token.starts_with("xoxb-") {
            return Err(invalid("SLACK_BOT_TOKEN", "must be a bot token starting with xoxb-"));
        }
        let api_url = base_url("SLACK_API_URL", src.get("SLACK_API_URL").unwrap_or("https://slack.com/api"))?;
        let approvers = Approvers::new(user_list("SLACK_APPROVERS", src.get("SLACK_APPROVERS").unwrap_or(""))?);
        let approver_group = src.get("SLACK_APPROVER_GROUP").map(str::to_string);
        if approvers.is_empty() && approver_group.is_none() {
            return Err(ConfigError::Missing("SLACK_APPROVERS (or SLACK_APPROVER_GROUP)"));
        }
        if approver_group.as_deref().is_some_and(|g| !g.starts_with('S') || g.len() < 2) {
            return Err(invalid("SLACK_APPROVER_GROUP", "must be a user group id, like S0614TZR7"));
        }
        let requesters = src.get("SLACK_REQUESTERS").map(|s| user_list("SLACK_REQUESTERS", s)).transpose()?;
        let slack = SlackSettings {
            signing_secret,
            bot_token: SecretString::from(bot_token.to_string()),
            app_token,
            api_url: api_url.as_str().trim_end_matches('/').to_string(),
            finance_channel: src.require("SLACK_FINANCE_CHANNEL")?.to_string(),
            approvers,
            approver_group,
            seniors: Role::from_sources(src, "SLACK_SENIOR_APPROVERS", "SLACK_SENIOR_APPROVER_GROUP")?,
            escalation: Role::from_sources(src, "SLACK_ESCALATION_APPROVERS", "SLACK_ESCALATION_APPROVER_GROUP")?,
            approver_refresh: Duration::from_secs(300),
            requesters,
        };

        let secret_key = src.require("STRIPE_SECRET_KEY")?;
        if !(secret_key.starts_with("sk_") || secret_key.starts_with("rk_")) {
            return Err(invalid("STRIPE_SECRET_KEY", "must start with sk_ or rk_"));
        }
        let webhook_secrets: Vec<SecretString> = src
            .get("STRIPE_WEBHOOK_SECRET")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| SecretString::from(s.to_string()))
            .collect();
        if webhook_secrets.iter().any(|s| !s.expose_secret().starts_with("whsec_")) {
            return Err(invalid("STRIPE_WEBHOOK_SECRET", "each secret must start with whsec_"));
        }
        let stripe = StripeSettings {
            secret_key: SecretString::from(secret_key.to_string()),
            events_every: if webhook_secrets.is_empty() {
                Duration::from_secs(number(src, "STRIPE_EVENTS_POLL_SECS", 10)?.max(1))
            } else {
                Duration::from_secs(number(src, "STRIPE_EVENTS_SWEEP_SECS", 3600)?.max(1))
            },
            webhook_secrets,
            api_url: base_url("STRIPE_API_URL", src.get("STRIPE_API_URL").unwrap_or("https://api.stripe.com"))?,
            timeout: Duration::from_secs(number(src, "STRIPE_TIMEOUT_SECS", 30)?),
            max_requests_per_second: number(
                src,
                "STRIPE_RATE_LIMIT",
                if secret_key.contains("_live_") { 80 } else { 20 },
            )? as u32,
            idempotency_horizon: Duration::from_secs(23 * 3600),
            pending_check_after: Duration::from_secs(number(src, "REFUND_DESK_PENDING_CHECK_SECS", 3600)?),
        };

        let email = match src.get("SMTP_URL") {
            None => None,
            Some(url) => {
                let parsed =
                    Url::parse(url).map_err(|_| invalid("SMTP_URL", "not a URL, e.g. smtp://127.0.0.1:2525"))?;
                if !matches!(parsed.scheme(), "smtp" | "smtps") {
                    return Err(invalid("SMTP_URL", "must start with smtp:// or smtps://"));
                }
                let from: lettre::message::Mailbox =
                    src.require("EMAIL_FROM")?.parse().map_err(|e| invalid("EMAIL_FROM", e))?;
                let texts = parse_email_texts(src.email.as_ref(), &from)?;
                Some(EmailSettings { smtp_url: SecretString::from(url.to_string()), from, texts })
            }
        };

        let policy = parse_policy(src.policy.as_ref())?;
        let nobody = |r: &Role| r.named.is_empty() && r.group.is_none();
        if nobody(&slack.seniors) && policy.currencies.values().any(|r| r.senior_from.is_some()) {
            return Err(ConfigError::Missing(
                "SLACK_SENIOR_APPROVERS (or SLACK_SENIOR_APPROVER_GROUP), which senior_from needs",
            ));
        }
        if nobody(&slack.escalation) && policy.escalate_after.is_some() {
            return Err(ConfigError::Missing(
                "SLACK_ESCALATION_APPROVERS (or SLACK_ESCALATION_APPROVER_GROUP), which escalate_after needs",
            ));
        }
        let store = StoreSettings::from_sources(src)?;
        let backups = BackupSettings::from_sources(src, &store)?;
        let api = ApiSettings::from_sources(src)?;
        Ok(Settings {
            listen,
            store,
            backups,
            api,
            slack,
            stripe,
            email,
            jobs: JobSettings {
                concurrency: number(src, "REFUND_DESK_JOB_CONCURRENCY", JobSettings::default().concurrency as u64)?
                    as usize,
                max_attempts: number(src, "REFUND_DESK_JOB_ATTEMPTS", 12)? as u32,
                first_retry: Duration::from_millis(number(src, "REFUND_DESK_JOB_FIRST_RETRY_MS", 500)?),
                max_retry: Duration::from_secs(number(src, "REFUND_DESK_JOB_MAX_RETRY_SECS", 300)?),
            },
            policy,
        })
    }
}

fn policy_error(key: impl Into<String>, why: impl std::fmt::Display) -> ConfigError {
    ConfigError::Policy { key: key.into(), why: why.to_string() }
}

/// An amount in `currency` written as a string (`"25.00"`) or a whole number; never a float.
fn policy_amount(key: &str, value: &toml::Value, currency: Currency) -> Result<Money, ConfigError> {
    let text = match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(_) => {
            return Err(policy_error(key, "write amounts as strings, like \"25.00\", so no float rounds them"));
        }
        other => return Err(policy_error(key, format!("expected an amount like \"25.00\", found {other}"))),
    };
    AmountInput::parse(&text).and_then(|a| a.to_money(currency)).map_err(|e| policy_error(key, e))
}

/// Reads `[policy]`; every mistake names the key it is in.
pub fn parse_policy(table: Option<&toml::Table>) -> Result<Policy, ConfigError> {
    let mut policy = Policy::default();
    let Some(table) = table else { return Ok(policy) };
    for (key, value) in table {
        let at = format!("policy.{key}");
        match key.as_str() {
            "refund_window_days" => {
                let days = value
                    .as_integer()
                    .filter(|d| (0..=3650).contains(d))
                    .ok_or_else(|| policy_error(&at, "expected a number of days from 0 to 3650"))?;
                policy.refund_window_days = Some(days as u32);
            }
            "always_require_approval" => {
                let items = value
                    .as_array()
                    .ok_or_else(|| policy_error(&at, "expected a list of reasons, like [\"goodwill\"]"))?;
                for item in items {
                    let word = item.as_str().unwrap_or_default();
                    let reason = RefundReason::parse(word).ok_or_else(|| {
                        let known: Vec<_> = RefundReason::ALL.iter().map(|r| r.as_str()).collect();
                        policy_error(&at, format!("`{word}` is not a reason; use {}", known.join(", ")))
                    })?;
                    policy.always_require_approval.insert(reason);
                }
            }
            "currency" => {
                let currencies =
                    value.as_table().ok_or_else(|| policy_error(&at, "expected [policy.currency.<code>] tables"))?;
                for (code, rules) in currencies {
                    let at = format!("policy.currency.{code}");
                    let currency = Currency::parse(code).map_err(|e| policy_error(&at, e))?;
                    let rules = rules.as_table().ok_or_else(|| policy_error(&at, "expected a table"))?;
                    policy.currencies.insert(currency.code().to_string(), parse_currency_rules(&at, rules, currency)?);
                }
            }
            "email_customer_on_deny" | "email_customer_on_failure" => {
                let on = value.as_bool().ok_or_else(|| policy_error(&at, "expected true or false"))?;
                if key == "email_customer_on_deny" {
                    policy.email_customer_on_deny = on;
                } else {
                    policy.email_customer_on_failure = on;
                }
            }
            "remind_after" | "expire_after" | "escalate_after" | "remind_cooldown" => {
                let text =
                    value.as_str().ok_or_else(|| policy_error(&at, "expected a duration like \"4h\" or \"2days\""))?;
                let duration = humantime::parse_duration(text)
                    .map_err(|e| policy_error(&at, format!("`{text}`: {e}; write it like \"4h\" or \"2days\"")))?;
                match key.as_str() {
                    "remind_after" => policy.remind_after = Some(duration),
                    "expire_after" => policy.expire_after = Some(duration),
                    "escalate_after" => policy.escalate_after = Some(duration),
                    _ => policy.remind_cooldown = duration,
                }
            }
            "require_approval_note" => {
                policy.require_approval_note =
                    value.as_bool().ok_or_else(|| policy_error(&at, "expected true or false"))?;
            }
            "digest_at" => {
                let text = value.as_str().unwrap_or_default();
                let time = chrono::NaiveTime::parse_from_str(text, "%H:%M")
                    .map_err(|_| policy_error(&at, format!("`{text}` is not a time; write it like \"09:00\"")))?;
                policy.digest_at = Some(time);
            }
            "timezone" => {
                let text = value.as_str().unwrap_or_default();
                policy.timezone = text.parse().map_err(|_| {
                    policy_error(&at, format!("`{text}` is not a time zone; use an IANA name like \"Europe/Berlin\""))
                })?;
            }
            _ => return Err(policy_error(&at, "unknown key")),
        }
    }
    // Reminder, then escalation, then expiry.
    let order = [
        ("remind_after", policy.remind_after),
        ("escalate_after", policy.escalate_after),
        ("expire_after", policy.expire_after),
    ];
    for (i, (earlier, a)) in order.iter().enumerate() {
        for (later, b) in &order[i + 1..] {
            if let (Some(a), Some(b)) = (a, b)
                && a >= b
            {
                return Err(policy_error(format!("policy.{earlier}"), format!("must be shorter than {later}")));
            }
        }
    }
    if policy.remind_cooldown.is_zero() {
        return Err(policy_error("policy.remind_cooldown", "must be longer than zero"));
    }
    Ok(policy)
}

/// Reads `[email]`: `company_name`, `reply_to`, `signature`; defaults from the sender.
fn parse_email_texts(
    table: Option<&toml::Table>,
    from: &lettre::message::Mailbox,
) -> Result<crate::email::EmailTexts, ConfigError> {
    let mut texts = crate::email::EmailTexts::defaults(from);
    let bad = |key: &str, why: String| ConfigError::File {
        path: "REFUND_DESK_CONFIG".into(),
        why: format!("email.{key}: {why}"),
    };
    for (key, value) in table.into_iter().flatten() {
        let text = value.as_str().ok_or_else(|| bad(key, "expected a string".into()))?.to_string();
        match key.as_str() {
            "company_name" => texts.company_name = text,
            "signature" => texts.signature = text,
            "reply_to" => texts.reply_to = Some(text.parse().map_err(|e| bad(key, format!("{e}")))?),
            _ => return Err(bad(key, "unknown key (company_name, reply_to, signature)".into())),
        }
    }
    if table.is_some_and(|t| t.contains_key("company_name")) && !table.is_some_and(|t| t.contains_key("signature")) {
        texts.signature = format!("The {} team", texts.company_name);
    }
    Ok(texts)
}

fn parse_currency_rules(at: &str, table: &toml::Table, currency: Currency) -> Result<CurrencyRules, ConfigError> {
    let mut rules = CurrencyRules::default();
    for (key, value) in table {
        let key_at = format!("{at}.{key}");
        let amount = Some(policy_amount(&key_at, value, currency)?);
        match key.as_str() {
            "auto_approve_up_to" => rules.auto_approve_up_to = amount,
            "second_approval_from" => rules.second_approval_from = amount,
            "max_amount" => rules.max_amount = amount,
            "senior_from" => rules.senior_from = amount,
            "confirm_amount_from" => rules.confirm_amount_from = amount,
            _ => {
                return Err(policy_error(
                    &key_at,
                    "unknown key (auto_approve_up_to, second_approval_from, max_amount, senior_from, confirm_amount_from)",
                ));
            }
        }
    }
    let minor = |m: Option<Money>| m.map(|m| m.minor());
    if let (Some(auto), Some(second)) = (minor(rules.auto_approve_up_to), minor(rules.second_approval_from))
        && auto >= second
    {
        return Err(policy_error(format!("{at}.auto_approve_up_to"), "must be below second_approval_from"));
    }
    for (name, value) in
        [("auto_approve_up_to", rules.auto_approve_up_to), ("second_approval_from", rules.second_approval_from)]
    {
        if let (Some(v), Some(max)) = (value, rules.max_amount)
            && v.minor() > max.minor()
        {
            return Err(policy_error(format!("{at}.{name}"), format!("{v} is above max_amount ({max})")));
        }
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> HashMap<&'static str, String> {
        HashMap::from([
            ("SLACK_SIGNING_SECRET", "shh-signing".to_string()),
            ("SLACK_BOT_TOKEN", "xoxb-secret-token".to_string()),
            ("SLACK_FINANCE_CHANNEL", "CFIN".to_string()),
            ("SLACK_APPROVERS", "UAPP1, UAPP2".to_string()),
            ("STRIPE_SECRET_KEY", "sk_test_secretkey".to_string()),
            ("STRIPE_WEBHOOK_SECRET", "whsec_new,whsec_old".to_string()),
        ])
    }

    fn load(vars: &HashMap<&'static str, String>) -> Result<Settings, ConfigError> {
        Settings::from_sources(&Sources::from_lookup(|n| vars.get(n).cloned())?)
    }

    #[test]
    fn a_complete_environment_loads_with_defaults() {
        let s = load(&base()).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(s.slack.api_url, "https://slack.com/api");
        assert_eq!(s.stripe.webhook_secrets.len(), 2);
        assert!(s.slack.approvers.contains(&UserId::parse("UAPP2").unwrap()));
        assert!(s.email.is_none());
    }

    #[test]
    fn each_missing_required_setting_is_named() {
        for name in ["SLACK_BOT_TOKEN", "SLACK_FINANCE_CHANNEL", "STRIPE_SECRET_KEY", "SLACK_SIGNING_SECRET"] {
            let mut vars = base();
            vars.remove(name);
            let err = load(&vars).unwrap_err().to_string();
            assert!(err.contains(name), "{name}: {err}");
        }
        let mut vars = base();
        vars.insert("SMTP_URL", "smtp://127.0.0.1:2525".into());
        assert!(load(&vars).unwrap_err().to_string().contains("EMAIL_FROM"));
    }

    #[test]
    fn without_a_webhook_secret_stripe_events_are_read_every_10_s_and_with_one_swept_hourly() {
        let mut vars = base();
        vars.remove("STRIPE_WEBHOOK_SECRET");
        let s = load(&vars).unwrap();
        assert!(s.stripe.webhook_secrets.is_empty());
        assert_eq!(s.stripe.events_every, Duration::from_secs(10));
        vars.insert("STRIPE_EVENTS_POLL_SECS", "3".into());
        assert_eq!(load(&vars).unwrap().stripe.events_every, Duration::from_secs(3));
        assert_eq!(load(&base()).unwrap().stripe.events_every, Duration::from_secs(3600));
    }

    #[test]
    fn an_approver_group_alone_is_enough() {
        let mut vars = base();
        vars.remove("SLACK_APPROVERS");
        assert!(load(&vars).unwrap_err().to_string().contains("SLACK_APPROVERS"));
        vars.insert("SLACK_APPROVER_GROUP", "S0614TZR7".into());
        let s = load(&vars).unwrap();
        assert_eq!(s.slack.approver_group.as_deref(), Some("S0614TZR7"));
        assert!(s.slack.approvers.is_empty());
        vars.insert("SLACK_APPROVER_GROUP", "finance".into());
        assert!(load(&vars).unwrap_err().to_string().contains("SLACK_APPROVER_GROUP"));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let mut vars = base();
        vars.insert("SMTP_URL", "smtps://bot:hunter2@mail.example:465".into());
        vars.insert("EMAIL_FROM", "Acme Billing <billing@acme.example>".into());
        let debug = format!("{:?}", load(&vars).unwrap());
        for secret in ["shh-signing", "xoxb-secret-token", "sk_test_secretkey", "whsec_new", "hunter2"] {
            assert!(!debug.contains(secret), "{secret} leaked");
        }
    }

    #[test]
    fn the_file_supplies_settings_and_the_environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refund-desk.toml");
        std::fs::write(
            &path,
            "slack_finance_channel = \"CFILE\"\nslack_approvers = [\"UFILE\"]\n[policy]\nrefund_window_days = 60\n",
        )
        .unwrap();
        let mut vars = base();
        vars.remove("SLACK_FINANCE_CHANNEL");
        vars.insert("REFUND_DESK_CONFIG", path.display().to_string());
        let s = load(&vars).unwrap();
        assert_eq!(s.slack.finance_channel, "CFILE");
        assert!(s.slack.approvers.contains(&UserId::parse("UAPP1").unwrap()), "env wins");
        assert_eq!(s.policy.refund_window_days, Some(60));
        std::fs::write(&path, "slak_finance_channel = \"C\"\n").unwrap();
        assert!(load(&vars).unwrap_err().to_string().contains("slak_finance_channel"));
    }

    #[test]
    fn malformed_values_are_refused() {
        for (name, value) in [
            ("SLACK_BOT_TOKEN", "xoxp-user-token"),
            ("STRIPE_SECRET_KEY", "pk_test_publishable"),
            ("SLACK_APPROVERS", "alice"),
            ("STRIPE_API_URL", "ftp://x"),
            ("REFUND_DESK_LISTEN", "localhost"),
        ] {
            let mut vars = base();
            vars.insert(name, value.into());
            let err = load(&vars).unwrap_err().to_string();
            assert!(err.contains(name), "{name}: {err}");
        }
    }

    fn policy_from(text: &str) -> Result<Policy, ConfigError> {
        let table: toml::Table = text.parse().unwrap();
        parse_policy(table.get("policy").and_then(|p| p.as_table()))
    }

    #[test]
    fn the_contracts_policy_parses_into_minor_units() {
        let p = policy_from(
            "[policy]\nrefund_window_days = 60\nalways_require_approval = [\"goodwill\", \"other\"]\n\
             [policy.currency.usd]\nauto_approve_up_to = \"25.00\"\nsecond_approval_from = \"1000.00\"\nmax_amount = \"5000.00\"\n\
             [policy.currency.JPY]\nauto_approve_up_to = \"3000\"\n",
        )
        .unwrap();
        assert_eq!(p.refund_window_days, Some(60));
        assert!(p.always_require_approval.contains(&RefundReason::Goodwill));
        let usd = &p.currencies["usd"];
        assert_eq!(usd.auto_approve_up_to.unwrap().minor(), 2500);
        assert_eq!(usd.max_amount.unwrap().minor(), 500_000);
        assert_eq!(p.currencies["jpy"].auto_approve_up_to.unwrap().minor(), 3000, "zero-decimal");
    }

    #[test]
    fn the_approval_keys_parse() {
        let p = policy_from(
            "[policy]\nremind_after = \"4h\"\nescalate_after = \"8h\"\nexpire_after = \"2days\"\n\
             remind_cooldown = \"30m\"\nrequire_approval_note = true\ndigest_at = \"09:00\"\ntimezone = \"Europe/Berlin\"\n\
             [policy.currency.usd]\nsenior_from = \"2500.00\"\nconfirm_amount_from = \"1000.00\"\n",
        )
        .unwrap();
        assert_eq!(p.escalate_after, Some(Duration::from_secs(8 * 3600)));
        assert_eq!(p.remind_cooldown, Duration::from_secs(1800));
        assert!(p.require_approval_note);
        assert_eq!(p.digest_at, chrono::NaiveTime::from_hms_opt(9, 0, 0));
        assert_eq!(p.timezone, chrono_tz::Europe::Berlin);
        assert_eq!(p.currencies["usd"].senior_from.unwrap().minor(), 250_000);
        assert_eq!(p.currencies["usd"].confirm_amount_from.unwrap().minor(), 100_000);
        // A delegation "until 2026-12-24" in Berlin ends at midnight there, 23:00 UTC.
        let end = p.end_of_day(chrono::NaiveDate::from_ymd_opt(2026, 12, 24).unwrap());
        assert_eq!(end.to_rfc3339(), "2026-12-24T23:00:00+00:00");
        assert_eq!(policy_from("").unwrap().remind_cooldown, Duration::from_secs(3600), "the default cooldown");
    }

    #[test]
    fn a_rule_nobody_could_satisfy_stops_start_up_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refund-desk.toml");
        let mut vars = base();
        vars.insert("REFUND_DESK_CONFIG", path.display().to_string());
        std::fs::write(&path, "[policy.currency.usd]\nsenior_from = \"2500.00\"\n").unwrap();
        assert!(load(&vars).unwrap_err().to_string().contains("SLACK_SENIOR_APPROVERS"));
        vars.insert("SLACK_SENIOR_APPROVER_GROUP", "S0SENIOR".into());
        assert!(load(&vars).is_ok());
        std::fs::write(&path, "[policy]\nescalate_after = \"4h\"\n").unwrap();
        assert!(load(&vars).unwrap_err().to_string().contains("SLACK_ESCALATION_APPROVERS"));
        vars.insert("SLACK_ESCALATION_APPROVERS", "UESC1,UESC2".into());
        let s = load(&vars).unwrap();
        assert_eq!(s.slack.escalation.named.iter().count(), 2);
        vars.insert("SLACK_ESCALATION_APPROVER_GROUP", "finance".into());
        assert!(load(&vars).unwrap_err().to_string().contains("SLACK_ESCALATION_APPROVER_GROUP"));
    }

    #[test]
    fn each_bad_policy_key_is_named() {
        for (text, key) in [
            ("[policy]\nrefund_window = 60", "policy.refund_window"),
            ("[policy]\nrefund_window_days = \"sixty\"", "policy.refund_window_days"),
            ("[policy]\nalways_require_approval = [\"kindness\"]", "policy.always_require_approval"),
            ("[policy.currency.usd]\nauto_approve_up_to = 25.0", "policy.currency.usd.auto_approve_up_to"),
            ("[policy.currency.usd]\nmax_amount = \"lots\"", "policy.currency.usd.max_amount"),
            ("[policy.currency.usd]\nauto_approve = \"5\"", "policy.currency.usd.auto_approve"),
            ("[policy.currency.dollars]\nmax_amount = \"5\"", "policy.currency.dollars"),
            ("[policy.currency.jpy]\nmax_amount = \"5.50\"", "policy.currency.jpy.max_amount"),
            (
                "[policy.currency.usd]\nauto_approve_up_to = \"50\"\nsecond_approval_from = \"40\"",
                "policy.currency.usd.auto_approve_up_to",
            ),
            (
                "[policy.currency.usd]\nsecond_approval_from = \"60\"\nmax_amount = \"50\"",
                "policy.currency.usd.second_approval_from",
            ),
            ("[policy]\nescalate_after = \"4h\"\nremind_after = \"5h\"", "policy.remind_after"),
            ("[policy]\nescalate_after = \"2d\"\nexpire_after = \"1d\"", "policy.escalate_after"),
            ("[policy]\nremind_cooldown = \"0s\"", "policy.remind_cooldown"),
            ("[policy]\ndigest_at = \"9am\"", "policy.digest_at"),
            ("[policy]\ntimezone = \"Mars/Olympus\"", "policy.timezone"),
            ("[policy]\nrequire_approval_note = \"yes\"", "policy.require_approval_note"),
            ("[policy.currency.usd]\nsenior_from = \"lots\"", "policy.currency.usd.senior_from"),
        ] {
            let err = policy_from(text).unwrap_err().to_string();
            assert!(err.contains(&format!("{key}:")), "{text:?} gave {err}");
        }
    }

    #[test]
    fn api_tokens_are_read_as_name_scopes_and_hash_and_every_mistake_is_named() {
        let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let other = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";
        let mut vars = base();
        vars.insert("REFUND_DESK_API_TOKENS", format!("helpdesk:create+read:{hash}, forms:create:{other}"));
        let api = load(&vars).unwrap().api;
        assert_eq!(api.per_minute, 60);
        assert_eq!(api.tokens.len(), 2);
        assert_eq!((api.tokens[0].name.as_str(), api.tokens[0].create, api.tokens[0].read), ("helpdesk", true, true));
        assert_eq!((api.tokens[1].name.as_str(), api.tokens[1].create, api.tokens[1].read), ("forms", true, false));
        assert_eq!(hex::encode(api.tokens[0].sha256), hash);
        assert!(!format!("{:?}", api.tokens[0]).contains(hash), "Debug leaves the hash out");
        for (entry, says) in [
            (format!("helpdesk:create:{}", &hash[..60]), "entry 1: the last part"),
            (format!("helpdesk:delete:{hash}"), "`delete` is not a scope"),
            (format!("help desk:create:{hash}"), "the name must be"),
            (format!("a:create:{hash},a:read:{other}"), "used twice"),
            (format!("a:create:{hash},b:read:{hash}"), "the same token"),
            ("helpdesk".to_string(), "three parts"),
        ] {
            vars.insert("REFUND_DESK_API_TOKENS", entry.clone());
            let err = load(&vars).unwrap_err().to_string();
            assert!(err.starts_with("REFUND_DESK_API_TOKENS") && err.contains(says), "{entry}: {err}");
        }
    }

    #[test]
    fn a_callback_url_needs_its_secret_and_the_secret_needs_the_url() {
        let mut vars = base();
        vars.insert("REFUND_DESK_CALLBACK_URL", "https://helpdesk.example/refund-desk".into());
        assert!(
            matches!(load(&vars), Err(ConfigError::Missing(name)) if name.starts_with("REFUND_DESK_CALLBACK_SECRET"))
        );
        vars.insert("REFUND_DESK_CALLBACK_SECRET", "short".into());
        assert!(load(&vars).unwrap_err().to_string().contains("at least 16"));
        vars.insert("REFUND_DESK_CALLBACK_SECRET", "a-long-enough-callback-secret".into());
        let callback = load(&vars).unwrap().api.callback.unwrap();
        assert_eq!(callback.url.as_str(), "https://helpdesk.example/refund-desk");
        assert!(!format!("{callback:?}").contains("a-long-enough"), "the secret stays wrapped");
        vars.remove("REFUND_DESK_CALLBACK_URL");
        assert!(load(&vars).unwrap_err().to_string().contains("REFUND_DESK_CALLBACK_URL is not"));
    }

    #[test]
    fn every_problem_is_named_once_even_one_that_setting_aside_cannot_clear() {
        let mut vars = base();
        vars.remove("SLACK_BOT_TOKEN");
        vars.insert("REFUND_DESK_LOG_FORMAT", "jsn".into());
        vars.insert("REFUND_DESK_CALLBACK_URL", "https://helpdesk.example/hook".into());
        let problems = |vars: &HashMap<&'static str, String>| -> Vec<String> {
            Settings::problems(&Sources::from_lookup(|n| vars.get(n).cloned()).unwrap())
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        let found = problems(&vars);
        assert_eq!(found.len(), 3, "{found:#?}");
        for name in ["REFUND_DESK_LOG_FORMAT", "SLACK_BOT_TOKEN", "REFUND_DESK_CALLBACK_SECRET"] {
            assert_eq!(found.iter().filter(|p| p.starts_with(name)).count(), 1, "{name}: {found:#?}");
        }
        // A secret with no URL cannot be set aside by a stand-in: named once, not forty times.
        vars.remove("REFUND_DESK_CALLBACK_URL");
        vars.insert("REFUND_DESK_CALLBACK_SECRET", "a-long-enough-callback-secret".into());
        let found = problems(&vars);
        assert_eq!(found.iter().filter(|p| p.starts_with("REFUND_DESK_CALLBACK_SECRET")).count(), 1, "{found:#?}");
    }
}
