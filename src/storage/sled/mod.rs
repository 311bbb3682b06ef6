//! Every sled tree, its key layout, and the transactions that keep them consistent.
//!
//! Trees:
//! - `requests`: request id (u64 BE) → [`RefundRequest`] (JSON);
//! - `audit`: sequence (u64 BE) → [`AuditEntry`], each carrying the SHA-256 of the one before
//!   (a hash chain), and under the key `head` the last entry's sequence and hash, so an edit,
//!   a removal or an insertion anywhere is found by [`SledStore::verify_audit`];
//! - `jobs` and `queue`: the durable job queue and its due-time index (see [`jobs`]);
//! - `refund_ids`: Stripe refund id → request id;
//! - `holds`: Stripe charge id → the [`Hold`]s of the requests still open on it, rewritten by
//!   every transition of those requests, so two requests on one charge serialize;
//! - `stripe_events`, `slack_events`: event ids already applied → when;
//! - `emails`: `R-id/kind` → [`EmailRecord`];
//! - `index`: `s` ‖ status code ‖ request id and `u` ‖ user ‖ 0 ‖ request id (empty values), so
//!   the queue, a person's requests and reminders never scan every request; and `d` ‖ date ‖ …
//!   counters for the day's totals. Kept in step by every transition;
//! - `meta`: the request counter and this installation's id.
//!
//! A transition writes the request, its audit entry and its effects' jobs in one transaction and
//! is synced to disk (see [`commit`]) before the caller acknowledges anything.

pub mod backup;
mod batch;
pub mod commit;
pub mod jobs;
mod mark;

use crate::storage::{AuditEntry, AuditReport, AuditTrail, EmailRecord, Job, StoreError, payments_of};
use futures::FutureExt;
pub use jobs::JobKey;
use jobs::enqueue_in;

use crate::domain::policy::Hold;
use crate::domain::refund_news::{RefundNewsReads, RefundNewsWrite, apply_refund_news};
use crate::domain::{
    ChargeId, Effect, EmailKind, Money, NewRequest, RefundId, RefundRequest, RequestId, RequestStatus, Transition,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Transactional, Tree};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Notify;

/// The first request number handed out; `R-1001` reads better than `R-1`.
const FIRST_REQUEST_NUMBER: u64 = 1001;
/// sled's page cache when `REFUND_DESK_CACHE_MB` is not set: sled's own default is 1 GiB.
pub const DEFAULT_CACHE_MB: u64 = 32;
const NEXT_REQUEST_KEY: &[u8] = b"next_request_number";
const INSTALL_ID_KEY: &[u8] = b"install_id";
const EVENTS_CURSOR_KEY: &[u8] = b"stripe_events_cursor";
const EVENTS_LOOKED_BACK_KEY: &[u8] = b"stripe_events_looked_back_at";
const MIGRATED_KEY: &[u8] = b"migrated_to_postgres_at";

/// The key of the audit chain's head: (last sequence, last hash).
const AUDIT_HEAD: &[u8] = b"head";

pub use crate::domain::RefundUpdate;

pub use crate::domain::refund_news::{EventOutcome, OutsideRefund, RefundOutcome};

/// The open database.
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    /// Where its files are (and its high-water mark).
    dir: std::path::PathBuf,
    requests: Tree,
    audit: Tree,
    jobs: Tree,
    queue: Tree,
    refund_ids: Tree,
    holds: Tree,
    index: Tree,
    stripe_events: Tree,
    slack_events: Tree,
    /// Users who opened App Home → when; only their Homes are republished.
    home_users: Tree,
    emails: Tree,
    /// Refunds Stripe reported that are not ours, by refund id.
    outside_refunds: Tree,
    meta: Tree,
    /// Woken whenever a transaction adds jobs, so the runner need not poll.
    jobs_added: Arc<Notify>,
    install_id: String,
    /// The group committer every write waits on before it is acknowledged.
    commit: Arc<commit::Committer>,
    /// Writes waiting to share a transaction (see [`batch`]).
    batch: Arc<batch::WriteQueue>,
    /// See [`SledStore::requests_read`].
    requests_read: Arc<std::sync::atomic::AtomicU64>,
    /// What the high-water mark last written says (see [`mark`]): an idle store writes none.
    marked: Arc<std::sync::Mutex<Option<(u64, u64)>>>,
}

/// Why a transaction closure stopped.
enum Abort<E> {
    NotFound(RequestId),
    Corrupt(String),
    Refused(E),
}

type TxResult<T, E> = Result<T, ConflictableTransactionError<Abort<E>>>;

fn corrupt<E>(e: impl std::fmt::Display) -> ConflictableTransactionError<Abort<E>> {
    ConflictableTransactionError::Abort(Abort::Corrupt(e.to_string()))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A value as stored. An error aborts the write it belongs to: nothing is ever stored empty.
fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(value)
}

/// [`encode`] outside a transaction.
fn encode_plain<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    encode(value).map_err(|e| StoreError::Corrupt(format!("could not encode a value to store: {e}")))
}

/// The trees every transition writes.
struct TxTrees<'a> {
    requests: &'a TransactionalTree,
    audit: &'a TransactionalTree,
    jobs: &'a TransactionalTree,
    queue: &'a TransactionalTree,
    holds: &'a TransactionalTree,
    index: &'a TransactionalTree,
}

fn status_key(status: RequestStatus, id: RequestId) -> Vec<u8> {
    let mut k = vec![b's', status.code()];
    k.extend_from_slice(&id.to_key());
    k
}

/// `a` ‖ request ‖ audit sequence number: one request's audit entries, in order.
fn audit_index_key(id: RequestId, seq: u64) -> Vec<u8> {
    let mut k = vec![b'a'];
    k.extend_from_slice(&id.to_key());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn user_prefix(user: &str) -> Vec<u8> {
    let mut k = vec![b'u'];
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k
}

/// `p` ‖ a charge or payment intent id ‖ 0: the requests on that payment.
fn payment_prefix(payment: &str) -> Vec<u8> {
    let mut k = vec![b'p'];
    k.extend_from_slice(payment.as_bytes());
    k.push(0);
    k
}

/// The request's entries in the by-payment index.
fn payment_keys(request: &RefundRequest) -> impl Iterator<Item = Vec<u8>> + '_ {
    payments_of(request).into_iter().map(|payment| {
        let mut key = payment_prefix(&payment);
        key.extend_from_slice(&request.id.to_key());
        key
    })
}

fn user_key(user: &str, id: RequestId) -> Vec<u8> {
    let mut k = user_prefix(user);
    k.extend_from_slice(&id.to_key());
    k
}

/// Counter keys for a day's totals: `d` ‖ YYYY-MM-DD ‖ `/requested` or `/refunded/<currency>`.
fn day_key(day: &str, what: &str) -> Vec<u8> {
    format!("d{day}/{what}").into_bytes()
}

fn bump<E>(index: &TransactionalTree, key: &[u8], add: u64, subtract: u64) -> TxResult<(), E> {
    let current = index.get(key)?.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)).unwrap_or(0);
    index.insert(key, &(current + add).saturating_sub(subtract).to_be_bytes())?;
    Ok(())
}

/// Moves the request between status index entries and counts the day's totals.
fn sync_index<E>(
    index: &TransactionalTree,
    request: &RefundRequest,
    from: RequestStatus,
    now: DateTime<Utc>,
) -> TxResult<(), E> {
    index.remove(status_key(from, request.id))?;
    index.insert(status_key(request.status, request.id), &[])?;
    index.insert(user_key(request.requester.as_str(), request.id), &[])?;
    for key in payment_keys(request) {
        index.insert(key, &[])?;
    }
    let day = now.format("%Y-%m-%d").to_string();
    if let Some((amount, add)) = crate::storage::refunded_change(request, from) {
        let key = day_key(&day, &format!("refunded/{}", amount.currency().code()));
        let (plus, minus) = if add { (amount.minor(), 0) } else { (0, amount.minor()) };
        bump(index, &key, plus, minus)?;
    }
    Ok(())
}

