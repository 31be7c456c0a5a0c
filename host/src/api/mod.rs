//! The control plane over HTTP (axum): the REST API of `docs/api.md`, Prometheus metrics, the
//! OpenAPI document and the web page, all served by `weir serve`.
//!
//! - [`routes`]: one handler per operation, each a thin translation to the [`Supervisor`].
//! - [`error`]: errors as JSON, and the one place they get their status codes.
//! - [`prometheus`]: `GET /metrics`.
//!
//! The API listens on loopback unless a bearer token is set; with a token, every request
//! but the page, `/healthz` and `/openapi.json` must carry it.

pub mod error;
pub mod prometheus;
mod routes;

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use sha2::{Digest, Sha256};

use crate::supervisor::Supervisor;
pub use error::ApiError;

/// The API's settings.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// Bearer token every request (but the public ones) must carry.
    pub token: Option<String>,
    /// Largest pipeline file a request may carry.
    pub max_yaml_bytes: usize,
    /// Largest plugin upload.
    pub max_wasm_bytes: usize,
}

/// Largest body of the other requests (small JSON documents).
const MAX_JSON_BYTES: usize = 64 << 10;

/// What every handler reaches.
#[derive(Clone)]
struct Api {
    supervisor: Arc<Supervisor>,
    settings: Arc<ApiSettings>,
}

/// Refuses to listen beyond loopback without a token: the API can replace the code a pipeline
/// runs.
pub fn check_bind(addr: SocketAddr, token: Option<&str>) -> Result<(), String> {
    if addr.ip().is_loopback() || token.is_some_and(|t| !t.is_empty()) {
        Ok(())
    } else {
        Err(format!(
            "refusing to serve the API on {addr} without a token: anyone who reaches it could run code in the pipelines; set --token (or WEIR_TOKEN), or listen on 127.0.0.1"
        ))
    }
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    supervisor: Arc<Supervisor>,
    settings: ApiSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(supervisor, settings))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The API's routes.
pub fn router(supervisor: Arc<Supervisor>, settings: ApiSettings) -> Router {
    let api = Api {
        supervisor,
        settings: Arc::new(settings),
    };
    let pipeline = "/api/pipelines/{name}";
    let stage = "/api/pipelines/{name}/stages/{stage}";
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(health))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(routes::metrics))
        .route("/api/pipelines", get(routes::list).post(routes::submit))
        .route(
            pipeline,
            get(routes::detail)
                .put(routes::replace)
                .delete(routes::delete),
        )
        .route(&format!("{pipeline}/stop"), post(routes::stop))
        .route(&format!("{pipeline}/start"), post(routes::start))
        .route(&format!("{pipeline}/exceptions"), get(routes::exceptions))
        .route(&format!("{pipeline}/events"), get(routes::events))
        .route(&format!("{pipeline}/checkpoints"), get(routes::checkpoints))
        .route(
            &format!("{pipeline}/savepoints"),
            get(routes::savepoints).post(routes::take_savepoint),
        )
        .route(
            &format!("{pipeline}/savepoints/{{id}}"),
            axum::routing::delete(routes::delete_savepoint),
        )
        .route(&format!("{stage}/plugin"), put(routes::swap))
        .route(&format!("{stage}/rollback"), post(routes::rollback))
        .route(&format!("{stage}/versions"), get(routes::versions))
        .route("/api/plugins", get(routes::plugins).post(routes::upload))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(api.clone(), authorize))
        .layer(middleware::from_fn_with_state(api.clone(), same_site))
        .layer(middleware::map_response(json_errors))
        .with_state(api)
}

/// The request paths that never need the token: the page (which asks for it) and what tells
/// whether the server is up and what it serves.
fn is_public(path: &str) -> bool {
    matches!(path, "/" | "/healthz" | "/openapi.json")
}

/// Checks the bearer token, comparing digests so that the time taken says nothing of how much
/// of a guess was right.
async fn authorize(State(api): State<Api>, request: Request, next: Next) -> Response {
    let Some(token) = &api.settings.token else {
        return next.run(request).await;
    };
    if is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(token.as_bytes()),
    );
    let differ = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    if differ == 0 && !given.is_empty() {
        next.run(request).await
    } else {
        ApiError::user(
            StatusCode::UNAUTHORIZED,
            "this server needs `Authorization: Bearer TOKEN` (the token it was started with)",
        )
        .into_response()
    }
}

/// Refuses what a page of another site could make a browser send here. A browser names the
/// page's site in `Origin` on every request that writes, which must then be this server's own
/// (`Host`); and without a token, `Host` itself must be a loopback name, or a site could make
/// its own name point at 127.0.0.1 (DNS rebinding) and read the answers too.
async fn same_site(State(api): State<Api>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if let Some(origin) = headers.get(header::ORIGIN) {
        let own = origin
            .to_str()
            .ok()
            .and_then(|o| {
                o.strip_prefix("http://")
                    .or_else(|| o.strip_prefix("https://"))
            })
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !own {
            return ApiError::user(
                StatusCode::FORBIDDEN,
                "requests from another site's pages are refused",
            )
            .into_response();
        }
    }
    if api.settings.token.is_none() && !is_loopback_host(host) {
        return ApiError::user(
            StatusCode::FORBIDDEN,
            format!(
                "without a token this server answers requests to 127.0.0.1 or localhost only, not to `{host}`"
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// Whether a `Host` header names this machine's loopback (with or without a port).
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Turns the few error responses axum makes itself (a path it cannot decode, say) into the
/// API's JSON errors.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), MAX_JSON_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string()
    } else {
        text
    };
    ApiError::user(status, message).into_response()
}

async fn not_found() -> ApiError {
    ApiError::user(
        StatusCode::NOT_FOUND,
        "no such path: see GET /openapi.json for the API",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::user(
        StatusCode::METHOD_NOT_ALLOWED,
        "this path does not take that method: see GET /openapi.json",
    )
}

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// The OpenAPI document of this API.
async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        include_str!("openapi.json"),
    )
        .into_response()
}

/// The web page: pipelines, their graphs and rates, checkpoints, and plugin swaps.
async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
                ),
            ),
        ],
        include_str!("ui/index.html"),
    )
        .into_response()
}

/// Reads a request body of at most `limit` bytes (413 beyond it).
async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::user(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than the {limit} bytes this server takes here"),
            )
        } else {
            ApiError::user(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_told_from_others() {
        for host in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "[::1]:80",
            "127.1.2.3",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "example.com",
            "10.0.0.1:8080",
            "[2001:db8::1]:80",
            "localhost.evil",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
