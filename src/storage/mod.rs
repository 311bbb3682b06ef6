//! The store, as a port: what the desk needs from storage, and nothing it decides.
//!
//! [`Engine`] is the port; two engines implement it:
//! - [`sled`](self::sled): embedded, one process per data directory (`REFUND_DESK_DATA_DIR`),
//!   the default, and what `demo` runs on;
//! - [`postgres`]: PostgreSQL (`DATABASE_URL`), for several replicas of the desk on one
//!   database.
//!
//! [`Store`] is the engine a desk runs on; everything outside this module talks to it. The
//! contract every engine keeps (and `contract.rs` proves against each):
//! - a transition is one compare-and-swap that writes the request, its audit entry and its jobs
//!   together, and is durable before the call returns, so before anyone is answered;
//! - a change closure decides; the store reads and writes. What Stripe's news about a refund
//!   does is decided once, in [`crate::domain::refund_news`];
//! - the audit trail is a hash chain: any edit, removal or insertion is found by
//!   [`Store::verify_audit`];
//! - a job of a request's lane runs only after the jobs before it in that lane, and a job is
//!   handed to one runner at a time;
//! - an event id, an email and an alert claim are recorded once, however many deliveries race.

pub mod copy;
pub mod postgres;
pub mod sled;

#[cfg(test)]
mod contract;

use crate::domain::policy::Hold;
use crate::domain::{
    Actor, ChargeId, Effect, EmailKind, Lane, Money, NewRequest, RefundId, RefundRequest, RequestId, RequestStatus,
    StateError, Transition,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Notify;

pub use self::sled::DEFAULT_CACHE_MB;
pub use crate::domain::RefundUpdate;
pub use crate::domain::refund_news::{EventOutcome, OutsideRefund, RefundOutcome};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage failed: {0}")]
    Sled(#[from] ::sled::Error),
    #[error("the database failed: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("no database connection: {0}")]
    Pool(String),
    #[error("stored data could not be read: {0}")]
    Corrupt(String),
    #[error("the backup could not be written: {0}")]
    Backup(String),
    #[error("{0} is not stored")]
    NotFound(RequestId),
    #[error(transparent)]
    Sync(#[from] self::sled::commit::SyncError),
    #[error("the store's files could not be opened: {0}")]
    Files(#[from] std::io::Error),
    #[error("the database's schema could not be brought up to date: {0}")]
    Migration(String),
    /// A copy was refused: the target holds data of its own.
    #[error("the target is not empty: {0}")]
    NotEmpty(String),
}

/// One line of the audit trail: who moved which request from where to where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub request_id: RequestId,
    pub actor: Actor,
    pub from: RequestStatus,
    pub to: RequestStatus,
    pub amount: Option<Money>,
    pub detail: Option<String>,
    /// The hash of the entry before (empty for the first).
    #[serde(default)]
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and this entry with `hash` empty.
    #[serde(default)]
    pub hash: String,
}

impl AuditEntry {
    /// The entry that follows the chain's head `(seq, hash)` for `request` moved by `transition`.
    pub fn next(
        head: Option<(u64, String)>,
        request: &RefundRequest,
        transition: &Transition,
        now: DateTime<Utc>,
    ) -> Result<AuditEntry, serde_json::Error> {
        let (seq, prev_hash) = match head {
            Some((seq, hash)) => (seq + 1, hash),
            None => (1, String::new()),
        };
        AuditEntry::new(seq, prev_hash, request, transition, now)
    }

    /// The entry numbered `seq` after the entry whose hash is `prev_hash`, hashed.
    pub fn new(
        seq: u64,
        prev_hash: String,
        request: &RefundRequest,
        transition: &Transition,
        now: DateTime<Utc>,
    ) -> Result<AuditEntry, serde_json::Error> {
        let mut entry = AuditEntry {
            seq,
            at: now,
            request_id: request.id,
            actor: transition.actor.clone(),
            from: transition.from,
            to: request.status,
            amount: request.amount,
            detail: transition.detail.clone(),
            prev_hash,
            hash: String::new(),
        };
        entry.hash = entry.compute_hash()?;
        Ok(entry)
    }

    /// The hash this entry should carry.
    pub fn compute_hash(&self) -> Result<String, serde_json::Error> {
        use sha2::Digest;
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        let mut h = sha2::Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(b"\n");
        h.update(serde_json::to_vec(&unhashed)?);
        Ok(hex::encode(h.finalize()))
    }
}

/// The audit trail in order, with the chain's head `(seq, hash)` as the store keeps it.
pub type AuditTrail = (Vec<AuditEntry>, Option<(u64, String)>);

/// What [`Store::verify_audit`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    pub entries: usize,
    /// The first problem, in words; `None` when the chain is intact.
    pub problem: Option<String>,
}

/// Walks an audit trail's hash chain, in order, against the head the store keeps: any edited,
/// removed or inserted entry breaks it. The one check every engine's trail gets.
pub fn verify_chain(
    entries: impl IntoIterator<Item = AuditEntry>,
    head: Option<(u64, String)>,
) -> Result<AuditReport, StoreError> {
    let mut prev = String::new();
    let mut last_seq = None;
    let mut count = 0;
    for entry in entries {
        count += 1;
        let broken = |why: String| Ok(AuditReport { entries: count, problem: Some(why) });
        if entry.prev_hash != prev {
            return broken(format!(
                "entry {} does not follow the one before it: an entry was removed or inserted",
                entry.seq
            ));
        }
        if entry.compute_hash().map_err(|e| StoreError::Corrupt(e.to_string()))? != entry.hash {
            return broken(format!("entry {} ({} {}) was altered", entry.seq, entry.request_id, entry.at));
        }
        prev = entry.hash.clone();
        last_seq = Some(entry.seq);
    }
    let problem = match (head, last_seq) {
        (None, None) => None,
        (Some((seq, hash)), Some(last)) if seq == last && hash == prev => None,
        _ => Some("the last entries of the trail were removed".to_string()),
    };
    Ok(AuditReport { entries: count, problem })
}

/// That an email of one kind went to the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailRecord {
    pub to: String,
    pub sent_at: DateTime<Utc>,
    pub message_id: String,
}