fn read_holds<E>(holds: &TransactionalTree, charge: &str) -> TxResult<Vec<Hold>, E> {
    match holds.get(charge.as_bytes())? {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(corrupt),
        None => Ok(vec![]),
    }
}

/// Keeps the request's hold on its charge in step with its status.
fn sync_hold<E>(holds: &TransactionalTree, request: &RefundRequest) -> TxResult<(), E> {
    let Some(facts) = &request.charge else { return Ok(()) };
    let key = facts.charge.as_str();
    let mut list = read_holds(holds, key)?;
    list.retain(|h| h.request != request.id);
    list.extend(request.hold());
    if list.is_empty() {
        holds.remove(key.as_bytes())?;
    } else {
        holds.insert(key.as_bytes(), encode(&list).map_err(corrupt)?)?;
    }
    Ok(())
}

/// Writes the request, its hold, its audit entry and one job per effect.
fn write_transition<E>(
    tx: &TxTrees<'_>,
    request: &RefundRequest,
    transition: &Transition,
    now: DateTime<Utc>,
) -> TxResult<(), E> {
    let (requests, audit, jobs) = (tx.requests, tx.audit, tx.jobs);
    requests.insert(&request.id.to_key(), encode(request).map_err(corrupt)?)?;
    sync_hold(tx.holds, request)?;
    sync_index(tx.index, request, transition.from, now)?;
    let effects = transition.jobs(request, now);
    let seq = audit.generate_id()?;
    let prev_hash = match audit.get(AUDIT_HEAD)? {
        Some(head) => serde_json::from_slice::<(u64, String)>(&head).map_err(corrupt)?.1,
        None => String::new(),
    };
    // sled numbers entries from its id counter (gaps after a restart); the chain is the hashes.
    let entry = AuditEntry::new(seq, prev_hash, request, transition, now).map_err(corrupt)?;
    audit.insert(&seq.to_be_bytes(), encode(&entry).map_err(corrupt)?)?;
    audit.insert(AUDIT_HEAD, encode(&(seq, &entry.hash)).map_err(corrupt)?)?;
    tx.index.insert(audit_index_key(request.id, seq), &[])?;
    enqueue_in(jobs, tx.queue, request.id, &effects, now)
}

/// The reads [`apply_refund_news`] asks for, inside the transaction that writes its answer.
struct NewsReads<'t, 'a> {
    tx: &'t TxTrees<'a>,
    refund_ids: &'t TransactionalTree,
    outside: &'t TransactionalTree,
}

impl RefundNewsReads for NewsReads<'_, '_> {
    type Error = ConflictableTransactionError<Abort<()>>;

    async fn recorded_owner(&mut self, refund: &RefundId) -> Result<Option<RequestId>, Self::Error> {
        Ok(self.refund_ids.get(refund.as_str().as_bytes())?.and_then(|v| RequestId::from_key(&v)))
    }

    async fn request(&mut self, id: RequestId) -> Result<Option<RefundRequest>, Self::Error> {
        read_request_if_any(self.tx.requests, id)
    }

    async fn holds_on(&mut self, charge: &ChargeId) -> Result<Vec<Hold>, Self::Error> {
        read_holds(self.tx.holds, charge.as_str())
    }

    async fn outside_refund(&mut self, refund: &RefundId) -> Result<Option<OutsideRefund>, Self::Error> {
        self.outside.get(refund.as_str().as_bytes())?.map(|b| serde_json::from_slice(&b).map_err(corrupt)).transpose()
    }
}

/// Writes what [`apply_refund_news`] decided; `true` if it added jobs.
fn write_news(reads: &NewsReads<'_, '_>, writes: &[RefundNewsWrite], now: DateTime<Utc>) -> TxResult<bool, ()> {
    let mut added = false;
    for write in writes {
        match write {
            RefundNewsWrite::Transition(request, transition) => {
                write_transition(reads.tx, request, transition, now)?;
                added = true;
            }
            RefundNewsWrite::Request(request) => {
                reads.tx.requests.insert(&request.id.to_key(), encode(request).map_err(corrupt)?)?;
                sync_hold(reads.tx.holds, request)?;
            }
            RefundNewsWrite::RecordRefund(refund, id) => {
                reads.refund_ids.insert(refund.as_str().as_bytes(), &id.to_key())?;
            }
            RefundNewsWrite::Outside(record) => {
                reads.outside.insert(record.refund.as_str().as_bytes(), encode(record).map_err(corrupt)?)?;
            }
        }
    }
    Ok(added)
}

fn read_request_if_any<E>(requests: &TransactionalTree, id: RequestId) -> TxResult<Option<RefundRequest>, E> {
    match read_request(requests, id) {
        Ok(r) => Ok(Some(r)),
        Err(ConflictableTransactionError::Abort(Abort::NotFound(_))) => Ok(None),
        Err(e) => Err(e),
    }
}

fn read_request<E>(requests: &TransactionalTree, id: RequestId) -> TxResult<RefundRequest, E> {
    let bytes = requests.get(id.to_key())?.ok_or(ConflictableTransactionError::Abort(Abort::NotFound(id)))?;
    serde_json::from_slice(&bytes).map_err(corrupt)
}

