//! The durable job queue: jobs, the order they run in, and the index that finds the due ones.
//!
//! Trees:
//! - `jobs`: request id (8) ‖ lane (1) ‖ job id (8) → [`Job`]; only outstanding jobs live here;
//! - `queue`: two kinds of keys, both kept in step by the transaction that changes a job:
//!   - `l` ‖ request id ‖ lane → the ids of the lane's outstanding jobs, oldest first (8 bytes
//!     each): a lane runs one job at a time, in order;
//!   - `d` ‖ lane ‖ due time (ms, big-endian with the sign flipped) ‖ job key → nothing: one
//!     entry for the head of each lane that is not parked, so the due jobs of a kind of work are
//!     the first keys of its range, whatever the backlog behind them.
//!
//! Finding work therefore reads only the entries it returns (plus the few jobs already
//! running), never every outstanding job.

use super::{SledStore, TxResult, corrupt, decode, encode};
use crate::domain::{Effect, Lane, RequestId};
use crate::storage::{DueJobs, Job, StoreError};
use chrono::{DateTime, TimeZone, Utc};
use sled::Transactional;
use sled::transaction::TransactionalTree;
use std::collections::HashSet;

impl Job {
    pub(super) fn key(&self) -> JobKey {
        JobKey::new(self.request_id, self.effect.lane(), self.id)
    }
}

/// Where a job is stored; orders jobs by request, lane, then creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobKey(pub(super) [u8; 17]);

impl JobKey {
    pub(super) fn new(request: RequestId, lane: Lane, id: u64) -> Self {
        let mut k = [0u8; 17];
        k[..8].copy_from_slice(&request.to_key());
        k[8] = lane as u8;
        k[9..].copy_from_slice(&id.to_be_bytes());
        JobKey(k)
    }

    /// The key of the next job in the same lane.
    fn sibling(&self, id: u64) -> JobKey {
        let mut k = self.0;
        k[9..].copy_from_slice(&id.to_be_bytes());
        JobKey(k)
    }

    fn lane_key(&self) -> [u8; 10] {
        let mut k = [0u8; 10];
        k[0] = b'l';
        k[1..].copy_from_slice(&self.0[..9]);
        k
    }
}

