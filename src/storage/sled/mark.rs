//! The high-water mark: sled, finding its log file damaged, opens anyway with what it could read
//! up to the damage, silently dropping the rest (a corrupted `db` file opened with 22 of 50
//! requests, or none, in our trials). So the desk writes, beside the store, how far the store
//! had durably come (the audit chain's head and the request counter), and refuses to open a
//! store that is behind its mark: that store lost data, and only a restore can put it right.
//!
//! The mark only ever claims what is on disk: the head is read *before* the sync that makes it
//! durable, and the mark written after it, through a temporary file, synced and renamed.

use super::{AUDIT_HEAD, FIRST_REQUEST_NUMBER, NEXT_REQUEST_KEY, SledStore, decode};
use crate::storage::StoreError;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

const FILE: &str = "refund-desk.mark";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Mark {
    audit_seq: u64,
    next_request_number: u64,
    written_at: chrono::DateTime<chrono::Utc>,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

impl SledStore {
    /// How far the store has come: the audit head's sequence number and the request counter.
    fn reached(&self) -> Result<(u64, u64), StoreError> {
        let seq = self.audit.get(AUDIT_HEAD)?.map(|h| decode::<(u64, String)>(&h)).transpose()?.map_or(0, |h| h.0);
        let next = self
            .meta
            .get(NEXT_REQUEST_KEY)?
            .and_then(|v| v.as_ref().try_into().ok())
            .map_or(FIRST_REQUEST_NUMBER, u64::from_be_bytes);
        Ok((seq, next))
    }

    /// Writes the mark for what is on disk now, unless the last one written says as much.
    pub async fn write_mark(&self) -> Result<(), StoreError> {
        let reached = self.reached()?;
        if *self.marked.lock().unwrap_or_else(|p| p.into_inner()) == Some(reached) {
            return Ok(());
        }
        let (audit_seq, next_request_number) = reached;
        self.flush().await?;
        let mark = Mark { audit_seq, next_request_number, written_at: chrono::Utc::now() };
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            // Its own temporary file: two writers (the periodic one and the one at stop) never
            // write into one file; whichever renames last wins, and either is true.
            let partial = dir.join(format!("{FILE}.{:08x}.partial", rand::random::<u32>()));
            let written = (|| {
                let mut file = std::fs::File::create(&partial)?;
                file.write_all(&serde_json::to_vec(&mark).map_err(std::io::Error::other)?)?;
                file.sync_all()?;
                std::fs::rename(&partial, path(&dir))
            })();
            if written.is_err() {
                // A full disk must not collect a partial file every round.
                let _ = std::fs::remove_file(&partial);
            }
            written?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("the high-water mark task failed: {e}")))??;
        // Two writers may finish out of order; either mark is true, and the next differing
        // reach writes again.
        *self.marked.lock().unwrap_or_else(|p| p.into_inner()) = Some(reached);
        Ok(())
    }

    /// Refuses a store that is behind its mark: its files lost data.
    pub(super) fn check_mark(&self) -> Result<(), StoreError> {
        let text = match std::fs::read(path(&self.dir)) {
            Ok(text) => text,
            // A store from before marks, or a new one.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::Corrupt(format!("its high-water mark {FILE} cannot be read: {e}"))),
        };
        let mark: Mark = serde_json::from_slice(&text)
            .map_err(|e| StoreError::Corrupt(format!("its high-water mark {FILE} cannot be read: {e}")))?;
        let (seq, next) = self.reached()?;
        if seq < mark.audit_seq || next < mark.next_request_number {
            return Err(StoreError::Corrupt(format!(
                "its files hold the audit trail up to entry {seq} and requests up to R-{}, but on {} it had reached \
                 entry {} and R-{}: sled dropped what it could not read",
                next.saturating_sub(1),
                mark.written_at.format("%Y-%m-%d %H:%M:%S UTC"),
                mark.audit_seq,
                mark.next_request_number.saturating_sub(1)
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sled::tests::new_request;

    #[tokio::test]
    async fn an_idle_store_writes_no_new_mark_and_one_that_moved_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.write_mark().await.unwrap();
        let first = std::fs::read(path(dir.path())).unwrap();
        let syncs = store.commit.syncs();
        store.write_mark().await.unwrap();
        assert_eq!(store.commit.syncs(), syncs, "nothing moved: no sync, no write");
        assert_eq!(std::fs::read(path(dir.path())).unwrap(), first);
        store.insert_request(new_request(), chrono::Utc::now()).await.unwrap();
        store.write_mark().await.unwrap();
        let mark: Mark = serde_json::from_slice(&std::fs::read(path(dir.path())).unwrap()).unwrap();
        assert_eq!(mark.next_request_number, FIRST_REQUEST_NUMBER + 1, "the store moved: a new mark");
        let partials = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".partial"));
        assert_eq!(partials.count(), 0);
    }

    #[test]
    fn a_mark_that_cannot_be_read_stops_the_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open(dir.path()).unwrap());
        // A directory where the mark should be: it exists, but reading it fails.
        std::fs::create_dir(path(dir.path())).unwrap();
        let opened = crate::storage::sled::tests::reopen_result(dir.path());
        assert!(matches!(opened, Err(StoreError::Corrupt(why)) if why.contains("cannot be read")));
    }
}
