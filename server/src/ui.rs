//! The search page, `GET /ui`: static files built into the binary (no
//! build step, no files to install) that call the `/api/v1/*` endpoints
//! from the browser.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::service::Service;

const PAGE: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/style.css");

pub(crate) fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/ui", get(|| file(PAGE, "text/html; charset=utf-8")))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route(
            "/ui/app.js",
            get(|| file(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .route(
            "/ui/style.css",
            get(|| file(STYLE, "text/css; charset=utf-8")),
        )
}

async fn file(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            // A new binary may bring a new page: revalidate rather than
            // keep a stale script.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// What `GET /` shows a browser (Elasticsearch clients, which do not ask
/// for HTML, get the JSON they check).
pub(crate) const WELCOME: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>lode</title><link rel=\"icon\" href=\"data:,\"></head><body style=\"font:15px system-ui,sans-serif;margin:3em\">\
<h1>lode</h1><p>A log database. <a href=\"/ui\">Search your logs</a>.</p>\
<p>API: <a href=\"/api/v1/query?q=*&amp;limit=10\">/api/v1/query</a>, \
<a href=\"/metrics\">/metrics</a>, <a href=\"/health\">/health</a>; \
Grafana: add a Loki data source with this server's URL.</p></body></html>";
