//! Group commit: one thread makes sled's writes power-safe, and every writer waits for the sync
//! that covers its write.
//!
//! sled 0.34's `flush()` ends in `sync_file_range`, which neither empties the device's write
//! cache nor syncs the file's metadata, so a power cut can undo a write it reported as flushed
//! (sled #1351). And its `flush_async` deadlocks the process when several run at once (sled
//! #1308, never released). So nothing here calls `flush_async`: a writer takes a [`Ticket`]
//! after its write is in sled and waits; the committer thread calls the blocking `Db::flush()`,
//! then `fdatasync`s the log file (and any blob file sled wrote since the last sync), and wakes
//! every writer whose ticket that sync covered. Writes that arrive together share one sync.
//!
//! sled's `flush()` holds sled's global concurrency-control read lock for as long as it waits
//! on the device, and every sled transaction needs that lock for writing: a transaction that
//! starts during a flush blocks its thread until the flush ends. On a tokio worker that stalls
//! every task of the runtime. So writers take a [`WritePermit`] (an async read of the committer's
//! gate) around their transaction, and the committer holds the gate exclusively during
//! `flush()`: a write that comes during a flush waits as a task, not as a blocked thread, and the
//! writes that gathered meanwhile go out together in the next sync.
//!
//! A failed sync poisons the store for good, as PostgreSQL learned from "fsyncgate": after an
//! `fsync` error the kernel may have dropped the dirty pages, and a later `fsync` that succeeds
//! proves nothing about them. Every writer then gets the error, and nothing more is acknowledged.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::watch;

/// Why a write could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the store could not be synced to disk: {0}")]
pub struct SyncError(Arc<str>);

/// A place in the order of writes: a sync that starts after the ticket was taken covers every
/// write made before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// What the committer thread is asked to do.
struct Queue {
    /// The last ticket handed out.
    issued: u64,
    stopping: bool,
}

/// What is on disk.
#[derive(Debug, Clone, Default)]
struct Synced {
    /// Every ticket up to this one is durable.
    through: u64,
    /// Set once, by the first failed sync; never cleared.
    failure: Option<Arc<str>>,
}

struct Shared {
    /// Tickets handed out; the committer thread sleeps on `wake` until there is one to cover.
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Written only by the committer thread; writers wait on it.
    synced: watch::Sender<Synced>,
    /// Syncs done, for `/metrics` and for the tests that prove writes share them.
    syncs: std::sync::atomic::AtomicU64,
    /// Shared by writers for the length of their sled transaction; held exclusively by the
    /// committer while sled's `flush()` holds sled's lock.
    gate: Arc<tokio::sync::RwLock<()>>,
}

/// Held around a sled transaction (never across an `.await`): while it is held, the committer
/// does not start sled's `flush()`.
pub type WritePermit = tokio::sync::OwnedRwLockReadGuard<()>;

/// The committer: a thread of its own (never sled's pool, never a tokio worker), stopped and
/// joined when the last handle is dropped, so the store's lock is released with it.
pub struct Committer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

/// The files a sync covers: sled's log (`db`) and its `blobs/` directory, where values too large
/// for the log go, each in a file sled writes without ever syncing it.
struct Files {
    log: File,
    dir: PathBuf,
    blobs: PathBuf,
}

impl Files {
    fn open(dir: &Path) -> io::Result<Files> {
        let files = Files { log: File::open(dir.join("db"))?, dir: dir.to_path_buf(), blobs: dir.join("blobs") };
        // The directory entries of a store just created (its `db`, `conf` and `blobs/`).
        sync_dir(&files.dir)?;
        if files.blobs.is_dir() {
            sync_dir(&files.blobs)?;
        }
        Ok(files)
    }

    /// `fdatasync` of everything sled may have written since the last call. Every blob file is
    /// synced each time (there are none unless a value passes about 128 KiB, and a clean file
    /// syncs at once): one remembered as synced could have been listed while sled was still
    /// writing it.
    fn sync(&mut self) -> io::Result<()> {
        self.log.sync_data()?;
        let Ok(entries) = std::fs::read_dir(&self.blobs) else { return Ok(()) };
        let mut any = false;
        for entry in entries {
            File::open(entry?.path())?.sync_data()?;
            any = true;
        }
        if any {
            sync_dir(&self.blobs)?;
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Committer {
    /// Starts the committer thread for the store `db` opened in `dir`.
    pub fn start(db: sled::Db, dir: &Path) -> io::Result<Committer> {
        let files = Files::open(dir)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { issued: 0, stopping: false }),
            wake: Condvar::new(),
            synced: watch::Sender::new(Synced::default()),
            syncs: Default::default(),
            gate: Arc::new(tokio::sync::RwLock::new(())),
        });
        let thread = std::thread::Builder::new().name("refund-desk-commit".into()).spawn({
            let shared = shared.clone();
            move || run_committer(&shared, &db, files)
        })?;
        Ok(Committer { shared, thread: Some(thread) })
    }

