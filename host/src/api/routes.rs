//! One handler per operation of `docs/api.md`: each reads its request, asks the
//! [`crate::supervisor::Supervisor`], and writes the answer as JSON.

use axum::{
    Json,
    body::Body,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{Api, ApiError, MAX_JSON_BYTES, read_body};
use crate::supervisor::{PluginSource, ServeError, store::is_sha256};

type Answer = Result<Response, ApiError>;

fn ok(status: StatusCode, value: impl serde::Serialize) -> Answer {
    Ok((status, Json(value)).into_response())
}

/// A pipeline file's body: YAML (415 for another content type, so that no page of another
/// site can send one as a plain form), UTF-8, at most `limit` bytes.
async fn yaml(headers: &HeaderMap, body: Body, limit: usize) -> Result<String, ApiError> {
    match content_type(headers).as_str() {
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => {}
        other => {
            return Err(ApiError::user(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("a pipeline file is sent as `application/yaml`, not `{other}`"),
            ));
        }
    }
    text(read_body(body, limit).await?)
}

/// Runs `op` to its end even if the client goes away meanwhile: a swap or a stop half done
/// must still be recorded.
async fn detached<T: Send + 'static>(
    op: impl std::future::Future<Output = Result<T, ServeError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(op)
        .await
        .map_err(|e| ServeError::Internal(format!("the request's task ended: {e}")))?
        .map_err(ApiError::from)
}

/// The body as UTF-8 text (a pipeline file).
fn text(bytes: axum::body::Bytes) -> Result<String, ApiError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        ApiError::user(
            StatusCode::BAD_REQUEST,
            "a pipeline file is UTF-8 text (YAML)",
        )
    })
}

