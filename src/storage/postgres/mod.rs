//! The PostgreSQL engine: one database shared by every replica of the desk.
//!
//! - Migrations are embedded in the binary (`migrations/`, refinery) and applied at start,
//!   under an advisory lock, so replicas starting together apply them once.
//! - A transition is one transaction: the request row locked (`SELECT ... FOR UPDATE`), with a
//!   transaction-scoped advisory lock on the charge first when the change needs the charge's
//!   holds; the request, its payments, its jobs and its audit entries written; committed (and
//!   so durable) before the caller answers anyone. Audit entries are appended last, under the
//!   lock of the chain's head row, so the chain stays a chain with several writers.
//! - Jobs are handed out with `FOR UPDATE SKIP LOCKED` and a lease (`claimed_until`): a
//!   replica that dies mid-job has its jobs taken over once the lease ends. Only the head of a
//!   request's lane is ever handed out, so the order per request and lane holds across replicas.
//! - Event ids, emails, alert claims and the request counter are unique keys and a sequence:
//!   two replicas receiving the same delivery apply it once.
//! - A transaction PostgreSQL aborts as a deadlock or a serialization failure is run again from
//!   the start: nothing of it was written.

use crate::domain::policy::Hold;
use crate::domain::refund_news::{RefundNewsReads, RefundNewsWrite, apply_refund_news};
use crate::domain::{
    ChargeId, Effect, EmailKind, Lane, Money, NewRequest, RefundId, RefundRequest, RequestId, RequestStatus,
    StateError, Transition,
};
use crate::storage::copy::StoreCopy;
use crate::storage::{
    AuditEntry, AuditTrail, Change, DueJobs, EmailRecord, Engine, EventOutcome, Job, OutsideRefund, RefundUpdate,
    StoreError, payments_of, refunded_change,
};
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool, Transaction};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Json;

mod embedded {
    refinery::embed_migrations!("src/storage/postgres/migrations");
}

/// How long a runner holds a job before another replica may take it over, by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// How often a replica looks for jobs another one added.
const POLL: Duration = Duration::from_millis(500);
/// The advisory lock replicas take to apply migrations one at a time.
const MIGRATION_LOCK: i64 = 0x7265_6675_6e64_0001;
/// How long to wait for a connection, new or from the pool.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a transaction PostgreSQL aborted as a conflict is run again.
const CONFLICT_RETRIES: u32 = 8;

/// The open database.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    install_id: String,
    jobs_added: Arc<Notify>,
    lease: chrono::Duration,
    /// This process's job runner, as the holder of the jobs it claims.
    runner: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("install_id", &self.install_id).finish_non_exhaustive()
    }
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn is_conflict(e: &StoreError) -> bool {
    matches!(e, StoreError::Postgres(e)
        if e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) || e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED))
}

/// Runs `$body` in a transaction with `$tx` bound to it and commits; a transaction PostgreSQL
/// aborted as a conflict (nothing of it written) runs again from the start.
macro_rules! in_tx {
    ($self:ident, $tx:ident => $body:expr) => {{
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut client = $self.client().await?;
            let outcome = async {
                let $tx = client.transaction().await?;
                let value = $body;
                $tx.commit().await?;
                Ok::<_, StoreError>(value)
            }
            .await;
            match outcome {
                Err(e) if is_conflict(&e) && attempt < CONFLICT_RETRIES => {
                    tracing::debug!(error = %e, attempt, "a transaction conflicted; running it again");
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                }
                other => break other,
            }
        }
    }};
}

