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

    /// Writes the mark for what is on disk now.
    pub async fn write_mark(&self) -> Result<(), StoreError> {
        let (audit_seq, next_request_number) = self.reached()?;
        self.flush().await?;
        let mark = Mark { audit_seq, next_request_number, written_at: chrono::Utc::now() };
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            // Its own temporary file: two writers (the periodic one and the one at stop) never
            // write into one file; whichever renames last wins, and either is true.
            let partial = dir.join(format!("{FILE}.{:08x}.partial", rand::random::<u32>()));
            let mut file = std::fs::File::create(&partial)?;
            file.write_all(&serde_json::to_vec(&mark).map_err(std::io::Error::other)?)?;
            file.sync_all()?;
            std::fs::rename(&partial, path(&dir))?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("the high-water mark task failed: {e}")))??;
        Ok(())
    }

    /// Refuses a store that is behind its mark: its files lost data.
    pub(super) fn check_mark(&self) -> Result<(), StoreError> {
        let Ok(text) = std::fs::read(path(&self.dir)) else { return Ok(()) };
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
