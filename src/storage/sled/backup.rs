//! Backups of the embedded store, and restoring one.
//!
//! A backup is every tree's keys and values, read while no write runs (the commit gate held
//! exclusively), so the file is one moment of the store, plus the floor of sled's id counter
//! (job ids and audit sequence numbers come from it: a restored store must go on above it).
//! Beside the file, a manifest holds its SHA-256, the request counter and the audit chain's head.
//!
//! The file: a magic line, then per tree `T`, its name, and `I` key value per entry, `E` at its
//! end; `Z` and the id floor close it. Every length is a big-endian `u32`.

use super::{AUDIT_HEAD, FIRST_REQUEST_NUMBER, NEXT_REQUEST_KEY, SledStore, decode};
use crate::storage::StoreError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"refund-desk backup v1\n";
/// Marks a restored store: at its next start every request with a refund under way is checked
/// against Stripe before any job runs.
pub const RESTORED_KEY: &[u8] = b"restored_from_backup_at";

/// How far request numbers jump after a restore.
pub const NUMBERS_SKIPPED_AFTER_RESTORE: u64 = 1_000_000;

/// What a backup holds, written beside it as `<file>.manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    /// The backup file's name (in the same directory).
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    pub created_at: DateTime<Utc>,
    pub install_id: String,
    /// The number the next request gets.
    pub next_request_number: u64,
    /// The audit chain's head: its last sequence number and hash.
    pub audit_head: Option<(u64, String)>,
}

impl BackupManifest {
    /// Where the manifest of backup `file` is.
    pub fn path_for(file: &Path) -> PathBuf {
        let mut name = file.file_name().unwrap_or_default().to_os_string();
        name.push(".manifest.json");
        file.with_file_name(name)
    }
}

/// Counts and hashes what goes through it.
struct Hashing<W> {
    inner: W,
    hash: sha2::Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn put(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| std::io::Error::other("a value over 4 GiB"))?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(bytes)
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Backup(e.to_string())
}

