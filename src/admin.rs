//! Operator commands: listing and retrying jobs, checking and exporting the audit trail,
//! backing up and restoring the embedded store, copying it into PostgreSQL, `check`.
//!
//! On PostgreSQL they work on the database while the service runs. sled allows one process
//! per database, so while a desk runs on it the commands go through that desk's admin socket
//! ([`crate::control`]); [`target_from_env`] says which.

use crate::storage::{Job, Retry, Store, StoreError};
use crate::stripe::StripeError;
use crate::worker::describe;
use chrono::Utc;
use secrecy::ExposeSecret;
use std::path::Path;

/// What an operator command works on: the store itself, or the running desk that holds it.
pub enum Target {
    Store(Box<Store>),
    /// The desk running on the embedded store in this directory, through its admin socket.
    Running(std::path::PathBuf),
}

/// The store the environment names; when a running desk holds the embedded store's lock, that
/// desk (commands then go through its admin socket).
pub async fn target_from_env() -> anyhow::Result<Target> {
    match crate::config::store_from_env()? {
        crate::config::StoreSettings::Sled { dir, .. } => match Store::open(&dir) {
            Ok(store) => Ok(Target::Store(Box::new(store))),
            Err(e) if is_locked(&e) => Ok(Target::Running(dir)),
            Err(e) => Err(open_error(&dir, e)),
        },
        _ => Ok(Target::Store(Box::new(open_from_env().await?))),
    }
}

/// Whether the embedded store could not be opened because another process (or sled's own
/// threads, a moment after a handle is dropped) holds its lock.
pub fn is_locked(e: &StoreError) -> bool {
    matches!(e, StoreError::Sled(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock"))
}

/// Why the embedded store in `dir` does not open, in one line with what to do.
pub fn open_error(dir: &Path, e: StoreError) -> anyhow::Error {
    match &e {
        _ if is_locked(&e) => anyhow::anyhow!(
            "the database in {} is in use by a running refund-desk; stop it first, then run this again",
            dir.display()
        ),
        StoreError::Sled(sled::Error::Corruption { .. } | sled::Error::Unsupported(_)) | StoreError::Corrupt(_) => {
            anyhow::anyhow!(
                "the store in {} cannot be read: it is corrupt ({e}); nothing was changed or deleted. Restore the newest \
                 backup into a new directory with `refund-desk restore --from <backup> --data-dir <new dir>`, then point \
                 REFUND_DESK_DATA_DIR at it",
                dir.display()
            )
        }
        _ => anyhow::anyhow!("could not open the database in {}: {e}", dir.display()),
    }
}

/// The bot token scopes the desk cannot work without, with these settings.
fn needed_scopes(settings: &crate::config::Settings) -> Vec<&'static str> {
    let mut needed = vec!["commands", "chat:write", "im:write"];
    let slack = &settings.slack;
    if slack.approver_group.is_some() || slack.seniors.group.is_some() || slack.escalation.group.is_some() {
        needed.push("usergroups:read");
    }
    if !settings.api.tokens.is_empty() {
        // API clients may name the requester by email.
        needed.extend(["users:read", "users:read.email"]);
    }
    needed
}

/// What a backup holds, in two lines.
pub fn backup_summary(file: &Path, m: &crate::storage::sled::backup::BackupManifest) -> String {
    let head = m.audit_head.as_ref().map(|(seq, hash)| format!("entry {seq}, hash {hash}")).unwrap_or("empty".into());
    format!(
        "Backed up to {} ({} bytes, SHA-256 {}), with its manifest beside it.\n\
         Installation {}; the next request is R-{}; the audit chain's head: {head}.",
        file.display(),
        m.bytes,
        m.sha256,
        m.install_id,
        m.next_request_number
    )
}

/// `restore`: checks the backup against its manifest, loads it into the empty `dir`, verifies
/// the audit chain, and says what it restored.
pub async fn restore(from: &Path, dir: &Path) -> anyhow::Result<String> {
    let manifest = crate::storage::sled::backup::restore(from, dir)?;
    // sled's threads let go of the files a moment after the loading handle is dropped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let store = loop {
        match Store::open(dir) {
            Err(e) if is_locked(&e) && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            opened => break opened.map_err(|e| open_error(dir, e))?,
        }
    };
    // On disk for real (sled's own flush is not power-safe), and marked, before "Restored".
    store.flush().await?;
    if let Some(sled) = store.as_sled() {
        sled.write_mark().await?;
    }
    let report = store.verify_audit().await?;
    if let Some(problem) = report.problem {
        anyhow::bail!("the restored audit trail does not verify: {problem}; do not start a desk on {}", dir.display());
    }
    let requests = store.all_requests().await?.len();
    Ok(format!(
        "Restored {} into {}: {requests} requests, {} audit entries (the chain verifies); new requests are numbered \
         from R-{} (a million on, so none the lost store numbered after the backup is reused), \
         installation {}. At its next start the desk checks every approved, submitted or pending refund against \
         Stripe before any job runs. Point REFUND_DESK_DATA_DIR at {} and start it.",
        from.display(),
        dir.display(),
        report.entries,
        manifest.next_request_number + crate::storage::sled::backup::NUMBERS_SKIPPED_AFTER_RESTORE,
        manifest.install_id,
        dir.display()
    ))
}

