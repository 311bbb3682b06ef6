//! Writes that arrive together share one sled transaction.
//!
//! Every sled 0.34 transaction seals sled's log buffer twice (`pin_log` rolls the buffer before
//! its batch manifest and seals the manifest's buffer after), and each sealed buffer is written
//! by sled's thread pool with a `pwrite` and a waiting `sync_file_range`, whatever the size of
//! the transaction. One transaction per new request or finished job spends most of a burst's
//! time there and in the thread hand-offs around it. So the writes that need no decision (a new
//! request, a job finished or rescheduled) queue here; the first writer to take the lock writes
//! everything queued then, in one transaction, and hands each its result. Writes that decide
//! (a transition, a Stripe event) keep their own transaction: one refused must not undo another.
//!
//! Each queued write is taken out of the queue by exactly one writer, so it is written once;
//! between taking a batch and the end of its transaction there is no `.await`; and each write
//! waits on a task of its own, so a caller that is cancelled leaves nothing queued or taken.

use super::jobs::{JobKey, complete_in, rewrite_in};
use super::{
    FIRST_REQUEST_NUMBER, NEXT_REQUEST_KEY, SledStore, StoreError, TxResult, TxTrees, bump, corrupt, day_key,
    write_transition,
};
use crate::domain::{NewRequest, RefundRequest, RequestId};
use crate::storage::{ClientKey, Job};
use chrono::{DateTime, Utc};
use sled::Transactional;
use tokio::sync::oneshot;

/// A write that decides nothing, so it can share a transaction with any other.
#[derive(Debug)]
pub(super) enum Write {
    /// A new request, numbered in the order of the batch.
    Insert(NewRequest, DateTime<Utc>),
    /// A new request from an API client, unless its key made one before.
    InsertKeyed(NewRequest, ClientKey, DateTime<Utc>),
    /// A finished job removed; the next of its lane becomes due.
    CompleteJob(JobKey),
    /// A job's attempts, error, due time or parked flag stored.
    RewriteJob(Job),
}

/// What a [`Write`] did (not yet synced).
#[derive(Debug)]
pub(super) enum Written {
    Request(Box<RefundRequest>),
    /// The key made this request before; nothing was written.
    KeyUsed {
        id: RequestId,
        same_body: bool,
    },
    JobCompleted,
    /// Whether the job was still stored.
    Job {
        found: bool,
    },
}

struct Pending {
    write: Write,
    done: oneshot::Sender<Result<Written, StoreError>>,
}

#[derive(Default)]
pub(super) struct WriteQueue {
    pending: std::sync::Mutex<Vec<Pending>>,
    /// Held by the one task writing a batch; whoever takes it next writes what gathered.
    writer: tokio::sync::Mutex<()>,
    /// Transactions written, for the tests that prove writes share them.
    transactions: std::sync::atomic::AtomicU64,
}

impl SledStore {
    /// Queues `write`, and writes the queue if no one else is; returns once `write` is in
    /// sled (the caller then waits for the sync).
    pub(super) async fn write_batched(&self, write: Write) -> Result<Written, StoreError> {
        // On a task of its own: a caller dropped while waiting (an HTTP client that gave up)
        // must neither leave its write queued for whoever writes next, minutes later, nor take
        // a batch and stop. The write is made now, as it would have been without the wait.
        let store = self.clone();
        tokio::spawn(async move { store.write_batched_now(write).await })
            .await
            .map_err(|e| StoreError::Corrupt(format!("a batched write failed: {e}")))?
    }

    async fn write_batched_now(&self, write: Write) -> Result<Written, StoreError> {
        let (done, result) = oneshot::channel();
        self.batch.pending.lock().unwrap_or_else(|p| p.into_inner()).push(Pending { write, done });
        {
            let _writer = self.batch.writer.lock().await;
            let permit = self.commit.write_permit().await;
            let batch = std::mem::take(&mut *self.batch.pending.lock().unwrap_or_else(|p| p.into_inner()));
            if !batch.is_empty() {
                self.write_batch(batch);
            }
            drop(permit);
        }
        // Ours was in that batch or an earlier one, whose writer sent every result before it
        // let go of the lock we just held.
        result.await.map_err(|_| StoreError::Corrupt("a batch of writes was dropped unwritten".into()))?
    }