/// A durable side effect waiting to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub request_id: RequestId,
    pub effect: Effect,
    pub attempts: u32,
    pub not_before: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub last_error: Option<String>,
    /// Out of attempts: kept, shown, and retried only by a person.
    pub parked: bool,
    /// The Slack message this job posted, recorded the moment Slack answered, so a re-run
    /// after a crash does not post it again.
    #[serde(default)]
    pub posted_ts: Option<String>,
}

impl Job {
    pub fn lane(&self) -> Lane {
        self.effect.lane()
    }
}

/// An API client's idempotency key for a new request, with the fingerprint (a hash) of the
/// body it came with: the same key and body name the same request; the same key with another
/// body is a mistake the client must hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    /// The token's name: keys of different clients never meet.
    pub client: String,
    pub key: String,
    pub fingerprint: String,
}

/// What a keyed insert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyedInsert {
    Created(RefundRequest),
    /// The key was used before: the request it made, as it is now, and whether the body was
    /// the same.
    Existing {
        request: RefundRequest,
        same_body: bool,
    },
}

/// What [`Store::due_jobs`] found.
#[derive(Debug, Default)]
pub struct DueJobs {
    pub jobs: Vec<Job>,
    /// When the earliest job not yet due falls due, among the lanes that were looked at.
    pub next: Option<DateTime<Utc>>,
}

/// A change to one request: `Ok(Some(_))` moves it, `Ok(None)` leaves it as it was, `Err` is a
/// refusal the caller shows. Given the money the other open requests on the charge hold, when
/// asked for. It may run more than once (an engine may retry a conflicting write); it must be
/// pure.
pub trait Change<E>: Fn(&mut RefundRequest, &[Hold]) -> Result<Option<Transition>, E> + Send + Sync {}
impl<E, F: Fn(&mut RefundRequest, &[Hold]) -> Result<Option<Transition>, E> + Send + Sync> Change<E> for F {}

