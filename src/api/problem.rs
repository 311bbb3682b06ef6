//! Errors of the API as RFC 9457 problem documents (`application/problem+json`): a type, a
//! title, the status, what went wrong for this call, and for a bad body each bad field.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// One field of the body that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field's name, as in the body.
    pub field: String,
    /// A JSON Pointer to it in the body, in the form RFC 9457's own example uses; none for a
    /// header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    pub detail: String,
}

impl FieldError {
    /// A field of the body.
    pub fn new(field: &str, detail: impl Into<String>) -> FieldError {
        FieldError { field: field.to_string(), pointer: Some(format!("#/{field}")), detail: detail.into() }
    }

    /// A header of the call.
    pub fn header(name: &str, detail: impl Into<String>) -> FieldError {
        FieldError { field: name.to_string(), pointer: None, detail: detail.into() }
    }
}

/// A problem document, answered with its status.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// Names the kind of problem (a relative URI the OpenAPI document lists).
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// For a conflicting key: the request the key made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip)]
    retry_after: Option<u64>,
}

impl Problem {
    fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            kind,
            title,
            status: status.as_u16(),
            detail: detail.into(),
            errors: vec![],
            request_id: None,
            retry_after: None,
        }
    }

    pub fn unauthorized(detail: &str) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "/api/v1/problems/unauthorized", "Not authorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "/api/v1/problems/forbidden", "Not allowed for this token", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "/api/v1/problems/not-found", "No such request", detail)
    }

    pub fn no_route() -> Problem {
        Problem::new(
            StatusCode::NOT_FOUND,
            "/api/v1/problems/not-found",
            "No such route",
            "The API has POST /api/v1/refund-requests and GET /api/v1/refund-requests/{id}; see /api/v1/openapi.json.",
        )
    }

    pub fn invalid(errors: Vec<FieldError>) -> Problem {
        let names: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        let mut p = Problem::new(
            StatusCode::BAD_REQUEST,
            "/api/v1/problems/invalid-request",
            "The request is not valid",
            format!("Nothing was stored. Fix: {}.", names.join(", ")),
        );
        p.errors = errors;
        p
    }

    pub fn unreadable(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "/api/v1/problems/invalid-request", "The request is not valid", detail)
    }

    pub fn key_reused(request: &str) -> Problem {
        let mut p = Problem::new(
            StatusCode::CONFLICT,
            "/api/v1/problems/idempotency-key-reused",
            "The Idempotency-Key was used with another body",
            format!(
                "This key made {request} with a different body, so nothing was stored. Use a new key for a new request."
            ),
        );
        p.request_id = Some(request.to_string());
        p
    }

    pub fn too_large(limit: usize) -> Problem {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "/api/v1/problems/too-large",
            "The body is too large",
            format!("Bodies are limited to {} KiB; nothing was stored.", limit / 1024),
        )
    }

    pub fn rate_limited(retry_after_secs: u64) -> Problem {
        let mut p = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "/api/v1/problems/rate-limited",
            "Too many calls",
            format!("This token made too many calls; try again in {retry_after_secs} s."),
        );
        p.retry_after = Some(retry_after_secs);
        p
    }

    /// Something the desk depends on failed; the client may try again (with the same key).
    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Problem {
        let mut p =
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "/api/v1/problems/unavailable", "Try again later", detail);
        p.retry_after = Some(retry_after_secs);
        p
    }
}

#[cfg(test)]
impl Problem {
    /// The `Retry-After` it is answered with, in seconds.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after
    }
}

impl IntoResponse for Box<Problem> {
    fn into_response(self) -> Response {
        (*self).into_response()
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"refund-desk\""));
        }
        response
    }
}