    /// Writes `batch` in one transaction, in order, and sends each write its result. The caller
    /// holds a write permit.
    fn write_batch(&self, batch: Vec<Pending>) {
        let trees = (&self.requests, &self.audit, &self.jobs, &self.queue, &self.holds, &self.index, &self.meta);
        let result =
            trees.transaction(|(requests, audit, jobs, queue, holds, index, meta)| -> TxResult<Vec<Written>, ()> {
                let tx = TxTrees { requests, audit, jobs, queue, holds, index };
                let mut next_number = None;
                let mut written = Vec::with_capacity(batch.len());
                for pending in &batch {
                    written.push(match &pending.write {
                        Write::Insert(new, now) => insert_new(&tx, meta, &mut next_number, new, *now)?,
                        Write::InsertKeyed(new, key, now) => {
                            let stored = client_key(&key.client, &key.key);
                            match index.get(&stored)? {
                                Some(used) => {
                                    let (fingerprint, id): (String, RequestId) =
                                        serde_json::from_slice(&used).map_err(corrupt)?;
                                    Written::KeyUsed { id, same_body: fingerprint == key.fingerprint }
                                }
                                None => {
                                    let written = insert_new(&tx, meta, &mut next_number, new, *now)?;
                                    if let Written::Request(request) = &written {
                                        index.insert(
                                            stored,
                                            serde_json::to_vec(&(&key.fingerprint, request.id)).map_err(corrupt)?,
                                        )?;
                                    }
                                    written
                                }
                            }
                        }
                        Write::CompleteJob(key) => {
                            complete_in(jobs, queue, *key)?;
                            Written::JobCompleted
                        }
                        Write::RewriteJob(job) => Written::Job { found: rewrite_in(jobs, queue, job)? },
                    });
                }
                if let Some(n) = next_number {
                    meta.insert(NEXT_REQUEST_KEY, &n.to_be_bytes())?;
                }
                Ok(written)
            });
        self.batch.transactions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::histogram!("refund_desk_store_batch_writes").record(batch.len() as f64);
        match Self::finish_tx(result) {
            Ok(written) => {
                let written = written.unwrap_or_else(|()| unreachable!("batched writes never refuse"));
                for (pending, written) in batch.into_iter().zip(written) {
                    let _ = pending.done.send(Ok(written));
                }
            }
            // One bad write (a corrupt job record, say) must not fail the others with it: each
            // is tried again alone.
            Err(e) if batch.len() > 1 => {
                tracing::warn!(error = %e, writes = batch.len(), "a batch of writes failed; writing each alone");
                for pending in batch {
                    self.write_batch(vec![pending]);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "a write failed; nothing was stored");
                if let Some(pending) = batch.into_iter().next() {
                    let _ = pending.done.send(Err(e));
                }
            }
        }
    }
}

/// Numbers and writes a new request, its day's count, its audit entry and its first jobs.
fn insert_new(
    tx: &TxTrees<'_>,
    meta: &sled::transaction::TransactionalTree,
    next_number: &mut Option<u64>,
    new: &NewRequest,
    now: DateTime<Utc>,
) -> TxResult<Written, ()> {
    let number = match *next_number {
        Some(n) => n,
        None => match meta.get(NEXT_REQUEST_KEY)? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(corrupt)?),
            None => FIRST_REQUEST_NUMBER,
        },
    };
    *next_number = Some(number + 1);
    let request = RefundRequest::new(RequestId::new(number), new.clone(), now);
    bump(tx.index, &day_key(&now.format("%Y-%m-%d").to_string(), "requested"), 1, 0)?;
    write_transition(tx, &request, &request.created(), now)?;
    Ok(Written::Request(Box::new(request)))
}

/// Where an API client's idempotency key is kept, in the index tree: the fingerprint of the
/// body it came with and the request it made.
pub(super) fn client_key(client: &str, key: &str) -> Vec<u8> {
    // The client's name holds no `/` (the settings refuse one), so two clients' keys never meet.
    let mut stored = CLIENT_KEY_PREFIX.to_vec();
    stored.extend_from_slice(format!("{client}/{key}").as_bytes());
    stored
}

