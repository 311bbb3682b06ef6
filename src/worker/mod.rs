//! The job runner: takes due jobs from storage and runs them, with bounded concurrency,
//! exponential backoff with jitter, and parking (never deletion) after the last attempt.

pub mod handlers;

use crate::context::AppContext;
use crate::domain::{Effect, Lane};
use crate::storage::{DueJobs, Job};
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::FutureExt;
use handlers::JobError;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

/// How long shutdown waits for running jobs; the rest run again at the next start.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The longest the runner sleeps without looking at the queue.
const IDLE_WAKE: Duration = Duration::from_secs(5);

/// A job's effect as a metric label.
fn effect_name(effect: &Effect) -> &'static str {
    match effect {
        Effect::CheckPayment => "check_payment",
        Effect::PostCard => "post_card",
        Effect::RefreshCard => "refresh_card",
        Effect::ThreadReply(_) => "thread_reply",
        Effect::NotifyRequester(_) => "notify_requester",
        Effect::CreateRefund => "create_refund",
        Effect::CheckRefund => "check_refund",
        Effect::EmailCustomer(_) => "email_customer",
        Effect::ReportParked { .. } => "report_parked",
        Effect::AlertKeyPermission { .. } => "alert_key_permission",
        Effect::Deadline => "deadline",
        Effect::RefreshHomes => "refresh_homes",
        Effect::RefreshRequesterMessage => "refresh_requester_message",
        Effect::RecheckCharge => "recheck_charge",
        Effect::Callback(_) => "callback",
    }
}

/// A job's effect in words for people.
pub fn describe(effect: &Effect) -> String {
    match effect {
        Effect::CheckPayment => "checking the charge at Stripe".into(),
        Effect::PostCard => "posting the approval card".into(),
        Effect::RefreshCard => "updating the approval card".into(),
        Effect::ThreadReply(_) => "replying in the card's thread".into(),
        Effect::NotifyRequester(_) => "messaging the requester".into(),
        Effect::CreateRefund => "creating the refund at Stripe".into(),
        Effect::CheckRefund => "reading the refund back from Stripe".into(),
        Effect::EmailCustomer(_) => "emailing the customer".into(),
        Effect::ReportParked { .. } => "reporting a stuck job".into(),
        Effect::AlertKeyPermission { .. } => "reporting a missing Stripe permission".into(),
        Effect::Deadline => "reminding approvers or expiring the request".into(),
        Effect::RefreshHomes => "updating App Home".into(),
        Effect::RefreshRequesterMessage => "updating the requester's message".into(),
        Effect::RecheckCharge => "reading the charge again".into(),
        Effect::Callback(change) => format!("posting the change to {} to the API client", change.to.api_name()),
    }
}

/// Delay before attempt `attempts + 1`.
/// The longest wait a `Retry-After` may ask for. Slack and Stripe ask for seconds; a larger or
/// garbled value must neither overflow the due time nor park a lane for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// How long to wait before the next attempt: what the service asked for (capped), else backoff.
fn retry_delay(s: &crate::config::JobSettings, attempts: u32, after: Option<Duration>) -> Duration {
    match after {
        Some(after) => after.min(MAX_RETRY_AFTER),
        None => backoff(s, attempts),
    }
}

fn backoff(s: &crate::config::JobSettings, attempts: u32) -> Duration {
    ExponentialBuilder::default()
        .with_min_delay(s.first_retry)
        .with_max_delay(s.max_retry)
        .with_jitter()
        .with_max_times(attempts as usize + 1)
        .build()
        .nth(attempts.saturating_sub(1) as usize)
        .unwrap_or(s.max_retry)
}

/// Jobs of one kind of work (a [`Lane`]) running now, and the room for more. Each kind has its
/// own permits, so jobs waiting on Stripe's pace never hold up cards, thread replies or emails.
struct LaneSlots {
    lane: Lane,
    permits: Arc<Semaphore>,
}