/// Opens the store the environment names (`DATABASE_URL`, else `REFUND_DESK_DATA_DIR`).
pub async fn open_from_env() -> anyhow::Result<Store> {
    match crate::config::store_from_env()? {
        crate::config::StoreSettings::Postgres { url, lease } => {
            let store = crate::storage::postgres::PgStore::connect(url.expose_secret(), lease).await;
            Ok(Store::Postgres(store.map_err(|e| anyhow::anyhow!("could not open the database at DATABASE_URL: {e}"))?))
        }
        crate::config::StoreSettings::Sled { dir, .. } => open(&dir),
    }
}

/// Opens the embedded store in `dir`, explaining a lock held by a running service.
pub fn open(dir: &Path) -> anyhow::Result<Store> {
    Store::open(dir).map_err(|e| open_error(dir, e))
}

/// `migrate`: copies the embedded store in `from` into the empty PostgreSQL database at `to`,
/// then reads it back and checks it: the audit chain verifies, and requests, audit entries, jobs
/// and the installation id are what was copied. Returns what was copied, in one line.
pub async fn migrate(from: &Path, to: &str) -> anyhow::Result<String> {
    let source = open(from)?;
    let Some(sled) = source.as_sled() else { unreachable!("a data directory opens the embedded engine") };
    let report = sled.verify_audit()?;
    if let Some(problem) = report.problem {
        anyhow::bail!(
            "the audit trail in {} was altered ({problem}); nothing was copied. `refund-desk audit verify` shows it",
            from.display()
        );
    }
    if let Some(at) = sled.migrated_at()? {
        anyhow::bail!("the store in {} was already copied to PostgreSQL on {at}; nothing was copied", from.display());
    }
    let copy = sled.export_copy()?;
    crate::storage::postgres::PgStore::import_copy(to, &copy).await.map_err(|e| match e {
        StoreError::NotEmpty(why) => {
            anyhow::anyhow!("{why}; nothing was copied. Migrate into an empty database, before any desk starts on it")
        }
        e => anyhow::anyhow!("could not copy into the database: {e}; nothing was copied"),
    })?;
    let target = crate::storage::postgres::PgStore::connect(to, crate::storage::postgres::DEFAULT_LEASE).await?;
    let target = Store::Postgres(target);
    let entries = target.audit_entries().await?;
    let sorted = |mut v: Vec<(String, String)>| {
        v.sort();
        v
    };
    let checks = [
        ("the shared values", sorted(target.shared_values("").await?) == sorted(copy.shared_values.clone())),
        ("the installation id", target.install_id() == copy.install_id),
        ("the requests", target.all_requests().await? == copy.requests),
        ("the audit trail", entries == copy.audit.0),
        ("the jobs", crate::storage::copy::same_jobs(&target.all_jobs().await?, &copy.jobs)),
    ];
    if let Some((what, _)) = checks.iter().find(|(_, same)| !same) {
        anyhow::bail!("{what}: what the database holds differs from what was copied");
    }
    let verified = target.verify_audit().await?;
    if let Some(problem) = verified.problem {
        anyhow::bail!("the copied audit trail does not verify: {problem}");
    }
    // Held until now, so no desk started on the old store meanwhile; from now on none will.
    sled.mark_migrated(Utc::now()).await?;
    drop(source);
    Ok(format!(
        "Copied {} into PostgreSQL; the audit trail verifies ({} entries). Start refund-desk with DATABASE_URL set. \
         {} is kept as it was, as an archive: `audit` commands still read it, and no desk starts on it again.",
        copy.summary(),
        verified.entries,
        from.display()
    ))
}