/// Where client keys start in the index tree (no other index key starts with `c`).
pub(super) const CLIENT_KEY_PREFIX: &[u8] = b"client_key/";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sled::tests::new_request;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_arriving_together_share_transactions_and_each_gets_its_own_number() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut waiters = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            let store = store.clone();
            waiters.spawn(async move {
                let mut new = new_request();
                new.note = crate::domain::Note::parse(&format!("note {i}")).unwrap();
                (i, store.insert_request(new, Utc::now()).await.unwrap())
            });
        }
        let mut numbers = vec![];
        while let Some(done) = waiters.join_next().await {
            let (i, request) = done.unwrap();
            // Each caller got back its own request, as stored.
            assert_eq!(request.note.as_ref().map(|n| n.as_str().to_string()), Some(format!("note {i}")));
            assert_eq!(store.get_request(request.id).unwrap().unwrap(), request);
            numbers.push(request.id.number());
        }
        numbers.sort_unstable();
        assert_eq!(numbers, (1001..1201).collect::<Vec<u64>>(), "numbers are distinct and none is skipped");
        let transactions = store.batch.transactions.load(Ordering::Relaxed);
        assert!(transactions < 200, "200 requests arriving together took {transactions} transactions");
        let audit = store.verify_audit().unwrap();
        assert_eq!((audit.entries, audit.problem), (200, None));
        assert_eq!(store.all_jobs().unwrap().len(), 400, "a check and a Home refresh per request");
        // The next request follows on, after a reopening too.
        drop(store);
        let store = crate::storage::sled::tests::reopen(dir.path());
        assert_eq!(store.insert_request(new_request(), Utc::now()).await.unwrap().id.number(), 1201);
    }

    #[tokio::test]
    async fn one_bad_write_fails_alone_and_the_rest_of_its_batch_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.insert_request(new_request(), Utc::now()).await.unwrap();
        let job = store.all_jobs().unwrap().remove(0);
        // A job record that cannot be read: rewriting it must fail.
        store.jobs.insert(job.key().0, &b"not a job"[..]).unwrap();
        let (mut batch, mut results) = (vec![], vec![]);
        for write in [
            Write::Insert(new_request(), Utc::now()),
            Write::RewriteJob(job.clone()),
            Write::Insert(new_request(), Utc::now()),
        ] {
            let (done, result) = oneshot::channel();
            batch.push(Pending { write, done });
            results.push(result);
        }
        store.write_batch(batch);
        let results: Vec<_> = futures::future::join_all(results).await.into_iter().map(Result::unwrap).collect();
        assert!(matches!(&results[0], Ok(Written::Request(r)) if r.id.number() == 1002), "{:?}", results[0]);
        assert!(matches!(&results[1], Err(StoreError::Corrupt(_))), "{:?}", results[1]);
        assert!(matches!(&results[2], Ok(Written::Request(r)) if r.id.number() == 1003), "{:?}", results[2]);
        assert!(store.get_request(RequestId::new(1003)).unwrap().is_some());
    }

    #[tokio::test]
    async fn a_finished_job_written_in_a_batch_makes_the_next_of_its_lane_due() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let id = store.insert_request(new_request(), Utc::now()).await.unwrap().id;
        store.enqueue(id, &[crate::domain::Effect::CheckPayment], Utc::now()).await.unwrap();
        let lane = crate::domain::Lane::Stripe;
        let due = |store: &SledStore| store.due_jobs(&[(lane, 10)], Utc::now(), &Default::default()).unwrap().jobs;
        let first = due(&store);
        assert_eq!(first.len(), 1, "one job of a lane is due at a time");
        let (a, b) = tokio::join!(store.complete_job(&first[0]), store.insert_request(new_request(), Utc::now()));
        a.unwrap();
        b.unwrap();
        let next = due(&store);
        assert_eq!(next.iter().filter(|j| j.request_id == id).count(), 1);
        assert_ne!(next.iter().find(|j| j.request_id == id).unwrap().id, first[0].id);
    }
}
