//! The HTTP front end: lode's JSON API, enough of Elasticsearch's for
//! the shippers that speak `_bulk`, Prometheus metrics and health checks.
//!
//! Parsing a body and appending it run on the blocking pool. Every answer
//! carries `X-Elastic-Product: Elasticsearch`, which Elastic's clients
//! check before they talk to a server.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lode_engine::{LogRecord, now_ns};
use lode_protocol::ErrorCode;
use lode_protocol::json::{JsonRecord, Shape, parse_record, to_json_line};
use lode_protocol::wire::Filter;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, mpsc};

use crate::auth::{Caller, Scope, Scopes};
use crate::metrics::Source;
use crate::service::{Failure, Service};

type Shared = State<Arc<Service>>;

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
        .route("/loki/api/v1/push", post(loki_push))
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
type Who = axum::Extension<Caller>;

fn bad_request(message: impl Into<String>) -> Failure {
    Failure::new(ErrorCode::BadRequest, message)
}

/// Elasticsearch's banner, which its clients check; a browser (asking
/// for HTML) gets a page that links to the search page.
async fn root(headers: axum::http::HeaderMap) -> Response {
    if header_lower(&headers, header::ACCEPT).contains("text/html") {
        return axum::response::Html(crate::ui::WELCOME).into_response();
    }
    axum::Json(json!({
        "name": "lode",
        "cluster_name": "lode",
        "cluster_uuid": "lode",
        "version": {
            "number": "8.11.0",
            "build_flavor": "default",
            "lucene_version": "9.8.0",
            "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0",
        },
        "tagline": "You Know, for Search",
        "lode_version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

async fn ready(State(service): Shared) -> Response {
    if let Some(cluster) = service.cluster()
        && cluster.status().leader.is_none()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: this cluster node knows no leader\n",
        )
            .into_response();
    }
    match service.engine().stats().poisoned {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(cause) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {cause}\n"),
        )
            .into_response(),
    }
}

/// This node's view of its cluster; 404 on a single node.
async fn cluster_status(State(service): Shared, who: Who) -> Response {
    if let Err(failure) = who.require(Scope::Read) {
        return failure.into_response();
    }
    let Some(cluster) = service.cluster() else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {"code": "bad_request", "message": "this server is not a cluster node"}})),
        )
            .into_response();
    };
    let s = cluster.status();
    let peers: Vec<serde_json::Value> = s
        .matched
        .iter()
        .map(|(id, matched)| {
            json!({"node": id, "matched_index": matched, "lag_bytes": s.lag_bytes.get(id)})
        })
        .collect();
    // The first entry the log holds (past the applied one when purged
    // whole).
    let first_log_index = match service.engine().log_bounds() {
        Ok(Some(bounds)) => Some(bounds.first_index),
        _ => s.applied.map(|a| a + 1),
    };
    let transfers: Vec<serde_json::Value> = s
        .transfers
        .iter()
        .map(|t| {
            json!({
                "peer": t.peer,
                "direction": if t.sending { "sending" } else { "receiving" },
                "files_done": t.files_done,
                "files": t.files,
                "bytes_done": t.bytes_done,
                "bytes": t.bytes,
                "bytes_per_sec": t.rate.round() as u64,
                "eta_secs": t.eta_secs.map(|e| e.ceil() as u64),
            })
        })
        .collect();
    axum::Json(json!({
        "node": s.node_id,
        "role": s.role,
        "term": s.term,
        "leader": s.leader,
        "last_log_index": s.last_log_index,
        "committed_index": s.committed,
        "applied_index": s.applied,
        "first_log_index": first_log_index,
        "snapshot_index": s.snapshot,
        "purged_index": s.purged,
        "transfers": transfers,
        "peers": peers,
        "voters": s.voters,
        "learners": s.learners,
        "addresses": s.addrs,
        "no_space": s.no_space,
    }))
    .into_response()
}

#[derive(Debug, serde::Deserialize)]
struct Through {
    /// The first entry to compare (every node's log starts by then:
    /// below it, some purged theirs through a snapshot).
    #[serde(default)]
    from: u64,
    through: u64,
}