fn status_name(status: RequestStatus) -> String {
    serde_json::to_value(status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn id_param(id: RequestId) -> i64 {
    id.number() as i64
}

/// The TLS PostgreSQL connections use when the server offers it (`sslmode=prefer`, the
/// default) or must (`sslmode=require`): rustls with the system's roots.
fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl PgStore {
    /// Connects to `url` (`postgres://...`), brings the schema up to date and reads (or makes)
    /// this installation's id. A runner holds a job for `lease` before another may take it.
    pub async fn connect(url: &str, lease: Duration) -> Result<PgStore, StoreError> {
        let store = PgStore::migrated(url, lease).await?;
        let install_id = store.ensure_install_id().await?;
        let store = PgStore { install_id, ..store };
        // Another replica's jobs wake nobody here: look for them now and then. The task ends
        // with the store.
        let weak = Arc::downgrade(&store.jobs_added);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(POLL).await;
                match weak.upgrade() {
                    Some(notify) => notify.notify_one(),
                    None => break,
                }
            }
        });
        Ok(store)
    }

    /// A pool on `url` with the schema brought up to date, and no installation id read yet.
    async fn migrated(url: &str, lease: Duration) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(StoreError::Postgres)?;
        // A database that does not answer fails the call that needs it, rather than hang it.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let manager = deadpool_postgres::Manager::from_config(
            config,
            tls()?,
            deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let store = PgStore {
            pool,
            install_id: String::new(),
            jobs_added: Arc::new(Notify::new()),
            lease: chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60)),
            runner: hex::encode(rand::random::<[u8; 8]>()),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Writes `copy` (another store's whole content) into the database at `url`, in one
    /// transaction, keeping its numbers, ids, hashes and installation id. Refuses a database
    /// that holds anything, or that a desk has already started on (it has an installation id of
    /// its own, which that desk would go on using): nothing is written then.
    pub async fn import_copy(url: &str, copy: &StoreCopy) -> Result<(), StoreError> {
        let store = PgStore::migrated(url, DEFAULT_LEASE).await?;
        let mut client = store.client().await?;
        let tx = client.transaction().await?;
        // The installation id first: a desk starting meanwhile waits on this key, then reads it.
        let claimed = tx
            .execute(
                "INSERT INTO meta (key, value) VALUES ('install_id', $1) ON CONFLICT (key) DO NOTHING",
                &[&copy.install_id],
            )
            .await?;
        if claimed == 0 {
            return Err(StoreError::NotEmpty(
                "a refund-desk has already started on this database (it has an installation id of its own)".into(),
            ));
        }
        let used: Vec<String> = tx
            .query(
                "SELECT t FROM (VALUES
                    ('requests', EXISTS (SELECT 1 FROM requests)),
                    ('audit entries', EXISTS (SELECT 1 FROM audit)),
                    ('jobs', EXISTS (SELECT 1 FROM jobs)),
                    ('Stripe event ids', EXISTS (SELECT 1 FROM stripe_events)),
                    ('Slack event ids', EXISTS (SELECT 1 FROM slack_events)),
                    ('email records', EXISTS (SELECT 1 FROM emails))
                 ) AS held (t, present) WHERE present",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !used.is_empty() {
            return Err(StoreError::NotEmpty(format!("the database already holds {}", used.join(", "))));
        }
        for request in &copy.requests {
            write_request(&tx, request).await?;
        }
        let refund_ids = tx.prepare("INSERT INTO refund_ids (refund, request_id) VALUES ($1, $2)").await?;
        for (refund, id) in &copy.refund_ids {
            tx.execute(&refund_ids, &[refund, &id_param(*id)]).await?;
        }
        let audit = tx.prepare("INSERT INTO audit (seq, request_id, entry) VALUES ($1, $2, $3)").await?;
        for entry in &copy.audit.0 {
            tx.execute(&audit, &[&(entry.seq as i64), &id_param(entry.request_id), &Json(entry)]).await?;
        }
        if let Some((seq, hash)) = &copy.audit.1 {
            tx.execute("INSERT INTO audit_head (id, seq, hash) VALUES (1, $1, $2)", &[&(*seq as i64), hash]).await?;
        }
        let jobs = tx
            .prepare(
                "INSERT INTO jobs (id, request_id, lane, effect, attempts, not_before, created_at, last_error, parked, posted_ts)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .await?;
        for job in &copy.jobs {
            tx.execute(
                &jobs,
                &[
                    &(job.id as i64),
                    &id_param(job.request_id),
                    &i16::from(job.lane() as u8),
                    &Json(&job.effect),
                    &(job.attempts as i32),
                    &job.not_before,
                    &job.created_at,
                    &job.last_error,
                    &job.parked,
                    &job.posted_ts,
                ],
            )
            .await?;
        }
        for (table, column, rows) in [
            ("stripe_events", "id, seen_at", &copy.stripe_events),
            ("slack_events", "id, seen_at", &copy.slack_events),
            ("home_users", "user_id, opened_at", &copy.home_users),
        ] {
            let insert = tx.prepare(&format!("INSERT INTO {table} ({column}) VALUES ($1, $2)")).await?;
            for (key, at) in rows {
                tx.execute(&insert, &[key, at]).await?;
            }
        }
        for (id, kind, record) in &copy.emails {
            tx.execute(
                "INSERT INTO emails (request_id, kind, record) VALUES ($1, $2, $3)",
                &[&id_param(*id), &kind.as_str(), &Json(record)],
            )
            .await?;
        }
        for record in &copy.outside_refunds {
            tx.execute(
                "INSERT INTO outside_refunds (refund, record) VALUES ($1, $2)",
                &[&record.refund.as_str(), &Json(record)],
            )
            .await?;
        }
        for (day, what, n) in &copy.day_totals {
            tx.execute("INSERT INTO day_totals (day, what, n) VALUES ($1, $2, $3)", &[day, what, &(*n as i64)]).await?;
        }
        for (what, job, at) in &copy.alert_claims {
            tx.execute("INSERT INTO alert_claims (what, job_id, at) VALUES ($1, $2, $3)", &[what, &(*job as i64), at])
                .await?;
        }
        for (client, key, fingerprint, id) in &copy.client_keys {
            tx.execute(
                "INSERT INTO client_keys (client, key, fingerprint, request_id, created_at) VALUES ($1, $2, $3, $4, now())",
                &[client, key, fingerprint, &id_param(*id)],
            )
            .await?;
        }
        for (key, value) in &copy.shared_values {
            tx.execute("INSERT INTO meta (key, value) VALUES ($1, $2)", &[&format!("shared/{key}"), value]).await?;
        }
        let meta = [
            ("stripe_events_cursor", copy.events_cursor.clone()),
            ("stripe_events_looked_back_at", copy.events_looked_back_at.map(|at| at.to_string())),
        ];
        for (key, value) in meta {
            if let Some(value) = value {
                tx.execute("INSERT INTO meta (key, value) VALUES ($1, $2)", &[&key, &value]).await?;
            }
        }
        // The counters go on from where the copy's did: `false` makes the next value this one.
        tx.execute("SELECT setval('request_numbers', $1::bigint, false)", &[&(copy.next_request_number as i64)])
            .await?;
        // Past every id the old store ever handed out (alerts and parked-job reports name
        // finished jobs by id), not only past the jobs still waiting.
        let next_job = copy.jobs.iter().map(|j| j.id + 1).max().unwrap_or(1).max(copy.next_job_id);
        tx.execute("SELECT setval(pg_get_serial_sequence('jobs', 'id'), $1::bigint, false)", &[&(next_job as i64)])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
            e => StoreError::Pool(e.to_string()),
        })
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
        // A replica of the previous version, started while a newer one has added a migration
        // (a rolling deploy, a rollback), runs on: migrations only add to the schema.
        let report = embedded::migrations::runner().set_abort_missing(false).run_async(&mut **client).await;
        client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await?;
        let report = report.map_err(|e| StoreError::Migration(e.to_string()))?;
        for applied in report.applied_migrations() {
            tracing::info!(migration = %applied, "applied a database migration");
        }
        Ok(())
    }

    async fn ensure_install_id(&self) -> Result<String, StoreError> {
        let client = self.client().await?;
        let fresh = hex::encode(rand::random::<[u8; 8]>());
        client
            .execute("INSERT INTO meta (key, value) VALUES ('install_id', $1) ON CONFLICT (key) DO NOTHING", &[&fresh])
            .await?;
        let row = client.query_one("SELECT value FROM meta WHERE key = 'install_id'", &[]).await?;
        Ok(row.get(0))
    }

    async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        Ok(client.query_opt("SELECT value FROM meta WHERE key = $1", &[&key]).await?.map(|r| r.get(0)))
    }

    async fn set_meta(&self, key: &str, value: Option<&str>) -> Result<(), StoreError> {
        let client = self.client().await?;
        match value {
            Some(v) => {
                client
                    .execute(
                        "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        &[&key, &v],
                    )
                    .await?
            }
            None => client.execute("DELETE FROM meta WHERE key = $1", &[&key]).await?,
        };
        Ok(())
    }

    async fn requests_where(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<RefundRequest>, StoreError> {
        let client = self.client().await?;
        client.query(sql, params).await?.iter().map(request_of).collect()
    }

    /// Wakes this replica's runner once a write that added jobs is committed.
    fn added_jobs(&self) {
        self.jobs_added.notify_one();
    }
}