/// An optional JSON body of type `T` (empty: the default).
fn json_or_default<T: for<'a> Deserialize<'a> + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::user(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// A query parameter's value, percent-decoded.
fn query_param(query: &Option<String>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_deref()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

pub(super) async fn list(State(api): State<Api>) -> Answer {
    let pipelines: Vec<_> = api.supervisor.all().iter().map(|m| m.summary()).collect();
    ok(
        StatusCode::OK,
        serde_json::json!({ "pipelines": pipelines }),
    )
}

pub(super) async fn submit(State(api): State<Api>, headers: HeaderMap, body: Body) -> Answer {
    let text = yaml(&headers, body, api.settings.max_yaml_bytes).await?;
    let supervisor = api.supervisor.clone();
    let managed = detached(async move { supervisor.submit(text).await }).await?;
    ok(StatusCode::CREATED, managed.summary())
}

pub(super) async fn detail(State(api): State<Api>, Path(name): Path<String>) -> Answer {
    ok(StatusCode::OK, api.supervisor.get(&name)?.detail())
}

pub(super) async fn replace(
    State(api): State<Api>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let start = match query_param(&query, "start").as_deref() {
        None | Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        Some(other) => {
            return Err(ApiError::user(
                StatusCode::BAD_REQUEST,
                format!("`start` is `true` or `false`, not `{other}`"),
            ));
        }
    };
    let text = yaml(&headers, body, api.settings.max_yaml_bytes).await?;
    let supervisor = api.supervisor.clone();
    let managed = detached(async move { supervisor.replace(&name, text, start).await }).await?;
    ok(StatusCode::OK, managed.summary())
}

pub(super) async fn delete(State(api): State<Api>, Path(name): Path<String>) -> Answer {
    let supervisor = api.supervisor.clone();
    detached(async move { supervisor.delete(&name).await }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StopRequest {
    /// Keep the last checkpoint as a savepoint.
    #[serde(default)]
    savepoint: bool,
}

pub(super) async fn stop(State(api): State<Api>, Path(name): Path<String>, body: Body) -> Answer {
    let request: StopRequest = json_or_default(&read_body(body, MAX_JSON_BYTES).await?)?;
    let supervisor = api.supervisor.clone();
    let stopped = detached(async move { supervisor.stop(&name, request.savepoint).await }).await?;
    ok(StatusCode::OK, stopped)
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    /// Start from this savepoint instead of the newest checkpoint.
    savepoint: Option<u64>,
}

pub(super) async fn start(State(api): State<Api>, Path(name): Path<String>, body: Body) -> Answer {
    let request: StartRequest = json_or_default(&read_body(body, MAX_JSON_BYTES).await?)?;
    let supervisor = api.supervisor.clone();
    let managed = detached(async move { supervisor.start(&name, request.savepoint).await }).await?;
    ok(StatusCode::ACCEPTED, managed.summary())
}

pub(super) async fn exceptions(State(api): State<Api>, Path(name): Path<String>) -> Answer {
    let exceptions = api.supervisor.get(&name)?.exceptions();
    ok(
        StatusCode::OK,
        serde_json::json!({ "exceptions": exceptions }),
    )
}

pub(super) async fn events(State(api): State<Api>, Path(name): Path<String>) -> Answer {
    let events = api.supervisor.get(&name)?.events();
    ok(StatusCode::OK, serde_json::json!({ "events": events }))
}

pub(super) async fn checkpoints(State(api): State<Api>, Path(name): Path<String>) -> Answer {
    let checkpoints = api.supervisor.checkpoints(&name).await?;
    ok(
        StatusCode::OK,
        serde_json::json!({ "checkpoints": checkpoints }),
    )
}

pub(super) async fn savepoints(State(api): State<Api>, Path(name): Path<String>) -> Answer {
    let savepoints = api.supervisor.savepoints(&name).await?;
    ok(
        StatusCode::OK,
        serde_json::json!({ "savepoints": savepoints }),
    )
}

pub(super) async fn take_savepoint(State(api): State<Api>, Path(name): Path<String>) -> Answer {
    let supervisor = api.supervisor.clone();
    let kept = detached(async move { supervisor.savepoint(&name).await }).await?;
    ok(StatusCode::CREATED, kept)
}

pub(super) async fn delete_savepoint(
    State(api): State<Api>,
    Path((name, id)): Path<(String, String)>,
) -> Answer {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::user(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not a savepoint id (a whole number)"),
        )
    })?;
    let supervisor = api.supervisor.clone();
    detached(async move { supervisor.delete_savepoint(&name, id).await }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A plugin named in a JSON body instead of sent as bytes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginRequest {
    /// One uploaded before.
    sha256: Option<String>,
    /// A file on the server.
    path: Option<String>,
}

pub(super) async fn swap(
    State(api): State<Api>,
    Path((name, stage)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let source = match content_type(&headers).as_str() {
        "application/json" => {
            let bytes = read_body(body, MAX_JSON_BYTES).await?;
            let request: PluginRequest = serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::user(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}"))
            })?;
            match (request.sha256, request.path) {
                (Some(sha), None) if is_sha256(&sha) => PluginSource::Sha256(sha),
                (Some(sha), None) => {
                    return Err(ApiError::user(
                        StatusCode::BAD_REQUEST,
                        format!("`{sha}` is not a sha256 (64 lowercase hex digits)"),
                    ));
                }
                (None, Some(path)) => PluginSource::Path(path.into()),
                _ => {
                    return Err(ApiError::user(
                        StatusCode::BAD_REQUEST,
                        "name the plugin with exactly one of `sha256` and `path`",
                    ));
                }
            }
        }
        "application/wasm" | "application/octet-stream" => {
            let bytes = read_body(body, api.settings.max_wasm_bytes).await?;
            PluginSource::Bytes {
                name: upload_name(&query, &bytes),
                bytes: bytes.to_vec(),
            }
        }
        other => return Err(unsupported(other)),
    };
    let supervisor = api.supervisor.clone();
    let swap = detached(async move { supervisor.swap(&name, &stage, source).await }).await?;
    ok(StatusCode::OK, swap)
}

pub(super) async fn rollback(
    State(api): State<Api>,
    Path((name, stage)): Path<(String, String)>,
) -> Answer {
    let supervisor = api.supervisor.clone();
    let swap = detached(async move { supervisor.rollback(&name, &stage).await }).await?;
    ok(StatusCode::OK, swap)
}

pub(super) async fn versions(
    State(api): State<Api>,
    Path((name, stage)): Path<(String, String)>,
) -> Answer {
    ok(StatusCode::OK, api.supervisor.versions(&name, &stage)?)
}

pub(super) async fn plugins(State(api): State<Api>) -> Answer {
    let plugins = api.supervisor.plugins().list();
    ok(StatusCode::OK, serde_json::json!({ "plugins": plugins }))
}

pub(super) async fn upload(
    State(api): State<Api>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    match content_type(&headers).as_str() {
        "application/wasm" | "application/octet-stream" => {}
        other => return Err(unsupported(other)),
    }
    let bytes = read_body(body, api.settings.max_wasm_bytes).await?;
    let name = upload_name(&query, &bytes);
    let supervisor = api.supervisor.clone();
    let stored = detached(async move { supervisor.upload(name, bytes.to_vec()).await }).await?;
    ok(StatusCode::CREATED, stored)
}

/// The `name` query parameter of an upload, or one made from the bytes' digest.
fn upload_name(query: &Option<String>, bytes: &[u8]) -> String {
    match query_param(query, "name").filter(|n| !n.is_empty()) {
        Some(name) => name.chars().filter(|c| !c.is_control()).take(200).collect(),
        None => {
            use sha2::Digest;
            let digest = hex::encode(sha2::Sha256::digest(bytes));
            format!("upload-{}.wasm", &digest[..12])
        }
    }
}

fn unsupported(content_type: &str) -> ApiError {
    ApiError::user(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!(
            "a plugin is sent as `application/wasm` (its bytes) or `application/json` (`{{\"sha256\": …}}` or `{{\"path\": …}}`), not `{content_type}`"
        ),
    )
}

pub(super) async fn metrics(State(api): State<Api>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        super::prometheus::render(&api.supervisor),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_found_by_name() {
        let q = Some("a=1&start=false&flag&name=my%20plugin.wasm".to_string());
        assert_eq!(query_param(&q, "start").as_deref(), Some("false"));
        assert_eq!(query_param(&q, "flag").as_deref(), Some(""));
        assert_eq!(query_param(&q, "name").as_deref(), Some("my plugin.wasm"));
        assert_eq!(query_param(&q, "b"), None);
        assert_eq!(query_param(&None, "start"), None);
    }
}