/// Checksums of this node's log through `?through=N`, by ranges.
async fn cluster_verify(State(service): Shared, who: Who, Query(q): Query<Through>) -> Response {
    if let Err(failure) = who.require(Scope::Read) {
        return failure.into_response();
    }
    match service.log_checksums(q.from, q.through).await {
        Ok(ranges) => {
            let ranges: Vec<serde_json::Value> = ranges
                .into_iter()
                .map(|(first, last, crc)| json!({"first": first, "last": last, "crc32c": crc}))
                .collect();
            // Each sealed segment's checksum of its records in seq order:
            // nodes whose segments cover the same seqs must agree on it.
            let segments: Vec<serde_json::Value> = service
                .engine()
                .segments()
                .into_iter()
                .map(|s| {
                    json!({
                        "first_seq": s.first_seq,
                        "last_seq": s.last_seq,
                        "last_index": s.last_index,
                        "sst_bytes": s.sst_bytes,
                        "records_crc32c": s.records_crc32c,
                    })
                })
                .collect();
            axum::Json(json!({"from": q.from, "through": q.through, "ranges": ranges, "segments": segments}))
                .into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

#[derive(Debug, serde::Deserialize)]
struct TransferTo {
    to: u64,
}

fn refuse(status: StatusCode, message: String) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": "bad_request", "message": message}})),
    )
        .into_response()
}

/// The cluster node, if it leads and the caller may change the cluster
/// (`admin`); else the status and reason to answer.
fn leading<'a>(
    service: &'a Service,
    who: &Caller,
) -> std::result::Result<&'a Arc<lode_replication::ClusterNode>, (StatusCode, String)> {
    if let Err(failure) = who.require(Scope::Admin) {
        return Err((status(failure.code), failure.message));
    }
    let Some(cluster) = service.cluster() else {
        return Err((
            StatusCode::NOT_FOUND,
            "this server is not a cluster node".into(),
        ));
    };
    let status = cluster.status();
    if status.role != "leader" {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "node {} is not the leader (node {:?} is); ask the leader",
                status.node_id, status.leader
            ),
        ));
    }
    Ok(cluster)
}