fn request_of(row: &tokio_postgres::Row) -> Result<RefundRequest, StoreError> {
    row.try_get::<_, Json<RefundRequest>>("body").map(|j| j.0).map_err(corrupt)
}

fn job_of(row: &tokio_postgres::Row) -> Result<Job, StoreError> {
    let get = |e: tokio_postgres::Error| corrupt(format!("a job row could not be read: {e}"));
    let id: i64 = row.try_get("id").map_err(get)?;
    let request: i64 = row.try_get("request_id").map_err(get)?;
    let attempts: i32 = row.try_get("attempts").map_err(get)?;
    Ok(Job {
        id: id as u64,
        request_id: RequestId::new(request as u64),
        effect: row.try_get::<_, Json<Effect>>("effect").map_err(get)?.0,
        attempts: attempts as u32,
        not_before: row.try_get("not_before").map_err(get)?,
        created_at: row.try_get("created_at").map_err(get)?,
        last_error: row.try_get("last_error").map_err(get)?,
        parked: row.try_get("parked").map_err(get)?,
        posted_ts: row.try_get("posted_ts").map_err(get)?,
    })
}

const JOB_COLUMNS: &str = "id, request_id, effect, attempts, not_before, created_at, last_error, parked, posted_ts";

/// Reads the request row and locks it for the rest of the transaction.
async fn lock_request(tx: &Transaction<'_>, id: RequestId) -> Result<Option<RefundRequest>, StoreError> {
    tx.query_opt("SELECT body FROM requests WHERE id = $1 FOR UPDATE", &[&id_param(id)])
        .await?
        .map(|row| request_of(&row))
        .transpose()
}

/// Locks the request's row for the rest of the transaction without reading it. Every write that
/// adds jobs for a request holds this lock first, so job ids (handed out at insert, seen at
/// commit) follow commit order within a request: a lane's head is never a job inserted after
/// one still uncommitted.
async fn lock_request_row(tx: &Transaction<'_>, id: RequestId) -> Result<(), StoreError> {
    tx.execute("SELECT 1 FROM requests WHERE id = $1 FOR UPDATE", &[&id_param(id)]).await?;
    Ok(())
}

/// The money held by the open requests on `charge` other than `except`.
async fn holds_on(tx: &Transaction<'_>, charge: &ChargeId, except: Option<RequestId>) -> Result<Vec<Hold>, StoreError> {
    let rows = tx.query("SELECT body FROM requests WHERE charge_id = $1 ORDER BY id", &[&charge.as_str()]).await?;
    let mut holds = vec![];
    for row in &rows {
        let request = request_of(row)?;
        if Some(request.id) != except {
            holds.extend(request.hold());
        }
    }
    Ok(holds)
}

/// Writes a request's row and its payments, without audit or jobs.
async fn write_request(tx: &Transaction<'_>, request: &RefundRequest) -> Result<(), StoreError> {
    let charge = request.charge.as_ref().map(|f| f.charge.as_str().to_string());
    tx.execute(
        "INSERT INTO requests (id, requester, status, charge_id, created_at, body) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, charge_id = excluded.charge_id, body = excluded.body",
        &[
            &id_param(request.id),
            &request.requester.as_str(),
            &status_name(request.status),
            &charge,
            &request.created_at,
            &Json(request),
        ],
    )
    .await?;
    for payment in payments_of(request) {
        tx.execute(
            "INSERT INTO request_payments (payment, request_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&payment, &id_param(request.id)],
        )
        .await?;
    }
    Ok(())
}

async fn add_to_total(tx: &Transaction<'_>, day: chrono::NaiveDate, what: &str, delta: i64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO day_totals (day, what, n) VALUES ($1, $2, GREATEST($3::bigint, 0))
         ON CONFLICT (day, what) DO UPDATE SET n = GREATEST(day_totals.n + $3::bigint, 0)",
        &[&day, &what, &delta],
    )
    .await?;
    Ok(())
}

async fn insert_jobs(
    tx: &Transaction<'_>,
    request: RequestId,
    effects: &[Effect],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    for effect in effects {
        tx.execute(
            "INSERT INTO jobs (request_id, lane, effect, not_before, created_at) VALUES ($1, $2, $3, $4, $4)",
            &[&id_param(request), &i16::from(effect.lane() as u8), &Json(effect), &now],
        )
        .await?;
    }
    Ok(())
}

/// What a transaction will append to the audit trail when it is about to commit.
#[derive(Default)]
struct AuditBatch(Vec<(RefundRequest, Transition)>);

/// Writes a transition: the request and its payments, the day's totals and the jobs now; the
/// audit entry into `audit`, appended at the end.
async fn write_transition(
    tx: &Transaction<'_>,
    audit: &mut AuditBatch,
    request: &RefundRequest,
    transition: &Transition,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    write_request(tx, request).await?;
    if let Some((amount, add)) = refunded_change(request, transition.from) {
        let delta = if add { amount.minor() as i64 } else { -(amount.minor() as i64) };
        add_to_total(tx, now.date_naive(), &format!("refunded/{}", amount.currency().code()), delta).await?;
    }
    insert_jobs(tx, request.id, &transition.jobs(request, now), now).await?;
    audit.0.push((request.clone(), transition.clone()));
    Ok(())
}

/// Appends the transaction's audit entries to the chain, under the lock of its head row: the
/// last lock a transaction takes, so appends serialise without a cycle of waits.
async fn append_audit(tx: &Transaction<'_>, audit: AuditBatch, now: DateTime<Utc>) -> Result<(), StoreError> {
    if audit.0.is_empty() {
        return Ok(());
    }
    let mut head: Option<(u64, String)> = tx
        .query_opt("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE", &[])
        .await?
        .map(|row| (row.get::<_, i64>(0) as u64, row.get(1)));
    for (request, transition) in &audit.0 {
        let entry = AuditEntry::next(head.take(), request, transition, now).map_err(corrupt)?;
        tx.execute(
            "INSERT INTO audit (seq, request_id, entry) VALUES ($1, $2, $3)",
            &[&(entry.seq as i64), &id_param(entry.request_id), &Json(&entry)],
        )
        .await?;
        head = Some((entry.seq, entry.hash));
    }
    if let Some((seq, hash)) = head {
        tx.execute(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, $1, $2)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            &[&(seq as i64), &hash],
        )
        .await?;
    }
    Ok(())
}

