//! The HTTP front end, by concern: lode's ingest and the other push
//! formats (`ingest`), its query API (`search`), enough of
//! Elasticsearch's for the shippers that speak `_bulk` (`elastic`),
//! tokens, cluster administration, health and metrics (`status`); Loki's
//! API, push and query, is `crate::loki`'s, merged here. This module
//! holds the router and what every route shares: authentication, the
//! limit on requests in flight, errors as HTTP answers.
//!
//! Parsing a body and appending it run on the blocking pool. Every answer
//! carries `X-Elastic-Product: Elasticsearch`, which Elastic's clients
//! check before they talk to a server.

mod cluster;
mod elastic;
pub(crate) mod ingest;
mod search;
mod status;
mod tokens;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lode_protocol::ErrorCode;
use serde_json::json;
use tokio::sync::Semaphore;

use self::cluster::{add_node, cluster_status, cluster_verify, remove_node, transfer_leader};
use self::elastic::{bulk, bulk_into, doc_into, doc_with_id};
use self::ingest::{ingest, journal_upload, otlp_logs};
use self::search::{count, histogram, query, tail, top};
use self::status::{metrics, ready, root};
use self::tokens::{create_token, list_tokens, revoke_token};
use crate::auth::Caller;
use crate::metrics::Source;
use crate::service::{Failure, Service};

pub(crate) type Shared = State<Arc<Service>>;

/// Most per-line errors an ingest answer lists (all are counted).
const MAX_LISTED_ERRORS: usize = 100;

pub(crate) fn router(service: Arc<Service>) -> Router {
    let body_limit = service.limits.max_body_bytes;
    let in_flight = Arc::new(Semaphore::new(service.limits.max_http_requests.max(1)));
    Router::new()
        .route("/", get(root).head(|| async { StatusCode::OK }))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/v1/cluster", get(cluster_status))
        .route("/api/v1/cluster/transfer-leader", post(transfer_leader))
        .route("/api/v1/cluster/nodes", post(add_node))
        .route(
            "/api/v1/cluster/nodes/{id}",
            axum::routing::delete(remove_node),
        )
        .route("/api/v1/cluster/verify", get(cluster_verify))
        .route("/api/v1/tokens", post(create_token).get(list_tokens))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/api/v1/ingest", post(ingest))
        .route("/v1/logs", post(otlp_logs))
        .route("/upload", post(journal_upload))
        .route("/otlp/v1/logs", post(otlp_logs))
        .route("/api/v1/query", get(query))
        .route("/api/v1/count", get(count))
        .route("/api/v1/histogram", get(histogram))
        .route("/api/v1/top", get(top))
        .route("/api/v1/tail", get(tail))
        // Elasticsearch takes PUT and POST alike for these.
        .route("/_bulk", post(bulk).put(bulk))
        .route("/{index}/_bulk", post(bulk_into).put(bulk_into))
        .route("/{index}/_doc", post(doc_into))
        .route("/{index}/_doc/{id}", post(doc_with_id).put(doc_with_id))
        .route("/{index}/_create/{id}", post(doc_with_id).put(doc_with_id))
        .merge(crate::loki::routes())
        .merge(crate::ui::routes())
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&service),
            authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            in_flight,
            limit_requests,
        ))
        .layer(axum::middleware::map_response(elastic_header))
        .with_state(service)
}

/// At most `max_http_requests` requests are served at once; the others
/// are answered 429 at once rather than queued.
async fn limit_requests(
    State(in_flight): State<Arc<Semaphore>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(permit) = in_flight.try_acquire() else {
        let busy = Failure::new(
            ErrorCode::Busy,
            "the server is serving max_http_requests requests; retry later",
        );
        return busy.into_response();
    };
    let response = next.run(request).await;
    drop(permit);
    response
}

/// Whether a route answers without a credential: health, readiness, the
/// banner and the search page's files (its data come from the API, which
/// asks), and `/metrics` when `auth.metrics_open`.
fn open_route(path: &str, metrics_open: bool) -> bool {
    matches!(path, "/" | "/health" | "/ready" | "/favicon.ico")
        || path == "/ui"
        || path.starts_with("/ui/")
        || (metrics_open && path == "/metrics")
}

/// The front end a path belongs to, for the counts of refused credentials.
fn front_end(path: &str) -> Source {
    if path.starts_with("/loki/") {
        Source::Loki
    } else if path.ends_with("/v1/logs") {
        Source::Otlp
    } else if path == "/upload" {
        Source::Journal
    } else if path.contains("/_bulk") || path.contains("/_doc") || path.contains("/_create") {
        Source::Bulk
    } else {
        Source::Http
    }
}

/// Checks each request's credential once, where it enters: a valid one
/// becomes the [`Caller`] its handler takes from the extensions; none or
/// a bad one is 401 with `WWW-Authenticate`, a token without the tenant
/// it names 403, never saying which part was wrong. Open routes need
/// none.
async fn authenticate(
    State(service): Shared,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let headers = request.headers();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(lode_protocol::auth::bearer_or_basic);
    let asked = match headers.get("x-scope-orgid").map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(text)) => lode_protocol::auth::tenants(text)
            .map(Some)
            .map_err(|e| Failure::new(ErrorCode::BadRequest, format!("X-Scope-OrgID: {e}"))),
        Some(Err(_)) => Err(bad_request("X-Scope-OrgID: not ASCII")),
    };
    // A client certificate of a tenant (journald's upload) stands for a
    // token where none is given.
    let certified = request
        .extensions()
        .get::<crate::listen::Peer>()
        .and_then(|p| p.certified.clone())
        .filter(|_| presented.is_none());
    let caller = match certified {
        Some(tenant) => Ok(service.certified(&tenant)),
        None => asked
            .and_then(|asked| service.authenticate(front_end(&path), presented.as_deref(), asked)),
    };
    match caller {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
        }
        Err(_) if open_route(&path, service.metrics_open) => {}
        Err(failure) => {
            // A browser's script (the search page) asks by fetch: a Basic
            // challenge would make the browser prompt for a login of its
            // own, and the page asks for a token itself.
            let fetched = request
                .headers()
                .get("sec-fetch-mode")
                .is_some_and(|mode| mode.as_bytes() != b"navigate");
            let mut response = failure.into_response();
            if fetched && response.headers().contains_key(header::WWW_AUTHENTICATE) {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="lode""#),
                );
            }
            return response;
        }
    }
    next.run(request).await
}

async fn elastic_header(mut response: Response) -> Response {
    response.headers_mut().insert(
        "x-elastic-product",
        HeaderValue::from_static("Elasticsearch"),
    );
    response
}

pub(crate) fn status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest | ErrorCode::BadQuery | ErrorCode::BadFrame => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Unsupported => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::Busy => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let unauthorized = self.code == ErrorCode::Unauthorized;
        let retry = match self.code {
            ErrorCode::Busy => Some(self.retry_after_s.unwrap_or(1)),
            _ => self.retry_after_s,
        };
        let body = json!({"error": {"code": self.code.name(), "message": self.message}});
        let mut response = (status(self.code), axum::Json(body)).into_response();
        if let Some(secs) = retry
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if unauthorized {
            for challenge in [r#"Bearer realm="lode""#, r#"Basic realm="lode""#] {
                response.headers_mut().append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
        }
        response
    }
}

/// Who a request acts as: the [`Caller`] the authentication layer put
/// in its extensions.
pub(crate) type Who = axum::Extension<Caller>;

pub(crate) fn bad_request(message: impl Into<String>) -> Failure {
    Failure::new(ErrorCode::BadRequest, message)
}
