//! The HTTP API for support tools (`/api/v1`): a help desk or a form asks for a refund with a
//! bearer token, and reads where it stands. A request made here takes the path of `/refund`
//! (the Stripe check, the policy, the card, a person's decision in Slack); a token can ask and
//! read, never decide.
//!
//! Each handler checks the token, then its rate, then reads and answers; everything slow is a
//! job, as for Slack. Errors are RFC 9457 problem documents ([`problem`]).

mod body;
mod clients;
mod problem;
mod views;

use crate::context::AppContext;
use crate::domain::{NewRequest, RequestId};
use crate::slack::api::SlackCallError;
use crate::storage::{ClientKey, KeyedInsert};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use body::Requester;
use clients::Clients;
use problem::{FieldError, Problem};
use std::sync::Arc;

/// Bodies larger than this are refused with 413: a refund request is a few hundred bytes.
pub const MAX_API_BODY_BYTES: usize = 64 * 1024;

/// The API's document, served at `/api/v1/openapi.json`; a test holds it to the answers.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What the API's handlers share.
struct ApiState {
    ctx: Arc<AppContext>,
    clients: Clients,
}

/// The `/api/v1` routes.
pub fn routes(ctx: Arc<AppContext>) -> Router<Arc<AppContext>> {
    let state = Arc::new(ApiState { clients: Clients::new(&ctx.settings.api), ctx });
    Router::new()
        .route("/api/v1/refund-requests", post(handle_create))
        .route("/api/v1/refund-requests/{id}", get(handle_read))
        .route("/api/v1/openapi.json", get(handle_openapi))
        .route("/api/v1/{*rest}", axum::routing::any(handle_unknown))
        .with_state(state)
}

/// Anything else under `/api/v1` is a 404, as a problem like every other API error.
async fn handle_unknown() -> Response {
    Problem::no_route().into_response()
}

async fn handle_openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `POST /api/v1/refund-requests`: stores the request (on disk before the answer) and answers
/// 202; the same key and body again give the same request back.
#[tracing::instrument(skip_all, fields(client))]
async fn handle_create(State(api): State<Arc<ApiState>>, headers: HeaderMap, body: axum::body::Body) -> Response {
    match create(&api, &headers, body).await {
        Ok(response) | Err(response) => response,
    }
}

async fn create(api: &ApiState, headers: &HeaderMap, body: axum::body::Body) -> Result<Response, Response> {
    let ctx = &api.ctx;
    let client = api.clients.authenticate(headers).map_err(|p| p.into_response())?;
    tracing::Span::current().record("client", client.name.as_str());
    if !client.create {
        return Err(Problem::forbidden("This token may read requests, not make them.").into_response());
    }
    api.clients.admit(client).map_err(|p| p.into_response())?;
    let bytes = axum::body::to_bytes(body, MAX_API_BODY_BYTES).await.map_err(|e| {
        if is_too_large(&e) {
            Problem::too_large(MAX_API_BODY_BYTES).into_response()
        } else {
            Problem::unreadable("The body could not be read; nothing was stored.").into_response()
        }
    })?;
    let key = match headers.get("idempotency-key").map(|v| v.to_str().map(str::trim)) {
        Some(Ok(k)) if !k.is_empty() && k.len() <= 255 => k.to_string(),
        Some(_) => return Err(invalid_header("Idempotency-Key", "must be 1 to 255 visible ASCII characters")),
        None => {
            return Err(invalid_header(
                "Idempotency-Key",
                "is required: a unique key per request (a UUID), sent again unchanged with every retry",
            ));
        }
    };
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Problem::unreadable(format!("The body is not JSON ({e}); nothing was stored.")).into_response())?;
    let fingerprint = body::fingerprint(&json);
    // A key used before is answered from what it made, before anything else is checked: a
    // retry gets its request back even if Slack is down or the requester has left since.
    match ctx.store.request_for_key(&client.name, &key).await {
        Ok(Some((request, used_with))) if used_with == fingerprint => return Ok(accepted(&request, true)),
        Ok(Some((request, _))) => return Err(Problem::key_reused(&request.id.to_string()).into_response()),
        Ok(None) => {}
        Err(e) => return Err(unavailable_store(e)),
    }
    let parsed = body::parse(&json);
    let (mut errors, requested_by) = match &parsed {
        Ok(fields) => (vec![], Some(fields.requested_by.clone())),
        Err(invalid) if invalid.errors.is_empty() => {
            return Err(Problem::unreadable("The body must be a JSON object; nothing was stored.").into_response());
        }
        Err(invalid) => (invalid.errors.clone(), invalid.requested_by.clone()),
    };
    // The requester is resolved even when other fields are wrong, so every mistake is named.
    let requester = match requested_by {
        None => None,
        Some(Requester::User(user)) => Some(user),
        Some(Requester::Email(email)) => match crate::desk::ask::requester_by_email(ctx, &email).await {
            Ok(Some(user)) => Some(user),
            Ok(None) => {
                errors.push(FieldError::new("requested_by", format!("Slack has no member with the email {email}")));
                None
            }
            Err(SlackCallError::Refused(code)) => {
                tracing::error!(code = %code, "Slack refused to look up a requester by email");
                errors.push(FieldError::new(
                    "requested_by",
                    format!("this desk cannot look people up by email (Slack says {code}); give their Slack user id"),
                ));
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not look the requester up in Slack");
                return Err(Problem::unavailable(
                    "Slack could not be asked who the requester is; nothing was stored. Try again with the same Idempotency-Key.",
                    30,
                )
                .into_response());
            }
        },
    };
    if let Some(user) = &requester
        && let Err(why) = crate::desk::ask::may_ask(ctx, user)
    {
        errors.push(FieldError::new("requested_by", format!("{user}: {why}")));
    }
    let (Ok(fields), Some(requester)) = (parsed, requester) else {
        return Err(Problem::invalid(errors).into_response());
    };
    if !errors.is_empty() {
        return Err(Problem::invalid(errors).into_response());
    }
    let new = NewRequest {
        requester,
        origin_channel: format!("api:{}", client.name),
        target: fields.target,
        amount: fields.amount,
        reason: fields.reason,
        note: fields.note,
        customer_email: fields.customer_email,
        response_url: None,
        api: Some(crate::domain::ApiOrigin {
            client: client.name.clone(),
            callbacks: ctx.settings.api.callback.is_some(),
        }),
    };
    let key = ClientKey { client: client.name.clone(), key, fingerprint };
    match crate::desk::ask::ask_as_client(ctx, new, &key).await {
        Ok(KeyedInsert::Created(request)) => Ok(accepted(&request, false)),
        Ok(KeyedInsert::Existing { request, same_body: true }) => Ok(accepted(&request, true)),
        Ok(KeyedInsert::Existing { request, same_body: false }) => {
            Err(Problem::key_reused(&request.id.to_string()).into_response())
        }
        Err(e) => Err(unavailable_store(e)),
    }
}

