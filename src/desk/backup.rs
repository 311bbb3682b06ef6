//! Backups the running service takes: every `REFUND_DESK_BACKUP_EVERY`, a consistent snapshot
//! of the whole store into `REFUND_DESK_BACKUP_DIR`, named by time, with its manifest; the
//! newest `REFUND_DESK_BACKUP_KEEP` are kept. A failed backup is a metric and an alert in the
//! finance channel.

use crate::config::BackupSettings;
use crate::context::AppContext;
use crate::storage::sled::backup::BackupManifest;
use std::path::{Path, PathBuf};

const PREFIX: &str = "refund-desk-";
const SUFFIX: &str = ".backup";

/// The file a backup taken at `at` goes to.
fn file_for(dir: &Path, at: chrono::DateTime<chrono::Utc>) -> PathBuf {
    dir.join(format!("{PREFIX}{}{SUFFIX}", at.format("%Y%m%dT%H%M%S%.3fZ")))
}

/// The backups in `dir`, oldest first (their names sort by time).
pub fn backups_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Takes one backup into the configured directory and removes the oldest beyond `keep`.
pub async fn take_backup(ctx: &AppContext, settings: &BackupSettings) -> anyhow::Result<(PathBuf, BackupManifest)> {
    std::fs::create_dir_all(&settings.dir)?;
    let file = file_for(&settings.dir, chrono::Utc::now());
    let started = std::time::Instant::now();
    let manifest = ctx.store.backup_to(&file).await?;
    metrics::histogram!("refund_desk_backup_seconds").record(started.elapsed().as_secs_f64());
    let all = backups_in(&settings.dir)?;
    for old in all.iter().take(all.len().saturating_sub(settings.keep)) {
        std::fs::remove_file(old)?;
        let _ = std::fs::remove_file(BackupManifest::path_for(old));
    }
    Ok((file, manifest))
}

/// One round: a backup, its metrics, and an alert in the finance channel if it failed.
pub async fn backup_round(ctx: &AppContext, settings: &BackupSettings) {
    match take_backup(ctx, settings).await {
        Ok((file, manifest)) => {
            metrics::counter!("refund_desk_backups_total", "outcome" => "ok").increment(1);
            metrics::gauge!("refund_desk_last_backup_timestamp_seconds").set(manifest.created_at.timestamp() as f64);
            tracing::info!(file = %file.display(), bytes = manifest.bytes, "backup taken");
        }
        Err(e) => {
            metrics::counter!("refund_desk_backups_total", "outcome" => "failed").increment(1);
            tracing::error!(error = %e, dir = %settings.dir.display(), "the backup failed");
            let text = format!(
                ":warning: refund-desk could not back up its store into `{}`: {e}. The service goes on; \
                 fix the directory (space, permissions) before the next backup.",
                settings.dir.display()
            );
            let channel = ctx.settings.slack.finance_channel.as_str().into();
            if let Err(e) = ctx.slack.post_message(&channel, crate::slack::views::text_message(text), None).await {
                tracing::warn!(error = %e, "could not tell finance that the backup failed");
            }
        }
    }
}