fn line(job: &Job) -> String {
    let state = if job.parked {
        "parked".to_string()
    } else {
        format!("due {}", job.not_before.format("%Y-%m-%d %H:%M:%S UTC"))
    };
    format!(
        "{:>10}  {:<8}  {:<40}  {:>2} tries  {}  {}",
        job.id,
        job.request_id.to_string(),
        describe(&job.effect),
        job.attempts,
        state,
        job.last_error.as_deref().unwrap_or("")
    )
}

/// The parked jobs (every outstanding job with `all`), one per line.
pub async fn jobs_list(store: &Store, all: bool) -> anyhow::Result<String> {
    let jobs: Vec<Job> = store.all_jobs().await?.into_iter().filter(|j| all || j.parked).collect();
    if jobs.is_empty() {
        return Ok(if all { "No jobs are waiting.".into() } else { "No parked jobs.".into() });
    }
    let mut out = format!("{:>10}  {:<8}  {:<40}  {:>8}  state  last error\n", "job", "request", "what", "");
    for job in &jobs {
        out.push_str(&line(job));
        out.push('\n');
    }
    Ok(out)
}

/// Puts job `id` back in the queue with fresh attempts.
pub async fn jobs_retry(store: &Store, id: u64) -> anyhow::Result<String> {
    match store.retry_job(id, Utc::now()).await? {
        Retry::Queued => Ok(format!("Job {id} is queued again; a running refund-desk takes it up at once.")),
        Retry::NotParked => anyhow::bail!(
            "job {id} is not parked: it is waiting for its time or running, and is left alone. Only parked jobs are retried"
        ),
        Retry::NoSuchJob => {
            anyhow::bail!("there is no job {id}; `refund-desk jobs list --all` shows the jobs waiting")
        }
    }
}

/// `audit verify`: whether the trail's hash chain is intact.
pub async fn audit_verify(store: &Store) -> anyhow::Result<(bool, String)> {
    let report = store.verify_audit().await?;
    Ok(match report.problem {
        None => {
            (true, format!("The audit trail is intact: {} entries, each chained to the one before.", report.entries))
        }
        Some(problem) => (false, format!("The audit trail was altered: {problem}.")),
    })
}

/// Output formats of `audit export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Csv,
    Json,
}

/// `audit export`: entries at or after `since` (a date, UTC), as CSV or JSON lines.
pub async fn audit_export(
    store: &Store,
    since: Option<chrono::NaiveDate>,
    format: ExportFormat,
    out: impl std::io::Write,
) -> anyhow::Result<usize> {
    let since = since.map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    let entries = store.audit_entries().await?.into_iter().filter(|e| since.is_none_or(|s| e.at >= s));
    let mut count = 0;
    match format {
        ExportFormat::Json => {
            let mut out = out;
            for entry in entries {
                serde_json::to_writer(&mut out, &entry)?;
                writeln!(out)?;
                count += 1;
            }
        }
        ExportFormat::Csv => {
            let mut csv = csv::Writer::from_writer(out);
            csv.write_record([
                "seq",
                "at",
                "request_id",
                "actor",
                "from",
                "to",
                "amount_minor",
                "currency",
                "detail",
                "hash",
            ])?;
            for entry in entries {
                let e = entry;
                let (minor, currency) =
                    e.amount.map(|m| (m.minor().to_string(), m.currency().code().to_string())).unwrap_or_default();
                csv.write_record([
                    e.seq.to_string(),
                    e.at.to_rfc3339(),
                    e.request_id.to_string(),
                    e.actor.to_string(),
                    format!("{:?}", e.from),
                    format!("{:?}", e.to),
                    minor,
                    currency,
                    e.detail.unwrap_or_default(),
                    e.hash,
                ])?;
                count += 1;
            }
            csv.flush()?;
        }
    }
    Ok(count)
}