/// Milliseconds since the epoch, ordered as bytes (the sign bit flipped, so dates before 1970
/// would still sort first).
fn time_bytes(at: DateTime<Utc>) -> [u8; 8] {
    ((at.timestamp_millis() as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_from_bytes(bytes: &[u8]) -> Option<DateTime<Utc>> {
    let millis = (u64::from_be_bytes(bytes.try_into().ok()?) ^ (1 << 63)) as i64;
    Utc.timestamp_millis_opt(millis).single()
}

fn due_prefix(lane: Lane) -> [u8; 2] {
    [b'd', lane as u8]
}

fn due_key(job: &Job) -> [u8; 27] {
    let mut k = [0u8; 27];
    k[..2].copy_from_slice(&due_prefix(job.lane()));
    k[2..10].copy_from_slice(&time_bytes(job.not_before));
    k[10..].copy_from_slice(&job.key().0);
    k
}

fn lane_ids(bytes: &[u8]) -> Vec<u64> {
    bytes.chunks_exact(8).filter_map(|c| c.try_into().ok().map(u64::from_be_bytes)).collect()
}

fn lane_bytes(ids: &[u64]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_be_bytes()).collect()
}

fn read_lane<E>(queue: &TransactionalTree, key: &JobKey) -> TxResult<Vec<u64>, E> {
    Ok(queue.get(key.lane_key())?.map(|v| lane_ids(&v)).unwrap_or_default())
}

fn write_lane<E>(queue: &TransactionalTree, key: &JobKey, ids: &[u64]) -> TxResult<(), E> {
    if ids.is_empty() {
        queue.remove(&key.lane_key()[..])?;
    } else {
        queue.insert(&key.lane_key()[..], lane_bytes(ids))?;
    }
    Ok(())
}

/// Adds one job per effect, each at the end of its lane; a job that heads its lane is due at once.
pub(super) fn enqueue_in<E>(
    jobs: &TransactionalTree,
    queue: &TransactionalTree,
    request: RequestId,
    effects: &[Effect],
    now: DateTime<Utc>,
) -> TxResult<(), E> {
    for effect in effects {
        let job = Job {
            id: jobs.generate_id()?,
            request_id: request,
            effect: effect.clone(),
            attempts: 0,
            not_before: now,
            created_at: now,
            last_error: None,
            parked: false,
            posted_ts: None,
        };
        let key = job.key();
        jobs.insert(&key.0[..], encode(&job).map_err(corrupt)?)?;
        let mut lane = read_lane(queue, &key)?;
        if lane.is_empty() {
            queue.insert(&due_key(&job)[..], &[])?;
        }
        lane.push(job.id);
        write_lane(queue, &key, &lane)?;
    }
    Ok(())
}

/// Stores a job's new state, keeping its due entry in step: a lane's head has one unless parked.
pub(super) fn rewrite_in<E>(jobs: &TransactionalTree, queue: &TransactionalTree, job: &Job) -> TxResult<bool, E> {
    let key = job.key();
    let Some(stored) = jobs.get(key.0)? else { return Ok(false) };
    let stored: Job = serde_json::from_slice(&stored).map_err(corrupt)?;
    queue.remove(&due_key(&stored)[..])?;
    // The runner reschedules from the copy it claimed; a Slack message the handler recorded
    // meanwhile must survive that, or the retry would post it again.
    let mut job = job.clone();
    job.posted_ts = job.posted_ts.or(stored.posted_ts);
    let job = &job;
    jobs.insert(&key.0[..], encode(job).map_err(corrupt)?)?;
    let heads_its_lane = read_lane(queue, &key)?.first() == Some(&job.id);
    if heads_its_lane && !job.parked {
        queue.insert(&due_key(job)[..], &[])?;
    }
    Ok(true)
}

/// Removes a finished job; the next job of its lane becomes due.
pub(super) fn complete_in<E>(jobs: &TransactionalTree, queue: &TransactionalTree, key: JobKey) -> TxResult<(), E> {
    let Some(stored) = jobs.remove(&key.0[..])? else { return Ok(()) };
    let stored: Job = serde_json::from_slice(&stored).map_err(corrupt)?;
    queue.remove(&due_key(&stored)[..])?;
    let mut lane = read_lane(queue, &key)?;
    lane.retain(|id| *id != stored.id);
    write_lane(queue, &key, &lane)?;
    if let Some(next) = lane.first() {
        let bytes = jobs.get(key.sibling(*next).0)?.ok_or_else(|| corrupt(format!("job {next} is missing")))?;
        let next: Job = serde_json::from_slice(&bytes).map_err(corrupt)?;
        if !next.parked {
            queue.insert(&due_key(&next)[..], &[])?;
        }
    }
    Ok(())
}

/// The key under which the queue index's layout version is kept in `meta`.
const QUEUE_VERSION_KEY: &[u8] = b"queue_index_version";
/// 2: requester DMs moved to a lane of their own; jobs stored under their old lane are moved.
const QUEUE_VERSION: &[u8] = b"2";

impl SledStore {
    /// Builds the queue index from the jobs when it is missing (a store made before it existed).
    pub(super) fn ensure_queue_index(&self) -> Result<(), StoreError> {
        if self.meta.get(QUEUE_VERSION_KEY)?.as_deref() == Some(QUEUE_VERSION) {
            return Ok(());
        }
        // A job's key holds its lane; jobs whose kind of work changed lane move to the new key,
        // keeping their id (and so their order).
        for kv in self.jobs.iter() {
            let (key, value) = kv?;
            let job: Job = decode(&value)?;
            if key.as_ref() != job.key().0 {
                self.jobs.insert(job.key().0, value)?;
                self.jobs.remove(key)?;
            }
        }
        self.queue.clear()?;
        let mut lanes: Vec<(JobKey, Vec<u64>)> = vec![];
        for kv in self.jobs.iter() {
            let (_, value) = kv?;
            let job: Job = decode(&value)?;
            let key = job.key();
            match lanes.last_mut() {
                Some((head, ids)) if head.lane_key() == key.lane_key() => ids.push(job.id),
                _ => {
                    if !job.parked {
                        self.queue.insert(due_key(&job), &[])?;
                    }
                    lanes.push((key, vec![job.id]));
                }
            }
        }
        for (key, ids) in lanes {
            self.queue.insert(key.lane_key(), lane_bytes(&ids))?;
        }
        self.meta.insert(QUEUE_VERSION_KEY, QUEUE_VERSION)?;
        self.db.flush()?;
        Ok(())
    }

    /// Adds jobs for a request outside any transition.
    pub async fn enqueue(&self, id: RequestId, effects: &[Effect], now: DateTime<Utc>) -> Result<(), StoreError> {
        let permit = self.commit.write_permit().await;
        let result =
            (&self.jobs, &self.queue).transaction(|(jobs, queue)| enqueue_in::<()>(jobs, queue, id, effects, now));
        drop(permit);
        Self::finish_tx(result)?.unwrap_or_else(|()| unreachable!());
        self.committed(true).await
    }

    /// Every outstanding job, in key order (by request, lane, creation).
    pub fn all_jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.jobs.iter().map(|kv| decode(&kv?.1)).collect()
    }

    /// For each `(lane, limit)` in `wanted`, up to `limit` jobs of that kind of work that may run
    /// now (the heads of their request's lane, not parked, due, not in `running`), earliest
    /// first; and when the next job not yet due falls due.
    ///
    /// A job returned may not be durable yet: its handler reads what it acts on with
    /// [`SledStore::get_request_durable`], whose sync covers the job too.
    pub fn due_jobs(
        &self,
        wanted: &[(Lane, usize)],
        now: DateTime<Utc>,
        running: &HashSet<u64>,
    ) -> Result<DueJobs, StoreError> {
        let mut found = DueJobs::default();
        for &(lane, limit) in wanted {
            let mut taken = 0;
            for kv in self.queue.scan_prefix(due_prefix(lane)) {
                if taken >= limit {
                    break;
                }
                let (key, _) = kv?;
                let (Some(at), Some(job_key)) = (key.get(2..10).and_then(time_from_bytes), key.get(10..27)) else {
                    return Err(StoreError::Corrupt(format!("a queue entry has a malformed key: {key:?}")));
                };
                if at > now {
                    found.next = Some(found.next.map_or(at, |n| n.min(at)));
                    break;
                }
                let id = u64::from_be_bytes(job_key[9..].try_into().unwrap_or_default());
                if running.contains(&id) {
                    continue;
                }
                // Gone since the scan began (completed by a job that just finished): skip it.
                if let Some(value) = self.jobs.get(job_key)? {
                    found.jobs.push(decode(&value)?);
                    taken += 1;
                }
            }
        }
        Ok(found)
    }

    /// Removes a finished job; the next one of its lane becomes due.
    pub async fn complete_job(&self, job: &Job) -> Result<(), StoreError> {
        self.write_batched(super::batch::Write::CompleteJob(job.key())).await?;
        self.committed(true).await
    }

    /// Records the Slack message a job posted, before the job is completed.
    pub async fn record_job_posted(&self, job: &Job, ts: &str) -> Result<(), StoreError> {
        let mut job = job.clone();
        job.posted_ts = Some(ts.to_string());
        self.reschedule_job(&job).await
    }

    /// Stores a job's new attempt count, error and due time (or parked flag).
    pub async fn reschedule_job(&self, job: &Job) -> Result<(), StoreError> {
        self.rewrite_job(job).await.map(|_| ())
    }

    pub async fn rewrite_job(&self, job: &Job) -> Result<bool, StoreError> {
        let found = match self.write_batched(super::batch::Write::RewriteJob(job.clone())).await? {
            super::batch::Written::Job { found } => found,
            other => unreachable!("a job rewrite wrote {other:?}"),
        };
        self.committed(found).await?;
        Ok(found)
    }

    /// A job by id.
    pub fn find_job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        Ok(self.all_jobs()?.into_iter().find(|j| j.id == id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sled::tests::new_request;

    async fn due(store: &SledStore, at: DateTime<Utc>, running: &HashSet<u64>) -> Vec<Job> {
        let wanted: Vec<_> = Lane::ALL.iter().map(|&l| (l, 100)).collect();
        store.due_jobs(&wanted, at, running).unwrap().jobs
    }

    fn effects(jobs: &[Job]) -> Vec<Effect> {
        let mut out: Vec<_> = jobs.iter().map(|j| j.effect.clone()).collect();
        out.sort_by_key(|e| e.lane());
        out
    }

    #[tokio::test]
    async fn only_the_head_of_each_lane_is_due() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let id = store.insert_request(new_request(), Utc::now()).await.unwrap().id;
        store.enqueue(id, &[Effect::PostCard, Effect::RefreshCard, Effect::CreateRefund], Utc::now()).await.unwrap();
        let first = due(&store, Utc::now(), &HashSet::new()).await;
        assert_eq!(effects(&first), vec![Effect::CheckPayment, Effect::PostCard, Effect::RefreshHomes]);
        let running: HashSet<u64> = first.iter().map(|j| j.id).collect();
        assert!(due(&store, Utc::now(), &running).await.is_empty(), "a lane runs one job at a time");
        let check = first.iter().find(|j| j.effect == Effect::CheckPayment).unwrap();
        store.complete_job(check).await.unwrap();
        let post = first.iter().find(|j| j.effect == Effect::PostCard).unwrap();
        store.complete_job(post).await.unwrap();
        let next = due(&store, Utc::now(), &HashSet::new()).await;
        assert_eq!(effects(&next), vec![Effect::CreateRefund, Effect::RefreshCard, Effect::RefreshHomes]);
    }

    #[tokio::test]
    async fn a_job_put_off_is_due_only_at_its_time_and_says_when() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let now = Utc::now();
        store.insert_request(new_request(), now).await.unwrap();
        let mut check = store.all_jobs().unwrap().into_iter().find(|j| j.effect == Effect::CheckPayment).unwrap();
        check.not_before = now + chrono::Duration::minutes(5);
        check.attempts = 1;
        store.reschedule_job(&check).await.unwrap();
        let wanted = [(Lane::Stripe, 10)];
        let found = store.due_jobs(&wanted, now, &HashSet::new()).unwrap();
        assert!(found.jobs.is_empty());
        assert_eq!(found.next.map(|n| n.timestamp_millis()), Some(check.not_before.timestamp_millis()));
        let later = store.due_jobs(&wanted, check.not_before, &HashSet::new()).unwrap();
        assert_eq!(later.jobs, vec![check]);
    }

    #[tokio::test]
    async fn due_jobs_come_earliest_first_and_at_most_as_many_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let now = Utc::now();
        // Created in one order, due in the reverse one.
        let mut ids = vec![];
        for i in 0..5 {
            let r = store.insert_request(new_request(), now).await.unwrap();
            let mut check = store
                .all_jobs()
                .unwrap()
                .into_iter()
                .find(|j| j.request_id == r.id && j.lane() == Lane::Stripe)
                .unwrap();
            check.not_before = now - chrono::Duration::seconds(i);
            store.reschedule_job(&check).await.unwrap();
            ids.push(check.id);
        }
        let found = store.due_jobs(&[(Lane::Stripe, 3)], now, &HashSet::new()).unwrap();
        let got: Vec<u64> = found.jobs.iter().map(|j| j.id).collect();
        assert_eq!(got, vec![ids[4], ids[3], ids[2]]);
    }

    #[tokio::test]
    async fn a_parked_job_blocks_its_lane_until_put_back_in_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let id = store.insert_request(new_request(), Utc::now()).await.unwrap().id;
        store.enqueue(id, &[Effect::CreateRefund], Utc::now()).await.unwrap();
        let mut job = store.all_jobs().unwrap().into_iter().find(|j| j.effect == Effect::CheckPayment).unwrap();
        job.parked = true;
        job.attempts = 12;
        store.reschedule_job(&job).await.unwrap();
        let stripe = [(Lane::Stripe, 10)];
        assert!(store.due_jobs(&stripe, Utc::now(), &HashSet::new()).unwrap().jobs.is_empty());
        let retried = crate::storage::Store::Sled(store.clone()).retry_job(job.id, Utc::now()).await.unwrap();
        assert_eq!(retried, crate::storage::Retry::Queued);
        let found = store.due_jobs(&stripe, Utc::now(), &HashSet::new()).unwrap().jobs;
        assert_eq!(found.iter().map(|j| j.id).collect::<Vec<_>>(), vec![job.id]);
        let again = store.find_job(job.id).unwrap().unwrap();
        assert_eq!((again.attempts, again.parked), (0, false));
        let missing = crate::storage::Store::Sled(store.clone()).retry_job(999, Utc::now()).await.unwrap();
        assert_eq!(missing, crate::storage::Retry::NoSuchJob);
    }

    #[tokio::test]
    async fn rescheduling_from_the_claimed_copy_keeps_the_slack_message_the_job_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.insert_request(new_request(), Utc::now()).await.unwrap();
        let claimed = store.all_jobs().unwrap().remove(0);
        store.record_job_posted(&claimed, "1700000000.000042").await.unwrap();
        let mut retry = claimed.clone();
        retry.attempts = 1;
        retry.last_error = Some("Slack answered 500".into());
        store.reschedule_job(&retry).await.unwrap();
        let stored = store.find_job(claimed.id).unwrap().unwrap();
        assert_eq!((stored.attempts, stored.posted_ts.as_deref()), (1, Some("1700000000.000042")));
    }

    #[tokio::test]
    async fn a_store_without_the_queue_index_gets_it_built_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let id = store.insert_request(new_request(), Utc::now()).await.unwrap().id;
            store.enqueue(id, &[Effect::CreateRefund], Utc::now()).await.unwrap();
            // As a store written before the index existed: jobs only.
            store.queue.clear().unwrap();
            store.meta.remove(QUEUE_VERSION_KEY).unwrap();
            store.flush().await.unwrap();
        }
        let store = crate::storage::sled::tests::reopen(dir.path());
        let found = due(&store, Utc::now(), &HashSet::new()).await;
        assert_eq!(effects(&found), vec![Effect::CheckPayment, Effect::RefreshHomes]);
        let check = found.iter().find(|j| j.effect == Effect::CheckPayment).unwrap();
        store.complete_job(check).await.unwrap();
        let next = due(&store, Utc::now(), &HashSet::new()).await;
        assert!(next.iter().any(|j| j.effect == Effect::CreateRefund), "the lane's order was rebuilt too");
    }

    #[tokio::test]
    async fn running_jobs_are_skipped_and_do_not_count_against_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let now = Utc::now();
        for _ in 0..50 {
            store.insert_request(new_request(), now).await.unwrap();
        }
        let first = store.due_jobs(&[(Lane::Stripe, 10)], now, &HashSet::new()).unwrap().jobs;
        assert_eq!(first.len(), 10);
        let running: HashSet<u64> = first.iter().map(|j| j.id).collect();
        let second = store.due_jobs(&[(Lane::Stripe, 10)], now, &running).unwrap().jobs;
        assert_eq!(second.len(), 10);
        assert!(second.iter().all(|j| !running.contains(&j.id)));
    }

    #[tokio::test]
    async fn a_requester_message_stored_in_the_old_shared_lane_moves_to_its_own_and_still_runs_once() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let (id, old_key) = {
            let store = SledStore::open(dir.path()).unwrap();
            let id = store.insert_request(new_request(), now).await.unwrap().id;
            let notice = Effect::NotifyRequester(crate::domain::Notice::Rejected);
            store.enqueue(id, std::slice::from_ref(&notice), now).await.unwrap();
            // As a store from before the requester's lane kept it: under the Slack lane.
            let job = store.all_jobs().unwrap().into_iter().find(|j| j.effect == notice).unwrap();
            let old_key = JobKey::new(id, Lane::Slack, job.id);
            let value = store.jobs.remove(job.key().0).unwrap().unwrap();
            store.jobs.insert(old_key.0, value).unwrap();
            store.meta.insert(QUEUE_VERSION_KEY, &b"1"[..]).unwrap();
            store.db.flush().unwrap();
            (id, old_key)
        };
        let store = crate::storage::sled::tests::reopen(dir.path());
        assert!(store.jobs.get(old_key.0).unwrap().is_none(), "moved off the old key");
        let due = store.due_jobs(&[(Lane::Requester, 10)], now, &HashSet::new()).unwrap().jobs;
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].request_id, id);
        store.complete_job(&due[0]).await.unwrap();
        assert!(store.due_jobs(&[(Lane::Requester, 10)], now, &HashSet::new()).unwrap().jobs.is_empty());
        assert!(store.all_jobs().unwrap().iter().all(|j| j.lane() != Lane::Requester), "completed, not left behind");
    }
}