/// Runs jobs until `shutdown` turns true, then finishes (or leaves for next time) what runs.
///
/// Each wake reads, for every kind of work, only as many due jobs as there are free permits,
/// from the queue's due-time index: the cost of starting a job does not grow with the backlog.
pub async fn run_jobs_until_stopped(ctx: Arc<AppContext>, mut shutdown: watch::Receiver<bool>) {
    let lanes: Vec<LaneSlots> = Lane::ALL
        .iter()
        .map(|&lane| LaneSlots { lane, permits: Arc::new(Semaphore::new(ctx.settings.jobs.concurrency)) })
        .collect();
    // Ids of jobs running now, so the same job is not started twice; a std mutex because it
    // is never held across an await.
    let running: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let jobs_added = ctx.store.jobs_added();
    let heartbeat = keep_claims(&ctx, &running);
    let mut tasks = JoinSet::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        // Finished tasks keep their memory until joined: join them all, not one per wake.
        while tasks.try_join_next().is_some() {}
        let now = ctx.now();
        let wanted: Vec<(Lane, usize)> = lanes
            .iter()
            .map(|slots| (slots.lane, slots.permits.available_permits()))
            .filter(|(_, free)| *free > 0)
            .collect();
        let snapshot = running.lock().map(|r| r.clone()).unwrap_or_default();
        let due = match ctx.store.due_jobs(&wanted, now, &snapshot).await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "could not read the job queue");
                DueJobs::default()
            }
        };
        for job in due.jobs {
            let Some(slots) = lanes.iter().find(|s| s.lane == job.lane()) else { continue };
            let Ok(permit) = slots.permits.clone().try_acquire_owned() else { continue };
            let claim = Claim::new(&running, job.id);
            tasks.spawn(run_one(ctx.clone(), job, permit, claim));
        }
        let next = due.next;
        let wait = next.map(|n| (n - now).to_std().unwrap_or_default()).unwrap_or(IDLE_WAKE).min(IDLE_WAKE);
        tokio::select! {
            _ = jobs_added.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "jobs still running at shutdown stay queued and run again at the next start"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    drop(heartbeat);
    // What did not finish is handed back now, not when its claims run out.
    if let Err(e) = ctx.store.release_claims().await {
        tracing::warn!(error = %e, "could not hand back the jobs left unfinished; other replicas take them when their claims run out");
    }
}

/// On a store shared by replicas, renews the claim on every job running here three times a
/// lease, so a job that runs long (Stripe slow, a large backlog) is never taken over by another
/// replica while this one is alive and still running it.
/// The renewals stop when this is dropped, however the runner ends (a stop, a panic).
fn keep_claims(ctx: &Arc<AppContext>, running: &Arc<Mutex<HashSet<u64>>>) -> Option<AbortOnDrop> {
    let crate::config::StoreSettings::Postgres { lease, .. } = &ctx.settings.store else { return None };
    let every = *lease / 3;
    let (ctx, running) = (ctx.clone(), running.clone());
    Some(AbortOnDrop(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let ids: Vec<u64> = running.lock().map(|r| r.iter().copied().collect()).unwrap_or_default();
            if ids.is_empty() {
                continue;
            }
            // A renewal that cannot finish within a round gives way to the next one.
            match tokio::time::timeout(every, ctx.store.renew_claims(&ids, ctx.now())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not renew the claims on running jobs"),
                Err(_) => tracing::warn!("renewing the claims on running jobs took longer than a round"),
            }
        }
    })))
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A job marked as running; unmarked when dropped, however the task ends (finished, panicked
/// or aborted at shutdown), so a job can never stay "running" and wedge its lane.
struct Claim {
    running: Arc<Mutex<HashSet<u64>>>,
    id: u64,
}

impl Claim {
    fn new(running: &Arc<Mutex<HashSet<u64>>>, id: u64) -> Claim {
        if let Ok(mut r) = running.lock() {
            r.insert(id);
        }
        Claim { running: running.clone(), id }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut r) = self.running.lock() {
            r.remove(&self.id);
        }
    }
}

async fn run_one(ctx: Arc<AppContext>, job: Job, _permit: OwnedSemaphorePermit, _claim: Claim) {
    let span = tracing::info_span!("job", job_id = job.id, request_id = %job.request_id, effect = ?job.effect, attempt = job.attempts + 1);
    // The span is attached to the future, never entered across an await: an entered guard
    // held over an await corrupts the span stack of whatever thread resumes the task (the
    // tracing registry then panics, which killed jobs mid-way and left them marked running).
    run_and_record(&ctx, job).instrument(span).await;
}