/// `check`: the configuration is valid and Slack, Stripe and the mail server answer. Returns
/// whether all is well, and one line per check.
pub async fn check(settings: &crate::config::Settings) -> (bool, Vec<String>) {
    crate::app::install_crypto_provider();
    let mut ok = true;
    let mut lines = vec![format!("config: ok (listening on {}, {})", settings.listen, settings.store.describe())];
    let mut report = |name: &str, result: Result<String, String>| match result {
        Ok(detail) => lines.push(format!("{name}: ok ({detail})")),
        Err(why) => {
            ok = false;
            lines.push(format!("{name}: FAILED: {why}"));
        }
    };
    let slack = match crate::slack::SlackApi::new(&settings.slack.api_url, &settings.slack.bot_token) {
        Ok(api) => api.whoami().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let reached = slack.is_ok();
    report("slack", slack);
    if reached {
        let channel = &settings.slack.finance_channel;
        match crate::slack::SlackApi::setup_of(&settings.slack.api_url, &settings.slack.bot_token, channel).await {
            Ok((granted, member)) => {
                let missing: Vec<&str> =
                    needed_scopes(settings).into_iter().filter(|s| !granted.iter().any(|g| g == s)).collect();
                report(
                    "slack scopes",
                    if missing.is_empty() {
                        Ok(granted.join(", "))
                    } else {
                        Err(format!(
                            "the bot token lacks {}: add them under OAuth & Permissions (or install the app from \
                             `refund-desk manifest`) and reinstall it",
                            missing.join(", ")
                        ))
                    },
                );
                report(
                    "slack finance channel",
                    match member {
                        Ok(true) => Ok(format!("the bot is in {channel}")),
                        Ok(false) => Err(format!("the bot is not in {channel}: type `/invite @refund-desk` there")),
                        Err(why) if why == "missing_scope" => Err(format!(
                            "{channel} could not be looked up: the bot token lacks channels:read (a public channel) \
                             or groups:read (a private one); add it and reinstall the app"
                        )),
                        Err(why) => {
                            Err(format!("{channel} could not be looked up ({why}): check SLACK_FINANCE_CHANNEL"))
                        }
                    },
                );
            }
            Err(why) => report("slack scopes", Err(why)),
        }
    }
    let stripe = crate::stripe::StripeClient::new(
        settings.stripe.api_url.clone(),
        settings.stripe.secret_key.clone(),
        settings.stripe.timeout,
        5,
    );
    let key = settings.stripe.secret_key.expose_secret();
    let mode = if key.contains("_live_") { "live mode" } else { "test mode" };
    let kind = if key.starts_with("rk_") { ", restricted key" } else { "" };
    let mut permissions = vec![];
    let stripe = match stripe {
        Ok(client) => {
            let probes = client.probe_permissions().await;
            // A key Stripe does not accept at all fails every probe the same way.
            match probes
                .iter()
                .find_map(|(_, r)| r.as_ref().err().filter(|e| !matches!(e, StripeError::Forbidden { .. })))
            {
                Some(e) => Err(e.to_string()),
                None => {
                    permissions = probes;
                    Ok(format!("{mode}{kind}"))
                }
            }
        }
        Err(e) => Err(e.to_string()),
    };
    report("stripe", stripe);
    for (permission, result) in permissions {
        let name = format!("stripe permission {} ({})", permission.name(), permission.purpose());
        match result {
            Ok(()) => report(&name, Ok("granted".into())),
            Err(_) if permission.required(!settings.stripe.webhook_secrets.is_empty()) => {
                report(&name, Err("missing; refund-desk cannot work without it".into()))
            }
            Err(_) => report(&name, Ok("missing, optional: the card says what could not be read".into())),
        }
    }
    let smtp = match &settings.email {
        None => Ok("not configured: customers get no email".to_string()),
        Some(email) => match crate::email::Mailer::new(email) {
            Ok(mailer) => {
                mailer.check().await.map(|()| format!("sending as {}", email.from)).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        },
    };
    report("smtp", smtp);
    (ok, lines)
}
