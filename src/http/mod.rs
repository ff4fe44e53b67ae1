//! The HTTP listener: `/metrics` (Prometheus text format), `/healthz` (the process serves),
//! `/readyz` (its storage serves), the status page `/` with its action browser (`/action`), and blob
//! downloads (`/blob`). Pages are rendered on the server (`pages`), need no JavaScript and load
//! nothing from elsewhere. The pages show commands, environments and outputs: with `auth` they need
//! a bearer token of an identity with `admin` (the probes and `/metrics` stay open).

mod pages;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use serde::Deserialize;

use crate::admin::Admin;
use crate::auth::Authenticator;
use crate::config::Permission;
use crate::metrics::Exporter;

#[derive(Clone)]
pub struct HttpState {
    pub admin: Arc<Admin>,
    pub exporter: Arc<Exporter>,
    pub authenticator: Arc<Authenticator>,
}

pub fn router(state: HttpState) -> Router {
    let pages = Router::new()
        .route("/", get(status_page))
        .route("/action", get(action_page))
        .route("/blob", get(blob))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), admins_only));
    Router::new()
        .merge(pages)
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(listener: tokio::net::TcpListener, state: HttpState, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Err(e) = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await {
        tracing::error!("the HTTP listener stopped: {e}");
    }
}

/// The pages need `admin`, unless anonymous callers have it (no `auth` section).
async fn admins_only(State(state): State<HttpState>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if state.authenticator.anonymous().has(Permission::Admin) {
        return next.run(request).await;
    }
    let authorization = request.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let text = |code, message: &str| (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{message}\n"));
    match state.authenticator.authenticate(authorization, None) {
        Ok(caller) if caller.grants.anywhere().has(Permission::Admin) => next.run(request).await,
        Ok(caller) if caller.name.is_some() => text(StatusCode::FORBIDDEN, caller.denied("this page", Permission::Admin).message()).into_response(),
        Ok(_) | Err(_) => {
            let mut response = text(StatusCode::UNAUTHORIZED, "this page needs a bearer token of an identity with the admin permission").into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
            response
        }
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    // Reading /proc is a blocking call: off the async runtime.
    match tokio::task::spawn_blocking(move || state.exporter.encode()).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the metrics: {e}\n")).into_response(),
    }
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let status = state.admin.status();
    let mut body = String::new();
    for i in &status.instances {
        let up = if i.storage_up { "serving" } else { "FAILING" };
        body.push_str(&format!("instance {:?}: storage {:?} {up}\n", i.name, i.storage));
        for t in i.tiers.iter().filter(|t| !t.reachable) {
            body.push_str(&format!("  upstream {} unreachable: {}\n", t.name, t.error));
        }
    }
    let code = if status.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{}\n{body}", if status.ready { "ready" } else { "not ready" }))
        .into_response()
}

async fn status_page(State(state): State<HttpState>) -> Html<String> {
    Html(pages::status(&state.admin))
}

#[derive(Deserialize)]
pub struct ActionQuery {
    /// The instance; absent means every instance is searched.
    pub instance: Option<String>,
    /// HASH/SIZE.
    #[serde(default)]
    pub digest: String,
}

async fn action_page(State(state): State<HttpState>, Query(query): Query<ActionQuery>) -> Response {
    let (code, page) = pages::action(&state.admin, &query).await;
    (code, Html(page)).into_response()
}

#[derive(Deserialize)]
pub struct BlobQuery {
    #[serde(default)]
    instance: String,
    digest: String,
    /// The file name to save as.
    name: Option<String>,
}

async fn blob(State(state): State<HttpState>, Query(query): Query<BlobQuery>) -> Response {
    let fail = |code, message: String| (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message + "\n").into_response();
    let digest = match pages::parse_digest(&query.digest) {
        Ok(d) => d,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    let cas = match state.admin.instances.get(&query.instance).map(|i| i.cas.clone()) {
        Ok(Some(cas)) => cas,
        Ok(None) => return fail(StatusCode::NOT_FOUND, format!("instance {:?} does not serve the CAS", query.instance)),
        Err(e) => return fail(StatusCode::NOT_FOUND, e.message().to_string()),
    };
    let blob = match cas.read(&digest, 0, None).await {
        Ok(Some(blob)) => blob,
        Ok(None) => return fail(StatusCode::NOT_FOUND, format!("blob {digest} is not in the CAS")),
        Err(e) => return fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    // Only a plain name goes into the header; anything else is saved under the hash.
    let name = query.name.filter(|n| n.len() <= 255 && n.chars().all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c)));
    let disposition = format!("attachment; filename=\"{}\"", name.unwrap_or_else(|| digest.hash_hex()));
    let body = Body::from_stream(blob.into_stream().map(|chunk| chunk.map_err(std::io::Error::other)));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(digest.size));
    if let Ok(value) = header::HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    response
}