/// A cluster operation's outcome: `done` as JSON, or the error.
fn outcome(result: lode_replication::Result<()>, done: Value) -> Response {
    match result {
        Ok(()) => axum::Json(done).into_response(),
        Err(e @ lode_replication::Error::Config(_)) => {
            refuse(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e @ lode_replication::Error::NotLeader { .. }) => {
            refuse(StatusCode::CONFLICT, e.to_string())
        }
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Hands leadership to node `to`; asked of the leader.
async fn transfer_leader(
    State(service): Shared,
    who: Who,
    Query(target): Query<TransferTo>,
) -> Response {
    let cluster = match leading(&service, &who) {
        Ok(cluster) => cluster,
        Err((status, reason)) => return refuse(status, reason),
    };
    outcome(
        cluster.transfer_leader(target.to).await,
        json!({"transferring_to": target.to}),
    )
}

#[derive(Debug, serde::Deserialize)]
struct NewNode {
    id: u64,
    addr: String,
}

/// `POST /api/v1/cluster/nodes?id=N&addr=HOST:PORT`: adds a node (a
/// learner until it has caught up, then a voter); answers once it votes.
async fn add_node(State(service): Shared, who: Who, Query(node): Query<NewNode>) -> Response {
    let cluster = match leading(&service, &who) {
        Ok(cluster) => cluster,
        Err((status, reason)) => return refuse(status, reason),
    };
    outcome(
        cluster.add_node(node.id, node.addr.clone()).await,
        json!({"added": node.id, "addr": node.addr}),
    )
}

/// `DELETE /api/v1/cluster/nodes/N`: removes node N from the cluster.
async fn remove_node(State(service): Shared, who: Who, Path(id): Path<u64>) -> Response {
    let cluster = match leading(&service, &who) {
        Ok(cluster) => cluster,
        Err((status, reason)) => return refuse(status, reason),
    };
    outcome(cluster.remove_node(id).await, json!({"removed": id}))
}

async fn metrics(State(service): Shared, who: Option<Who>) -> Response {
    if !service.metrics_open {
        let allowed = who.map(|w| w.require(Scope::Read));
        match allowed {
            Some(Ok(())) => {}
            Some(Err(failure)) => return failure.into_response(),
            None => return crate::auth::unauthorized().into_response(),
        }
    }
    let mut text = service.metrics.render(&service.figures());
    crate::metrics::render_tenants(&mut text, &service.tenants.figures());
    if let Some(cluster) = service.cluster() {
        crate::metrics::render_cluster(&mut text, &cluster.status(), &cluster.figures());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct TokenRequest {
    tenant: Option<String>,
    /// `ingest,read` or a list.
    scopes: ScopeList,
    /// Seconds from now the token stops working.
    expires_in_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ScopeList {
    Text(String),
    List(Vec<String>),
}

/// `POST /api/v1/tokens` `{"tenant":"team-a","scopes":"ingest,read","expires_in_s":86400}`
/// (`admin`): makes a token; its secret is in this answer only.
async fn create_token(
    State(service): Shared,
    who: Who,
    axum::Json(asked): axum::Json<TokenRequest>,
) -> Result<Response, Failure> {
    let scopes = match &asked.scopes {
        ScopeList::Text(text) => text.clone(),
        ScopeList::List(list) => list.join(","),
    };
    let scopes = Scopes::parse(&scopes).map_err(bad_request)?;
    let expires = asked.expires_in_s.map(|s| {
        lode_engine::now_ns().saturating_add(
            i64::try_from(s)
                .unwrap_or(i64::MAX / 2)
                .saturating_mul(1_000_000_000),
        )
    });
    let made = service
        .create_token(&who, asked.tenant.as_deref(), scopes, expires)
        .await?;
    let answer = token_json(&made.info, Some(made.secret));
    Ok((StatusCode::CREATED, axum::Json(answer)).into_response())
}

/// A token as answered: never its hash; its secret only when just made.
fn token_json(info: &crate::auth::TokenInfo, secret: Option<String>) -> Value {
    let mut answer = json!({
        "id": info.id,
        "tenant": info.tenant,
        "scopes": info.scopes,
        "created": lode_engine::format_rfc3339(info.created),
        "expires": info.expires.map(lode_engine::format_rfc3339),
    });
    if let (Some(secret), Some(fields)) = (secret, answer.as_object_mut()) {
        fields.insert("token".to_owned(), Value::String(secret));
    }
    answer
}

/// `GET /api/v1/tokens` (`admin`): every token, without its secret.
async fn list_tokens(State(service): Shared, who: Who) -> Result<Response, Failure> {
    who.require(Scope::Admin)?;
    let tokens = service.tokens();
    let list: Vec<Value> = tokens
        .list()
        .into_iter()
        .map(|t| token_json(t, None))
        .collect();
    Ok(axum::Json(json!({ "tokens": list })).into_response())
}

/// `DELETE /api/v1/tokens/{id}` (`admin`): revokes a token on every node.
async fn revoke_token(
    State(service): Shared,
    who: Who,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    if !service.revoke_token(&who, &id).await? {
        return Err(Failure::new(
            ErrorCode::BadRequest,
            format!("no token {id}"),
        ));
    }
    Ok(axum::Json(json!({ "revoked": id })).into_response())
}

/// Records parsed from a body, and what was wrong with the other lines.
#[derive(Debug, Default)]
struct Parsed {
    records: Vec<LogRecord>,
    rejected: usize,
    errors: Vec<Value>,
}

impl Parsed {
    fn reject(&mut self, line: usize, error: String) {
        self.rejected += 1;
        if self.errors.len() < MAX_LISTED_ERRORS {
            self.errors.push(json!({"line": line, "error": error}));
        }
    }
}

fn parse_lines(body: &[u8], now: i64) -> Parsed {
    let shape = Shape::default();
    let mut parsed = Parsed::default();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let outcome = std::str::from_utf8(line)
            .map_err(|e| format!("not UTF-8: {e}"))
            .and_then(|text| parse_record(text, &shape, now));
        match outcome {
            Ok((record, _)) => parsed.records.push(record),
            Err(error) => parsed.reject(i + 1, error),
        }
    }
    parsed
}

async fn on_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Failure::new(ErrorCode::Internal, e.to_string()))
}

/// `POST /api/v1/ingest`: JSON lines; answers once the accepted records
/// are durable.
async fn ingest(
    State(service): Shared,
    who: Who,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    who.require(Scope::Ingest)?;
    let parsed = parse_pushed(&service, &headers, body, |body| {
        Ok(parse_lines(body, now_ns()))
    })
    .await?;
    let total = parsed.records.len() + parsed.rejected;
    service.metrics.received(Source::Http, total as u64);
    service
        .metrics
        .rejected(Source::Http, parsed.rejected as u64);
    let accepted = parsed.records.len();
    if accepted > 0 {
        service
            .append_records(&who, parsed.records, idempotency_key(&headers))
            .await?;
    }
    Ok(axum::Json(json!({
        "accepted": accepted,
        "rejected": parsed.rejected,
        "errors": parsed.errors,
    }))
    .into_response())
}

/// `POST /loki/api/v1/push`: Loki's push, in protobuf compressed with
/// snappy's block format (`Content-Type: application/x-protobuf`, what
/// Promtail, Alloy and Vector send) or JSON, either gzipped or not; 204
/// once every record is durable (committed, in a cluster), 400 naming
/// the place of the first malformed stream or value (nothing is
/// written).
async fn loki_push(
    State(service): Shared,
    who: Who,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    who.require(Scope::Ingest)?;
    let protobuf = is_protobuf(&headers);
    let limit = service.limits.max_unpacked_bytes;
    let parsed = parse_pushed(&service, &headers, body, move |body| {
        let push = |e| bad_request(format!("Loki push: {e}"));
        if !protobuf {
            return lode_protocol::loki::parse_push_json(body).map_err(push);
        }
        let len = lode_protocol::loki::snappy_len(body).map_err(push)?;
        if len > limit {
            return Err(Failure::new(
                ErrorCode::TooLarge,
                format!(
                    "the snappy body unpacks to {len} bytes, over limits.max_unpacked_bytes = {limit}"
                ),
            ));
        }
        lode_protocol::loki::unsnappy(body, limit)
            .and_then(|body| lode_protocol::loki::parse_push_proto(&body))
            .map_err(push)
    })
    .await?;
    service.metrics.received(Source::Loki, parsed.len() as u64);
    service
        .append_records(&who, parsed, idempotency_key(&headers))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Whether a request's body is protobuf (`application/x-protobuf`).
/// A push's `Idempotency-Key`: its retries land once (see
/// [`Service::append_records`]).
fn idempotency_key(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

fn is_protobuf(headers: &axum::http::HeaderMap) -> bool {
    header_lower(headers, axum::http::header::CONTENT_TYPE).contains("protobuf")
}

/// `POST /v1/logs` (and `/otlp/v1/logs`): OTLP logs in protobuf or
/// JSON, gzipped or not. 200 with an `ExportLogsServiceResponse` in the
/// request's encoding once the records are durable (`partialSuccess`
/// counts the records that could not be read); 400 for a body that is
/// no request; 429 or 503 with `Retry-After` when the server is busy.
/// A protobuf request's error is a `google.rpc.Status`, as the OTLP
/// spec asks.
async fn otlp_logs(
    State(service): Shared,
    who: Who,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let protobuf = is_protobuf(&headers);
    match otlp_write(&service, &who, &headers, body, protobuf).await {
        Ok(response) => response,
        Err(failure) => {
            let retry = matches!(failure.code, ErrorCode::Busy | ErrorCode::Unavailable)
                .then(|| failure.retry_after_s.unwrap_or(1).to_string());
            let mut response = if protobuf {
                let grpc = match failure.code {
                    ErrorCode::Busy | ErrorCode::NoSpace => 8,
                    ErrorCode::Unavailable => 14,
                    ErrorCode::TooLarge | ErrorCode::BadRequest => 3,
                    _ => 13,
                };
                let body = lode_protocol::otlp::status_proto(grpc, &failure.message);
                protobuf_response(status(failure.code), body)
            } else {
                failure.into_response()
            };
            if let Some(value) = retry.and_then(|r| HeaderValue::from_str(&r).ok()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
    }
}

fn protobuf_response(code: StatusCode, body: Vec<u8>) -> Response {
    let content_type = [(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    )];
    (code, content_type, body).into_response()
}

async fn otlp_write(
    service: &Arc<Service>,
    who: &Caller,
    headers: &axum::http::HeaderMap,
    body: Bytes,
    protobuf: bool,
) -> Result<Response, Failure> {
    who.require(Scope::Ingest)?;
    let parsed = parse_pushed(service, headers, body, move |body| {
        let now = now_ns();
        if protobuf {
            lode_protocol::otlp::parse_logs_proto(body, now)
        } else {
            lode_protocol::otlp::parse_logs_json(body, now)
        }
        .map_err(|e| bad_request(format!("OTLP logs: {e}")))
    })
    .await?;
    let total = parsed.records.len() as u64 + parsed.rejected;
    service.metrics.received(Source::Otlp, total);
    service.metrics.rejected(Source::Otlp, parsed.rejected);
    service
        .append_records(who, parsed.records, idempotency_key(headers))
        .await?;
    if protobuf {
        let body =
            lode_protocol::otlp::response_proto(parsed.rejected, parsed.first_error.as_ref());
        return Ok(protobuf_response(StatusCode::OK, body));
    }
    let answer = match parsed.first_error {
        Some(e) => json!({"partialSuccess": {
            "rejectedLogRecords": parsed.rejected.to_string(),
            "errorMessage": e.to_string(),
        }}),
        None => json!({}),
    };
    Ok(axum::Json(answer).into_response())
}

/// `POST /upload`: what `systemd-journal-upload` sends, the journal
/// export format (chunked); 200 once every entry is durable, 400 naming
/// the offset of a damaged export (nothing is written).
async fn journal_upload(
    State(service): Shared,
    who: Who,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    who.require(Scope::Ingest)?;
    let records = parse_pushed(&service, &headers, body, |body| {
        lode_protocol::journal::parse_export(body, now_ns()).map_err(|e| bad_request(e.to_string()))
    })
    .await?;
    service
        .metrics
        .received(Source::Journal, records.len() as u64);
    service
        .append_records(&who, records, idempotency_key(&headers))
        .await?;
    Ok((StatusCode::OK, "OK.\n").into_response())
}

/// Parses a pushed body on the blocking pool, unpacked first when its
/// `Content-Encoding` says so (see [`unpack`]).
async fn parse_pushed<T: Send + 'static>(
    service: &Service,
    headers: &axum::http::HeaderMap,
    body: Bytes,
    parse: impl FnOnce(&[u8]) -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    let encoding = header_lower(headers, axum::http::header::CONTENT_ENCODING);
    let limit = service.limits.max_unpacked_bytes;
    on_blocking(move || parse(&unpack(&encoding, body, limit)?)).await?
}

/// A request header's value, lower case ("" when absent).
fn header_lower(headers: &axum::http::HeaderMap, name: axum::http::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// A body as its `Content-Encoding` packed it: none (or `identity`),
/// `gzip` or `zstd`, unpacked up to `limit` bytes (`max_unpacked_bytes`;
/// 413 as soon as the unpacking passes it, so a small bomb never fills
/// memory). Another encoding is 415.
fn unpack(encoding: &str, body: Bytes, limit: usize) -> Result<Bytes, Failure> {
    use std::io::Read;
    let reader: Box<dyn Read + '_> = match encoding.trim() {
        "" | "identity" => return Ok(body),
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(&body[..])),
        "zstd" => Box::new(
            zstd::stream::read::Decoder::new(&body[..])
                .map_err(|e| bad_request(format!("zstd body: {e}")))?,
        ),
        other => {
            return Err(Failure::new(
                ErrorCode::Unsupported,
                format!("Content-Encoding '{other}': expected gzip, zstd or none"),
            ));
        }
    };
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad_request(format!("{encoding} body: {e}")))?;
    if out.len() > limit {
        return Err(Failure::new(
            ErrorCode::TooLarge,
            format!("the {encoding} body unpacks to over limits.max_unpacked_bytes = {limit}"),
        ));
    }
    Ok(Bytes::from(out))
}

#[derive(Debug, Deserialize)]
struct Params {
    #[serde(default)]
    q: String,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
    /// Histogram bucket width: `30s`, `5m`, `1h` or ns.
    width: Option<String>,
    field: Option<String>,
    k: Option<usize>,
    /// Tail: start at this seq instead of the next record.
    from_seq: Option<u64>,
    /// `linearizable`: the answer reflects every write acknowledged
    /// before the request, by any node; default `local` (what this node
    /// has applied and indexed).
    consistency: Option<String>,
}

fn time(text: Option<&str>, name: &str) -> Result<Option<i64>, Failure> {
    text.map(|t| {
        lode_index::parse_time(t, now_ns()).map_err(|e| bad_request(format!("{name}: {e}")))
    })
    .transpose()
}

impl Params {
    /// The filter, once the read may start: after a read barrier when the
    /// request asks for a linearizable read.
    async fn read(&self, service: &Service) -> Result<Filter, Failure> {
        match self.consistency.as_deref() {
            None | Some("local") => {}
            Some("linearizable") => service.linearize().await?,
            Some(other) => {
                return Err(bad_request(format!(
                    "consistency '{other}': expected local or linearizable"
                )));
            }
        }
        self.filter()
    }

    fn filter(&self) -> Result<Filter, Failure> {
        Ok(Filter {
            query: self.q.clone(),
            since: time(self.since.as_deref(), "since")?,
            until: time(self.until.as_deref(), "until")?,
        })
    }
}

/// `1h` or `5m` or a number of ns.
fn width(text: &str) -> Result<i64, Failure> {
    if let Ok(ns) = text.parse::<i64>() {
        return Ok(ns);
    }
    // A relative time is that long before 0: its negation is the duration.
    lode_index::parse_time(text, 0).map(|t| -t).map_err(|_| {
        bad_request(format!(
            "width '{text}': expected a duration like 30s, 5m, 1h or ns"
        ))
    })
}

async fn query(
    State(service): Shared,
    who: Who,
    Query(params): Query<Params>,
) -> Result<Response, Failure> {
    let page = service
        .query(
            &who,
            params.read(&service).await?,
            params.limit.unwrap_or(100),
            params.cursor.clone(),
        )
        .await?;
    let records: Vec<JsonRecord<'_>> = page
        .records
        .iter()
        .map(|r| JsonRecord::new(Some(r.seq), &r.log))
        .collect();
    Ok(axum::Json(json!({"records": records, "next_cursor": page.next_cursor})).into_response())
}

async fn count(
    State(service): Shared,
    who: Who,
    Query(params): Query<Params>,
) -> Result<Response, Failure> {
    let count = service.count(&who, params.read(&service).await?).await?;
    Ok(axum::Json(json!({ "count": count })).into_response())
}

async fn histogram(
    State(service): Shared,
    who: Who,
    Query(params): Query<Params>,
) -> Result<Response, Failure> {
    let width = params.width.as_deref().map(width).transpose()?;
    let h = service
        .histogram(&who, params.read(&service).await?, width)
        .await?;
    let buckets: Vec<Value> = h
        .buckets
        .iter()
        .enumerate()
        .map(|(i, count)| {
            let start = h.start + i as i64 * h.width;
            json!({"start": lode_engine::format_rfc3339(start), "count": count})
        })
        .collect();
    Ok(axum::Json(json!({"width_ns": h.width, "buckets": buckets})).into_response())
}

async fn top(
    State(service): Shared,
    who: Who,
    Query(params): Query<Params>,
) -> Result<Response, Failure> {
    let field = params.field.as_deref().unwrap_or("service");
    let values = service
        .top(
            &who,
            params.read(&service).await?,
            field,
            params.k.unwrap_or(10),
        )
        .await?;
    let values: Vec<Value> = values
        .into_iter()
        .map(|(value, count)| json!({"value": value, "count": count}))
        .collect();
    Ok(axum::Json(json!({"field": field, "values": values})).into_response())
}

/// A body made of lines sent by a blocking tail thread.
struct Lines(mpsc::Receiver<Bytes>);

impl futures_core::Stream for Lines {
    type Item = Result<Bytes, Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|line| line.map(Ok))
    }
}

/// `GET /api/v1/tail?q=`: matching records as JSON lines, as they arrive,
/// until the client goes away.
async fn tail(
    State(service): Shared,
    who: Who,
    Query(params): Query<Params>,
) -> Result<Response, Failure> {
    let mut tail = service.tail(&who, &params.q, params.from_seq)?;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::task::spawn_blocking(move || {
        while !tx.is_closed() {
            match tail.next_timeout(Duration::from_millis(200)) {
                Ok(Some(record)) => {
                    let mut line = Vec::new();
                    to_json_line(Some(record.seq), &record.log, &mut line);
                    if tx.blocking_send(Bytes::from(line)).is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    let line = json!({"error": e.to_string()}).to_string() + "\n";
                    let _ = tx.blocking_send(Bytes::from(line));
                    return;
                }
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(Lines(rx)),
    )
        .into_response())
}

/// One `_bulk` action and the record it carries, if any.
#[derive(Debug)]
enum Item {
    Record {
        op: String,
        index: String,
        at: usize,
    },
    Refused {
        op: String,
        index: String,
        status: u16,
        kind: &'static str,
        reason: String,
    },
}

fn bulk_error(reason: String) -> Response {
    let body = json!({
        "error": {"type": "illegal_argument_exception", "reason": reason},
        "status": 400,
    });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// Reads `_bulk` NDJSON: action lines, each `index`/`create` followed by
/// its document. `update` and `delete` are refused per item: lode is
/// append-only.
fn parse_bulk(
    body: &[u8],
    default_index: Option<&str>,
    now: i64,
) -> Result<(Vec<Item>, Vec<LogRecord>), String> {
    let shape = Shape::default();
    let mut lines = body
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace));
    let (mut items, mut records) = (Vec::new(), Vec::new());
    while let Some((n, line)) = lines.next() {
        let action: Map<String, Value> = serde_json::from_slice(line)
            .map_err(|e| format!("line {}: the action is not a JSON object: {e}", n + 1))?;
        let Some((op, meta)) = action.into_iter().next() else {
            return Err(format!("line {}: empty action", n + 1));
        };
        let index = meta
            .get("_index")
            .and_then(Value::as_str)
            .or(default_index)
            .unwrap_or("")
            .to_owned();
        match op.as_str() {
            "index" | "create" => {
                let Some((_, doc)) = lines.next() else {
                    return Err(format!("line {}: '{op}' without a document", n + 1));
                };
                let parsed = std::str::from_utf8(doc)
                    .map_err(|e| format!("the document is not UTF-8: {e}"))
                    .and_then(|text| parse_record(text, &shape, now));
                match parsed {
                    Ok((mut record, _)) => {
                        if record.service.is_empty() {
                            record.service = index.clone();
                        }
                        items.push(Item::Record {
                            op,
                            index,
                            at: records.len(),
                        });
                        records.push(record);
                    }
                    Err(reason) => items.push(Item::Refused {
                        op,
                        index,
                        status: 400,
                        kind: "document_parsing_exception",
                        reason,
                    }),
                }
            }
            "update" | "delete" => {
                if op == "update" {
                    lines.next();
                }
                items.push(Item::Refused {
                    reason: format!("lode is append-only: '{op}' is not supported"),
                    op,
                    index,
                    status: 400,
                    kind: "illegal_argument_exception",
                });
            }
            other => return Err(format!("line {}: unknown action '{other}'", n + 1)),
        }
    }
    Ok((items, records))
}

async fn bulk(
    State(service): Shared,
    who: Who,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    bulk_body(service, who, None, headers, body).await
}

async fn bulk_into(
    State(service): Shared,
    who: Who,
    Path(index): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    bulk_body(service, who, Some(index), headers, body).await
}

/// `POST /{index}/_bulk` and `/_bulk`: answers per item, in request order,
/// once the accepted documents are durable.
async fn bulk_body(
    service: Arc<Service>,
    who: Who,
    index: Option<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(failure) = who.require(Scope::Ingest) {
        return failure.into_response();
    }
    let started = Instant::now();
    let parsed = parse_pushed(&service, &headers, body, move |body| {
        Ok(parse_bulk(body, index.as_deref(), now_ns()))
    })
    .await;
    let (items, records) = match parsed {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(reason)) => return bulk_error(reason),
        Err(failure) => return failure.into_response(),
    };
    service.metrics.received(Source::Bulk, items.len() as u64);
    let refused = items
        .iter()
        .filter(|i| matches!(i, Item::Refused { .. }))
        .count();
    service.metrics.rejected(Source::Bulk, refused as u64);
    let appended = if records.is_empty() {
        Ok(crate::service::Appended::default())
    } else {
        service
            .append_records(&who, records, idempotency_key(&headers))
            .await
    };
    let mut errors = refused > 0;
    let answers: Vec<Value> = items
        .into_iter()
        .map(|item| match (item, &appended) {
            (Item::Record { op, index, at }, Ok(appended)) => {
                let seq = appended.seq_of(at as u64).unwrap_or_default();
                json!({ op: {
                    "_index": index, "_id": seq.to_string(), "_version": 1,
                    "result": "created", "status": 201, "_seq_no": seq, "_primary_term": 1,
                    "_shards": {"total": 1, "successful": 1, "failed": 0},
                }})
            }
            (Item::Record { op, index, .. }, Err(failure)) => {
                errors = true;
                json!({ op: {
                    "_index": index, "status": status(failure.code).as_u16(),
                    "error": {"type": failure.code.name(), "reason": failure.message},
                }})
            }
            (
                Item::Refused {
                    op,
                    index,
                    status,
                    kind,
                    reason,
                },
                _,
            ) => json!({ op: {
                "_index": index, "status": status,
                "error": {"type": kind, "reason": reason},
            }}),
        })
        .collect();
    let took = started.elapsed().as_millis() as u64;
    axum::Json(json!({"took": took, "errors": errors, "items": answers})).into_response()
}

/// `PUT /{index}/_doc/{id}`: one document; the id is not kept (lode gives
/// each record its seq).
async fn doc_with_id(
    state: Shared,
    who: Who,
    Path((index, _id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Failure> {
    doc_into(state, who, Path(index), body).await
}

/// `POST /{index}/_doc`: one document.
async fn doc_into(
    State(service): Shared,
    who: Who,
    Path(index): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    who.require(Scope::Ingest)?;
    let text = std::str::from_utf8(&body)
        .map_err(|e| bad_request(format!("the document is not UTF-8: {e}")))?;
    let (mut record, _) = parse_record(text, &Shape::default(), now_ns()).map_err(bad_request)?;
    if record.service.is_empty() {
        record.service = index.clone();
    }
    service.metrics.received(Source::Bulk, 1);
    let seq = service
        .append_records(&who, vec![record], None)
        .await?
        .seq_of(0)
        .unwrap_or_default();
    let body = json!({
        "_index": index, "_id": seq.to_string(), "_version": 1, "result": "created",
        "_seq_no": seq, "_primary_term": 1,
        "_shards": {"total": 1, "successful": 1, "failed": 0},
    });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_lines_are_kept_or_rejected_one_by_one() {
        let body = b"{\"message\":\"a\"}\n\nnot json\r\n{\"ts\":\"bad\"}\n{\"message\":\"b\",\"level\":\"W\"}";
        let parsed = parse_lines(body, 5);
        assert_eq!(parsed.records.len(), 2);
        assert_eq!(parsed.rejected, 2);
        assert_eq!(parsed.errors[0]["line"], 3);
        assert_eq!(parsed.errors[1]["line"], 4);
        assert_eq!(parsed.records[1].level, lode_engine::Level::Warn);
    }

    #[test]
    fn bulk_items_keep_request_order() {
        let body = b"{\"index\":{\"_index\":\"web\"}}\n{\"message\":\"one\"}\n\
{\"delete\":{\"_index\":\"web\",\"_id\":\"1\"}}\n\
{\"create\":{}}\n[1]\n\
{\"index\":{}}\n{\"message\":\"two\",\"service\":\"api\"}\n";
        let (items, records) = parse_bulk(body, Some("logs"), 0).unwrap();
        assert_eq!(items.len(), 4);
        assert!(matches!(&items[0], Item::Record { at: 0, index, .. } if index == "web"));
        assert!(matches!(&items[1], Item::Refused { op, .. } if op == "delete"));
        assert!(matches!(&items[2], Item::Refused { status: 400, .. }));
        assert!(matches!(&items[3], Item::Record { at: 1, index, .. } if index == "logs"));
        assert_eq!(records[0].service, "web");
        assert_eq!(records[1].service, "api");
        assert!(parse_bulk(b"{\"frobnicate\":{}}\n", None, 0).is_err());
        assert!(parse_bulk(b"{\"index\":{}}\n", None, 0).is_err());
    }

    #[test]
    fn bodies_unpack_by_their_encoding_within_the_limit() {
        use std::io::Write as _;
        let plain = Bytes::from_static(b"{\"message\":\"a\"}\n");
        assert_eq!(unpack("", plain.clone(), 10).unwrap(), plain);
        assert_eq!(unpack("identity", plain.clone(), 10).unwrap(), plain);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = Bytes::from(gz.finish().unwrap());
        assert_eq!(unpack("gzip", gz.clone(), 100).unwrap(), plain);
        let over = unpack("gzip", gz, 5).unwrap_err();
        assert_eq!(over.code, ErrorCode::TooLarge);
        assert!(
            over.message.contains("max_unpacked_bytes = 5"),
            "{}",
            over.message
        );
        let zstd = Bytes::from(zstd::encode_all(&plain[..], 1).unwrap());
        assert_eq!(unpack("zstd", zstd, 100).unwrap(), plain);
        let odd = unpack("br", plain.clone(), 100).unwrap_err();
        assert_eq!(
            (odd.code, status(odd.code)),
            (ErrorCode::Unsupported, StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert_eq!(
            unpack("gzip", plain, 100).unwrap_err().code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn widths_and_times() {
        assert_eq!(width("5m").unwrap(), 300_000_000_000);
        assert_eq!(width("1000").unwrap(), 1000);
        assert!(width("fortnight").is_err());
        assert!(
            time(Some("yesterday"), "since")
                .unwrap_err()
                .message
                .contains("since")
        );
        assert!(time(Some("2h"), "until").unwrap().is_some());
    }
}
