//! Errors as the API sends them: JSON with a kind, a message and whether retrying can help,
//! and the one place a refusal gets its status code.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::{pipeline::SpecErrors, supervisor::ServeError};

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// Its status code.
    pub status: StatusCode,
    /// `user`, `external` or `internal`.
    pub kind: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// Whether the same request may succeed later.
    pub retryable: bool,
    /// A pipeline file's problems, with their places.
    pub problems: Option<SpecErrors>,
}

impl ApiError {
    /// The request's fault.
    pub fn user(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind: "user",
            message: message.into(),
            retryable: false,
            problems: None,
        }
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> ApiError {
        let message = e.to_string();
        let (status, kind, retryable) = match &e {
            ServeError::NotFound(_) => (StatusCode::NOT_FOUND, "user", false),
            ServeError::Conflict(_) => (StatusCode::CONFLICT, "user", false),
            ServeError::BadRequest(_) | ServeError::Spec(_) => {
                (StatusCode::BAD_REQUEST, "user", false)
            }
            ServeError::Refused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "user", false),
            ServeError::External { retryable, .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "external", *retryable)
            }
            ServeError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", false),
        };
        if kind == "internal" {
            tracing::error!("internal error in the API: {message}");
        }
        ApiError {
            status,
            kind,
            message,
            retryable,
            problems: match e {
                ServeError::Spec(problems) => Some(problems),
                _ => None,
            },
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    kind: &'a str,
    message: &'a str,
    retryable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    problems: Option<Vec<Problem<'a>>>,
}

#[derive(Serialize)]
struct Problem<'a> {
    file: String,
    line: u64,
    column: u64,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                kind: self.kind,
                message: &self.message,
                retryable: self.retryable,
                problems: self.problems.as_ref().map(|p| {
                    p.0.iter()
                        .map(|e| Problem {
                            file: e.file.display().to_string(),
                            line: e.line,
                            column: e.column,
                            message: &e.message,
                        })
                        .collect()
                }),
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // These refuse a request before (or part way through) reading its body; the rest of
        // it would be read as the next request, so the connection ends with this answer.
        if matches!(
            self.status,
            StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::UNSUPPORTED_MEDIA_TYPE
        ) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
