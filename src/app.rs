//! Wiring: builds the context, the HTTP router, the periodic tasks; start-up and graceful
//! shutdown.

use crate::config::Settings;
use crate::context::{APPROVERS_LEASE, AppContext, LEASES, PRUNE_LEASE, lease_span};
use crate::email::Mailer;
use crate::slack::SlackApi;
use crate::storage::Store;
use crate::stripe::StripeClient;
use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_http::trace::TraceLayer;

/// The process's Prometheus recorder: one per process, shared by every desk in it (tests run
/// several).
fn metrics_handle() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("refund_desk_slack_answer_seconds".into()),
                &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0],
            )
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding program's); then ours only renders.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The route a request matched (its pattern, never the raw path), carried out on the response
/// for [`time_slack_answers`], which runs before routing.
#[derive(Debug, Clone)]
struct MatchedRoute(String);

/// Marks each answer with the route pattern that produced it.
async fn tag_route(
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut response = next.run(request).await;
    if let Some(matched) = matched {
        response.extensions_mut().insert(MatchedRoute(matched.as_str().to_string()));
    }
    response
}

/// How long Slack waited for each answer, by route: the number that must stay far under 3 s.
/// Labelled by the matched route, so a path nobody serves cannot add a series; all of those
/// share the label `unmatched`.
async fn time_slack_answers(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let slack = request.uri().path().starts_with("/slack/");
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    if slack {
        let route = response.extensions().get::<MatchedRoute>().map(|r| r.0.clone());
        metrics::histogram!("refund_desk_slack_answer_seconds", "route" => route.unwrap_or_else(|| "unmatched".into()))
            .record(started.elapsed().as_secs_f64());
    }
    response
}

/// Slack and Stripe bodies are small; anything larger is refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The HTTP surface, as the contract lists it.
pub fn router(ctx: Arc<AppContext>) -> Router {
    use crate::slack::inbound::{http_command, http_events, http_interaction};
    let mut router = Router::new()
        .route("/slack/commands", post(http_command))
        .route("/slack/interactions", post(http_interaction))
        .route("/slack/events", post(http_events));
    // Without a webhook secret there is no webhook: Stripe's events are read from its API.
    if !ctx.settings.stripe.webhook_secrets.is_empty() {
        router = router.route("/stripe/webhook", post(crate::stripe::inbound::http_stripe_webhook));
    }
    router
        .merge(crate::api::routes(ctx.clone()))
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(|| async { metrics_handle().render() }))
        .route_layer(axum::middleware::from_fn(tag_route))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(time_slack_answers))
        .layer(TraceLayer::new_for_http())
        .with_state(ctx)
}

