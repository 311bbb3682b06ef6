//! Operator commands that work on the database directly: listing and retrying jobs.
//!
//! sled allows one process per database, so these run while the service is stopped; the error
//! says so when it is not.

use crate::storage::{Job, Store, StoreError};
use crate::worker::describe;
use chrono::Utc;
use std::path::Path;

/// Opens the store, explaining a lock held by a running service.
pub fn open(dir: &Path) -> anyhow::Result<Store> {
    Store::open(dir).map_err(|e| match &e {
        StoreError::Sled(sled::Error::Io(io))
            if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
        {
            anyhow::anyhow!(
                "the database in {} is in use by a running refund-desk; stop it first, then run this again",
                dir.display()
            )
        }
        _ => anyhow::anyhow!("could not open the database in {}: {e}", dir.display()),
    })
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
pub fn jobs_list(store: &Store, all: bool) -> anyhow::Result<String> {
    let jobs: Vec<Job> = store.all_jobs()?.into_iter().filter(|j| all || j.parked).collect();
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
    if store.retry_job(id, Utc::now()).await? {
        Ok(format!("Job {id} is queued again; it runs when refund-desk next runs."))
    } else {
        anyhow::bail!("there is no job {id}; `refund-desk jobs list --all` shows the jobs waiting")
    }
}