/// The reads Stripe's news asks for, in the transaction that writes its answer.
struct NewsReads<'t, 'c> {
    tx: &'t Transaction<'c>,
}

impl RefundNewsReads for NewsReads<'_, '_> {
    type Error = StoreError;

    async fn recorded_owner(&mut self, refund: &RefundId) -> Result<Option<RequestId>, StoreError> {
        let row = self.tx.query_opt("SELECT request_id FROM refund_ids WHERE refund = $1", &[&refund.as_str()]).await?;
        Ok(row.map(|r| RequestId::new(r.get::<_, i64>(0) as u64)))
    }

    async fn request(&mut self, id: RequestId) -> Result<Option<RefundRequest>, StoreError> {
        lock_request(self.tx, id).await
    }

    async fn holds_on(&mut self, charge: &ChargeId) -> Result<Vec<Hold>, StoreError> {
        holds_on(self.tx, charge, None).await
    }

    async fn outside_refund(&mut self, refund: &RefundId) -> Result<Option<OutsideRefund>, StoreError> {
        let row = self
            .tx
            .query_opt("SELECT record FROM outside_refunds WHERE refund = $1 FOR UPDATE", &[&refund.as_str()])
            .await?;
        row.map(|r| r.try_get::<_, Json<OutsideRefund>>(0).map(|j| j.0).map_err(corrupt)).transpose()
    }
}

/// Writes what the news decided; `true` if it added jobs.
async fn write_news(
    tx: &Transaction<'_>,
    audit: &mut AuditBatch,
    writes: &[RefundNewsWrite],
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let mut added = false;
    for write in writes {
        match write {
            RefundNewsWrite::Transition(request, transition) => {
                write_transition(tx, audit, request, transition, now).await?;
                added = true;
            }
            RefundNewsWrite::Request(request) => write_request(tx, request).await?,
            RefundNewsWrite::RecordRefund(refund, id) => {
                tx.execute(
                    "INSERT INTO refund_ids (refund, request_id) VALUES ($1, $2)
                     ON CONFLICT (refund) DO UPDATE SET request_id = excluded.request_id",
                    &[&refund.as_str(), &id_param(*id)],
                )
                .await?;
            }
            RefundNewsWrite::Outside(record) => {
                tx.execute(
                    "INSERT INTO outside_refunds (refund, record) VALUES ($1, $2)
                     ON CONFLICT (refund) DO UPDATE SET record = excluded.record",
                    &[&record.refund.as_str(), &Json(record)],
                )
                .await?;
            }
        }
    }
    Ok(added)
}

impl Engine for PgStore {
    fn install_id(&self) -> &str {
        &self.install_id
    }

    fn jobs_added(&self) -> Arc<Notify> {
        self.jobs_added.clone()
    }

