//! The root banner (Elasticsearch's, which its clients check), readiness
//! and Prometheus metrics.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ingest::header_lower;
use super::{Shared, Who};
use crate::auth::Scope;

/// Elasticsearch's banner, which its clients check; a browser (asking
/// for HTML) gets a page that links to the search page.
pub(super) async fn root(headers: axum::http::HeaderMap) -> Response {
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

pub(super) async fn ready(State(service): Shared) -> Response {
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

pub(super) async fn metrics(State(service): Shared, who: Option<Who>) -> Response {
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