impl SledStore {
    /// Writes a backup of the whole store to `to` (through a temporary file, synced, then
    /// renamed) and its manifest beside it. Writes wait while the trees are read.
    pub async fn backup_to(&self, to: &Path) -> Result<BackupManifest, StoreError> {
        let gate = self.commit.exclusive().await;
        let store = self.clone();
        let to = to.to_path_buf();
        let partial = to.with_extension("partial");
        let written = partial.clone();
        let result = tokio::task::spawn_blocking(move || {
            let held = gate;
            let partial = written;
            let file = std::fs::File::create(&partial).map_err(io)?;
            let mut out = Hashing { inner: std::io::BufWriter::new(file), hash: sha2::Sha256::new(), bytes: 0 };
            out.write_all(MAGIC).map_err(io)?;
            for name in store.db.tree_names() {
                let tree = store.db.open_tree(&name)?;
                out.write_all(b"T").map_err(io)?;
                put(&mut out, &name).map_err(io)?;
                for kv in tree.iter() {
                    let (key, value) = kv?;
                    out.write_all(b"I").map_err(io)?;
                    put(&mut out, &key).map_err(io)?;
                    put(&mut out, &value).map_err(io)?;
                }
                out.write_all(b"E").map_err(io)?;
            }
            // Above every id handed out so far.
            let floor = store.db.generate_id()?;
            out.write_all(b"Z").map_err(io)?;
            out.write_all(&floor.to_be_bytes()).map_err(io)?;
            let next_request_number = store
                .meta
                .get(NEXT_REQUEST_KEY)?
                .and_then(|v| v.as_ref().try_into().ok())
                .map_or(FIRST_REQUEST_NUMBER, u64::from_be_bytes);
            let audit_head = store.audit.get(AUDIT_HEAD)?.map(|h| decode::<(u64, String)>(&h)).transpose()?;
            // Writes go on while the file reaches the disk.
            drop(held);
            let Hashing { inner, hash, bytes } = out;
            let file = inner.into_inner().map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)?;
            std::fs::rename(&partial, &to).map_err(io)?;
            let manifest = BackupManifest {
                file: to.file_name().unwrap_or_default().to_string_lossy().into_owned(),
                sha256: hex::encode(hash.finalize()),
                bytes,
                created_at: Utc::now(),
                install_id: store.install_id.clone(),
                next_request_number,
                audit_head,
            };
            let text = serde_json::to_vec_pretty(&manifest).map_err(|e| StoreError::Backup(e.to_string()))?;
            write_synced(&BackupManifest::path_for(&to), &text)?;
            if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
            Ok(manifest)
        })
        .await
        .map_err(|e| StoreError::Backup(format!("the backup task failed: {e}")))?;
        if result.is_err() {
            // A failed backup leaves nothing behind to fill the disk.
            let _ = std::fs::remove_file(&partial);
        }
        result
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut file = std::fs::File::create(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Why a backup cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0} has no manifest beside it ({1}); a backup is restored only with its manifest")]
    NoManifest(String, String),
    #[error(
        "{file} does not match its manifest: SHA-256 {actual}, the manifest says {expected}; it was altered or cut short"
    )]
    Checksum { file: String, actual: String, expected: String },
    #[error("{0} is not empty; restore into a new directory, then point REFUND_DESK_DATA_DIR at it")]
    NotEmpty(String),
    #[error("{0} is not a refund-desk backup, or it is damaged: {1}")]
    Unreadable(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks `from` against its manifest, loads it into the empty directory `dir`, moves sled's id
/// counter above every id the backup holds, and marks the store restored. Returns the manifest.
pub fn restore(from: &Path, dir: &Path) -> Result<BackupManifest, RestoreError> {
    let shown = from.display().to_string();
    let manifest_path = BackupManifest::path_for(from);
    let manifest: BackupManifest = std::fs::read(&manifest_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| RestoreError::NoManifest(shown.clone(), e))?;
    let bytes = std::fs::read(from).map_err(|e| RestoreError::Unreadable(shown.clone(), e.to_string()))?;
    let actual = hex::encode(sha2::Sha256::digest(&bytes));
    if actual != manifest.sha256 {
        return Err(RestoreError::Checksum { file: shown, actual, expected: manifest.sha256 });
    }
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(RestoreError::NotEmpty(dir.display().to_string()));
    }
    let unreadable = |why: &str| RestoreError::Unreadable(shown.clone(), why.to_string());
    let mut input = bytes.as_slice();
    let mut magic = vec![0; MAGIC.len()];
    input.read_exact(&mut magic).map_err(|_| unreadable("too short"))?;
    if magic != MAGIC {
        return Err(unreadable("it does not start as one"));
    }
    let db = sled::Config::new().path(dir).flush_every_ms(None).open().map_err(StoreError::from)?;
    let take = |input: &mut &[u8]| -> Option<Vec<u8>> {
        let mut len = [0; 4];
        input.read_exact(&mut len).ok()?;
        let len = u32::from_be_bytes(len) as usize;
        let bytes = input.get(..len)?.to_vec();
        *input = &input[len..];
        Some(bytes)
    };
    let mut tree = None;
    let floor = loop {
        let mut tag = [0; 1];
        input.read_exact(&mut tag).map_err(|_| unreadable("it ends early"))?;
        match &tag {
            b"T" => {
                let name = take(&mut input).ok_or_else(|| unreadable("a tree's name is cut"))?;
                tree = Some(db.open_tree(name).map_err(StoreError::from)?);
            }
            b"I" => {
                let (key, value) = (take(&mut input), take(&mut input));
                let (Some(key), Some(value), Some(tree)) = (key, value, &tree) else {
                    return Err(unreadable("an entry is cut"));
                };
                tree.insert(key, value).map_err(StoreError::from)?;
            }
            b"E" => tree = None,
            b"Z" => {
                let mut floor = [0; 8];
                input.read_exact(&mut floor).map_err(|_| unreadable("the end is cut"))?;
                break u64::from_be_bytes(floor);
            }
            _ => return Err(unreadable("an unknown record")),
        }
    };
    // Job ids and audit sequence numbers go on above the backup's.
    while db.generate_id().map_err(StoreError::from)? < floor {}
    let meta = db.open_tree("meta").map_err(StoreError::from)?;
    meta.insert(RESTORED_KEY, Utc::now().to_rfc3339().as_bytes()).map_err(StoreError::from)?;
    // The lost store may have numbered requests after the backup, and a request's number is in
    // its refund's idempotency key: numbering goes on a million further, so none is reused.
    let next = manifest.next_request_number + NUMBERS_SKIPPED_AFTER_RESTORE;
    meta.insert(NEXT_REQUEST_KEY, next.to_be_bytes().to_vec()).map_err(StoreError::from)?;
    db.flush().map_err(StoreError::from)?;
    Ok(manifest)
}