fn unavailable_store(e: crate::storage::StoreError) -> Response {
    tracing::error!(error = %e, "could not store or read a request for an API client");
    Problem::unavailable(
        "The request could not be stored, so nothing was. Try again with the same Idempotency-Key.",
        30,
    )
    .into_response()
}

/// Whether reading a body failed on its length limit (not a client that went away).
fn is_too_large(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

fn invalid_header(name: &str, detail: &str) -> Response {
    Problem::invalid(vec![FieldError::header(name, detail)]).into_response()
}

/// 202 with the request's id, status and where to read it; `Location` too.
fn accepted(request: &crate::domain::RefundRequest, replayed: bool) -> Response {
    let doc = views::accepted(request);
    let mut response = (StatusCode::ACCEPTED, axum::Json(&doc)).into_response();
    if let Ok(location) = HeaderValue::from_str(&doc.url) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// `GET /api/v1/refund-requests/{id}`: status, amount, refund and timeline, for the client that
/// made the request or any client with the `read` scope. Another client's request reads as
/// missing, so a token learns nothing about requests it may not see.
#[tracing::instrument(skip_all, fields(client, request_id))]
async fn handle_read(State(api): State<Arc<ApiState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let client = match api.clients.authenticate(&headers) {
        Ok(c) => c,
        Err(p) => return p.into_response(),
    };
    tracing::Span::current().record("client", client.name.as_str());
    if let Err(p) = api.clients.admit(client) {
        return p.into_response();
    }
    let missing = || Problem::not_found(format!("There is no request {id} this token may read.")).into_response();
    let Ok(id) = RequestId::parse(&id) else { return missing() };
    tracing::Span::current().record("request_id", tracing::field::display(id));
    let ctx = &api.ctx;
    let request = match ctx.store.get_request_durable(id).await {
        Ok(Some(r)) => r,
        Ok(None) => return missing(),
        Err(e) => {
            tracing::error!(error = %e, "could not read a request for an API client");
            return Problem::unavailable("The request could not be read; try again.", 5).into_response();
        }
    };
    let made_here = request.api.as_ref().is_some_and(|a| a.client == client.name);
    if !(made_here || client.read) {
        return missing();
    }
    match ctx.store.audit_of(id).await {
        Ok(trail) => axum::Json(views::request_document(&request, &trail)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "could not read a request's audit trail");
            Problem::unavailable("The request could not be read; try again.", 5).into_response()
        }
    }
}