async fn readyz(State(ctx): State<Arc<AppContext>>) -> StatusCode {
    let store_ok = ctx.store.healthy() && ctx.store.get_request(crate::domain::RequestId::new(0)).await.is_ok();
    if store_ok && ctx.workers_running.load(Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Installs ring as the process's TLS provider: reqwest, hyper-rustls (Slack), lettre and the
/// WebSocket client all use it. Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A running refund-desk: HTTP server plus job runner.
pub struct Application {
    addr: SocketAddr,
    ctx: Arc<AppContext>,
    stop_tx: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    worker: JoinHandle<()>,
    /// Slack's traffic over Socket Mode, when `SLACK_APP_TOKEN` is set.
    socket: Option<crate::slack::socket::SocketMode>,
}

impl Application {
    /// Opens the store, binds the listener and starts serving and working.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        install_crypto_provider();
        metrics_handle();
        let store = open_store(&settings.store).await?;
        tracing::info!(engine = store.engine_name(), "store open");
        let slack = SlackApi::new(&settings.slack.api_url, &settings.slack.bot_token)
            .context("could not set up the Slack client")?;
        let stripe = StripeClient::new(
            settings.stripe.api_url.clone(),
            settings.stripe.secret_key.clone(),
            settings.stripe.timeout,
            settings.stripe.max_requests_per_second,
        )
        .context("could not set up the Stripe client")?;
        let mailer = settings.email.as_ref().map(Mailer::new).transpose()?;
        if mailer.is_none() {
            tracing::warn!("SMTP_URL is not set: customers will get no email");
        }

        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("could not listen on {}", settings.listen))?;
        let addr = listener.local_addr()?;
        let ctx = Arc::new(AppContext::new(settings, store, slack, stripe, mailer));
        // A store restored from a backup may be behind Stripe: check before any job runs.
        if let Some(sled) = ctx.store.as_sled()
            && let Some(at) = sled.restored_at()?
        {
            let checked = crate::worker::handlers::reconcile_restored(&ctx).await.map_err(|e| {
                anyhow::anyhow!(
                    "this store was restored from a backup ({at}) and its refunds could not be checked against Stripe: {e:#}. \
                     Nothing ran; start again once Stripe answers"
                )
            })?;
            sled.clear_restored().await?;
            tracing::warn!(checked, restored_at = %at, "restored store checked against Stripe before any job ran");
        }

        let (stop_tx, stop_rx) = watch::channel(false);
        // On the embedded store, the operator commands reach the running desk here.
        if let crate::config::StoreSettings::Sled { dir, .. } = &ctx.settings.store {
            crate::control::serve(ctx.clone(), dir, stop_rx.clone())
                .await
                .with_context(|| format!("could not open the admin socket in {}", dir.display()))?;
        }
        let worker_ctx = ctx.clone();
        let worker_stop = stop_rx.clone();
        let worker = tokio::spawn(async move {
            worker_ctx.workers_running.store(true, Ordering::Relaxed);
            crate::worker::run_jobs_until_stopped(worker_ctx.clone(), worker_stop).await;
            worker_ctx.workers_running.store(false, Ordering::Relaxed);
        });
        tokio::spawn(prune_seen_events_until_stopped(ctx.clone(), stop_rx.clone()));
        tokio::spawn(crate::stripe::events::read_events_until_stopped(ctx.clone(), stop_rx.clone()));
        tokio::spawn(run_metrics_upkeep_until_stopped(stop_rx.clone()));
        if ctx.store.as_sled().is_some() {
            tokio::spawn(write_marks_until_stopped(ctx.clone(), stop_rx.clone()));
        }
        if let Some(backups) = ctx.settings.backups.clone() {
            tokio::spawn(take_backups_until_stopped(ctx.clone(), backups, stop_rx.clone()));
        }
        if ctx.settings.policy.digest_at.is_some() {
            tokio::spawn(post_digest_until_stopped(ctx.clone(), stop_rx.clone()));
        }
        let slack = &ctx.settings.slack;
        if slack.approver_group.is_some() || slack.seniors.group.is_some() || slack.escalation.group.is_some() {
            tokio::spawn(refresh_approvers_until_stopped(ctx.clone(), stop_rx.clone()));
        }
        let app = router(ctx.clone());
        let mut server_stop = stop_rx;
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = server_stop.wait_for(|stop| *stop).await;
                })
                .await
        });
        let socket = match &ctx.settings.slack.app_token {
            Some(token) => Some(crate::slack::socket::start(ctx.clone(), token).await?),
            None => None,
        };
        tracing::info!(%addr, "refund-desk is listening");
        Ok(Application { addr, ctx, stop_tx, server, worker, socket })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn context(&self) -> Arc<AppContext> {
        self.ctx.clone()
    }

    /// Serves until SIGINT or SIGTERM, then stops gracefully.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        wait_for_signal().await;
        tracing::info!("stopping: no new requests; finishing running jobs");
        self.stop().await
    }

    /// Stops taking requests, finishes or parks running jobs, flushes and closes the store.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop_tx.send(true);
        if let Some(socket) = self.socket {
            // Envelopes being handled finish and are acknowledged; then the sockets close.
            socket.stop(Duration::from_secs(10)).await;
        }
        match tokio::time::timeout(Duration::from_secs(15), self.server).await {
            Ok(joined) => joined.context("the HTTP server panicked")?.context("the HTTP server failed")?,
            Err(_) => tracing::warn!("open connections did not close in time"),
        }
        self.worker.await.context("the job runner panicked")?;
        // Another replica takes the periodic work over at once, not when the leases run out.
        for lease in LEASES {
            if let Err(e) = self.ctx.store.release_lease(lease, &self.ctx.replica).await {
                tracing::warn!(error = %e, lease, "could not give up a lease; another replica takes it when it runs out");
            }
        }
        self.ctx.store.flush().await?;
        if let Some(sled) = self.ctx.store.as_sled()
            && let Err(e) = sled.write_mark().await
        {
            tracing::warn!(error = %e, "could not write the store's high-water mark");
        }
        // Wait for short-lived tasks (private notes) to let go, so the database is closed and
        // its lock released when this returns.
        let mut ctx = self.ctx;
        for _ in 0..600 {
            match Arc::try_unwrap(ctx) {
                Ok(inner) => {
                    drop(inner);
                    return Ok(());
                }
                Err(shared) => {
                    ctx = shared;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tracing::warn!("some tasks still hold the database at shutdown");
        Ok(())
    }
}

/// How long event ids are remembered: Stripe retries for three days; keep a month.
const EVENT_ID_RETENTION_DAYS: i64 = 30;

/// Forgets event ids older than the retention, at start and then daily.
async fn prune_seen_events_until_stopped(ctx: Arc<AppContext>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(24 * 3600);
    loop {
        if ctx.holds_lease(PRUNE_LEASE, lease_span(every)).await {
            let cutoff = ctx.now() - chrono::Duration::days(EVENT_ID_RETENTION_DAYS);
            match ctx.store.prune_seen_events(cutoff).await {
                Ok(n) if n > 0 => tracing::info!(forgotten = n, "old event ids forgotten"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not prune old event ids"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Records every few seconds how far the embedded store has durably come, so a store whose
/// files later lose data is refused at start rather than silently run on (see `sled::mark`).
async fn write_marks_until_stopped(ctx: Arc<AppContext>, mut stop: watch::Receiver<bool>) {
    let Some(sled) = ctx.store.as_sled().cloned() else { return };
    loop {
        if let Err(e) = sled.write_mark().await {
            tracing::warn!(error = %e, "could not write the store's high-water mark");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Takes a backup every `backups.every`, the first one a round after start.
async fn take_backups_until_stopped(
    ctx: Arc<AppContext>,
    backups: crate::config::BackupSettings,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(backups.every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        crate::desk::backup::backup_round(&ctx, &backups).await;
    }
}

/// Posts the daily digest when it falls due. Looks every few seconds, which costs nothing
/// once the day's digest is known to be out; the replica holding the lease posts it.
async fn post_digest_until_stopped(ctx: Arc<AppContext>, mut stop: watch::Receiver<bool>) {
    use crate::desk::digest::{Sent, due_day, post_digest_if_due};
    let mut done = None;
    loop {
        let mut wait = Duration::from_secs(5);
        if let Some(day) = due_day(&ctx)
            && done != Some(day)
        {
            match post_digest_if_due(&ctx, lease_span(Duration::from_secs(60))).await {
                Ok(Sent::Posted(day) | Sent::Already(day)) => done = Some(day),
                Ok(Sent::NotDue | Sent::NotOurs | Sent::Claimed(_)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, %day, "could not post the daily digest; trying again in a minute");
                    wait = Duration::from_secs(60);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Folds recorded histogram samples into their buckets every few seconds. The recorder keeps
/// every sample until then, so without it memory grows with traffic whenever nobody scrapes
/// `/metrics`.
async fn run_metrics_upkeep_until_stopped(mut stop: watch::Receiver<bool>) {
    loop {
        metrics_handle().run_upkeep();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Keeps the role groups' members fresh until shutdown.
/// The replica holding the lease reads the group from Slack and shares it; the others take
/// what it shared, and look more often, so all follow a change within a round or two.
async fn refresh_approvers_until_stopped(ctx: Arc<AppContext>, mut stop: watch::Receiver<bool>) {
    let every = ctx.settings.slack.approver_refresh;
    loop {
        let wait = if ctx.holds_lease(APPROVERS_LEASE, lease_span(every)).await {
            ctx.refresh_approvers().await;
            every
        } else {
            ctx.load_shared_approvers().await;
            every.min(Duration::from_secs(30))
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Opens the store. On sled, a lock still held by a desk that is shutting down is waited for
/// briefly; PostgreSQL's schema is brought up to date first.
async fn open_store(settings: &crate::config::StoreSettings) -> anyhow::Result<Store> {
    use crate::config::StoreSettings;
    use secrecy::ExposeSecret;
    let (dir, cache_mb) = match settings {
        StoreSettings::Postgres { url, lease } => {
            let store = crate::storage::postgres::PgStore::connect(url.expose_secret(), *lease)
                .await
                .context("could not open the database at DATABASE_URL")?;
            return Ok(Store::Postgres(store));
        }
        StoreSettings::Sled { dir, cache_mb } => (dir, *cache_mb),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match crate::storage::sled::SledStore::open_with(dir, cache_mb) {
            Ok(store) => {
                if let Some(at) = store.migrated_at()? {
                    anyhow::bail!(
                        "the store in {} was copied to PostgreSQL on {at} (refund-desk migrate): set DATABASE_URL to run on \
                         the copy. A desk on both would give different refunds the same idempotency keys",
                        dir.display()
                    );
                }
                return Ok(Store::Sled(store));
            }
            // sled reports a held lock as an `Other` error with this text; its flusher thread can
            // hold the file a moment after the last handle of a stopped desk is dropped.
            Err(e) if crate::admin::is_locked(&e) && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(crate::admin::open_error(dir, e)),
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