    /// Waits until no sled `flush()` is running, and keeps one from starting until the permit is
    /// dropped: take it before a sled transaction, drop it right after.
    pub async fn write_permit(&self) -> WritePermit {
        self.shared.gate.clone().read_owned().await
    }

    /// Holds every writer off (and the committer's flush) while held: what is read meanwhile
    /// is one moment of the store, as a backup needs.
    pub async fn exclusive(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.shared.gate.clone().write_owned().await
    }

    /// A ticket for every write already made. Take it after the write, then [`Committer::wait`].
    pub fn ticket(&self) -> Ticket {
        let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.issued += 1;
        let ticket = Ticket(queue.issued);
        drop(queue);
        self.shared.wake.notify_one();
        ticket
    }

    /// Waits until a sync covers `ticket`.
    pub async fn wait(&self, ticket: Ticket) -> Result<(), SyncError> {
        let mut synced = self.shared.synced.subscribe();
        // The sender lives in `shared`, which `self` keeps alive, so the channel cannot close.
        let state = synced
            .wait_for(|s| s.through >= ticket.0 || s.failure.is_some())
            .await
            .map_err(|_| SyncError("the committer stopped".into()))?;
        match &state.failure {
            Some(why) if state.through < ticket.0 => Err(SyncError(why.clone())),
            _ => Ok(()),
        }
    }

    /// Makes every write made so far durable.
    pub async fn sync(&self) -> Result<(), SyncError> {
        self.wait(self.ticket()).await
    }

    /// How many syncs have been done.
    pub fn syncs(&self) -> u64 {
        self.shared.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a sync has failed, so that nothing more can be acknowledged.
    pub fn failure(&self) -> Option<SyncError> {
        self.shared.synced.borrow().failure.clone().map(SyncError)
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.shared.queue.lock().unwrap_or_else(|p| p.into_inner()).stopping = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The committer thread: sync whenever tickets wait, until stopped with none waiting.
fn run_committer(shared: &Shared, db: &sled::Db, mut files: Files) {
    let mut done = 0;
    loop {
        let target = {
            let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            while queue.issued == done && !queue.stopping {
                queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
            if queue.issued == done {
                break; // stopping, and every write is covered
            }
            queue.issued
        };
        let started = Instant::now();
        let flushed = {
            // No writer is inside a transaction now, and none starts until sled lets go of
            // its lock; they wait as tasks (see the top of this file).
            let _gate = shared.gate.blocking_write();
            db.flush()
        };
        let result = flushed.map_err(|e| e.to_string()).and_then(|_| files.sync().map_err(|e| e.to_string()));
        metrics::histogram!("refund_desk_store_sync_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("refund_desk_store_sync_writes").record((target - done) as f64);
        match result {
            Ok(()) => {
                done = target;
                shared.syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                shared.synced.send_modify(|s| s.through = target);
            }
            Err(why) => {
                tracing::error!(error = %why, "the store could not be synced; nothing more will be acknowledged");
                metrics::counter!("refund_desk_store_sync_failures_total").increment(1);
                shared.synced.send_modify(|s| s.failure = Some(why.into()));
                // Wait to be stopped; every writer from now on gets the failure.
                let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
                while !queue.stopping {
                    queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_that_wait_together_share_one_sync_and_all_return() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let committer = Arc::new(Committer::start(db.clone(), dir.path()).unwrap());
        let mut waiters = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            let (db, committer) = (db.clone(), committer.clone());
            waiters.spawn(async move {
                db.insert(i.to_be_bytes(), &[1u8]).unwrap();
                committer.wait(committer.ticket()).await
            });
        }
        while let Some(done) = waiters.join_next().await {
            done.unwrap().unwrap();
        }
        assert_eq!(db.len(), 200);
        let syncs = committer.syncs();
        assert!((1..200).contains(&syncs), "200 writes waiting together took {syncs} syncs");
    }

    #[tokio::test]
    async fn dropping_the_committer_releases_the_store() {
        let dir = tempfile::tempdir().unwrap();
        {
            // As the store opens it: no sled flusher thread, whose own handle would hold the
            // lock a moment after the drop (this test flaked under CI's load that way).
            let db = sled::Config::new().path(dir.path()).flush_every_ms(None).open().unwrap();
            let committer = Committer::start(db.clone(), dir.path()).unwrap();
            db.insert(b"k", b"v").unwrap();
            committer.sync().await.unwrap();
            drop(db);
        }
        // The committer thread's handle on the database is gone: it opens again in this process.
        // sled's own I/O pool may still hold the locked file a moment after the write it
        // reported (`iobuf.rs` hands each buffer write to `threadpool::spawn` with a clone of
        // the log), so the open is polled, with a deadline, as start-up does; a handle the
        // committer kept would hold the lock past it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match sled::Config::new().path(dir.path()).open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                opened => break opened.unwrap(),
            }
        };
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }
}
