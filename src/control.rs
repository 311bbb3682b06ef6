//! The admin endpoint: while a desk runs on the embedded store it holds sled's lock, so the
//! operator commands (`jobs list|retry`, `audit verify|export`, `backup --to`) reach it through
//! HTTP on a Unix socket in its data directory, `admin.sock`, readable by its own user only.
//! The server routes here call the same functions the commands run on a stopped store; the
//! client is what the commands use when the store is locked.

use crate::admin::{ExportFormat, audit_export, audit_verify, jobs_list, jobs_retry};
use crate::context::AppContext;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;

/// The socket's name in the data directory.
pub const SOCKET: &str = "admin.sock";

#[derive(serde::Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

#[derive(serde::Deserialize)]
struct ExportQuery {
    since: Option<chrono::NaiveDate>,
    #[serde(default)]
    json: bool,
}

#[derive(serde::Deserialize)]
struct BackupQuery {
    to: std::path::PathBuf,
}

/// An operator error: what went wrong, as the command prints it.
fn failed(status: StatusCode, e: impl std::fmt::Display) -> Response {
    (status, format!("{e:#}")).into_response()
}

async fn list(State(ctx): State<Arc<AppContext>>, Query(q): Query<ListQuery>) -> Response {
    match jobs_list(&ctx.store, q.all).await {
        Ok(text) => text.into_response(),
        Err(e) => failed(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn retry(State(ctx): State<Arc<AppContext>>, Path(id): Path<u64>) -> Response {
    match jobs_retry(&ctx.store, id).await {
        Ok(text) => {
            ctx.store.jobs_added().notify_one();
            text.into_response()
        }
        Err(e) => failed(StatusCode::CONFLICT, e),
    }
}

async fn verify(State(ctx): State<Arc<AppContext>>) -> Response {
    match audit_verify(&ctx.store).await {
        Ok((true, text)) => text.into_response(),
        // The command exits 1 on an altered trail.
        Ok((false, text)) => (StatusCode::CONFLICT, text).into_response(),
        Err(e) => failed(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn export(State(ctx): State<Arc<AppContext>>, Query(q): Query<ExportQuery>) -> Response {
    let format = if q.json { ExportFormat::Json } else { ExportFormat::Csv };
    let mut out = vec![];
    match audit_export(&ctx.store, q.since, format, &mut out).await {
        Ok(_) => out.into_response(),
        Err(e) => failed(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn backup(State(ctx): State<Arc<AppContext>>, Query(q): Query<BackupQuery>) -> Response {
    match ctx.store.backup_to(&q.to).await {
        Ok(manifest) => crate::admin::backup_summary(&q.to, &manifest).into_response(),
        Err(e) => failed(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// The admin routes.
pub fn router(ctx: Arc<AppContext>) -> Router {
    Router::new()
        .route("/jobs", get(list))
        .route("/jobs/{id}/retry", post(retry))
        .route("/audit/verify", get(verify))
        .route("/audit/export", get(export))
        .route("/backup", post(backup))
        .with_state(ctx)
}

/// Serves the admin routes on `dir/admin.sock` until `stop`. A socket file left by a desk that
/// died is replaced: only the holder of the store's lock gets this far.
pub async fn serve(
    ctx: Arc<AppContext>,
    dir: &std::path::Path,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(SOCKET);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let app = router(ctx);
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        if let Err(e) = served.await {
            tracing::error!(error = %e, "the admin socket stopped");
        }
        let _ = std::fs::remove_file(&path);
    }))
}

/// What the running desk answered: its status and text.
pub struct Answer {
    pub ok: bool,
    pub status: u16,
    pub text: String,
}

/// Sends `method path` to the desk serving `dir/admin.sock`.
pub async fn call(dir: &std::path::Path, method: &str, path_and_query: &str) -> anyhow::Result<Answer> {
    use http_body_util::BodyExt;
    let socket = dir.join(SOCKET);
    let stream = tokio::net::UnixStream::connect(&socket).await.map_err(|e| {
        anyhow::anyhow!(
            "the database in {} is in use, but the running refund-desk does not answer on {} ({e}); \
             is it a version without the admin socket? Stop it, then run this again",
            dir.display(),
            socket.display()
        )
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = hyper::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", "refund-desk")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Answer { ok: status.is_success(), status: status.as_u16(), text: String::from_utf8_lossy(&body).into_owned() })
}