/// The port: what the desk needs from a store. Every write is durable when its future returns.
pub trait Engine: Send + Sync {
    /// A random id made when the store was created; part of every idempotency key, so two
    /// installations sharing a Stripe account never collide.
    fn install_id(&self) -> &str;
    /// Notified when jobs may have been added (by this process or, for a shared database,
    /// another one).
    fn jobs_added(&self) -> Arc<Notify>;
    /// Makes every write made so far durable, so what was read can be acted on.
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Whether the store can still make writes durable.
    fn healthy(&self) -> bool;

    /// Stores a new request (status `Requested`), its audit entry and its first jobs.
    fn insert_request(
        &self,
        new: NewRequest,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<RefundRequest, StoreError>> + Send;
    /// Stores a new request as [`Engine::insert_request`] does, unless `key` was used before:
    /// then nothing is written and the request it made is returned. The key is written with
    /// the request, in one transaction.
    fn insert_keyed_request(
        &self,
        new: NewRequest,
        key: &ClientKey,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<KeyedInsert, StoreError>> + Send;
    /// The fingerprint of the body `client`'s `key` came with, and the request it made, if the
    /// key was used.
    fn client_key(
        &self,
        client: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<(String, RequestId)>, StoreError>> + Send;
    /// Applies `change` to request `id` as one compare-and-swap; with `charge`, `change` is
    /// given the holds of the open requests on it, read in the same transaction, so two requests
    /// on one charge cannot both count on the same money.
    fn transition<E: Send, F: Change<E>>(
        &self,
        id: RequestId,
        charge: Option<&ChargeId>,
        now: DateTime<Utc>,
        change: F,
    ) -> impl Future<Output = Result<Result<Option<RefundRequest>, E>, StoreError>> + Send;
    /// Changes fields outside the state machine (the card's message), without an audit entry.
    fn update_request<F: Fn(&mut RefundRequest) + Send + Sync>(
        &self,
        id: RequestId,
        change: F,
    ) -> impl Future<Output = Result<RefundRequest, StoreError>> + Send;
    /// Records the refund Stripe made for a request, so Stripe's news finds it by refund id.
    fn submit_refund(
        &self,
        id: RequestId,
        refund: RefundId,
        stripe_status: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Result<RefundRequest, StateError>, StoreError>> + Send;
    /// Stores a request as it is, with its indexes, but no audit entry or jobs: for copying a
    /// store (`migrate`), tests and benchmarks.
    fn import_request(&self, request: &RefundRequest) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn get_request(&self, id: RequestId) -> impl Future<Output = Result<Option<RefundRequest>, StoreError>> + Send;
    /// Up to `limit` requests in `status`, oldest first.
    fn requests_with_status(
        &self,
        status: RequestStatus,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RefundRequest>, StoreError>> + Send;
    /// Up to `limit` of `user`'s requests, newest first.
    fn requests_of(
        &self,
        user: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RefundRequest>, StoreError>> + Send;
    /// The other requests on the same payment (its id, charge or payment intent), oldest first:
    /// at most the `limit` newest, and how many older ones there are besides.
    fn others_on_payment(
        &self,
        request: &RefundRequest,
        limit: usize,
    ) -> impl Future<Output = Result<(Vec<RefundRequest>, usize), StoreError>> + Send;
    /// The day's totals: requests made, and amounts refunded by currency.
    fn totals_on(&self, day: chrono::NaiveDate) -> impl Future<Output = Result<(u64, Vec<Money>), StoreError>> + Send;
    /// Every request, oldest first.
    fn all_requests(&self) -> impl Future<Output = Result<Vec<RefundRequest>, StoreError>> + Send;
    /// When the oldest request still open was made.
    fn oldest_open_since(&self) -> impl Future<Output = Result<Option<DateTime<Utc>>, StoreError>> + Send;

    /// The whole audit trail, in order, and the chain's head `(seq, hash)` as the store keeps it.
    fn audit_trail(&self) -> impl Future<Output = Result<AuditTrail, StoreError>> + Send;
    /// One request's audit trail, in order.
    fn audit_of(&self, id: RequestId) -> impl Future<Output = Result<Vec<AuditEntry>, StoreError>> + Send;

    /// Stripe's news about refunds (an event, with its id, applied once; or a read-back, with
    /// none), decided by [`crate::domain::refund_news::apply_refund_news`], in one transaction.
    fn apply_refund_updates(
        &self,
        event_id: Option<&str>,
        updates: &[RefundUpdate],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<EventOutcome, StoreError>> + Send;
    fn stripe_event_seen(&self, event_id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Records a Slack event id; `false` if it was recorded before (a retry).
    fn remember_slack_event(
        &self,
        event_id: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Forgets event ids recorded before `cutoff`; how many.
    fn prune_seen_events(&self, cutoff: DateTime<Utc>) -> impl Future<Output = Result<usize, StoreError>> + Send;
    fn events_cursor(&self) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
    fn set_events_cursor(&self, event_id: Option<&str>) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn events_looked_back_at(&self) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
    fn set_events_looked_back_at(&self, at: i64) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn outside_refunds(&self) -> impl Future<Output = Result<Vec<OutsideRefund>, StoreError>> + Send;

    fn email_sent(
        &self,
        id: RequestId,
        kind: EmailKind,
    ) -> impl Future<Output = Result<Option<EmailRecord>, StoreError>> + Send;
    /// Records a sent email and the jobs that announce it, together.
    fn record_email_sent(
        &self,
        id: RequestId,
        kind: EmailKind,
        record: &EmailRecord,
        effects: &[Effect],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether job `job_id` is the one to send the alert about `what`: no other job claimed it
    /// since `since`.
    fn claim_alert(
        &self,
        what: &str,
        job_id: u64,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Gives up job `job_id`'s claim on the alert about `what`.
    fn release_alert(&self, what: &str, job_id: u64) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Extends this runner's claim on jobs `ids` (running now) by a lease from `now`, so a job
    /// that runs long on a live replica is never taken over; a claim another runner took
    /// meanwhile is left alone.
    fn renew_claims(&self, ids: &[u64], now: DateTime<Utc>) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Lets go of every job this runner still claims (at a stop), so another replica may run
    /// them at once.
    fn release_claims(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Takes the lease `name` for `holder` until `until`, or renews it: `false` while another
    /// holder's lease runs past `now`. Periodic work (reading Stripe's events, the approver
    /// group, pruning) runs on the replica holding its lease; one that dies is replaced when its
    /// lease runs out. A sled store belongs to one process, so there the lease is always taken.
    fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Gives up `holder`'s lease on `name`, if it holds it, so another replica takes it at once.
    fn release_lease(&self, name: &str, holder: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A value the replicas share (what a lease holder read for all of them).
    fn shared_value(&self, key: &str) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
    fn set_shared_value(&self, key: &str, value: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Every shared value whose key starts with `prefix`, by key.
    fn shared_values(&self, prefix: &str) -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send;

    fn remember_home_user(&self, user: &str, now: DateTime<Utc>)
    -> impl Future<Output = Result<(), StoreError>> + Send;
    fn has_home(&self, user: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Adds one job per effect, each at the end of its request's lane.
    fn enqueue(
        &self,
        id: RequestId,
        effects: &[Effect],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Every outstanding job, by request, lane and creation.
    fn all_jobs(&self) -> impl Future<Output = Result<Vec<Job>, StoreError>> + Send;
    /// For each `(lane, limit)`, up to `limit` jobs that may run now (each the head of its
    /// request's lane, not parked, due, not in `running`, not held by another runner), earliest
    /// first, handed to this runner; and when the next job not yet due falls due.
    fn due_jobs(
        &self,
        wanted: &[(Lane, usize)],
        now: DateTime<Utc>,
        running: &HashSet<u64>,
    ) -> impl Future<Output = Result<DueJobs, StoreError>> + Send;
    /// Removes a finished job; the next one of its lane becomes due.
    fn complete_job(&self, job: &Job) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Stores a job's attempts, error, due time and parked flag (keeping a message it recorded
    /// as posted), and hands it back to the queue. `false` if the job is gone.
    fn rewrite_job(&self, job: &Job) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Records the Slack message a running job posted, the moment Slack answered, so a re-run
    /// does not post it again. The job stays with its runner.
    fn record_job_posted(&self, job: &Job, ts: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn find_job(&self, id: u64) -> impl Future<Output = Result<Option<Job>, StoreError>> + Send;
}

/// The store a desk runs on: one of the engines.
#[derive(Clone)]
pub enum Store {
    Sled(self::sled::SledStore),
    Postgres(self::postgres::PgStore),
}

macro_rules! engine {
    ($self:ident, $e:ident => $body:expr) => {
        match $self {
            Store::Sled($e) => $body,
            Store::Postgres($e) => $body,
        }
    };
}

impl Store {
    /// Opens (or creates) the embedded store in `dir`.
    pub fn open(dir: &std::path::Path) -> Result<Store, StoreError> {
        Ok(Store::Sled(self::sled::SledStore::open(dir)?))
    }

    /// Writes a consistent backup of the whole store to `to`, with its manifest beside it. On
    /// PostgreSQL, the database's own tools (`pg_dump`, point-in-time recovery) do this better.
    pub async fn backup_to(&self, to: &std::path::Path) -> Result<self::sled::backup::BackupManifest, StoreError> {
        match self {
            Store::Sled(s) => s.backup_to(to).await,
            Store::Postgres(_) => Err(StoreError::Backup(
                "on PostgreSQL, back up the database with its own tools (pg_dump, or the provider's point-in-time recovery)"
                    .into(),
            )),
        }
    }

    /// The embedded engine, for what only it has (its batching, its counters).
    pub fn as_sled(&self) -> Option<&self::sled::SledStore> {
        match self {
            Store::Sled(s) => Some(s),
            Store::Postgres(_) => None,
        }
    }

    /// Which engine, in words, for logs and `check`.
    pub fn engine_name(&self) -> &'static str {
        match self {
            Store::Sled(_) => "sled (embedded)",
            Store::Postgres(_) => "PostgreSQL",
        }
    }

    pub fn install_id(&self) -> &str {
        engine!(self, e => Engine::install_id(e))
    }

    pub fn jobs_added(&self) -> Arc<Notify> {
        engine!(self, e => Engine::jobs_added(e))
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        engine!(self, e => Engine::flush(e).await)
    }

    pub fn healthy(&self) -> bool {
        engine!(self, e => Engine::healthy(e))
    }

    /// Stores a new request (status `Requested`) and its first jobs; durable on return.
    pub async fn insert_request(&self, new: NewRequest, now: DateTime<Utc>) -> Result<RefundRequest, StoreError> {
        let request = engine!(self, e => Engine::insert_request(e, new, now).await)?;
        metrics::counter!("refund_desk_requests_total").increment(1);
        tracing::info!(request_id = %request.id, "request stored");
        Ok(request)
    }

    /// Stores a new request from an API client, or finds the one `key` made before; durable
    /// on return either way (the first answer may have been lost before its sync).
    pub async fn insert_keyed_request(
        &self,
        new: NewRequest,
        key: &ClientKey,
        now: DateTime<Utc>,
    ) -> Result<KeyedInsert, StoreError> {
        let inserted = engine!(self, e => Engine::insert_keyed_request(e, new, key, now).await)?;
        match &inserted {
            KeyedInsert::Created(request) => {
                metrics::counter!("refund_desk_requests_total").increment(1);
                tracing::info!(request_id = %request.id, client = %key.client, "request stored");
            }
            KeyedInsert::Existing { request, same_body } => {
                tracing::info!(request_id = %request.id, client = %key.client, same_body, "idempotency key used again");
            }
        }
        Ok(inserted)
    }

    /// What `client`'s `key` made, if it was used: the request as it is now (durable) and the
    /// fingerprint of the body the key first came with.
    pub async fn request_for_key(
        &self,
        client: &str,
        key: &str,
    ) -> Result<Option<(RefundRequest, String)>, StoreError> {
        let Some((fingerprint, id)) = engine!(self, e => Engine::client_key(e, client, key).await)? else {
            return Ok(None);
        };
        let request = self.get_request_durable(id).await?.ok_or(StoreError::NotFound(id))?;
        Ok(Some((request, fingerprint)))
    }

    /// Applies `change` to the stored request as one compare-and-swap: if it returns a
    /// transition, the new state, its audit entry and its jobs are written together. `Ok(None)`
    /// from `change` writes nothing. The closure may run more than once; it must be pure.
    pub async fn transition<E: Send, F>(
        &self,
        id: RequestId,
        now: DateTime<Utc>,
        change: F,
    ) -> Result<Result<Option<RefundRequest>, E>, StoreError>
    where
        F: Fn(&mut RefundRequest) -> Result<Option<Transition>, E> + Send + Sync,
    {
        let change = move |r: &mut RefundRequest, _: &[Hold]| change(r);
        let moved = engine!(self, e => Engine::transition(e, id, None, now, change).await)?;
        count_moved(&moved);
        Ok(moved)
    }

    /// Like [`Store::transition`], with the holds of the open requests on `charge` given to
    /// `change`, read in the same transaction: two requests on one charge cannot both count on
    /// the same money.
    pub async fn transition_on_charge<E: Send, F: Change<E>>(
        &self,
        id: RequestId,
        charge: &ChargeId,
        now: DateTime<Utc>,
        change: F,
    ) -> Result<Result<Option<RefundRequest>, E>, StoreError> {
        let moved = engine!(self, e => Engine::transition(e, id, Some(charge), now, change).await)?;
        count_moved(&moved);
        Ok(moved)
    }

    /// Changes fields that are not part of the state machine (such as the card's message ref),
    /// atomically, without an audit entry.
    pub async fn update_request<F: Fn(&mut RefundRequest) + Send + Sync>(
        &self,
        id: RequestId,
        change: F,
    ) -> Result<RefundRequest, StoreError> {
        engine!(self, e => Engine::update_request(e, id, change).await)
    }

    /// Records the refund Stripe made for a request, so webhooks find it by refund id.
    pub async fn submit_refund(
        &self,
        id: RequestId,
        refund: RefundId,
        stripe_status: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<RefundRequest, StateError>, StoreError> {
        let out = engine!(self, e => Engine::submit_refund(e, id, refund, stripe_status, now).await)?;
        if let Ok(request) = &out {
            count_transition(request.status);
        }
        Ok(out)
    }

    pub async fn import_request(&self, request: &RefundRequest) -> Result<(), StoreError> {
        engine!(self, e => Engine::import_request(e, request).await)
    }

    pub async fn get_request(&self, id: RequestId) -> Result<Option<RefundRequest>, StoreError> {
        engine!(self, e => Engine::get_request(e, id).await)
    }

    /// A request as stored, returned once what was read is durable: for anything shown to a
    /// person or acted on outside (a card edit, a refund), which a power cut must not undo.
    pub async fn get_request_durable(&self, id: RequestId) -> Result<Option<RefundRequest>, StoreError> {
        let request = self.get_request(id).await?;
        self.flush().await?;
        Ok(request)
    }

    pub async fn requests_with_status(
        &self,
        status: RequestStatus,
        limit: usize,
    ) -> Result<Vec<RefundRequest>, StoreError> {
        engine!(self, e => Engine::requests_with_status(e, status, limit).await)
    }

    pub async fn requests_of(&self, user: &str, limit: usize) -> Result<Vec<RefundRequest>, StoreError> {
        engine!(self, e => Engine::requests_of(e, user, limit).await)
    }

    pub async fn others_on_payment(
        &self,
        request: &RefundRequest,
        limit: usize,
    ) -> Result<(Vec<RefundRequest>, usize), StoreError> {
        engine!(self, e => Engine::others_on_payment(e, request, limit).await)
    }

    pub async fn totals_on(&self, day: chrono::NaiveDate) -> Result<(u64, Vec<Money>), StoreError> {
        engine!(self, e => Engine::totals_on(e, day).await)
    }

    pub async fn all_requests(&self) -> Result<Vec<RefundRequest>, StoreError> {
        engine!(self, e => Engine::all_requests(e).await)
    }

    pub async fn oldest_open_since(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        engine!(self, e => Engine::oldest_open_since(e).await)
    }

    /// The whole audit trail, in order.
    pub async fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(engine!(self, e => Engine::audit_trail(e).await)?.0)
    }

    /// Walks the audit trail's hash chain: any edited, removed or inserted entry breaks it.
    pub async fn verify_audit(&self) -> Result<AuditReport, StoreError> {
        let (entries, head) = engine!(self, e => Engine::audit_trail(e).await)?;
        verify_chain(entries, head)
    }

    pub async fn audit_of(&self, id: RequestId) -> Result<Vec<AuditEntry>, StoreError> {
        engine!(self, e => Engine::audit_of(e, id).await)
    }

    /// Applies one Stripe event: remembers its id and moves each refund's request forward, all
    /// in one transaction. An event id seen before changes nothing.
    pub async fn apply_stripe_event(
        &self,
        event_id: &str,
        updates: &[RefundUpdate],
        now: DateTime<Utc>,
    ) -> Result<EventOutcome, StoreError> {
        self.apply_refund_updates(Some(event_id), updates, now).await
    }

    /// Moves requests forward on what Stripe says about their refunds: from an event (with its
    /// id, applied once) or from reading the refund back (no id).
    pub async fn apply_refund_updates(
        &self,
        event_id: Option<&str>,
        updates: &[RefundUpdate],
        now: DateTime<Utc>,
    ) -> Result<EventOutcome, StoreError> {
        let outcome = engine!(self, e => Engine::apply_refund_updates(e, event_id, updates, now).await)?;
        if let EventOutcome::Applied(outcomes) = &outcome {
            for outcome in outcomes {
                if let RefundOutcome::Moved(_, status) = outcome {
                    count_transition(*status);
                }
            }
        }
        Ok(outcome)
    }

    pub async fn stripe_event_seen(&self, event_id: &str) -> Result<bool, StoreError> {
        engine!(self, e => Engine::stripe_event_seen(e, event_id).await)
    }

    pub async fn remember_slack_event(&self, event_id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        engine!(self, e => Engine::remember_slack_event(e, event_id, now).await)
    }

    pub async fn prune_seen_events(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
        engine!(self, e => Engine::prune_seen_events(e, cutoff).await)
    }

    pub async fn events_cursor(&self) -> Result<Option<String>, StoreError> {
        engine!(self, e => Engine::events_cursor(e).await)
    }

    pub async fn set_events_cursor(&self, event_id: Option<&str>) -> Result<(), StoreError> {
        engine!(self, e => Engine::set_events_cursor(e, event_id).await)
    }

    pub async fn events_looked_back_at(&self) -> Result<Option<i64>, StoreError> {
        engine!(self, e => Engine::events_looked_back_at(e).await)
    }

    pub async fn set_events_looked_back_at(&self, at: i64) -> Result<(), StoreError> {
        engine!(self, e => Engine::set_events_looked_back_at(e, at).await)
    }

    pub async fn outside_refunds(&self) -> Result<Vec<OutsideRefund>, StoreError> {
        engine!(self, e => Engine::outside_refunds(e).await)
    }

    pub async fn email_sent(&self, id: RequestId, kind: EmailKind) -> Result<Option<EmailRecord>, StoreError> {
        engine!(self, e => Engine::email_sent(e, id, kind).await)
    }

    pub async fn record_email_sent(
        &self,
        id: RequestId,
        kind: EmailKind,
        record: &EmailRecord,
        effects: &[Effect],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        engine!(self, e => Engine::record_email_sent(e, id, kind, record, effects, now).await)
    }

    pub async fn claim_alert(
        &self,
        what: &str,
        job_id: u64,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        engine!(self, e => Engine::claim_alert(e, what, job_id, since, now).await)
    }

    pub async fn release_alert(&self, what: &str, job_id: u64) -> Result<(), StoreError> {
        engine!(self, e => Engine::release_alert(e, what, job_id).await)
    }

    pub async fn remember_home_user(&self, user: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        engine!(self, e => Engine::remember_home_user(e, user, now).await)
    }

    pub async fn has_home(&self, user: &str) -> Result<bool, StoreError> {
        engine!(self, e => Engine::has_home(e, user).await)
    }

    /// Adds jobs for a request outside any transition.
    pub async fn enqueue(&self, id: RequestId, effects: &[Effect], now: DateTime<Utc>) -> Result<(), StoreError> {
        engine!(self, e => Engine::enqueue(e, id, effects, now).await)
    }

    pub async fn all_jobs(&self) -> Result<Vec<Job>, StoreError> {
        engine!(self, e => Engine::all_jobs(e).await)
    }

    pub async fn due_jobs(
        &self,
        wanted: &[(Lane, usize)],
        now: DateTime<Utc>,
        running: &HashSet<u64>,
    ) -> Result<DueJobs, StoreError> {
        engine!(self, e => Engine::due_jobs(e, wanted, now, running).await)
    }

    /// Removes a finished job; the next one of its lane becomes due.
    pub async fn complete_job(&self, job: &Job) -> Result<(), StoreError> {
        engine!(self, e => Engine::complete_job(e, job).await)
    }

    /// Records the Slack message a job posted, before the job is completed.
    pub async fn record_job_posted(&self, job: &Job, ts: &str) -> Result<(), StoreError> {
        engine!(self, e => Engine::record_job_posted(e, job, ts).await)
    }

    /// Stores a job's new attempt count, error and due time (or parked flag).
    pub async fn reschedule_job(&self, job: &Job) -> Result<(), StoreError> {
        engine!(self, e => Engine::rewrite_job(e, job).await).map(|_| ())
    }

    pub async fn find_job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        engine!(self, e => Engine::find_job(e, id).await)
    }

    pub async fn renew_claims(&self, ids: &[u64], now: DateTime<Utc>) -> Result<(), StoreError> {
        engine!(self, e => e.renew_claims(ids, now).await)
    }

    pub async fn release_claims(&self) -> Result<(), StoreError> {
        engine!(self, e => e.release_claims().await)
    }

    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        engine!(self, e => e.take_lease(name, holder, now, until).await)
    }

    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        engine!(self, e => e.release_lease(name, holder).await)
    }

    pub async fn shared_value(&self, key: &str) -> Result<Option<String>, StoreError> {
        engine!(self, e => e.shared_value(key).await)
    }

    pub async fn shared_values(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        engine!(self, e => e.shared_values(prefix).await)
    }

    pub async fn set_shared_value(&self, key: &str, value: &str) -> Result<(), StoreError> {
        engine!(self, e => e.set_shared_value(key, value).await)
    }

    /// Puts parked job `id` back in the queue with fresh attempts. A job that is not parked is
    /// left alone: it is waiting for its time, or running (perhaps on another replica), and
    /// queueing it again could run it twice at once.
    pub async fn retry_job(&self, id: u64, now: DateTime<Utc>) -> Result<Retry, StoreError> {
        let Some(mut job) = self.find_job(id).await? else { return Ok(Retry::NoSuchJob) };
        if !job.parked {
            return Ok(Retry::NotParked);
        }
        job.parked = false;
        job.attempts = 0;
        job.not_before = now;
        let found = engine!(self, e => Engine::rewrite_job(e, &job).await)?;
        Ok(if found { Retry::Queued } else { Retry::NoSuchJob })
    }
}

/// What [`Store::retry_job`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    Queued,
    NotParked,
    NoSuchJob,
}

/// The payments a request is on: what it named, and (once checked) its charge and intent. The
/// other requests on any of them are shown on its card.
pub(crate) fn payments_of(request: &RefundRequest) -> Vec<String> {
    let mut payments = vec![request.target.to_string()];
    if let Some(facts) = &request.charge {
        payments.push(facts.charge.to_string());
        payments.extend(facts.payment_intent.as_ref().map(|p| p.to_string()));
    }
    payments.sort();
    payments.dedup();
    payments
}

/// How a transition from `from` changes the day's refunded total: its amount added when the
/// request just succeeded, taken away when it leaves success. `(amount, true)` adds.
pub(crate) fn refunded_change(request: &RefundRequest, from: RequestStatus) -> Option<(Money, bool)> {
    let amount = request.amount.filter(|_| from != request.status)?;
    if request.status == RequestStatus::Succeeded {
        Some((amount, true))
    } else if from == RequestStatus::Succeeded {
        Some((amount, false))
    } else {
        None
    }
}

/// Counts a committed transition into `status`, for `/metrics`.
fn count_transition(status: RequestStatus) {
    metrics::counter!("refund_desk_transitions_total", "to" => format!("{status:?}")).increment(1);
    tracing::info!(status = ?status, "request moved");
}

fn count_moved<E>(moved: &Result<Option<RefundRequest>, E>) {
    if let Ok(Some(request)) = moved {
        count_transition(request.status);
    }
}