    /// A committed transaction is durable (`synchronous_commit` on, PostgreSQL's default):
    /// whatever was read had been committed.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn healthy(&self) -> bool {
        !self.pool.is_closed()
    }

    async fn insert_request(&self, new: NewRequest, now: DateTime<Utc>) -> Result<RefundRequest, StoreError> {
        let request = in_tx!(self, tx => {
            let number: i64 = tx.query_one("SELECT nextval('request_numbers')", &[]).await?.get(0);
            let request = RefundRequest::new(RequestId::new(number as u64), new.clone(), now);
            let mut audit = AuditBatch::default();
            add_to_total(&tx, now.date_naive(), "requested", 1).await?;
            write_transition(&tx, &mut audit, &request, &request.created(), now).await?;
            append_audit(&tx, audit, now).await?;
            request
        })?;
        self.added_jobs();
        Ok(request)
    }

    async fn client_key(&self, client: &str, key: &str) -> Result<Option<(String, RequestId)>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT fingerprint, request_id FROM client_keys WHERE client = $1 AND key = $2",
                &[&client, &key],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), RequestId::new(r.get::<_, i64>(1) as u64))))
    }

    async fn insert_keyed_request(
        &self,
        new: NewRequest,
        key: &crate::storage::ClientKey,
        now: DateTime<Utc>,
    ) -> Result<crate::storage::KeyedInsert, StoreError> {
        use crate::storage::KeyedInsert;
        let inserted = in_tx!(self, tx => {
            let known = "SELECT 1 FROM client_keys WHERE client = $1 AND key = $2";
            // A replay takes no request number; a first use does, and claims the key with it. A
            // concurrent first use of the same key waits on the key's row for the other to
            // commit, then finds it.
            let claimed: Option<i64> = if tx.query_opt(known, &[&key.client, &key.key]).await?.is_some() {
                None
            } else {
                let number: i64 = tx.query_one("SELECT nextval('request_numbers')", &[]).await?.get(0);
                let claimed = tx
                    .execute(
                        "INSERT INTO client_keys (client, key, fingerprint, request_id, created_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                        &[&key.client, &key.key, &key.fingerprint, &number, &now],
                    )
                    .await?;
                (claimed == 1).then_some(number)
            };
            if let Some(number) = claimed {
                let request = RefundRequest::new(RequestId::new(number as u64), new.clone(), now);
                let mut audit = AuditBatch::default();
                add_to_total(&tx, now.date_naive(), "requested", 1).await?;
                write_transition(&tx, &mut audit, &request, &request.created(), now).await?;
                append_audit(&tx, audit, now).await?;
                KeyedInsert::Created(request)
            } else {
                let row = tx
                    .query_one(
                        "SELECT fingerprint, request_id FROM client_keys WHERE client = $1 AND key = $2",
                        &[&key.client, &key.key],
                    )
                    .await?;
                let id = RequestId::new(row.get::<_, i64>(1) as u64);
                let request = tx
                    .query_opt("SELECT body FROM requests WHERE id = $1", &[&id_param(id)])
                    .await?
                    .map(|row| request_of(&row))
                    .transpose()?
                    .ok_or(StoreError::NotFound(id))?;
                KeyedInsert::Existing { request, same_body: row.get::<_, String>(0) == key.fingerprint }
            }
        })?;
        if matches!(inserted, KeyedInsert::Created(_)) {
            self.added_jobs();
        }
        Ok(inserted)
    }

    async fn transition<E: Send, F: Change<E>>(
        &self,
        id: RequestId,
        charge: Option<&ChargeId>,
        now: DateTime<Utc>,
        change: F,
    ) -> Result<Result<Option<RefundRequest>, E>, StoreError> {
        let moved = in_tx!(self, tx => {
            if let Some(charge) = charge {
                // Every change that counts on the charge's money waits its turn on the charge.
                tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&format!("charge/{charge}")])
                    .await?;
            }
            let mut request = lock_request(&tx, id).await?.ok_or(StoreError::NotFound(id))?;
            let holds = match charge {
                Some(charge) => holds_on(&tx, charge, Some(id)).await?,
                None => vec![],
            };
            match change(&mut request, &holds) {
                Ok(Some(t)) => {
                    let mut audit = AuditBatch::default();
                    write_transition(&tx, &mut audit, &request, &t, now).await?;
                    append_audit(&tx, audit, now).await?;
                    Ok(Some(request))
                }
                Ok(None) => Ok(None),
                Err(refused) => Err(refused),
            }
        })?;
        if matches!(moved, Ok(Some(_))) {
            self.added_jobs();
        }
        Ok(moved)
    }

    async fn update_request<F: Fn(&mut RefundRequest) + Send + Sync>(
        &self,
        id: RequestId,
        change: F,
    ) -> Result<RefundRequest, StoreError> {
        in_tx!(self, tx => {
            let mut request = lock_request(&tx, id).await?.ok_or(StoreError::NotFound(id))?;
            change(&mut request);
            write_request(&tx, &request).await?;
            request
        })
    }

    async fn submit_refund(
        &self,
        id: RequestId,
        refund: RefundId,
        stripe_status: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<RefundRequest, StateError>, StoreError> {
        let out = in_tx!(self, tx => {
            let mut request = lock_request(&tx, id).await?.ok_or(StoreError::NotFound(id))?;
            match request.record_submitted(refund.clone(), stripe_status, now) {
                Err(e) => Err(e),
                Ok(t) => {
                    let mut audit = AuditBatch::default();
                    write_transition(&tx, &mut audit, &request, &t, now).await?;
                    tx.execute(
                        "INSERT INTO refund_ids (refund, request_id) VALUES ($1, $2)
                         ON CONFLICT (refund) DO UPDATE SET request_id = excluded.request_id",
                        &[&refund.as_str(), &id_param(id)],
                    )
                    .await?;
                    append_audit(&tx, audit, now).await?;
                    Ok(request)
                }
            }
        })?;
        if out.is_ok() {
            self.added_jobs();
        }
        Ok(out)
    }

    async fn import_request(&self, request: &RefundRequest) -> Result<(), StoreError> {
        in_tx!(self, tx => {
            write_request(&tx, request).await?;
            // The counter moves past what was imported: numbers are never handed out twice.
            tx.execute(
                // The highest number handed out so far (none yet: one below the start), or this one.
                "SELECT setval('request_numbers', GREATEST(
                     (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM request_numbers),
                     $1::bigint))",
                &[&id_param(request.id)],
            )
            .await?;
        })
    }

    async fn get_request(&self, id: RequestId) -> Result<Option<RefundRequest>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt("SELECT body FROM requests WHERE id = $1", &[&id_param(id)])
            .await?
            .map(|r| request_of(&r))
            .transpose()
    }

    async fn requests_with_status(
        &self,
        status: RequestStatus,
        limit: usize,
    ) -> Result<Vec<RefundRequest>, StoreError> {
        self.requests_where(
            "SELECT body FROM requests WHERE status = $1 ORDER BY id LIMIT $2",
            &[&status_name(status), &(limit as i64)],
        )
        .await
    }

    async fn requests_of(&self, user: &str, limit: usize) -> Result<Vec<RefundRequest>, StoreError> {
        self.requests_where(
            "SELECT body FROM requests WHERE requester = $1 ORDER BY id DESC LIMIT $2",
            &[&user, &(limit as i64)],
        )
        .await
    }

    async fn others_on_payment(
        &self,
        request: &RefundRequest,
        limit: usize,
    ) -> Result<(Vec<RefundRequest>, usize), StoreError> {
        let client = self.client().await?;
        let payments = payments_of(request);
        let rows = client
            .query(
                "SELECT DISTINCT request_id FROM request_payments WHERE payment = ANY($1) AND request_id <> $2
                 ORDER BY request_id",
                &[&payments, &id_param(request.id)],
            )
            .await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let more = ids.len().saturating_sub(limit);
        let shown: Vec<i64> = ids[more..].to_vec();
        let others = client.query("SELECT body FROM requests WHERE id = ANY($1) ORDER BY id", &[&shown]).await?;
        Ok((others.iter().map(request_of).collect::<Result<_, _>>()?, more))
    }

    async fn totals_on(&self, day: chrono::NaiveDate) -> Result<(u64, Vec<Money>), StoreError> {
        let client = self.client().await?;
        let rows = client.query("SELECT what, n FROM day_totals WHERE day = $1 ORDER BY what", &[&day]).await?;
        let mut requested = 0;
        let mut refunded = vec![];
        for row in rows {
            let (what, n): (String, i64) = (row.get(0), row.get(1));
            if what == "requested" {
                requested = n.max(0) as u64;
            } else if let Some(code) = what.strip_prefix("refunded/")
                && let Ok(currency) = crate::domain::Currency::parse(code)
                && n > 0
            {
                refunded.push(Money::new(n as u64, currency));
            }
        }
        Ok((requested, refunded))
    }

    async fn all_requests(&self) -> Result<Vec<RefundRequest>, StoreError> {
        self.requests_where("SELECT body FROM requests ORDER BY id", &[]).await
    }

    async fn oldest_open_since(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let open: Vec<String> = [
            RequestStatus::Requested,
            RequestStatus::AwaitingApproval,
            RequestStatus::Approved,
            RequestStatus::Submitted,
            RequestStatus::Pending,
        ]
        .into_iter()
        .map(status_name)
        .collect();
        let client = self.client().await?;
        let row = client.query_one("SELECT min(created_at) FROM requests WHERE status = ANY($1)", &[&open]).await?;
        Ok(row.get(0))
    }

    async fn audit_trail(&self) -> Result<AuditTrail, StoreError> {
        // One snapshot for the trail and its head: a transition committing meanwhile must not
        // look like a removed entry.
        in_tx!(self, tx => {
            tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY", &[]).await?;
            let rows = tx.query("SELECT entry FROM audit ORDER BY seq", &[]).await?;
            let entries = rows
                .iter()
                .map(|r| r.try_get::<_, Json<AuditEntry>>(0).map(|j| j.0).map_err(corrupt))
                .collect::<Result<Vec<_>, _>>()?;
            let head = tx
                .query_opt("SELECT seq, hash FROM audit_head WHERE id = 1", &[])
                .await?
                .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)));
            (entries, head)
        })
    }

    async fn audit_of(&self, id: RequestId) -> Result<Vec<AuditEntry>, StoreError> {
        let client = self.client().await?;
        let rows = client.query("SELECT entry FROM audit WHERE request_id = $1 ORDER BY seq", &[&id_param(id)]).await?;
        rows.iter().map(|r| r.try_get::<_, Json<AuditEntry>>(0).map(|j| j.0).map_err(corrupt)).collect()
    }

    async fn apply_refund_updates(
        &self,
        event_id: Option<&str>,
        updates: &[RefundUpdate],
        now: DateTime<Utc>,
    ) -> Result<EventOutcome, StoreError> {
        let (outcome, added) = in_tx!(self, tx => {
            // A second delivery of the event waits here for the first to commit, then finds it.
            let fresh = match event_id {
                Some(id) => {
                    tx.execute(
                        "INSERT INTO stripe_events (id, seen_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                        &[&id, &now],
                    )
                    .await?
                        == 1
                }
                None => true,
            };
            if fresh {
                // Each refund's news waits its turn on that refund, whichever event or read-back
                // brings it: a refund made outside the desk, not yet recorded, has no row to
                // lock. Taken in one order, so two events cannot wait on each other.
                let mut refunds: Vec<String> = updates.iter().map(|u| format!("refund/{}", u.refund)).collect();
                refunds.sort();
                refunds.dedup();
                for refund in &refunds {
                    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[refund]).await?;
                }
                let mut audit = AuditBatch::default();
                let mut outcomes = vec![];
                let mut added = false;
                for news in updates {
                    let (outcome, writes) =
                        apply_refund_news(&mut NewsReads { tx: &tx }, news, &self.install_id, now).await?;
                    added |= write_news(&tx, &mut audit, &writes, now).await?;
                    outcomes.push(outcome);
                }
                append_audit(&tx, audit, now).await?;
                (EventOutcome::Applied(outcomes), added)
            } else {
                (EventOutcome::Duplicate, false)
            }
        })?;
        if added {
            self.added_jobs();
        }
        Ok(outcome)
    }

    async fn stripe_event_seen(&self, event_id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client.query_opt("SELECT 1 FROM stripe_events WHERE id = $1", &[&event_id]).await?.is_some())
    }

    async fn remember_slack_event(&self, event_id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let inserted = client
            .execute(
                "INSERT INTO slack_events (id, seen_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                &[&event_id, &now],
            )
            .await?;
        Ok(inserted == 1)
    }

    async fn prune_seen_events(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let stripe = client.execute("DELETE FROM stripe_events WHERE seen_at < $1", &[&cutoff]).await?;
        let slack = client.execute("DELETE FROM slack_events WHERE seen_at < $1", &[&cutoff]).await?;
        Ok((stripe + slack) as usize)
    }

    async fn events_cursor(&self) -> Result<Option<String>, StoreError> {
        self.meta("stripe_events_cursor").await
    }

    async fn set_events_cursor(&self, event_id: Option<&str>) -> Result<(), StoreError> {
        self.set_meta("stripe_events_cursor", event_id).await
    }

    async fn events_looked_back_at(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.meta("stripe_events_looked_back_at").await?.and_then(|v| v.parse().ok()))
    }

    async fn set_events_looked_back_at(&self, at: i64) -> Result<(), StoreError> {
        self.set_meta("stripe_events_looked_back_at", Some(&at.to_string())).await
    }

    async fn outside_refunds(&self) -> Result<Vec<OutsideRefund>, StoreError> {
        let client = self.client().await?;
        let rows = client.query("SELECT record FROM outside_refunds ORDER BY refund", &[]).await?;
        rows.iter().map(|r| r.try_get::<_, Json<OutsideRefund>>(0).map(|j| j.0).map_err(corrupt)).collect()
    }

    async fn email_sent(&self, id: RequestId, kind: EmailKind) -> Result<Option<EmailRecord>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT record FROM emails WHERE request_id = $1 AND kind = $2",
                &[&id_param(id), &kind.as_str()],
            )
            .await?;
        row.map(|r| r.try_get::<_, Json<EmailRecord>>(0).map(|j| j.0).map_err(corrupt)).transpose()
    }

    async fn record_email_sent(
        &self,
        id: RequestId,
        kind: EmailKind,
        record: &EmailRecord,
        effects: &[Effect],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        in_tx!(self, tx => {
            lock_request_row(&tx, id).await?;
            tx.execute(
                "INSERT INTO emails (request_id, kind, record) VALUES ($1, $2, $3)
                 ON CONFLICT (request_id, kind) DO UPDATE SET record = excluded.record",
                &[&id_param(id), &kind.as_str(), &Json(record)],
            )
            .await?;
            insert_jobs(&tx, id, effects, now).await?;
        })?;
        if !effects.is_empty() {
            self.added_jobs();
        }
        Ok(())
    }

    async fn claim_alert(
        &self,
        what: &str,
        job_id: u64,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // One statement: the claim is taken if nobody holds it, it is this job's, or the last
        // one is older than `since`. Two replicas racing: one row, one winner.
        let client = self.client().await?;
        let claimed = client
            .query_opt(
                "INSERT INTO alert_claims (what, job_id, at) VALUES ($1, $2, $3)
                 ON CONFLICT (what) DO UPDATE SET job_id = excluded.job_id, at = excluded.at
                 WHERE alert_claims.job_id = excluded.job_id OR alert_claims.at < $4
                 RETURNING job_id",
                &[&what, &(job_id as i64), &now, &since],
            )
            .await?;
        Ok(claimed.is_some())
    }

    async fn release_alert(&self, what: &str, job_id: u64) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.execute("DELETE FROM alert_claims WHERE what = $1 AND job_id = $2", &[&what, &(job_id as i64)]).await?;
        Ok(())
    }

    async fn remember_home_user(&self, user: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO home_users (user_id, opened_at) VALUES ($1, $2)
                 ON CONFLICT (user_id) DO UPDATE SET opened_at = excluded.opened_at",
                &[&user, &now],
            )
            .await?;
        Ok(())
    }

    async fn has_home(&self, user: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client.query_opt("SELECT 1 FROM home_users WHERE user_id = $1", &[&user]).await?.is_some())
    }

    async fn enqueue(&self, id: RequestId, effects: &[Effect], now: DateTime<Utc>) -> Result<(), StoreError> {
        in_tx!(self, tx => {
            lock_request_row(&tx, id).await?;
            insert_jobs(&tx, id, effects, now).await?
        })?;
        self.added_jobs();
        Ok(())
    }

    async fn all_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let client = self.client().await?;
        let rows = client.query(&format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY request_id, lane, id"), &[]).await?;
        rows.iter().map(job_of).collect()
    }

    async fn due_jobs(
        &self,
        wanted: &[(Lane, usize)],
        now: DateTime<Utc>,
        running: &HashSet<u64>,
    ) -> Result<DueJobs, StoreError> {
        let client = self.client().await?;
        let running: Vec<i64> = running.iter().map(|&id| id as i64).collect();
        let until = now + self.lease;
        let mut found = DueJobs::default();
        for &(lane, limit) in wanted {
            let lane = i16::from(lane as u8);
            // The heads of their lanes, due, not parked, held by no live lease; taken by this
            // runner until `until`. Rows another replica is taking right now are skipped.
            let rows = client
                .query(
                    &format!(
                        "UPDATE jobs SET claimed_until = $3, claimed_by = $6 WHERE id IN (
                             SELECT j.id FROM jobs j
                             WHERE j.lane = $1 AND NOT j.parked AND j.not_before <= $2
                               AND (j.claimed_until IS NULL OR j.claimed_until <= $2)
                               AND NOT (j.id = ANY($4))
                               AND NOT EXISTS (SELECT 1 FROM jobs e
                                               WHERE e.request_id = j.request_id AND e.lane = j.lane AND e.id < j.id)
                             ORDER BY j.not_before, j.id
                             LIMIT $5
                             FOR UPDATE SKIP LOCKED)
                         RETURNING {JOB_COLUMNS}"
                    ),
                    &[&lane, &now, &until, &running, &(limit as i64), &self.runner],
                )
                .await?;
            let mut jobs = rows.iter().map(job_of).collect::<Result<Vec<_>, _>>()?;
            jobs.sort_by_key(|j| (j.not_before, j.id));
            found.jobs.extend(jobs);
            let next: Option<DateTime<Utc>> = client
                .query_one(
                    "SELECT min(j.not_before) FROM jobs j
                     WHERE j.lane = $1 AND NOT j.parked AND j.not_before > $2
                       AND NOT EXISTS (SELECT 1 FROM jobs e
                                       WHERE e.request_id = j.request_id AND e.lane = j.lane AND e.id < j.id)",
                    &[&lane, &now],
                )
                .await?
                .get(0);
            if let Some(at) = next {
                found.next = Some(found.next.map_or(at, |n| n.min(at)));
            }
        }
        Ok(found)
    }

    async fn complete_job(&self, job: &Job) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.execute("DELETE FROM jobs WHERE id = $1", &[&(job.id as i64)]).await?;
        // The next job of the lane may be due now.
        self.added_jobs();
        Ok(())
    }

    async fn rewrite_job(&self, job: &Job) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let updated = client
            .execute(
                "UPDATE jobs SET attempts = $2, not_before = $3, last_error = $4, parked = $5,
                                 posted_ts = COALESCE($6, posted_ts), claimed_until = NULL, claimed_by = NULL
                 WHERE id = $1 AND (claimed_by IS NULL OR claimed_by = $7)",
                &[
                    &(job.id as i64),
                    &(job.attempts as i32),
                    &job.not_before,
                    &job.last_error,
                    &job.parked,
                    &job.posted_ts,
                    &self.runner,
                ],
            )
            .await?;
        if updated == 1 {
            self.added_jobs();
        }
        Ok(updated == 1)
    }

    async fn record_job_posted(&self, job: &Job, ts: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.execute("UPDATE jobs SET posted_ts = $2 WHERE id = $1", &[&(job.id as i64), &ts]).await?;
        Ok(())
    }

    async fn find_job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        let client = self.client().await?;
        let row = client.query_opt(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"), &[&(id as i64)]).await?;
        row.map(|r| job_of(&r)).transpose()
    }

    async fn renew_claims(&self, ids: &[u64], now: DateTime<Utc>) -> Result<(), StoreError> {
        let ids: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
        let client = self.client().await?;
        client
            .execute(
                "UPDATE jobs SET claimed_until = $2 WHERE id = ANY($1) AND claimed_by = $3",
                &[&ids, &(now + self.lease), &self.runner],
            )
            .await?;
        Ok(())
    }

    async fn release_claims(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("UPDATE jobs SET claimed_until = NULL, claimed_by = NULL WHERE claimed_by = $1", &[&self.runner])
            .await?;
        Ok(())
    }

    async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // One statement: taken if free, already this holder's, or run out. Two replicas racing:
        // one row, one winner.
        let client = self.client().await?;
        let taken = client
            .query_opt(
                "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
                 WHERE leases.holder = excluded.holder OR leases.until <= $4
                 RETURNING holder",
                &[&name, &holder, &until, &now],
            )
            .await?;
        Ok(taken.is_some())
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.execute("DELETE FROM leases WHERE name = $1 AND holder = $2", &[&name, &holder]).await?;
        Ok(())
    }

    async fn shared_value(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.meta(&format!("shared/{key}")).await
    }

    async fn shared_values(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let client = self.client().await?;
        let full = format!("shared/{prefix}");
        // `left` rather than LIKE: a key may hold `_` or `%`.
        let rows =
            client.query("SELECT key, value FROM meta WHERE left(key, length($1)) = $1 ORDER BY key", &[&full]).await?;
        Ok(rows.iter().map(|r| (r.get::<_, String>(0)["shared/".len()..].to_string(), r.get(1))).collect())
    }

    async fn set_shared_value(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.set_meta(&format!("shared/{key}"), Some(value)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sled::tests::new_request;
    use secrecy::ExposeSecret;

    /// Two replicas on one fresh schema, holding jobs for `lease`.
    async fn two_replicas(lease: Duration) -> Option<(PgStore, PgStore)> {
        let url = refund_desk_standins::postgres::fresh_database_url().await?;
        let a = PgStore::connect(url.expose_secret(), lease).await.unwrap();
        let b = PgStore::connect(url.expose_secret(), lease).await.unwrap();
        Some((a, b))
    }

    #[tokio::test]
    async fn a_job_held_by_one_replica_is_taken_over_by_another_only_after_its_lease() {
        let Some((a, b)) = two_replicas(Duration::from_secs(60)).await else { return };
        assert_eq!(a.install_id(), b.install_id(), "one installation, whichever replica asks");
        let now = Utc::now();
        a.insert_request(new_request(), now).await.unwrap();
        let wanted = [(Lane::Stripe, 10)];
        let taken = a.due_jobs(&wanted, now, &HashSet::new()).await.unwrap().jobs;
        assert_eq!(taken.len(), 1, "replica A takes the check");
        // B, with nothing running of its own, finds it held.
        assert!(
            b.due_jobs(&wanted, now + chrono::Duration::seconds(59), &HashSet::new()).await.unwrap().jobs.is_empty()
        );
        // A died: once the lease is over, B takes it over.
        let later = now + chrono::Duration::seconds(61);
        let over = b.due_jobs(&wanted, later, &HashSet::new()).await.unwrap().jobs;
        assert_eq!(over.iter().map(|j| j.id).collect::<Vec<_>>(), [taken[0].id]);
        // Handed back (a retry put off): free for whoever asks when it is due.
        let mut retry = over[0].clone();
        retry.attempts = 1;
        retry.not_before = later;
        assert!(b.rewrite_job(&retry).await.unwrap());
        assert_eq!(a.due_jobs(&wanted, later, &HashSet::new()).await.unwrap().jobs.len(), 1);
    }

    #[tokio::test]
    async fn a_running_job_whose_claim_is_renewed_is_never_taken_over_and_a_stale_runner_cannot_free_it() {
        let Some((a, b)) = two_replicas(Duration::from_secs(60)).await else { return };
        let now = Utc::now();
        a.insert_request(new_request(), now).await.unwrap();
        let wanted = [(Lane::Stripe, 10)];
        let job = a.due_jobs(&wanted, now, &HashSet::new()).await.unwrap().jobs.remove(0);
        let at = |s: i64| now + chrono::Duration::seconds(s);
        // A is alive and still running it: it renews at 50 s, so at 61 s it is still A's.
        a.renew_claims(&[job.id], at(50)).await.unwrap();
        assert!(b.due_jobs(&wanted, at(61), &HashSet::new()).await.unwrap().jobs.is_empty(), "renewed");
        // A stalls past its renewed claim: B takes the job over; A's renewal no longer holds it.
        let taken = b.due_jobs(&wanted, at(111), &HashSet::new()).await.unwrap().jobs;
        assert_eq!(taken.iter().map(|j| j.id).collect::<Vec<_>>(), [job.id]);
        a.renew_claims(&[job.id], at(112)).await.unwrap();
        // A's late outcome does not free B's claim for a third runner.
        let mut late = job.clone();
        late.attempts = 1;
        late.not_before = at(112);
        assert!(!a.rewrite_job(&late).await.unwrap(), "not A's job any more");
        assert!(a.due_jobs(&wanted, at(120), &HashSet::new()).await.unwrap().jobs.is_empty(), "still B's");
        // B stops: it hands its jobs back at once.
        b.release_claims().await.unwrap();
        assert_eq!(a.due_jobs(&wanted, at(121), &HashSet::new()).await.unwrap().jobs.len(), 1);
    }

    #[tokio::test]
    async fn two_replicas_claiming_at_once_never_take_the_same_job() {
        let Some((a, b)) = two_replicas(DEFAULT_LEASE).await else { return };
        let now = Utc::now();
        for _ in 0..40 {
            a.insert_request(new_request(), now).await.unwrap();
        }
        let wanted = [(Lane::Stripe, 3)];
        let mut taken: Vec<u64> = vec![];
        let none = HashSet::new();
        for _ in 0..20 {
            let (x, y) = tokio::join!(a.due_jobs(&wanted, now, &none), b.due_jobs(&wanted, now, &none));
            taken.extend(x.unwrap().jobs.iter().chain(y.unwrap().jobs.iter()).map(|j| j.id));
        }
        let distinct: HashSet<u64> = taken.iter().copied().collect();
        assert_eq!(distinct.len(), taken.len(), "a job handed to both: {taken:?}");
        assert_eq!(distinct.len(), 40, "every request's check was handed out once");
    }

    #[tokio::test]
    async fn periodic_work_is_leased_to_one_replica_until_its_lease_runs_out_or_is_given_up() {
        let Some((a, b)) = two_replicas(DEFAULT_LEASE).await else { return };
        let now = Utc::now();
        let lease = |from: DateTime<Utc>| from + chrono::Duration::seconds(30);
        let racing = tokio::join!(
            a.take_lease("stripe_events", "A", now, lease(now)),
            b.take_lease("stripe_events", "B", now, lease(now))
        );
        assert!(racing.0.as_ref().unwrap() ^ racing.1.as_ref().unwrap(), "one of two racing replicas: {racing:?}");
        let (holder, other, (h, o)) = if racing.0.unwrap() { (&a, &b, ("A", "B")) } else { (&b, &a, ("B", "A")) };
        let soon = now + chrono::Duration::seconds(20);
        assert!(!other.take_lease("stripe_events", o, soon, lease(soon)).await.unwrap(), "held, not run out");
        assert!(holder.take_lease("stripe_events", h, soon, lease(soon)).await.unwrap(), "its holder renews it");
        assert!(other.take_lease("approver_group", o, soon, lease(soon)).await.unwrap(), "leases are by name");
        // The holder died: after its lease, the other takes the work over.
        let after = lease(soon);
        assert!(other.take_lease("stripe_events", o, after, lease(after)).await.unwrap());
        assert!(!holder.take_lease("stripe_events", h, after, lease(after)).await.unwrap(), "no longer the holder's");
        // Given up at a stop: taken at once.
        other.release_lease("stripe_events", o).await.unwrap();
        assert!(holder.take_lease("stripe_events", h, after, lease(after)).await.unwrap());
    }

    #[tokio::test]
    async fn replicas_starting_together_apply_the_migrations_once() {
        let Some(url) = refund_desk_standins::postgres::fresh_database_url().await else { return };
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(
                    async move { PgStore::connect(url.expose_secret(), DEFAULT_LEASE).await.map(|s| s.install_id) },
                )
            })
            .collect();
        let mut ids = HashSet::new();
        for start in starts {
            ids.insert(start.await.unwrap().unwrap());
        }
        assert_eq!(ids.len(), 1, "one install id: {ids:?}");
    }
}