/// Runs one job and stores its outcome: done, put off, retried later or parked.
async fn run_and_record(ctx: &Arc<AppContext>, mut job: Job) {
    // A panicking handler is a failed attempt like any other: retried with backoff, then
    // parked. Left uncaught, its id would stay in `running` and wedge its lane until a restart.
    let result = std::panic::AssertUnwindSafe(handlers::run(ctx, &job)).catch_unwind().await.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(job_id = job.id, panic = %what, "a job panicked; it counts as a failed attempt");
        metrics::counter!("refund_desk_job_panics_total", "effect" => effect_name(&job.effect)).increment(1);
        Err(JobError::Retry { reason: format!("the job panicked: {what}"), after: None })
    });
    let outcome = match &result {
        Ok(()) => "done",
        Err(JobError::Defer(_)) => "deferred",
        Err(JobError::Permanent(_)) => "parked",
        Err(JobError::Retry { .. }) if job.attempts + 1 >= ctx.settings.jobs.max_attempts => "parked",
        Err(JobError::Retry { .. }) => "retry",
    };
    metrics::counter!("refund_desk_jobs_total", "effect" => effect_name(&job.effect), "outcome" => outcome)
        .increment(1);
    tracing::debug!(outcome, "job ran");
    let stored = match result {
        Ok(()) => ctx.store.complete_job(&job).await,
        Err(JobError::Defer(delay)) => {
            job.not_before = ctx.now() + chrono::Duration::from_std(delay).unwrap_or_default();
            ctx.store.reschedule_job(&job).await
        }
        Err(error) => {
            job.attempts += 1;
            let (reason, after, permanent) = match error {
                JobError::Retry { reason, after } => (reason, after, false),
                JobError::Permanent(reason) => (reason, None, true),
                JobError::Defer(_) => unreachable!("handled above"),
            };
            job.last_error = Some(reason.clone());
            if permanent || job.attempts >= ctx.settings.jobs.max_attempts {
                job.parked = true;
                tracing::error!(%reason, attempts = job.attempts, "job parked; it needs a person");
                // A permission alert that could not be sent must not keep others from it.
                if let Effect::AlertKeyPermission { permission, what } = &job.effect {
                    let cause = handlers::alert_cause(permission.as_deref(), what);
                    if let Err(e) = ctx.store.release_alert(&cause, job.id).await {
                        tracing::error!(error = %e, "could not release a parked alert's claim");
                    }
                }
                // Finance hears of it in Slack; an alert that itself fails is only logged.
                // Not for an alert that itself failed: its report would queue behind it in the
                // same alerts lane and never run (the log above is what is left).
                if job.effect.lane() != crate::domain::Lane::Alerts {
                    let alert =
                        Effect::ReportParked { job_id: job.id, what: describe(&job.effect), error: reason.clone() };
                    if let Err(e) = ctx.store.enqueue(job.request_id, &[alert], ctx.now()).await {
                        tracing::error!(error = %e, "could not queue the parked-job alert");
                    }
                }
            } else {
                let delay = retry_delay(&ctx.settings.jobs, job.attempts, after);
                job.not_before = ctx.now() + chrono::Duration::from_std(delay).unwrap_or_default();
                tracing::warn!(%reason, ?delay, "job will be retried");
            }
            ctx.store.reschedule_job(&job).await
        }
    };
    if let Err(e) = stored {
        tracing::error!(error = %e, "could not record a job's outcome; it will run again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_after_is_honoured_up_to_a_cap_and_never_overflows_the_due_time() {
        let jobs = crate::config::JobSettings::default();
        assert_eq!(retry_delay(&jobs, 1, Some(Duration::from_secs(30))), Duration::from_secs(30));
        let huge = retry_delay(&jobs, 1, Some(Duration::from_secs(u64::MAX / 4)));
        assert_eq!(huge, MAX_RETRY_AFTER);
        // The due time it gives can be computed (a huge one would have overflowed, or fallen
        // back to zero and retried at once).
        let due = chrono::Utc::now() + chrono::Duration::from_std(huge).unwrap();
        assert!(due > chrono::Utc::now());
        assert!(retry_delay(&jobs, 1, None) <= jobs.max_retry);
    }

    #[tokio::test]
    async fn a_job_whose_task_panics_is_no_longer_marked_running() {
        let running: Arc<Mutex<HashSet<u64>>> = Arc::default();
        let claim = Claim::new(&running, 7);
        assert!(running.lock().unwrap().contains(&7));
        let task = tokio::spawn(async move {
            let _claim = claim;
            panic!("a handler bug");
        });
        assert!(task.await.is_err_and(|e| e.is_panic()));
        assert!(running.lock().unwrap().is_empty(), "the lane would stay wedged until a restart");
    }
}