impl SledStore {
    /// Opens (or creates) the database in `dir`, with the default page cache.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with(dir, DEFAULT_CACHE_MB)
    }

    /// Opens (or creates) the database in `dir`, with a page cache of `cache_mb` MiB.
    pub fn open_with(dir: &Path, cache_mb: u64) -> Result<SledStore, StoreError> {
        // No background flusher: it would take sled's global lock every 500 ms, blocking
        // transactions on tokio's threads; the committer flushes whenever a write waits.
        let db = sled::Config::new().path(dir).cache_capacity(cache_mb * 1024 * 1024).flush_every_ms(None).open()?;
        let meta = db.open_tree("meta")?;
        let install_id = match meta.get(INSTALL_ID_KEY)? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                let id = hex::encode(rand::random::<[u8; 8]>());
                // Another opener cannot exist: sled locks the directory.
                meta.insert(INSTALL_ID_KEY, id.as_bytes())?;
                db.flush()?;
                id
            }
        };
        let commit = Arc::new(commit::Committer::start(db.clone(), dir)?);
        let store = SledStore {
            requests: db.open_tree("requests")?,
            audit: db.open_tree("audit")?,
            jobs: db.open_tree("jobs")?,
            queue: db.open_tree("queue")?,
            refund_ids: db.open_tree("refund_ids")?,
            holds: db.open_tree("holds")?,
            index: db.open_tree("index")?,
            stripe_events: db.open_tree("stripe_events")?,
            slack_events: db.open_tree("slack_events")?,
            home_users: db.open_tree("home_users")?,
            emails: db.open_tree("emails")?,
            outside_refunds: db.open_tree("outside_refunds")?,
            meta,
            db,
            dir: dir.to_path_buf(),
            jobs_added: Arc::new(Notify::new()),
            install_id,
            commit,
            batch: Arc::default(),
            requests_read: Arc::default(),
            marked: Arc::default(),
        };
        store.check_mark()?;
        store.ensure_queue_index()?;
        store.ensure_payment_index()?;
        store.ensure_audit_index()?;
        Ok(store)
    }

    /// A random id made when this database was created; part of every idempotency key, so two
    /// installations sharing a Stripe account never collide.
    pub fn install_id(&self) -> &str {
        &self.install_id
    }

    /// Notified whenever jobs are added.
    pub fn jobs_added(&self) -> Arc<Notify> {
        self.jobs_added.clone()
    }

    /// Makes every write made so far durable (a group commit: see [`commit`]).
    pub async fn flush(&self) -> Result<(), StoreError> {
        Ok(self.commit.sync().await?)
    }

    /// Whether the store can still make writes durable; after a failed sync it never can.
    pub fn healthy(&self) -> bool {
        self.commit.failure().is_none()
    }

    /// Waits for the sync that covers the caller's write, then wakes the job runner if the write
    /// added jobs: a job never runs on a write that is not yet durable.
    async fn committed(&self, added_jobs: bool) -> Result<(), StoreError> {
        self.flush().await?;
        if added_jobs {
            self.jobs_added.notify_one();
        }
        Ok(())
    }

    fn finish_tx<T, E>(result: Result<T, TransactionError<Abort<E>>>) -> Result<Result<T, E>, StoreError> {
        match result {
            Ok(v) => Ok(Ok(v)),
            Err(TransactionError::Abort(Abort::Refused(e))) => Ok(Err(e)),
            Err(TransactionError::Abort(Abort::NotFound(id))) => Err(StoreError::NotFound(id)),
            Err(TransactionError::Abort(Abort::Corrupt(e))) => Err(StoreError::Corrupt(e)),
            Err(TransactionError::Storage(e)) => Err(StoreError::Sled(e)),
        }
    }

    /// Stores a new request (status `Requested`) and its first job; durable on return.
    #[tracing::instrument(skip_all, fields(slack_user = %new.requester))]
    pub async fn insert_request(&self, new: NewRequest, now: DateTime<Utc>) -> Result<RefundRequest, StoreError> {
        let request = match self.write_batched(batch::Write::Insert(new, now)).await? {
            batch::Written::Request(request) => *request,
            other => unreachable!("an insert wrote {other:?}"),
        };
        self.committed(true).await?;
        Ok(request)
    }

    /// Applies `change` to the stored request as one compare-and-swap: if it returns a
    /// transition, the new state, its audit entry and its jobs are written together. `Ok(None)`
    /// from `change` writes nothing. The closure may run more than once; it must be pure.
    pub async fn transition<E, F>(
        &self,
        id: RequestId,
        now: DateTime<Utc>,
        change: F,
    ) -> Result<Result<Option<RefundRequest>, E>, StoreError>
    where
        F: Fn(&mut RefundRequest) -> Result<Option<Transition>, E>,
    {
        self.transition_inner(id, None, now, |r, _| change(r)).await
    }

    /// Like [`SledStore::transition`], with the holds of the open requests on `charge` given to
    /// `change`, read in the same transaction: two requests on one charge cannot both count on
    /// the same money.
    pub async fn transition_on_charge<E, F>(
        &self,
        id: RequestId,
        charge: &ChargeId,
        now: DateTime<Utc>,
        change: F,
    ) -> Result<Result<Option<RefundRequest>, E>, StoreError>
    where
        F: Fn(&mut RefundRequest, &[Hold]) -> Result<Option<Transition>, E>,
    {
        self.transition_inner(id, Some(charge.as_str()), now, change).await
    }

    #[tracing::instrument(skip(self, now, change), fields(request_id = %id))]
    async fn transition_inner<E, F>(
        &self,
        id: RequestId,
        charge: Option<&str>,
        now: DateTime<Utc>,
        change: F,
    ) -> Result<Result<Option<RefundRequest>, E>, StoreError>
    where
        F: Fn(&mut RefundRequest, &[Hold]) -> Result<Option<Transition>, E>,
    {
        let permit = self.commit.write_permit().await;
        let result = (&self.requests, &self.audit, &self.jobs, &self.queue, &self.holds, &self.index).transaction(
            |(requests, audit, jobs, queue, holds, index)| {
                let mut request = read_request(requests, id)?;
                let current = match charge {
                    Some(c) => read_holds(holds, c)?,
                    None => vec![],
                };
                match change(&mut request, &current) {
                    Err(e) => Err(ConflictableTransactionError::Abort(Abort::Refused(e))),
                    Ok(None) => Ok(None),
                    Ok(Some(t)) => {
                        write_transition(&TxTrees { requests, audit, jobs, queue, holds, index }, &request, &t, now)?;
                        Ok(Some(request))
                    }
                }
            },
        );
        drop(permit);
        match Self::finish_tx(result)? {
            // Every transition adds at least App Home's refresh, so the runner is woken.
            Ok(Some(request)) => {
                self.committed(true).await?;
                Ok(Ok(Some(request)))
            }
            // Nothing written, but the answer rests on what was read, which another write may
            // have just made and not yet synced ("already approved"): sync that first.
            Ok(None) => {
                self.flush().await?;
                Ok(Ok(None))
            }
            Err(e) => {
                self.flush().await?;
                Ok(Err(e))
            }
        }
    }

    /// Changes fields that are not part of the state machine (such as the card's message ref),
    /// atomically, without an audit entry.
    pub async fn update_request(
        &self,
        id: RequestId,
        change: impl Fn(&mut RefundRequest),
    ) -> Result<RefundRequest, StoreError> {
        let permit = self.commit.write_permit().await;
        let result = self.requests.transaction(|requests| -> TxResult<RefundRequest, ()> {
            let mut request = read_request(requests, id)?;
            change(&mut request);
            requests.insert(&id.to_key(), encode(&request).map_err(corrupt)?)?;
            Ok(request)
        });
        drop(permit);
        let request = Self::finish_tx(result)?.unwrap_or_else(|()| unreachable!("update never refuses"));
        self.committed(false).await?;
        Ok(request)
    }

    /// A request as stored, returned once what was read is on disk: for anything shown to a
    /// person or acted on outside (a card edit, a refund), which a power cut must not undo.
    pub async fn get_request_durable(&self, id: RequestId) -> Result<Option<RefundRequest>, StoreError> {
        let request = self.get_request(id)?;
        self.flush().await?;
        Ok(request)
    }

    pub fn get_request(&self, id: RequestId) -> Result<Option<RefundRequest>, StoreError> {
        self.requests_read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.requests.get(id.to_key())?.map(|b| decode(&b)).transpose()
    }

    /// How many requests were read outside transactions so far: what a query costs, for the
    /// tests that prove App Home and the lists read the indexes, not every request.
    pub fn requests_read(&self) -> u64 {
        self.requests_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests in `status`, oldest first, at most `limit`; read through the index.
    pub fn requests_with_status(&self, status: RequestStatus, limit: usize) -> Result<Vec<RefundRequest>, StoreError> {
        let prefix = [b's', status.code()];
        let mut out = vec![];
        for kv in self.index.scan_prefix(prefix).take(limit) {
            let (key, _) = kv?;
            if let Some(r) = RequestId::from_key(&key[2..]).map(|id| self.get_request(id)).transpose()?.flatten() {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// A person's requests, newest first, at most `limit`; read through the index.
    pub fn requests_of(&self, user: &str, limit: usize) -> Result<Vec<RefundRequest>, StoreError> {
        let prefix = user_prefix(user);
        let mut out = vec![];
        for kv in self.index.scan_prefix(&prefix).rev().take(limit) {
            let (key, _) = kv?;
            if let Some(r) =
                RequestId::from_key(&key[prefix.len()..]).map(|id| self.get_request(id)).transpose()?.flatten()
            {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Adds the by-payment index entries of requests stored before that index existed.
    fn ensure_payment_index(&self) -> Result<(), StoreError> {
        const VERSION_KEY: &[u8] = b"payment_index_version";
        if self.meta.get(VERSION_KEY)?.is_some() {
            return Ok(());
        }
        for kv in self.requests.iter() {
            let request: RefundRequest = decode(&kv?.1)?;
            for key in payment_keys(&request) {
                self.index.insert(key, &[])?;
            }
        }
        self.meta.insert(VERSION_KEY, b"1")?;
        self.db.flush()?;
        Ok(())
    }

    /// Adds the by-request index entries of audit entries written before that index existed.
    fn ensure_audit_index(&self) -> Result<(), StoreError> {
        const VERSION_KEY: &[u8] = b"audit_index_version";
        if self.meta.get(VERSION_KEY)?.is_some() {
            return Ok(());
        }
        for entry in self.audit_entries() {
            let entry = entry?;
            self.index.insert(audit_index_key(entry.request_id, entry.seq), &[])?;
        }
        self.meta.insert(VERSION_KEY, b"1")?;
        self.db.flush()?;
        Ok(())
    }

    /// The other requests on the same payment as `request` (by the id it named, its charge or
    /// its payment intent), open or done, oldest first: two people asking to refund one charge
    /// must see each other. At most the `limit` newest are read; the second value says how many
    /// older ones there are besides (a card has room for only so much).
    pub fn others_on_payment(
        &self,
        request: &RefundRequest,
        limit: usize,
    ) -> Result<(Vec<RefundRequest>, usize), StoreError> {
        let mut ids = std::collections::BTreeSet::new();
        for payment in payments_of(request) {
            let prefix = payment_prefix(&payment);
            for kv in self.index.scan_prefix(&prefix) {
                let (key, _) = kv?;
                ids.extend(RequestId::from_key(&key[prefix.len()..]).filter(|id| *id != request.id));
            }
        }
        let more = ids.len().saturating_sub(limit);
        let mut others = vec![];
        for id in ids.into_iter().skip(more) {
            others.extend(self.get_request(id)?);
        }
        Ok((others, more))
    }

    /// The day's totals: requests made, and amounts refunded by currency.
    pub fn totals_on(&self, day: chrono::NaiveDate) -> Result<(u64, Vec<Money>), StoreError> {
        let day = day.format("%Y-%m-%d").to_string();
        let number = |v: &[u8]| v.try_into().map(u64::from_be_bytes).unwrap_or(0);
        let requested = self.index.get(day_key(&day, "requested"))?.map(|v| number(&v)).unwrap_or(0);
        let mut refunded = vec![];
        for kv in self.index.scan_prefix(day_key(&day, "refunded/")) {
            let (key, value) = kv?;
            let code = String::from_utf8_lossy(&key).rsplit('/').next().unwrap_or_default().to_string();
            if let (Ok(currency), n) = (crate::domain::Currency::parse(&code), number(&value))
                && n > 0
            {
                refunded.push(Money::new(n, currency));
            }
        }
        Ok((requested, refunded))
    }

    /// When `refund-desk migrate` copied this store to PostgreSQL, if it did.
    pub fn migrated_at(&self) -> Result<Option<String>, StoreError> {
        Ok(self.meta.get(MIGRATED_KEY)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// When this store was restored from a backup, until the refunds it holds under way were
    /// checked against Stripe ([`SledStore::clear_restored`]).
    pub fn restored_at(&self) -> Result<Option<String>, StoreError> {
        Ok(self.meta.get(backup::RESTORED_KEY)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// The restored store's refunds were checked against Stripe; durable on return.
    pub async fn clear_restored(&self) -> Result<(), StoreError> {
        let permit = self.commit.write_permit().await;
        self.meta.remove(backup::RESTORED_KEY)?;
        drop(permit);
        self.flush().await
    }

    /// Records that this store was copied to PostgreSQL; durable on return. A desk no longer
    /// starts on it: two live stores with one installation id would hand out the same request
    /// numbers, and so the same idempotency keys, for different refunds.
    pub async fn mark_migrated(&self, at: DateTime<Utc>) -> Result<(), StoreError> {
        let permit = self.commit.write_permit().await;
        self.meta.insert(MIGRATED_KEY, at.to_rfc3339().as_bytes())?;
        drop(permit);
        self.flush().await
    }

    /// Everything in the store, for copying it to another engine. Run it with the desk stopped
    /// (sled's lock makes sure of that for another process): the trees are read one by one.
    pub fn export_copy(&self) -> Result<crate::storage::copy::StoreCopy, StoreError> {
        fn text(bytes: &[u8]) -> String {
            String::from_utf8_lossy(bytes).into_owned()
        }
        let seen = |tree: &Tree| -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
            tree.iter()
                .map(|kv| {
                    let (k, v) = kv?;
                    Ok((text(&k), decode(&v)?))
                })
                .collect()
        };
        let mut emails = vec![];
        for kv in self.emails.iter() {
            let (key, value) = kv?;
            let key = text(&key);
            let parsed = key
                .split_once('/')
                .and_then(|(id, kind)| Some((RequestId::parse(id).ok()?, crate::domain::EmailKind::parse(kind)?)));
            let (id, kind) = parsed.ok_or_else(|| StoreError::Corrupt(format!("an email record's key {key:?}")))?;
            emails.push((id, kind, decode(&value)?));
        }
        let mut refund_ids = vec![];
        for kv in self.refund_ids.iter() {
            let (refund, id) = kv?;
            let id =
                RequestId::from_key(&id).ok_or_else(|| StoreError::Corrupt(format!("refund {}", text(&refund))))?;
            refund_ids.push((text(&refund), id));
        }
        let mut day_totals = vec![];
        for kv in self.index.scan_prefix(b"d") {
            let (key, value) = kv?;
            let key = text(&key);
            let parsed = key.strip_prefix('d').and_then(|rest| rest.split_once('/')).and_then(|(day, what)| {
                let n = u64::from_be_bytes(value.as_ref().try_into().ok()?);
                Some((chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?, what.to_string(), n))
            });
            day_totals.push(parsed.ok_or_else(|| StoreError::Corrupt(format!("a day's total {key:?}")))?);
        }
        let shared_values = self.shared_values_with("")?;
        let mut client_keys = vec![];
        for kv in self.index.scan_prefix(batch::CLIENT_KEY_PREFIX) {
            let (key, value) = kv?;
            let key = text(&key[batch::CLIENT_KEY_PREFIX.len()..]);
            let (fingerprint, id): (String, RequestId) = decode(&value)?;
            let (client, key) =
                key.split_once('/').ok_or_else(|| StoreError::Corrupt(format!("a client key {key:?}")))?;
            client_keys.push((client.to_string(), key.to_string(), fingerprint, id));
        }
        let mut alert_claims = vec![];
        for kv in self.meta.scan_prefix(b"alert/") {
            let (key, value) = kv?;
            let (at, job): (DateTime<Utc>, u64) = decode(&value)?;
            alert_claims.push((text(&key["alert/".len()..]), job, at));
        }
        let next_request_number = self
            .meta
            .get(NEXT_REQUEST_KEY)?
            .and_then(|v| v.as_ref().try_into().ok())
            .map_or(FIRST_REQUEST_NUMBER, u64::from_be_bytes);
        // Job ids come from sled's counter for the whole database: one more is past all of them.
        let next_job_id = self.db.generate_id()?;
        Ok(crate::storage::copy::StoreCopy {
            next_job_id,
            install_id: self.install_id.clone(),
            next_request_number,
            requests: self.all_requests()?,
            refund_ids,
            audit: self.audit_trail()?,
            jobs: self.all_jobs()?,
            stripe_events: seen(&self.stripe_events)?,
            slack_events: seen(&self.slack_events)?,
            home_users: seen(&self.home_users)?,
            emails,
            outside_refunds: self.outside_refunds()?,
            events_cursor: self.events_cursor()?,
            events_looked_back_at: self.events_looked_back_at()?,
            day_totals,
            alert_claims,
            shared_values,
            client_keys,
        })
    }

    fn shared_values_with(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut values = vec![];
        for kv in self.meta.scan_prefix(format!("shared/{prefix}").as_bytes()) {
            let (key, value) = kv?;
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            values.push((text(&key["shared/".len()..]), text(&value)));
        }
        Ok(values)
    }

    /// Writes a request and its index entries directly, without audit, jobs or a flush: for
    /// loading data into a database (migrations, tests, benchmarks). `flush` afterwards.
    pub fn import_request(&self, request: &RefundRequest) -> Result<(), StoreError> {
        self.requests.insert(request.id.to_key(), encode_plain(request)?)?;
        // The counter moves past what was imported: numbers are never handed out twice.
        self.meta.fetch_and_update(NEXT_REQUEST_KEY, |current| {
            let next = current.and_then(|v| v.try_into().ok()).map_or(FIRST_REQUEST_NUMBER, u64::from_be_bytes);
            Some(next.max(request.id.number() + 1).to_be_bytes().to_vec())
        })?;
        self.index.insert(status_key(request.status, request.id), &[])?;
        self.index.insert(user_key(request.requester.as_str(), request.id), &[])?;
        for key in payment_keys(request) {
            self.index.insert(key, &[])?;
        }
        Ok(())
    }

    /// Every request, oldest first.
    pub fn all_requests(&self) -> Result<Vec<RefundRequest>, StoreError> {
        self.requests
            .iter()
            .map(|kv| {
                self.requests_read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                decode(&kv?.1)
            })
            .collect()
    }

    /// The whole audit trail, in order.
    pub fn audit_entries(&self) -> impl Iterator<Item = Result<AuditEntry, StoreError>> + '_ {
        self.audit.iter().filter_map(|kv| match kv {
            Ok((key, _)) if key.len() != 8 => None,
            Ok((_, value)) => Some(decode(&value)),
            Err(e) => Some(Err(e.into())),
        })
    }

    /// The audit trail, and the chain's head as stored.
    pub fn audit_trail(&self) -> Result<AuditTrail, StoreError> {
        let entries = self.audit_entries().collect::<Result<Vec<_>, _>>()?;
        let head = self.audit.get(AUDIT_HEAD)?.map(|h| decode::<(u64, String)>(&h)).transpose()?;
        Ok((entries, head))
    }

    /// Walks the audit trail's hash chain (see [`crate::storage::verify_chain`]).
    pub fn verify_audit(&self) -> Result<AuditReport, StoreError> {
        let (entries, head) = self.audit_trail()?;
        crate::storage::verify_chain(entries, head)
    }

    /// The audit trail of one request, in order.
    pub fn audit_of(&self, id: RequestId) -> Result<Vec<AuditEntry>, StoreError> {
        let mut prefix = vec![b'a'];
        prefix.extend_from_slice(&id.to_key());
        let mut out = vec![];
        for kv in self.index.scan_prefix(&prefix) {
            let (key, _) = kv?;
            let entry = self.audit.get(&key[prefix.len()..])?;
            out.push(decode(&entry.ok_or_else(|| StoreError::Corrupt(format!("an audit entry of {id} is missing")))?)?);
        }
        Ok(out)
    }

    /// Applies one Stripe event: remembers its id and moves each refund's request forward, all
    /// in one transaction. An event id seen before changes nothing.
    #[tracing::instrument(skip(self, updates, now))]
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
        let trees = (
            &self.requests,
            &self.audit,
            &self.jobs,
            &self.queue,
            &self.holds,
            &self.index,
            &self.refund_ids,
            &self.stripe_events,
            &self.outside_refunds,
        );
        let permit = self.commit.write_permit().await;
        let result = trees.transaction(
            |(requests, audit, jobs, queue, holds, index, refund_ids, events, outside)| -> TxResult<(EventOutcome, bool), ()> {
                let tx = TxTrees { requests, audit, jobs, queue, holds, index };
                if let Some(event_id) = event_id {
                    if events.get(event_id.as_bytes())?.is_some() {
                        return Ok((EventOutcome::Duplicate, false));
                    }
                    events.insert(event_id.as_bytes(), encode(&now).map_err(corrupt)?)?;
                }
                let reads = &mut NewsReads { tx: &tx, refund_ids, outside };
                let mut outcomes = vec![];
                let mut added = false;
                for news in updates {
                    // sled's reads never wait: the rule's future is ready at once.
                    let decided = apply_refund_news(reads, news, &self.install_id, now).now_or_never();
                    let (outcome, writes) = decided.ok_or_else(|| corrupt("a sled read waited"))??;
                    added |= write_news(reads, &writes, now)?;
                    outcomes.push(outcome);
                }
                Ok((EventOutcome::Applied(outcomes), added))
            },
        );
        drop(permit);
        let (outcome, added) = Self::finish_tx(result)?.unwrap_or_else(|()| unreachable!("events never refuse"));
        // A duplicate is acknowledged too, so it waits for the sync of its first delivery,
        // which may still be under way: Stripe stops sending once either is answered 2xx.
        self.committed(added).await?;
        Ok(outcome)
    }

    /// Records the refund Stripe made for a request, so webhooks find it by refund id.
    pub async fn submit_refund(
        &self,
        id: RequestId,
        refund: RefundId,
        stripe_status: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<RefundRequest, crate::domain::StateError>, StoreError> {
        let trees = (&self.requests, &self.audit, &self.jobs, &self.queue, &self.holds, &self.index, &self.refund_ids);
        let permit = self.commit.write_permit().await;
        let result = trees.transaction(|(requests, audit, jobs, queue, holds, index, refund_ids)| {
            let mut request = read_request(requests, id)?;
            let t = request
                .record_submitted(refund.clone(), stripe_status, now)
                .map_err(|e| ConflictableTransactionError::Abort(Abort::Refused(e)))?;
            write_transition(&TxTrees { requests, audit, jobs, queue, holds, index }, &request, &t, now)?;
            refund_ids.insert(refund.as_str().as_bytes(), &id.to_key())?;
            Ok(request)
        });
        drop(permit);
        let out = Self::finish_tx(result)?;
        if out.is_ok() {
            self.committed(true).await?;
        }
        Ok(out)
    }

    /// When the oldest request still open was made: Stripe's news older than that matters to
    /// no request.
    pub fn oldest_open_since(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let mut oldest: Option<RequestId> = None;
        for status in [
            RequestStatus::Requested,
            RequestStatus::AwaitingApproval,
            RequestStatus::Approved,
            RequestStatus::Submitted,
            RequestStatus::Pending,
        ] {
            // Ids grow with time, and the status index is ordered by id.
            if let Some(kv) = self.index.scan_prefix([b's', status.code()]).next() {
                let (key, _) = kv?;
                let id = RequestId::from_key(&key[2..]);
                oldest = match (oldest, id) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        Ok(match oldest {
            Some(id) => self.get_request(id)?.map(|r| r.created_at),
            None => None,
        })
    }

    /// Whether job `job_id` is the one to send the alert about `what`: no other job claimed it
    /// since `since`. The claim (made durable on return) is the job's own, so the job's retry
    /// after a failed post still sends it. Keeps one cause from flooding the finance channel.
    pub async fn claim_alert(
        &self,
        what: &str,
        job_id: u64,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let key = format!("alert/{what}");
        let permit = self.commit.write_permit().await;
        let claimed = self.meta.fetch_and_update(key.as_bytes(), |old| {
            let last: Option<(DateTime<Utc>, u64)> = old.and_then(|v| serde_json::from_slice(v).ok());
            match last {
                Some((at, owner)) if at >= since && owner != job_id => old.map(|v| v.to_vec()),
                _ => serde_json::to_vec(&(now, job_id)).ok(),
            }
        })?;
        drop(permit);
        self.flush().await?;
        let before: Option<(DateTime<Utc>, u64)> = claimed.and_then(|v| serde_json::from_slice(&v).ok());
        Ok(!before.is_some_and(|(at, owner)| at >= since && owner != job_id))
    }

    /// Lets go of `job_id`'s claim on the alert about `what` (the job parked without sending
    /// it), so the next job for the same cause sends it.
    pub async fn release_alert(&self, what: &str, job_id: u64) -> Result<(), StoreError> {
        let key = format!("alert/{what}");
        let permit = self.commit.write_permit().await;
        self.meta.fetch_and_update(key.as_bytes(), |old| {
            let owner = old.and_then(|v| serde_json::from_slice::<(DateTime<Utc>, u64)>(v).ok()).map(|(_, o)| o);
            if owner == Some(job_id) { None } else { old.map(|v| v.to_vec()) }
        })?;
        drop(permit);
        self.flush().await
    }

    /// When the last read of Stripe's events went through (Unix seconds).
    pub fn events_looked_back_at(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.meta.get(EVENTS_LOOKED_BACK_KEY)?.and_then(|v| v.as_ref().try_into().ok()).map(i64::from_be_bytes))
    }

    /// Records when a read of Stripe's events went through; durable on return.
    pub async fn set_events_looked_back_at(&self, at: i64) -> Result<(), StoreError> {
        let permit = self.commit.write_permit().await;
        self.meta.insert(EVENTS_LOOKED_BACK_KEY, &at.to_be_bytes())?;
        drop(permit);
        self.flush().await
    }

    /// The id of the newest Stripe event read from `GET /v1/events` (see `stripe::events`).
    pub fn events_cursor(&self) -> Result<Option<String>, StoreError> {
        Ok(self.meta.get(EVENTS_CURSOR_KEY)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Moves the events cursor; durable on return. `None` starts over from the newest events.
    pub async fn set_events_cursor(&self, event_id: Option<&str>) -> Result<(), StoreError> {
        let permit = self.commit.write_permit().await;
        match event_id {
            Some(id) => self.meta.insert(EVENTS_CURSOR_KEY, id.as_bytes())?,
            None => self.meta.remove(EVENTS_CURSOR_KEY)?,
        };
        drop(permit);
        self.flush().await
    }

    /// Refunds Stripe reported that belong to none of this installation's requests.
    pub fn outside_refunds(&self) -> Result<Vec<OutsideRefund>, StoreError> {
        self.outside_refunds.iter().map(|kv| decode(&kv?.1)).collect()
    }

    /// Whether an email of this kind already went out for this request.
    pub fn email_sent(&self, id: RequestId, kind: EmailKind) -> Result<Option<EmailRecord>, StoreError> {
        let key = format!("{id}/{}", kind.as_str());
        self.emails.get(key.as_bytes())?.map(|b| decode(&b)).transpose()
    }

    /// Records a sent email, and the jobs that announce it, in one transaction.
    pub async fn record_email_sent(
        &self,
        id: RequestId,
        kind: EmailKind,
        record: &EmailRecord,
        effects: &[Effect],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let key = format!("{id}/{}", kind.as_str());
        let permit = self.commit.write_permit().await;
        let result = (&self.emails, &self.jobs, &self.queue).transaction(|(emails, jobs, queue)| {
            emails.insert(key.as_bytes(), encode(record).map_err(corrupt)?)?;
            enqueue_in::<()>(jobs, queue, id, effects, now)
        });
        drop(permit);
        Self::finish_tx(result)?.unwrap_or_else(|()| unreachable!());
        self.committed(!effects.is_empty()).await
    }

    /// Forgets Stripe and Slack event ids recorded before `cutoff`; returns how many. Stripe
    /// retries an event for up to three days, Slack for minutes, so a cutoff weeks back is safe.
    pub async fn prune_seen_events(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut removed = 0;
        for tree in [&self.stripe_events, &self.slack_events] {
            for kv in tree.iter() {
                let (key, value) = kv?;
                let seen: DateTime<Utc> = decode(&value)?;
                if seen < cutoff {
                    let _permit = self.commit.write_permit().await;
                    tree.remove(key)?;
                    removed += 1;
                }
            }
        }
        self.flush().await?;
        Ok(removed)
    }

    /// Remembers that `user` opened App Home, so changes are published to them.
    pub async fn remember_home_user(&self, user: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let permit = self.commit.write_permit().await;
        self.home_users.insert(user.as_bytes(), encode_plain(&now)?)?;
        drop(permit);
        self.flush().await
    }

    /// Whether `user` has opened App Home.
    pub fn has_home(&self, user: &str) -> Result<bool, StoreError> {
        Ok(self.home_users.contains_key(user.as_bytes())?)
    }

    /// Whether a Stripe event id was recorded (applied, or seen and found not ours).
    pub fn stripe_event_seen(&self, event_id: &str) -> Result<bool, StoreError> {
        Ok(self.stripe_events.contains_key(event_id.as_bytes())?)
    }

    /// Remembers a Slack event id; `false` if it was seen before (a retry).
    pub async fn remember_slack_event(&self, event_id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let permit = self.commit.write_permit().await;
        let fresh = self
            .slack_events
            .compare_and_swap(event_id.as_bytes(), None as Option<&[u8]>, Some(encode_plain(&now)?))?
            .is_ok();
        drop(permit);
        // A retry is acknowledged too: it waits for the sync of the first delivery's write.
        self.flush().await?;
        Ok(fresh)
    }
}

/// The sled engine behind the port: each method is the store's own, above or in `jobs.rs`.
impl crate::storage::Engine for SledStore {
    fn install_id(&self) -> &str {
        SledStore::install_id(self)
    }

    fn jobs_added(&self) -> Arc<Notify> {
        SledStore::jobs_added(self)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        SledStore::flush(self).await
    }

    fn healthy(&self) -> bool {
        SledStore::healthy(self)
    }

    async fn insert_request(&self, new: NewRequest, now: DateTime<Utc>) -> Result<RefundRequest, StoreError> {
        SledStore::insert_request(self, new, now).await
    }

    async fn client_key(&self, client: &str, key: &str) -> Result<Option<(String, RequestId)>, StoreError> {
        self.index.get(batch::client_key(client, key))?.map(|v| decode(&v)).transpose()
    }

    async fn insert_keyed_request(
        &self,
        new: NewRequest,
        key: &crate::storage::ClientKey,
        now: DateTime<Utc>,
    ) -> Result<crate::storage::KeyedInsert, StoreError> {
        use crate::storage::KeyedInsert;
        let inserted = match self.write_batched(batch::Write::InsertKeyed(new, key.clone(), now)).await? {
            batch::Written::Request(request) => KeyedInsert::Created(*request),
            batch::Written::KeyUsed { id, same_body } => {
                let request = self.get_request(id)?.ok_or(StoreError::NotFound(id))?;
                KeyedInsert::Existing { request, same_body }
            }
            other => unreachable!("an insert wrote {other:?}"),
        };
        // Durable before it is answered, either way: the first answer may have been lost with
        // its write still unsynced.
        self.committed(matches!(inserted, KeyedInsert::Created(_))).await?;
        Ok(inserted)
    }

    async fn transition<E: Send, F: crate::storage::Change<E>>(
        &self,
        id: RequestId,
        charge: Option<&ChargeId>,
        now: DateTime<Utc>,
        change: F,
    ) -> Result<Result<Option<RefundRequest>, E>, StoreError> {
        self.transition_inner(id, charge.map(ChargeId::as_str), now, change).await
    }

    async fn update_request<F: Fn(&mut RefundRequest) + Send + Sync>(
        &self,
        id: RequestId,
        change: F,
    ) -> Result<RefundRequest, StoreError> {
        SledStore::update_request(self, id, change).await
    }

    async fn submit_refund(
        &self,
        id: RequestId,
        refund: RefundId,
        stripe_status: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<RefundRequest, crate::domain::StateError>, StoreError> {
        SledStore::submit_refund(self, id, refund, stripe_status, now).await
    }

    async fn import_request(&self, request: &RefundRequest) -> Result<(), StoreError> {
        SledStore::import_request(self, request)
    }

    async fn get_request(&self, id: RequestId) -> Result<Option<RefundRequest>, StoreError> {
        SledStore::get_request(self, id)
    }

    async fn requests_with_status(
        &self,
        status: RequestStatus,
        limit: usize,
    ) -> Result<Vec<RefundRequest>, StoreError> {
        SledStore::requests_with_status(self, status, limit)
    }

    async fn requests_of(&self, user: &str, limit: usize) -> Result<Vec<RefundRequest>, StoreError> {
        SledStore::requests_of(self, user, limit)
    }

    async fn others_on_payment(
        &self,
        request: &RefundRequest,
        limit: usize,
    ) -> Result<(Vec<RefundRequest>, usize), StoreError> {
        SledStore::others_on_payment(self, request, limit)
    }

    async fn totals_on(&self, day: chrono::NaiveDate) -> Result<(u64, Vec<Money>), StoreError> {
        SledStore::totals_on(self, day)
    }

    async fn all_requests(&self) -> Result<Vec<RefundRequest>, StoreError> {
        SledStore::all_requests(self)
    }

    async fn oldest_open_since(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        SledStore::oldest_open_since(self)
    }

    async fn audit_trail(&self) -> Result<AuditTrail, StoreError> {
        SledStore::audit_trail(self)
    }

    async fn audit_of(&self, id: RequestId) -> Result<Vec<AuditEntry>, StoreError> {
        SledStore::audit_of(self, id)
    }

    async fn apply_refund_updates(
        &self,
        event_id: Option<&str>,
        updates: &[RefundUpdate],
        now: DateTime<Utc>,
    ) -> Result<EventOutcome, StoreError> {
        SledStore::apply_refund_updates(self, event_id, updates, now).await
    }

    async fn stripe_event_seen(&self, event_id: &str) -> Result<bool, StoreError> {
        SledStore::stripe_event_seen(self, event_id)
    }

    async fn remember_slack_event(&self, event_id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        SledStore::remember_slack_event(self, event_id, now).await
    }

    async fn prune_seen_events(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
        SledStore::prune_seen_events(self, cutoff).await
    }

    async fn events_cursor(&self) -> Result<Option<String>, StoreError> {
        SledStore::events_cursor(self)
    }

    async fn set_events_cursor(&self, event_id: Option<&str>) -> Result<(), StoreError> {
        SledStore::set_events_cursor(self, event_id).await
    }

    async fn events_looked_back_at(&self) -> Result<Option<i64>, StoreError> {
        SledStore::events_looked_back_at(self)
    }

    async fn set_events_looked_back_at(&self, at: i64) -> Result<(), StoreError> {
        SledStore::set_events_looked_back_at(self, at).await
    }

    async fn outside_refunds(&self) -> Result<Vec<OutsideRefund>, StoreError> {
        SledStore::outside_refunds(self)
    }

    async fn email_sent(&self, id: RequestId, kind: EmailKind) -> Result<Option<EmailRecord>, StoreError> {
        SledStore::email_sent(self, id, kind)
    }

    async fn record_email_sent(
        &self,
        id: RequestId,
        kind: EmailKind,
        record: &EmailRecord,
        effects: &[Effect],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        SledStore::record_email_sent(self, id, kind, record, effects, now).await
    }

    async fn claim_alert(
        &self,
        what: &str,
        job_id: u64,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        SledStore::claim_alert(self, what, job_id, since, now).await
    }

    async fn release_alert(&self, what: &str, job_id: u64) -> Result<(), StoreError> {
        SledStore::release_alert(self, what, job_id).await
    }

    async fn remember_home_user(&self, user: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        SledStore::remember_home_user(self, user, now).await
    }

    async fn has_home(&self, user: &str) -> Result<bool, StoreError> {
        SledStore::has_home(self, user)
    }

    async fn enqueue(&self, id: RequestId, effects: &[Effect], now: DateTime<Utc>) -> Result<(), StoreError> {
        SledStore::enqueue(self, id, effects, now).await
    }

    async fn all_jobs(&self) -> Result<Vec<Job>, StoreError> {
        SledStore::all_jobs(self)
    }

    async fn due_jobs(
        &self,
        wanted: &[(crate::domain::Lane, usize)],
        now: DateTime<Utc>,
        running: &std::collections::HashSet<u64>,
    ) -> Result<crate::storage::DueJobs, StoreError> {
        // One process per data directory: what runs here is all that runs.
        SledStore::due_jobs(self, wanted, now, running)
    }

    async fn complete_job(&self, job: &Job) -> Result<(), StoreError> {
        SledStore::complete_job(self, job).await
    }

    async fn rewrite_job(&self, job: &Job) -> Result<bool, StoreError> {
        SledStore::rewrite_job(self, job).await
    }

    async fn record_job_posted(&self, job: &Job, ts: &str) -> Result<(), StoreError> {
        SledStore::record_job_posted(self, job, ts).await
    }

    async fn find_job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        SledStore::find_job(self, id)
    }

    async fn renew_claims(&self, _: &[u64], _: DateTime<Utc>) -> Result<(), StoreError> {
        // One runner per store: what it runs is in its own `running` set, not in the store.
        Ok(())
    }

    async fn release_claims(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn take_lease(&self, _: &str, _: &str, _: DateTime<Utc>, _: DateTime<Utc>) -> Result<bool, StoreError> {
        // sled's lock on the directory is the lease: no other process holds this store.
        Ok(true)
    }

    async fn release_lease(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn shared_value(&self, key: &str) -> Result<Option<String>, StoreError> {
        let value = self.meta.get(format!("shared/{key}").as_bytes())?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    async fn shared_values(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.shared_values_with(prefix)
    }

    async fn set_shared_value(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let permit = self.commit.write_permit().await;
        self.meta.insert(format!("shared/{key}").as_bytes(), value.as_bytes())?;
        drop(permit);
        self.flush().await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::{PaymentRef, RefundReason, UserId};

    #[test]
    fn a_value_that_cannot_be_encoded_aborts_its_transaction_and_nothing_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        // JSON has no map with non-string keys.
        let unencodable: std::collections::HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let result = store.requests.transaction(|tree| -> TxResult<(), ()> {
            tree.insert(&b"first"[..], &b"written before"[..])?;
            tree.insert(&b"second"[..], encode(&unencodable).map_err(corrupt)?)?;
            Ok(())
        });
        assert!(matches!(SledStore::finish_tx(result), Err(StoreError::Corrupt(_))));
        assert_eq!(store.requests.get(b"first").unwrap(), None, "the whole write is undone");
        assert_eq!(store.requests.get(b"second").unwrap(), None, "never stored empty");
    }

    /// Opens the store in `dir` again in this process. sled's I/O threads can hold the file's
    /// lock a moment after the last handle is dropped (the service waits the same way, in
    /// `app::open_store`); polled, with a deadline.
    pub(crate) fn reopen(dir: &Path) -> SledStore {
        reopen_result(dir).unwrap_or_else(|e| panic!("the store did not open again: {e}"))
    }

    /// Opens the store in `dir` again in this process, once sled's threads let go of its lock.
    pub(crate) fn reopen_result(dir: &Path) -> Result<SledStore, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open(dir) {
                Err(e) if crate::admin::is_locked(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                opened => return opened,
            }
        }
    }

    pub(crate) fn new_request() -> NewRequest {
        NewRequest::full_refund(
            UserId::parse("UREQ").unwrap(),
            "C1",
            PaymentRef::parse("ch_1").unwrap(),
            RefundReason::Duplicate,
        )
    }

    #[tokio::test]
    async fn a_stored_request_survives_reopening_with_its_job() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let store = SledStore::open(dir.path()).unwrap();
            store.insert_request(new_request(), Utc::now()).await.unwrap().id
        };
        let store = reopen(dir.path());
        assert_eq!(id.to_string(), "R-1001");
        assert_eq!(store.get_request(id).unwrap().unwrap().status, RequestStatus::Requested);
        let effects: Vec<_> = store.all_jobs().unwrap().into_iter().map(|j| j.effect).collect();
        assert_eq!(effects, [Effect::CheckPayment, Effect::RefreshHomes]);
        assert_eq!(store.audit_of(id).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_requests_audit_entries_are_read_by_index_and_an_older_store_gets_the_index_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let store = SledStore::open(dir.path()).unwrap();
            let a = store.insert_request(new_request(), Utc::now()).await.unwrap().id;
            let b = store.insert_request(new_request(), Utc::now()).await.unwrap().id;
            let now = Utc::now();
            store.transition(a, now, |r| r.withdraw(&r.requester.clone(), now).map(Some)).await.unwrap().unwrap();
            let trail = store.audit_of(a).unwrap();
            assert_eq!(
                trail.iter().map(|e| e.to).collect::<Vec<_>>(),
                [RequestStatus::Requested, RequestStatus::Withdrawn]
            );
            assert!(store.audit_of(b).unwrap().iter().all(|e| e.request_id == b));
            // As a store written before the index existed.
            for kv in store.index.scan_prefix(b"a") {
                store.index.remove(kv.unwrap().0).unwrap();
            }
            store.meta.remove(b"audit_index_version").unwrap();
            assert!(store.audit_of(a).unwrap().is_empty());
            store.flush().await.unwrap();
            (a, b)
        };
        let store = reopen(dir.path());
        assert_eq!(store.audit_of(a).unwrap().len(), 2);
        assert_eq!(store.audit_of(b).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn request_numbers_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let a = store.insert_request(new_request(), Utc::now()).await.unwrap().id;
        let b = store.insert_request(new_request(), Utc::now()).await.unwrap().id;
        assert_eq!(b.number(), a.number() + 1);
    }

    #[tokio::test]
    async fn a_refused_transition_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let id = store.insert_request(new_request(), Utc::now()).await.unwrap().id;
        let jobs_before = store.all_jobs().unwrap();
        let out = store.transition(id, Utc::now(), |_r| Err::<Option<Transition>, _>("no")).await.unwrap();
        assert_eq!(out, Err("no"));
        assert_eq!(store.audit_of(id).unwrap().len(), 1);
        assert_eq!(store.all_jobs().unwrap(), jobs_before);
    }

    #[tokio::test]
    async fn old_event_ids_are_forgotten_and_recent_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let now = Utc::now();
        store.apply_stripe_event("evt_old", &[], now - chrono::Duration::days(31)).await.unwrap();
        store.apply_stripe_event("evt_new", &[], now - chrono::Duration::days(3)).await.unwrap();
        assert!(store.remember_slack_event("Ev_old", now - chrono::Duration::days(31)).await.unwrap());
        assert_eq!(store.prune_seen_events(now - chrono::Duration::days(30)).await.unwrap(), 2);
        assert_eq!(store.apply_stripe_event("evt_new", &[], now).await.unwrap(), EventOutcome::Duplicate);
        assert_ne!(store.apply_stripe_event("evt_old", &[], now).await.unwrap(), EventOutcome::Duplicate);
    }

    #[tokio::test]
    async fn the_audit_chain_finds_any_edit_removal_or_insertion() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for _ in 0..3 {
            store.insert_request(new_request(), Utc::now()).await.unwrap();
        }
        assert_eq!(store.verify_audit().unwrap(), AuditReport { entries: 3, problem: None });
        let keys: Vec<_> = store.audit.iter().keys().map(|k| k.unwrap()).filter(|k| k.len() == 8).collect();
        let original = store.audit.get(&keys[1]).unwrap().unwrap();

        // An edited entry.
        let mut edited: AuditEntry = decode(&original).unwrap();
        edited.detail = Some("asked for 1 on ch_1".into());
        store.audit.insert(&keys[1], encode(&edited).unwrap()).unwrap();
        assert!(store.verify_audit().unwrap().problem.unwrap().contains("was altered"));
        // Rehashing the edit does not help: the next entry no longer follows.
        edited.hash = edited.compute_hash().unwrap();
        store.audit.insert(&keys[1], encode(&edited).unwrap()).unwrap();
        assert!(store.verify_audit().unwrap().problem.unwrap().contains("does not follow"));
        // A removed entry.
        store.audit.insert(&keys[1], original).unwrap();
        assert_eq!(store.verify_audit().unwrap().problem, None);
        let last = store.audit.remove(&keys[2]).unwrap().unwrap();
        assert!(store.verify_audit().unwrap().problem.unwrap().contains("last entries"));
        store.audit.insert(&keys[2], last).unwrap();
        store.audit.remove(&keys[0]).unwrap();
        assert!(store.verify_audit().unwrap().problem.unwrap().contains("does not follow"));
    }

    #[tokio::test]
    async fn a_stripe_event_applies_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let update = RefundUpdate {
            refund: RefundId::parse("re_1").unwrap(),
            status: "succeeded".into(),
            failure_reason: None,
            request_hint: None,
            install: None,
            charge: None,
            payment_intent: None,
            amount: None,
        };
        let first = store.apply_stripe_event("evt_1", std::slice::from_ref(&update), Utc::now()).await.unwrap();
        assert_eq!(first, EventOutcome::Applied(vec![RefundOutcome::NotOurs(update.refund.clone())]));
        let again = store.apply_stripe_event("evt_1", &[update], Utc::now()).await.unwrap();
        assert_eq!(again, EventOutcome::Duplicate);
    }

    #[tokio::test]
    async fn a_webhook_faster_than_stripes_answer_is_matched_by_metadata_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let id = store.insert_request(new_request(), Utc::now()).await.unwrap().id;
        let usd = crate::domain::Currency::parse("usd").unwrap();
        let facts = crate::domain::ChargeFacts {
            charge: crate::domain::ChargeId::parse("ch_1").unwrap(),
            payment_intent: None,
            amount: Money::new(2500, usd),
            amount_refunded: Money::new(0, usd),
            created: Utc::now(),
            customer_email: None,
            customer_name: None,
            card: None,
            refunds: None,
            fraud_warnings: vec![],
            disputes: vec![],
            unreadable: vec![],
        };
        let approver = UserId::parse("UFIN").unwrap();
        let approvers = crate::domain::Authority::of(crate::domain::Approvers::new([approver.clone()]));
        let now = Utc::now();
        let one = crate::domain::policy::PolicyDecision::new(crate::domain::policy::Route::Approvals(1), "");
        store
            .transition(id, now, |r| r.accept(facts.clone(), Money::new(2500, usd), one.clone(), now).map(Some))
            .await
            .unwrap()
            .unwrap();
        store
            .transition(id, now, |r| {
                r.approve(&approver, &approvers, &crate::domain::Approval::default(), now).map(Some)
            })
            .await
            .unwrap()
            .unwrap();
        let refund = RefundId::parse("re_1").unwrap();
        let update = RefundUpdate {
            refund: refund.clone(),
            status: "succeeded".into(),
            failure_reason: None,
            request_hint: Some(id),
            install: Some(store.install_id().to_string()),
            charge: Some(ChargeId::parse("ch_1").unwrap()),
            payment_intent: None,
            amount: None,
        };
        let outcome = store.apply_stripe_event("evt_1", &[update], now).await.unwrap();
        assert_eq!(outcome, EventOutcome::Applied(vec![RefundOutcome::Moved(id, RequestStatus::Succeeded)]));
        // Stripe's answer to the refund call arrives afterwards and moves nothing back.
        let after = store.submit_refund(id, refund, "pending", now).await.unwrap().unwrap();
        assert_eq!(after.status, RequestStatus::Succeeded);
        assert_eq!(after.refund.unwrap().id.as_str(), "re_1");
    }
}
