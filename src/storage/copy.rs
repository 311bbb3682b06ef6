//! Everything a store holds, read out of one engine and written into another: what
//! `refund-desk migrate` moves from the embedded store to PostgreSQL.
//!
//! A copy is exact, not replayed: request numbers, job ids, audit sequence numbers and hashes,
//! and the installation id (part of every idempotency key sent to Stripe) are kept, so a refund
//! that was in flight when the copy was taken is retried under the same key afterwards and
//! Stripe refunds it once.

use super::{AuditTrail, EmailRecord, Job, OutsideRefund};
use crate::domain::{EmailKind, RefundRequest, RequestId};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// The whole content of a store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreCopy {
    /// Part of every idempotency key the desk sends to Stripe.
    pub install_id: String,
    /// The number the next request gets.
    pub next_request_number: u64,
    pub requests: Vec<RefundRequest>,
    /// Which request each Stripe refund belongs to.
    pub refund_ids: Vec<(String, RequestId)>,
    pub audit: AuditTrail,
    /// Outstanding jobs, parked ones included.
    pub jobs: Vec<Job>,
    /// Above every job id the store has handed out, finished jobs included.
    #[serde(default)]
    pub next_job_id: u64,
    /// Stripe event ids applied (or found not ours), with when.
    pub stripe_events: Vec<(String, DateTime<Utc>)>,
    /// Slack event ids seen, with when.
    pub slack_events: Vec<(String, DateTime<Utc>)>,
    /// Who opened App Home, and when.
    pub home_users: Vec<(String, DateTime<Utc>)>,
    pub emails: Vec<(RequestId, EmailKind, EmailRecord)>,
    pub outside_refunds: Vec<OutsideRefund>,
    pub events_cursor: Option<String>,
    pub events_looked_back_at: Option<i64>,
    /// The days' counters: `requested` and `refunded/<currency>` (minor units).
    pub day_totals: Vec<(NaiveDate, String, u64)>,
    /// Alert claims: what, the job that holds it, since when.
    pub alert_claims: Vec<(String, u64, DateTime<Utc>)>,
    /// What the replicas share: delegations, the digest's record, user groups' members.
    #[serde(default)]
    pub shared_values: Vec<(String, String)>,
    /// API clients' idempotency keys: client, key, body fingerprint, the request it made.
    #[serde(default)]
    pub client_keys: Vec<(String, String, String, RequestId)>,
}

impl StoreCopy {
    /// One line saying what the copy holds.
    pub fn summary(&self) -> String {
        format!(
            "{} requests, {} audit entries, {} jobs ({} parked), {} Stripe event ids, {} Slack event ids, \
             {} email records, {} refunds made outside the desk; the next request is R-{}",
            self.requests.len(),
            self.audit.0.len(),
            self.jobs.len(),
            self.jobs.iter().filter(|j| j.parked).count(),
            self.stripe_events.len(),
            self.slack_events.len(),
            self.emails.len(),
            self.outside_refunds.len(),
            self.next_request_number,
        )
    }
}

/// Whether two lists of jobs are the same jobs, whatever their order, to the microsecond
/// (PostgreSQL's precision for times).
pub fn same_jobs(a: &[Job], b: &[Job]) -> bool {
    let comparable = |jobs: &[Job]| {
        use chrono::SubsecRound;
        let mut jobs = jobs.to_vec();
        jobs.sort_by_key(|j| j.id);
        for job in &mut jobs {
            job.not_before = job.not_before.trunc_subsecs(6);
            job.created_at = job.created_at.trunc_subsecs(6);
        }
        jobs
    };
    comparable(a) == comparable(b)
}
